"""Ports: what the handlers need from the systems around them, as small interfaces with domain
types. Adapters (``jobsvc.adapters``) implement them over HTTP and SMTP, or, in development,
by writing what would have been sent to a folder. Handlers import only this package."""

from jobsvc.ports.applications import Applicant, ApplicationService, ApplicationStatus
from jobsvc.ports.crm import Contact, Crm
from jobsvc.ports.errors import NotFound, PortError, Rejected, Unavailable
from jobsvc.ports.listings import Listing, ListingService
from jobsvc.ports.messaging import EmailMessage, EmailSender, SentMessage, SmsMessage, SmsSender
from jobsvc.ports.progress import Progress
from jobsvc.ports.syndication import PlatformListing, SyndicationPlatform

__all__ = [
    "Applicant",
    "ApplicationService",
    "ApplicationStatus",
    "Contact",
    "Crm",
    "EmailMessage",
    "EmailSender",
    "Listing",
    "ListingService",
    "NotFound",
    "PlatformListing",
    "PortError",
    "Progress",
    "Rejected",
    "SentMessage",
    "SmsMessage",
    "SmsSender",
    "SyndicationPlatform",
    "Unavailable",
]
