"""The webhook sidecar: QStash's signed deliveries arrive here and go to the handlers. The only
package that imports Starlette (``signature`` does not: it is plain PyJWT)."""

from jobsvc.webhooks.signature import Claims, InvalidSignature, SignatureVerifier

__all__ = ["Claims", "InvalidSignature", "SignatureVerifier"]
