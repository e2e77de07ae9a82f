"""Adapters: the ports of ``jobsvc.ports`` implemented over HTTP (``jobsvc.adapters.http``),
SMTP (``jobsvc.adapters.smtp``) and, for development, by writing what would have been sent to a
folder (``jobsvc.adapters.dev``)."""
