"""The ``Progress`` port of one job, on the job log's ``job_progress`` table.

A note says that a step happened (an email went out, a platform took the listing): once the
step is done, the note must not be lost, or a retried attempt would do the step again. So a
note the job log cannot take (``StorageUnavailable``: the database restarts) is not an error
of the handler: ``record`` keeps trying, with backoff, until it is written or the handler's
deadline ends the attempt; from then on this process keeps trying in the background. Until it
is written, the note is held in this process's memory (``UnsavedNotes``), and this process's
later attempts of the job read it from there.

The guarantee: a step noted by a handler is not done again by a later attempt, except when
the sidecar process that did it dies before the note reached the job log, or when a later
attempt runs on another replica before the note's background write succeeded (the job stays
``processing`` under its lease while the job log is unreachable, so that takes a storage
outage that outlasts the handler's timeout and the lease margin).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from jobsvc.db.progress import ProgressLog
from jobsvc.errors import JobNotFound, StorageUnavailable

log = logging.getLogger("jobsvc.progress")

FIRST_BACKOFF_SECONDS = 0.05
MAX_BACKOFF_SECONDS = 1.0
_NoteId = tuple[uuid.UUID, str]


class UnsavedNotes:
    """The notes of this process that are not in the job log yet, and the background writes
    that bring them there. Log records carry the action ``progress_note_retry`` (a write
    failed and will be tried again) and ``progress_note_saved_late`` (a background write
    succeeded)."""

    def __init__(self, progress_log: ProgressLog) -> None:
        self._log = progress_log
        self._notes: dict[_NoteId, dict[str, Any]] = {}
        self._writers: dict[_NoteId, asyncio.Task[None]] = {}

    def of(self, job_id: uuid.UUID) -> dict[str, dict[str, Any]]:
        """The job's unsaved notes, by key."""
        return {key: dict(value) for (job, key), value in self._notes.items() if job == job_id}

    async def write(self, job_id: uuid.UUID, key: str, value: Mapping[str, Any]) -> None:
        """Write the note, trying again on ``StorageUnavailable`` until it is written; if the
        caller is cancelled first (its deadline), a background task goes on trying."""
        note = (job_id, key)
        self._notes[note] = dict(value)
        earlier = self._writers.pop(note, None)
        if earlier is not None:
            earlier.cancel()  # superseded by this value
        try:
            await self._until_written(note, dict(value))
        except asyncio.CancelledError:
            if note in self._notes:
                self._writers[note] = asyncio.create_task(
                    self._in_background(note, dict(value)), name=f"progress note {key}"
                )
            raise
        except Exception:  # not a storage outage (the job is gone, say): nothing to keep
            self._notes.pop(note, None)
            raise

    async def aclose(self) -> None:
        """Stop the background writes; their notes are lost, as in a crash."""
        writers = list(self._writers.values())
        for writer in writers:
            writer.cancel()
        await asyncio.gather(*writers, return_exceptions=True)

    async def _until_written(self, note: _NoteId, value: dict[str, Any]) -> None:
        job_id, key = note
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            try:
                await asyncio.to_thread(self._log.record, job_id, key, value)
            except StorageUnavailable as exc:
                log.warning(
                    "progress note %s not written, trying again: %s",
                    key,
                    exc.message,
                    extra={"action": "progress_note_retry", "job_id": str(job_id), "key": key},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            if self._notes.get(note) == value:
                del self._notes[note]
            return

    async def _in_background(self, note: _NoteId, value: dict[str, Any]) -> None:
        try:
            await self._until_written(note, value)
        except JobNotFound:  # deleted meanwhile: nothing left to keep
            self._notes.pop(note, None)
        else:
            log.info(
                "progress note %s written after its attempt",
                note[1],
                extra={"action": "progress_note_saved_late", "job_id": str(note[0])},
            )
        finally:
            if self._writers.get(note) is asyncio.current_task():
                del self._writers[note]


class JobProgress:
    """Notes of the job ``job_id``; each call is one short transaction in a worker thread.
    With ``unsaved``, a write the job log cannot take is kept trying (see the module)."""

    def __init__(
        self, progress_log: ProgressLog, job_id: uuid.UUID, unsaved: UnsavedNotes | None = None
    ) -> None:
        self._log = progress_log
        self._job_id = job_id
        self._unsaved = unsaved

    async def get(self, key: str) -> Mapping[str, Any] | None:
        if self._unsaved is not None:
            held = self._unsaved.of(self._job_id).get(key)
            if held is not None:
                return held
        return await asyncio.to_thread(self._log.get, self._job_id, key)

    async def record(self, key: str, value: Mapping[str, Any]) -> None:
        if self._unsaved is None:
            await asyncio.to_thread(self._log.record, self._job_id, key, value)
        else:
            await self._unsaved.write(self._job_id, key, value)

    async def all(self) -> dict[str, Mapping[str, Any]]:
        notes: dict[str, Mapping[str, Any]] = dict(
            await asyncio.to_thread(self._log.all, self._job_id)
        )
        if self._unsaved is not None:
            notes.update(self._unsaved.of(self._job_id))
        return notes
