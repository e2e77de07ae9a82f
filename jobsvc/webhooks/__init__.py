"""The webhook sidecar: QStash's signed deliveries arrive here and go to the handlers. The only
package that imports Starlette (``signature`` does not: it is plain PyJWT)."""

from jobsvc.webhooks.answers import NON_RETRYABLE_STATUS, answer, status_code
from jobsvc.webhooks.app import build_app
from jobsvc.webhooks.errors import MalformedDelivery
from jobsvc.webhooks.signature import Claims, InvalidSignature, SignatureVerifier

__all__ = [
    "NON_RETRYABLE_STATUS",
    "Claims",
    "InvalidSignature",
    "MalformedDelivery",
    "SignatureVerifier",
    "answer",
    "build_app",
    "status_code",
]
