"""Who may ask: allowlists of servers, channels, users and roles (an empty list lets everyone in)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

REFUSAL = "Sorry, I'm not set up to answer {what}. Please ask someone who runs me to add {it}."


def _ids(values: Iterable[object]) -> frozenset[str]:
    return frozenset(str(value) for value in values)


@dataclass(frozen=True)
class Allowlist:
    servers: frozenset[str] = frozenset()  # Discord guilds
    channels: frozenset[str] = frozenset()  # a channel admits its threads too (pass the parent's id)
    users: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()  # with users: a person is admitted by either

    @classmethod
    def of(cls, servers: Iterable[object] = (), channels: Iterable[object] = (), users: Iterable[object] = (),
           roles: Iterable[object] = ()) -> Allowlist:
        return cls(_ids(servers), _ids(channels), _ids(users), _ids(roles))

    def refusal(self, *, channel_ids: Collection[object], user_id: object, server_id: object = None,
                role_ids: Collection[object] = ()) -> str | None:
        """None when allowed; else a polite sentence saying why not."""
        if self.servers and str(server_id) not in self.servers:
            return REFUSAL.format(what="on this server", it="it")
        if self.channels and not self.channels.intersection(_ids(channel_ids)):
            return REFUSAL.format(what="in this channel", it="it")
        if ((self.users or self.roles) and str(user_id) not in self.users
                and not self.roles.intersection(_ids(role_ids))):
            return REFUSAL.format(what="your questions", it="you")
        return None
