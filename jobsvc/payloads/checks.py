"""Field checks shared by the payload types: each call checks one field, records a
``FieldViolation`` per problem and returns the normalized value for the payload to keep."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar, cast

from jobsvc.errors import FieldViolation, InvalidArgument, quoted

MAX_ID_LENGTH = 128
MAX_JSON_DEPTH = 32

E = TypeVar("E", bound=StrEnum)


class FieldChecker:
    """Collects the violations of one payload; paths are relative to ``root`` (``crm_match``)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.violations: list[FieldViolation] = []

    def _add(self, path: str, description: str) -> None:
        self.violations.append(FieldViolation(f"{self.root}.{path}", description))

    def identifier(self, path: str, value: object) -> None:
        """An id or name: a non-blank string of at most ``MAX_ID_LENGTH`` printable characters
        without surrounding whitespace."""
        if value is None or value == "":
            self._add(path, "is required")
        elif not isinstance(value, str):
            self._add(path, "must be a string")
        elif value.isspace():
            self._add(path, "must not be blank")
        elif value != value.strip():
            self._add(path, "must not start or end with whitespace")
        elif not value.isprintable():
            # Ids end up in log lines and URLs; a newline in one forges log records.
            self._add(path, "must not contain control characters")
        elif len(value) > MAX_ID_LENGTH:
            self._add(path, f"must be at most {MAX_ID_LENGTH} characters, got {len(value)}")

    def enum(self, path: str, value: object, enum: type[E]) -> E | None:
        """One of ``enum``'s wire values (exact spelling); its member, or None if invalid."""
        if value is None or value == "":
            self._add(path, "is required")
        elif not isinstance(value, str):
            self._add(path, "must be a string")
        elif value not in enum._value2member_map_:
            allowed = ", ".join(member.value for member in enum)
            self._add(path, f"unknown value {quoted(value)}; allowed: {allowed}")
        else:
            return enum(value)
        return None

    def unique_enums(
        self, path: str, value: object, enum: type[E], max_items: int
    ) -> tuple[E, ...]:
        """A list of distinct ``enum`` values; None means empty."""
        members: list[E] = []
        seen: dict[object, int] = {}
        for index, item in enumerate(self._items(path, value, max_items)):
            member = self.enum(f"{path}[{index}]", item, enum)
            if member is not None and self._first_seen(path, index, member, seen):
                members.append(member)
        return tuple(members)

    def unique_identifiers(self, path: str, value: object, max_items: int) -> tuple[str, ...]:
        """A list of distinct identifiers (see ``identifier``); None means empty."""
        items: list[str] = []
        seen: dict[object, int] = {}
        for index, item in enumerate(self._items(path, value, max_items)):
            before = len(self.violations)
            self.identifier(f"{path}[{index}]", item)
            if len(self.violations) == before and self._first_seen(path, index, item, seen):
                items.append(cast(str, item))
        return tuple(items)

    def json_object(self, path: str, value: object) -> dict[str, Any]:
        """A JSON object, returned as a deep copy; None means empty."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self._add(path, "must be a JSON object")
            return {}
        try:
            return cast(dict[str, Any], json_copy(value))
        except ValueError as exc:
            self._add(path, str(exc))
            return {}

    def size(self, wire: Callable[[], dict[str, Any]], limit: int) -> None:
        """The whole payload as compact UTF-8 JSON is at most ``limit`` bytes.

        Measured only when every field is valid: an invalid payload is rejected anyway, and its
        wire form may not even be serializable."""
        if self.violations:
            return
        encoded = json.dumps(wire(), separators=(",", ":"), ensure_ascii=False).encode()
        if len(encoded) > limit:
            self.violations.append(
                FieldViolation(self.root, f"is {len(encoded)} bytes as JSON; the limit is {limit}")
            )

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)

    def _items(self, path: str, value: object, max_items: int) -> list[object]:
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            self._add(path, "must be a list")
            return []
        if len(value) > max_items:
            # One violation, not one per surplus item: the list is rejected as a whole.
            self._add(path, f"must have at most {max_items} items, got {len(value)}")
            return []
        return list(value)

    def _first_seen(self, path: str, index: int, item: object, seen: dict[object, int]) -> bool:
        if item in seen:
            first = f"{self.root}.{path}[{seen[item]}]"
            # Only valid items are compared, so the item is short.
            self._add(f"{path}[{index}]", f"duplicate of {first} ({item!s})")
            return False
        seen[item] = index
        return True


def json_copy(value: object, depth: int = MAX_JSON_DEPTH) -> object:
    """A deep copy of a JSON value (tuples become lists); ``ValueError`` for anything that would
    not survive a JSON round trip unchanged: non-string keys, NaN, sets, datetimes, deep nests."""
    if depth < 0:
        raise ValueError(f"must be nested at most {MAX_JSON_DEPTH} levels deep")
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must not contain NaN or infinite numbers")
        return value
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise ValueError("must have string keys only")
        return {key: json_copy(item, depth - 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_copy(item, depth - 1) for item in value]
    raise ValueError(f"must contain JSON values only, not {type(value).__name__}")
