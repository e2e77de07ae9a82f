"""The notification templates: one folder per template, rendered with Jinja2.

A template ``<id>/`` holds ``template.toml`` (its notification ``type``, a ``description``, the
``optional`` field names, and a ``[fields]`` table giving a field's kind when it is not plain
text), ``subject.txt``, ``body.txt``, ``body.html`` and, for a text-message version,
``sms.txt``. The fields a template needs are the names its parts use, less ``recipient``
(the service fills in the recipient's ``name``, ``email`` and ``phone``) and the optional
ones, which are None when not given. Undefined names are errors, never blanks; only the HTML
body is autoescaped.

Field kinds: ``text`` (the default: a string or a number, not blank), ``list`` (a list of
texts, possibly empty), ``date`` (an ISO 8601 date or date-time, or a ``date``/``datetime``)
and ``url`` (an absolute http or https URL).
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import jinja2
import jinja2.meta

from jobsvc.errors import FieldViolation
from jobsvc.payloads import NotificationType

RECIPIENT = "recipient"
RECIPIENT_FIELDS = ("name", "email", "phone")
FIELD_ROOT = "send_notification"

_PARTS = ("subject.txt", "body.txt", "body.html")
_SMS_PART = "sms.txt"
_DEFINITION = "template.toml"
_DEFINITION_KEYS = frozenset({"type", "description", "optional", "fields"})
_ID = re.compile(r"[a-z][a-z0-9_]*")


class FieldKind(StrEnum):
    """What a template field's value must be (see the module docstring)."""

    TEXT = "text"
    LIST = "list"
    DATE = "date"
    URL = "url"


@dataclass(frozen=True, kw_only=True)
class Template:
    """A template's definition: what it is for and which fields it reads.

    ``required_fields`` must be in the template data; ``optional_fields`` may be; ``kinds``
    gives the kind of every field that is not plain text. ``has_sms``: it has a text-message
    version."""

    id: str
    type: NotificationType
    description: str
    required_fields: frozenset[str]
    optional_fields: frozenset[str]
    kinds: Mapping[str, FieldKind]
    has_sms: bool


@dataclass(frozen=True, kw_only=True)
class RenderedNotification:
    """A rendered notification: a one-line subject, the plain-text and HTML bodies, and the
    text message (None when the template has no SMS version)."""

    subject: str
    text: str
    html: str
    sms: str | None


class UnknownTemplate(LookupError):
    """No template has this id."""


class RenderError(ValueError):
    """The template data does not fit the template (a field missing or of the wrong kind);
    rendering it again gives the same error."""


class TemplateCatalog:
    """The templates in ``directory``, loaded and checked once, at construction.

    Every folder not starting with ``_`` or ``.`` must be a complete template; a missing part,
    a syntax error, an unknown type or an optional or typed field no part uses raises
    ``ValueError`` naming the file, so a broken template stops the service at start-up rather
    than a notification at send time.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(directory),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html",), default_for_string=False, default=False
            ),
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        self._environment.filters["date"] = format_date
        self._environment.filters["datetime"] = format_datetime
        self._templates: dict[str, Template] = {}
        self._parts: dict[str, dict[str, jinja2.Template]] = {}
        for folder in sorted(directory.iterdir()):
            if folder.is_dir() and not folder.name.startswith(("_", ".")):
                self._load(folder)

    def get(self, template_id: str) -> Template | None:
        """The template with this id, or None."""
        return self._templates.get(template_id)

    def ids(self) -> list[str]:
        """Template ids, sorted."""
        return sorted(self._templates)

    def check(
        self,
        template_id: str,
        notification_type: NotificationType,
        template_data: Mapping[str, Any],
    ) -> list[FieldViolation]:
        """What is wrong with sending ``template_data`` through ``template_id`` as a
        notification of ``notification_type``: one violation per problem, paths relative to the
        request (``send_notification.template_data.reasons``); empty when it can be rendered."""
        template = self._templates.get(template_id)
        if template is None:
            known = ", ".join(self.ids())
            return [
                FieldViolation(
                    f"{FIELD_ROOT}.template_id",
                    f"unknown template {template_id!r}; known templates: {known}",
                )
            ]
        violations: list[FieldViolation] = []
        if template.type != notification_type:
            violations.append(
                FieldViolation(
                    f"{FIELD_ROOT}.type",
                    f"template {template_id} is for {template.type.value} notifications, "
                    f"not {notification_type}",
                )
            )
        violations.extend(_data_violations(template, template_data))
        return violations

    def render(
        self,
        template_id: str,
        template_data: Mapping[str, Any],
        *,
        recipient: Mapping[str, Any],
    ) -> RenderedNotification:
        """Render every part of ``template_id``. ``recipient`` gives ``name``, ``email`` and
        ``phone`` (missing ones are None). Raises ``UnknownTemplate`` for an unknown id and
        ``RenderError`` when the data does not fit (what ``check`` reports)."""
        template = self._templates.get(template_id)
        if template is None:
            raise UnknownTemplate(f"unknown template {template_id!r}")
        violations = _data_violations(template, template_data)
        if violations:
            raise RenderError(
                f"template {template_id}: "
                + "; ".join(f"{v.field}: {v.description}" for v in violations)
            )
        context: dict[str, Any] = dict.fromkeys(template.optional_fields)
        context.update((k, v) for k, v in template_data.items() if v is not None)
        context[RECIPIENT] = {**dict.fromkeys(RECIPIENT_FIELDS), **recipient}
        parts = self._parts[template_id]
        try:
            rendered = {name: part.render(context) for name, part in parts.items()}
        except (jinja2.TemplateError, TypeError, ValueError, LookupError) as exc:
            raise RenderError(f"template {template_id} cannot be rendered: {exc}") from exc
        sms = rendered.get(_SMS_PART)
        return RenderedNotification(
            subject=" ".join(rendered["subject.txt"].split()),
            text=_tidy_text(rendered["body.txt"]),
            html=rendered["body.html"].strip() + "\n",
            sms=" ".join(sms.split()) if sms is not None else None,
        )

    def _load(self, folder: Path) -> None:
        template_id = folder.name
        definition_path = folder / _DEFINITION
        if not _ID.fullmatch(template_id):
            raise ValueError(f"{folder}: a template id is lowercase letters, digits and _")
        try:
            definition = tomllib.loads(definition_path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{definition_path}: {exc}") from exc
        unknown_keys = set(definition) - _DEFINITION_KEYS
        if unknown_keys:
            raise ValueError(f"{definition_path}: unknown keys {sorted(unknown_keys)}")
        try:
            kind = NotificationType(definition["type"])
            description = definition["description"].strip()
            optional_names = definition.get("optional", [])
            if not isinstance(optional_names, list) or not all(
                isinstance(name, str) for name in optional_names
            ):
                raise TypeError("optional must be a list of field names")
            kinds = {name: FieldKind(k) for name, k in definition.get("fields", {}).items()}
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"{definition_path}: {exc!r}") from exc
        optional = frozenset(optional_names)

        names = [*_PARTS, _SMS_PART] if (folder / _SMS_PART).is_file() else list(_PARTS)
        parts: dict[str, jinja2.Template] = {}
        used: set[str] = set()
        for name in names:
            path = f"{template_id}/{name}"
            try:
                source = (folder / name).read_text(encoding="utf-8")
                used |= jinja2.meta.find_undeclared_variables(
                    self._environment.parse(source, name=path, filename=str(folder / name))
                )
                parts[name] = self._environment.get_template(path)
            except (OSError, jinja2.TemplateError) as exc:
                raise ValueError(f"{folder / name}: {exc}") from exc
        used.discard(RECIPIENT)
        unused = (optional | set(kinds)) - used
        if unused:
            raise ValueError(f"{definition_path}: fields no part uses: {sorted(unused)}")
        self._parts[template_id] = parts
        self._templates[template_id] = Template(
            id=template_id,
            type=kind,
            description=description,
            required_fields=frozenset(used - optional),
            optional_fields=optional,
            kinds=MappingProxyType(kinds),
            has_sms=_SMS_PART in parts,
        )


@functools.cache
def default_catalog() -> TemplateCatalog:
    """The templates shipped in this package (loaded once per process)."""
    return TemplateCatalog(Path(__file__).resolve().parent)


def _data_violations(template: Template, data: Mapping[str, Any]) -> list[FieldViolation]:
    root = f"{FIELD_ROOT}.template_data"
    violations: list[FieldViolation] = []
    if data.get(RECIPIENT) is not None:
        violations.append(
            FieldViolation(
                f"{root}.{RECIPIENT}",
                "is reserved: it is filled in from the recipient's record",
            )
        )
    for name in sorted(template.required_fields | template.optional_fields):
        value = data.get(name)
        if value is None:
            if name in template.required_fields:
                violations.append(
                    FieldViolation(f"{root}.{name}", f"is required by template {template.id}")
                )
            continue
        kind = template.kinds.get(name, FieldKind.TEXT)
        if kind is not FieldKind.LIST:
            problem = _SCALAR_CHECKS[kind](value)
            if problem is not None:
                violations.append(FieldViolation(f"{root}.{name}", problem))
        elif not isinstance(value, list | tuple):
            violations.append(FieldViolation(f"{root}.{name}", "must be a list of strings"))
        else:
            for index, item in enumerate(value):
                problem = _text_problem(item)
                if problem is not None:
                    violations.append(FieldViolation(f"{root}.{name}[{index}]", problem))
    return violations


def _text_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return "must be a string or a number"
    if isinstance(value, str) and not value.strip():
        return "must not be blank"
    return None


def _date_problem(value: object) -> str | None:
    if isinstance(value, date):
        return None
    if isinstance(value, str) and _parse_iso(value) is not None:
        return None
    return "must be an ISO 8601 date or date-time (2025-03-14, 2025-03-14T10:30:00-05:00)"


def _url_problem(value: object) -> str | None:
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.netloc and value.isprintable():
            return None
    return "must be an absolute http or https URL"


_SCALAR_CHECKS = {
    FieldKind.TEXT: _text_problem,
    FieldKind.DATE: _date_problem,
    FieldKind.URL: _url_problem,
}


def _parse_iso(value: str) -> date | None:
    try:
        return date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
    except ValueError:
        return None


def format_date(value: object) -> str:
    """``March 14, 2025`` for a date, a date-time (in its own offset) or an ISO 8601 string;
    anything else unchanged."""
    parsed = _parse_iso(value) if isinstance(value, str) else value
    if isinstance(parsed, datetime):
        parsed = parsed.date()
    if isinstance(parsed, date):
        return f"{parsed:%B} {parsed.day}, {parsed.year}"
    return str(value)


def format_datetime(value: object) -> str:
    """``Saturday, March 15, 2025 at 10:30 AM`` for a date-time or an ISO 8601 string, in
    the time's own offset (the local time of the place, as the caller gave it), with ``UTC``
    added when that offset is UTC; a plain date as ``format_date``; anything else unchanged."""
    parsed = _parse_iso(value) if isinstance(value, str) else value
    if not isinstance(parsed, datetime):
        return format_date(value)
    clock = f"{parsed:%I:%M %p}".lstrip("0")
    zone = " UTC" if parsed.utcoffset() == timedelta(0) else ""
    return f"{parsed:%A}, {format_date(parsed)} at {clock}{zone}"


def _tidy_text(text: str) -> str:
    """Trailing spaces off every line, at most one blank line in a row, one final newline."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    tidy: list[str] = []
    for line in lines:
        if line or (tidy and tidy[-1]):
            tidy.append(line)
    return "\n".join(tidy) + "\n"
