"""Who is in which Slack user group, as policy needs it (resolved through the Web API)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)


class UserGroups:
    """Caches ``usergroups.users.list`` for the user group IDs (``S…``) the policy names."""

    def __init__(
        self,
        client: AsyncWebClient,
        group_ids: Iterable[str],
        *,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.group_ids = sorted({g for g in group_ids if g.startswith("S")})
        self.ttl_s = ttl_s
        self.clock = clock
        self._members: dict[str, frozenset[str]] = {}
        self._fetched_at: dict[str, float] = {}

    async def groups_of(self, user: str) -> tuple[str, ...]:
        """The policy-relevant user groups ``user`` belongs to (a lookup failure counts as none,
        so an outage refuses rather than grants)."""
        out = []
        for group_id in self.group_ids:
            if user in await self._members_of(group_id):
                out.append(group_id)
        return tuple(out)

    async def _members_of(self, group_id: str) -> frozenset[str]:
        now = self.clock()
        if group_id in self._members and now - self._fetched_at[group_id] < self.ttl_s:
            return self._members[group_id]
        try:
            resp = await self.client.usergroups_users_list(usergroup=group_id)
            members = frozenset(resp.get("users", []))
        except SlackApiError as exc:
            log.warning("could not list user group %s: %s", group_id, exc.response.get("error"))
            return self._members.get(group_id, frozenset())
        self._members[group_id] = members
        self._fetched_at[group_id] = now
        return members

    async def members(self, group_id: str) -> frozenset[str]:
        return await self._members_of(group_id)
