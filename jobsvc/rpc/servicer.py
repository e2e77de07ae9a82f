"""The JobService servicer: each RPC reads its request (``requests``), calls one use case of
``JobService`` with domain values, and answers with messages built by ``conversion``. Errors are
raised and turned into statuses by the ``errors`` decorators."""

from __future__ import annotations

from collections.abc import AsyncIterator

from jobsvc.crons import next_run_time
from jobsvc.errors import InvalidArgument, InvalidState
from jobsvc.jobs import JobState, Schedule
from jobsvc.rpc import requests
from jobsvc.rpc.conversion import job_to_proto, schedule_to_proto
from jobsvc.rpc.errors import Context, server_stream, unary
from jobsvc.service.jobs import EnqueueRequest, JobService
from jobsvc.v1 import job_service_pb2 as pb
from jobsvc.v1 import job_service_pb2_grpc, schedules_pb2


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    """Serves ``jobsvc.v1.JobService`` from a ``JobService``."""

    def __init__(self, service: JobService) -> None:
        self._service = service

    def _schedule(self, schedule: Schedule) -> schedules_pb2.Schedule:
        upcoming = (
            None
            if schedule.paused
            else next_run_time(schedule.cron, schedule.time_zone, self._service.clock())
        )
        return schedule_to_proto(schedule, next_run_time=upcoming)

    # -- jobs ---------------------------------------------------------------------------------

    @unary
    async def Enqueue(self, request: pb.EnqueueRequest, context: Context) -> pb.EnqueueResponse:
        job, deduplicated = await self._service.enqueue(requests.enqueue(request))
        return pb.EnqueueResponse(job=job_to_proto(job), deduplicated=deduplicated)

    @unary
    async def EnqueueBatch(
        self, request: pb.EnqueueBatchRequest, context: Context
    ) -> pb.EnqueueBatchResponse:
        answers = await self._service.enqueue_batch(requests.enqueue_batch(request))
        return pb.EnqueueBatchResponse(
            responses=[
                pb.EnqueueResponse(job=job_to_proto(job), deduplicated=deduplicated)
                for job, deduplicated in answers
            ]
        )

    @unary
    async def GetStatus(
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.GetStatusResponse:
        job = await self._service.get(requests.job_id(request.job_id))
        return pb.GetStatusResponse(job=job_to_proto(job))

    @server_stream
    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncIterator[pb.WatchJobResponse]:
        async for job in self._service.watch(requests.job_id(request.job_id)):
            yield pb.WatchJobResponse(job=job_to_proto(job))

    @unary
    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        filters = requests.job_filters(request)
        jobs, next_page_token = await self._service.list_jobs(
            states=filters.states,
            types=filters.types,
            schedule_id=filters.schedule_id,
            created_after=filters.created_after,
            created_before=filters.created_before,
            page_size=request.page_size,
            page_token=request.page_token or None,
        )
        return pb.ListJobsResponse(
            jobs=[job_to_proto(job, with_history=False) for job in jobs],
            next_page_token=next_page_token or "",
        )

    @unary
    async def CancelJob(
        self, request: pb.CancelJobRequest, context: Context
    ) -> pb.CancelJobResponse:
        job_id = requests.job_id(request.job_id)
        try:
            job = await self._service.cancel(job_id)
        except InvalidState:
            # The contract makes CancelJob idempotent; the use case refuses a cancelled job.
            job = await self._service.get(job_id)
            if job.state is not JobState.CANCELLED:
                raise
        return pb.CancelJobResponse(job=job_to_proto(job))

    @unary
    async def RetryJob(self, request: pb.RetryJobRequest, context: Context) -> pb.RetryJobResponse:
        job = await self._service.retry(requests.job_id(request.job_id))
        return pb.RetryJobResponse(job=job_to_proto(job))

    # -- schedules ----------------------------------------------------------------------------

    @unary
    async def Schedule(self, request: pb.ScheduleRequest, context: Context) -> pb.ScheduleResponse:
        args = requests.schedule(request)
        if isinstance(args, EnqueueRequest):
            try:
                job, _ = await self._service.enqueue(args)
            except InvalidArgument as exc:
                raise requests.renamed(exc, {"not_before_time": "run_time"}) from None
            return pb.ScheduleResponse(job=job_to_proto(job))
        schedule = await self._service.schedule(
            payload=args.payload,
            cron=args.cron,
            time_zone=args.time_zone,
            schedule_id=args.schedule_id,
            retries=args.retries,
            handler_timeout=args.handler_timeout,
        )
        return pb.ScheduleResponse(schedule=self._schedule(schedule))

    @unary
    async def GetSchedule(
        self, request: pb.GetScheduleRequest, context: Context
    ) -> pb.GetScheduleResponse:
        schedule = await self._service.get_schedule(requests.schedule_id(request.schedule_id))
        return pb.GetScheduleResponse(schedule=self._schedule(schedule))

    @unary
    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        schedules, next_page_token = await self._service.list_schedules(
            page_size=request.page_size, page_token=request.page_token or None
        )
        return pb.ListSchedulesResponse(
            schedules=[self._schedule(schedule) for schedule in schedules],
            next_page_token=next_page_token or "",
        )

    @unary
    async def PauseSchedule(
        self, request: pb.PauseScheduleRequest, context: Context
    ) -> pb.PauseScheduleResponse:
        schedule = await self._service.pause_schedule(requests.schedule_id(request.schedule_id))
        return pb.PauseScheduleResponse(schedule=self._schedule(schedule))

    @unary
    async def ResumeSchedule(
        self, request: pb.ResumeScheduleRequest, context: Context
    ) -> pb.ResumeScheduleResponse:
        schedule = await self._service.resume_schedule(requests.schedule_id(request.schedule_id))
        return pb.ResumeScheduleResponse(schedule=self._schedule(schedule))

    @unary
    async def DeleteSchedule(
        self, request: pb.DeleteScheduleRequest, context: Context
    ) -> pb.DeleteScheduleResponse:
        await self._service.delete_schedule(requests.schedule_id(request.schedule_id))
        return pb.DeleteScheduleResponse()
