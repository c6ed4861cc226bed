"""Gateway events discord.py cannot read are logged and dropped, so one malformed event cannot stop the bot.

discord.py runs the parser of each dispatched event inside the gateway's read loop; a parser that raises (a
payload lacking a field it indexes, e.g. an INTERACTION_CREATE without ``data``) propagates out of
``Client.connect`` and the whole adapter stops. Discord does not send such payloads, but a proxy, an outage
or a field Discord drops one day could, and every other event after it should still be answered.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

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
