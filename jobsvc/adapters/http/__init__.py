"""The ports of ``jobsvc.ports`` over HTTP (httpx). Every adapter sits on an ``HttpEndpoint``:
one remote system's base URL, bearer token and timeout, sharing the caller's pooled
``httpx.AsyncClient``, with transport failures turned into ``NotFound``, ``Rejected`` and
``Unavailable``."""

from jobsvc.adapters.http.applications import HttpApplicationService
from jobsvc.adapters.http.crm import HttpCrm
from jobsvc.adapters.http.endpoint import Answer, HttpEndpoint, parse_retry_after
from jobsvc.adapters.http.listings import HttpListingService
from jobsvc.adapters.http.platforms import HttpSyndicationPlatform, platform_document
from jobsvc.adapters.http.sms import HttpSmsGateway

__all__ = [
    "Answer",
    "HttpApplicationService",
    "HttpCrm",
    "HttpEndpoint",
    "HttpListingService",
    "HttpSmsGateway",
    "HttpSyndicationPlatform",
    "parse_retry_after",
    "platform_document",
]
