"""Brokers: what hands jobs to the sidecar. ``QStashBroker`` (Upstash or any QStash-compatible
server), ``LocalQStashBroker`` (the same, owning the embedded local server) and
``InlineBroker`` (no queue: run now) implement one ``Broker`` interface."""

from jobsvc.broker.delivery import (
    DEFAULT_FAILURE_CALLBACK_PATH,
    Broker,
    CronSchedule,
    Delivery,
    SidecarUrls,
)
from jobsvc.broker.envelope import CONTENT_TYPE, Envelope, InvalidEnvelope
from jobsvc.broker.errors import BrokerRejected, BrokerUnsupported
from jobsvc.broker.inline import Deliver, InlineBroker
from jobsvc.broker.local import LocalQStashBroker
from jobsvc.broker.qstash import QStashBroker

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_FAILURE_CALLBACK_PATH",
    "Broker",
    "BrokerRejected",
    "BrokerUnsupported",
    "CronSchedule",
    "Deliver",
    "Delivery",
    "Envelope",
    "InlineBroker",
    "InvalidEnvelope",
    "LocalQStashBroker",
    "QStashBroker",
    "SidecarUrls",
]
