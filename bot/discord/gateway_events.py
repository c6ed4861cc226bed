"""Gateway events as discord.py reads them: unreadable ones are logged and dropped, so one malformed event cannot
stop the bot; an interaction's channel id is kept when its optional ``channel`` object is absent.

discord.py runs the parser of each dispatched event inside the gateway's read loop; a parser that raises (a
payload lacking a field it indexes, e.g. an INTERACTION_CREATE without ``data``) propagates out of
``Client.connect`` and the whole adapter stops. Discord does not send such payloads, but a proxy, an outage
or a field Discord drops one day could, and every other event after it should still be answered.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import discord

log = logging.getLogger(__name__)


def drop_unreadable_events(parsers: dict[str, Callable[[Any], None]]) -> None:
    """Wrap each of discord.py's event parsers (``ConnectionState.parsers``, read by every new gateway socket)."""
    for event, parse in list(parsers.items()):
        parsers[event] = _dropping_failures(event, parse)


def _dropping_failures(event: str, parse: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(parse)
    def parse_or_drop(data: Any) -> None:
        try:
            parse(data)
        except Exception as err:  # the payload, not the bot, is broken: keep serving the next event
            log.warning("dropped a %s gateway event that could not be read (%s: %s)", event,
                        type(err).__name__, err)

    return parse_or_drop


class InteractionChannels:
    """The channel id each interaction was sent from, as its payload says.

    discord.py reads an interaction's channel only from the ``channel`` object, which Discord documents as
    optional: without it ``Interaction.channel`` and ``Interaction.channel_id`` are both None although the
    payload carries ``channel_id``. Remembering the id lets the bot still answer there.
    """

    KEEP = 1000  # interactions are handled within seconds; older ids are forgotten

    def __init__(self) -> None:
        self._ids: OrderedDict[int, int] = OrderedDict()

    def watch(self, parsers: dict[str, Callable[[Any], None]]) -> None:
        parse = parsers["INTERACTION_CREATE"]

        @functools.wraps(parse)
        def remember_then_parse(data: Any) -> None:
            ids = (data.get("id"), data.get("channel_id")) if isinstance(data, dict) else ()
            if ids and all(str(i).isdigit() for i in ids):
                self._ids[int(data["id"])] = int(data["channel_id"])
                while len(self._ids) > self.KEEP:
                    self._ids.popitem(last=False)
            parse(data)

        parsers["INTERACTION_CREATE"] = remember_then_parse

    def channel_of(self, client: discord.Client, interaction: discord.Interaction) -> discord.abc.Messageable | None:
        """The interaction's channel: discord.py's, else the cached channel or a partial one from the id."""
        if interaction.channel is not None:
            return interaction.channel
        channel_id = self._ids.get(interaction.id)
        if channel_id is None:
            return None
        return client.get_channel(channel_id) or client.get_partial_messageable(channel_id,
                                                                                guild_id=interaction.guild_id)
