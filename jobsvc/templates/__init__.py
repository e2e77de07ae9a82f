"""Notification templates, stored as files in this package (one folder per template) and
rendered with Jinja2; ``jobsvc.templates.catalog`` describes the layout."""

from jobsvc.templates.catalog import (
    FieldKind,
    RenderedNotification,
    RenderError,
    Template,
    TemplateCatalog,
    UnknownTemplate,
    default_catalog,
)

__all__ = [
    "FieldKind",
    "RenderError",
    "RenderedNotification",
    "Template",
    "TemplateCatalog",
    "UnknownTemplate",
    "default_catalog",
]
