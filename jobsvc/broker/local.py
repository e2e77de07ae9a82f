"""The ``local`` broker: the embedded QStash-compatible server, reached through exactly the same
SDK code path as Upstash."""

from __future__ import annotations

from jobsvc.broker.qstash import QStashBroker
from jobsvc.localqstash import LocalQStashServer, LocalQStashSettings


class LocalQStashBroker(QStashBroker):
    """A ``QStashBroker`` that owns the local QStash server it talks to: ``start`` starts the
    server in the running event loop, ``aclose`` stops it after closing the client.

    ``server.env()`` holds the signing keys the sidecar must verify deliveries with (they change
    when someone rotates them through ``/v2/keys/rotate``).
    """

    def __init__(
        self,
        server: LocalQStashServer,
        *,
        request_timeout_seconds: float = 10.0,
        client_retries: int = 1,
        client_backoff_seconds: float = 0.1,
        delivery_parallelism: int | None = None,
    ) -> None:
        super().__init__(
            token=server.user.token,
            base_url=server.url,
            request_timeout_seconds=request_timeout_seconds,
            client_retries=client_retries,
            client_backoff_seconds=client_backoff_seconds,
            delivery_parallelism=delivery_parallelism,
        )
        self.server = server

    @classmethod
    async def start(
        cls,
        settings: LocalQStashSettings,
        *,
        request_timeout_seconds: float = 10.0,
        client_retries: int = 1,
        client_backoff_seconds: float = 0.1,
        delivery_parallelism: int | None = None,
    ) -> LocalQStashBroker:
        """Start a server with ``settings`` and a broker bound to it (as its first user); the
        keyword arguments are ``QStashBroker``'s."""
        server = LocalQStashServer(settings)
        await server.start()
        try:
            return cls(
                server,
                request_timeout_seconds=request_timeout_seconds,
                client_retries=client_retries,
                client_backoff_seconds=client_backoff_seconds,
                delivery_parallelism=delivery_parallelism,
            )
        except BaseException:
            await server.stop()
            raise

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.server.stop()
