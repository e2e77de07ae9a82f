"""URL groups (QStash's "topics"): a name that publishes to each of its endpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select

from jobsvc.localqstash import tables
from jobsvc.localqstash.errors import BadRequest, NotFound
from jobsvc.localqstash.messages import now_ms
from jobsvc.localqstash.options import check_url
from jobsvc.localqstash.store import Statement, Store
from jobsvc.localqstash.users import User

Endpoint = dict[str, str]  # {"url": ..., "name"?: ...}
Target = tuple[str, str | None, str | None]  # url, group name, endpoint name


@dataclass
class UrlGroup:
    name: str
    endpoints: list[Endpoint]
    created_at: int
    updated_at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "endpoints": self.endpoints,
        }


class UrlGroups:
    """Every user's URL groups, in memory and in the database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._groups: dict[tuple[str, str], UrlGroup] = {}

    def load(self, conn: Connection) -> None:
        for row in conn.execute(select(tables.topics)):
            self._groups[(row.user_id, row.name)] = UrlGroup(
                row.name, row.endpoints, row.created_at, row.updated_at
            )

    def targets(self, user: User, destination: str) -> list[Target]:
        """Where a publish to ``destination`` (a URL or a group name) goes."""
        if destination.startswith(("http://", "https://")):
            return [(check_url(destination, name="destination"), None, None)]
        if "://" in destination or not destination:
            raise BadRequest(f"invalid destination: {destination!r}")
        group = self.get(user, destination)
        return [(e["url"], destination, e.get("name")) for e in group.endpoints]

    def get(self, user: User, name: str) -> UrlGroup:
        group = self._groups.get((user.user_id, name))
        if group is None:
            raise NotFound(f"topic {name} not found")
        return group

    def all_of(self, user: User) -> list[UrlGroup]:
        return sorted(
            (g for (uid, _), g in self._groups.items() if uid == user.user_id),
            key=lambda g: g.name,
        )

    async def add_endpoints(self, user: User, name: str, endpoints: list[Endpoint]) -> None:
        """Add endpoints (by URL, once each), creating the group if needed."""
        now = now_ms()
        group = self._groups.get((user.user_id, name)) or UrlGroup(name, [], now, now)
        known = {e["url"] for e in group.endpoints}
        merged = group.endpoints + [e for e in endpoints if e["url"] not in known]
        await self._save(user, UrlGroup(name, merged, group.created_at, now))

    async def remove_endpoints(self, user: User, name: str, endpoints: list[Endpoint]) -> None:
        """Remove endpoints by URL or name; removing the last one deletes the group."""
        group = self.get(user, name)
        urls = {e["url"] for e in endpoints if e.get("url")}
        names = {e["name"] for e in endpoints if e.get("name")}
        kept = [e for e in group.endpoints if e["url"] not in urls and e.get("name") not in names]
        await self._save(user, UrlGroup(name, kept, group.created_at, now_ms()))

    async def delete(self, user: User, name: str) -> None:
        """Delete a group; deleting one that does not exist succeeds too, as in QStash."""
        await self._save(user, UrlGroup(name, [], 0, 0))

    async def _save(self, user: User, group: UrlGroup) -> None:
        def save(conn: Connection) -> None:
            table = tables.topics
            conn.execute(
                delete(table).where(table.c.user_id == user.user_id, table.c.name == group.name)
            )
            if group.endpoints:
                conn.execute(
                    table.insert().values(
                        user_id=user.user_id,
                        name=group.name,
                        endpoints=group.endpoints,
                        created_at=group.created_at,
                        updated_at=group.updated_at,
                    )
                )

        await self.store.write(Statement(save))
        if group.endpoints:
            self._groups[(user.user_id, group.name)] = group
        else:
            self._groups.pop((user.user_id, group.name), None)
