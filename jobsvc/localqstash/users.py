"""Who may call the server: the four public dev users of ``qstash-cli dev``, or one configured."""

from __future__ import annotations

from dataclasses import dataclass

from jobsvc.localqstash.settings import LocalQStashSettings


@dataclass(frozen=True)
class User:
    """A tenant: its token, and the signing keys it starts with (rotation is stored)."""

    user_id: str
    token: str
    current_signing_key: str
    next_signing_key: str


# Published with qstash-cli dev; the TypeScript SDK's dev mode adopts a server that answers
# GET /v2/keys for the first one with these keys.
DEV_USERS: tuple[User, ...] = (
    User(
        "defaultUser",
        "eyJVc2VySUQiOiJkZWZhdWx0VXNlciIsIlBhc3N3b3JkIjoiZGVmYXVsdFBhc3N3b3JkIn0=",
        "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r",
        "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs",
    ),
    User(
        "testUser1",
        "eyJVc2VySUQiOiJ0ZXN0VXNlcjEiLCJQYXNzd29yZCI6InRlc3RQYXNzd29yZCJ9",
        "sig_7GVPjvuwsfqF65iC8fSrs1dfYruM",
        "sig_5NoELc3EFnZn4DVS5bDs2Nk4b7Ua",
    ),
    User(
        "testUser2",
        "eyJVc2VySUQiOiJ0ZXN0VXNlcjIiLCJQYXNzd29yZCI6InRlc3RQYXNzd29yZCJ9",
        "sig_6jWGaWRxHsw4vMSPJprXadyvrybF",
        "sig_7qHbvhmahe5GwfePDiS5Lg3pi6Qx",
    ),
    User(
        "testUser3",
        "eyJVc2VySUQiOiJ0ZXN0VXNlcjMiLCJQYXNzd29yZCI6InRlc3RQYXNzd29yZCJ9",
        "sig_5T8FcSsynBjn9mMLBsXhpacRovJf",
        "sig_7GFR4YaDshFcqsxWRZpRB161jguD",
    ),
)


def users_for(settings: LocalQStashSettings) -> tuple[User, ...]:
    """The configured user alone when a token is set, otherwise the dev users."""
    if settings.token is None:
        return DEV_USERS
    # validate() made sure both keys come with a token.
    assert settings.current_signing_key is not None
    assert settings.next_signing_key is not None
    return (User("user", settings.token, settings.current_signing_key, settings.next_signing_key),)
