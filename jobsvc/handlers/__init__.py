"""The handler framework: a registry from job type to payload type and handler, the context a
handler runs with, the exceptions and results by which it steers its job's fate, and the runner
that turns one attempt into an ``Outcome``.

Handlers never import the service, RPC, webhook or database layers; what they need from the
outside reaches them through ports: ``HandlerContext.enqueue`` for follow-up jobs,
``HandlerContext.progress`` for what earlier attempts did, and ``jobsvc.ports`` (``HandlerPorts``)
for the systems around the service.
"""

from jobsvc.handlers.context import FollowUp, HandlerContext, JobLogger, job_logger
from jobsvc.handlers.outcomes import (
    MAX_ERROR_LENGTH,
    HandlerResult,
    Outcome,
    OutcomeKind,
    PermanentFailure,
    RetryLater,
)
from jobsvc.handlers.registry import (
    Handler,
    HandlerPorts,
    HandlerRegistry,
    Registration,
    default_registry,
)
from jobsvc.handlers.runner import run

__all__ = [
    "MAX_ERROR_LENGTH",
    "FollowUp",
    "Handler",
    "HandlerContext",
    "HandlerPorts",
    "HandlerRegistry",
    "HandlerResult",
    "JobLogger",
    "Outcome",
    "OutcomeKind",
    "PermanentFailure",
    "Registration",
    "RetryLater",
    "default_registry",
    "job_logger",
    "run",
]
