"""Cut a long answer into messages a chat platform accepts, on the most natural boundary that fits.

Boundaries, best first: a blank line (paragraph), a line break, a space, and only then anywhere. A code block
that is open where a message ends is closed there and reopened (with its language) at the start of the next
message, so every message renders on its own. ``measure`` gives a text's size as the platform counts it (Slack
counts the escaped text), so a cut never exceeds the platform's limit.

Cuts are stable as an answer grows: once a message is full, the text that streams in after it never changes
where it was cut, so a streaming poster edits only the last message.
"""

from __future__ import annotations

import re
from collections.abc import Callable

FENCE = re.compile(r"^\s*```(\S*)", re.MULTILINE)
BOUNDARIES = ("\n\n", "\n", " ")


def split_message(text: str, limit: int, measure: Callable[[str], int] = len) -> list[str]:
    """Messages of at most ``limit`` (by ``measure``) that together carry ``text``; at least one message."""
    if limit < 40:
        raise ValueError("limit must leave room for code fences (at least 40)")
    messages: list[str] = []
    reopen = ""  # the fence line that starts the next message, when a code block continues
    rest = text
    while True:
        candidate = reopen + rest
        if measure(candidate) <= limit:
            messages.append(candidate)
            return messages
        cut = _cut_point(reopen, rest, limit, measure)
        head, rest = rest[:cut], rest[cut:].lstrip("\n") if rest[cut:cut + 1] == "\n" else rest[cut:].lstrip(" ")
        body = reopen + head.rstrip()
        language = _open_fence_language(body)
        if language is not None:
            body += "\n```"
            reopen = f"```{language}\n"
        else:
            reopen = ""
        messages.append(body)


def _cut_point(reopen: str, rest: str, limit: int, measure: Callable[[str], int]) -> int:
    """Where to end the next message: the latest best boundary whose message (closing fence included) fits."""
    room = limit - len("\n```")  # always keep room to close a code block
    fits = _longest_fitting_prefix(reopen, rest, room, measure)
    window = rest[:fits]
    for boundary in BOUNDARIES:
        at = window.rfind(boundary)
        if at > fits // 4:  # a boundary too early would leave a tiny message: fall back to the next kind
            return at
    return max(fits, 1)


def _longest_fitting_prefix(reopen: str, rest: str, room: int, measure: Callable[[str], int]) -> int:
    """The largest n with measure(reopen + rest[:n]) <= room (binary search; measure grows with n)."""
    low, high = 0, len(rest)
    while low < high:
        mid = (low + high + 1) // 2
        if measure(reopen + rest[:mid]) <= room:
            low = mid
        else:
            high = mid - 1
    return low


def _open_fence_language(text: str) -> str | None:
    """The language of a code block left open at the end of ``text`` ('' for none), or None if all closed."""
    language = None
    for match in FENCE.finditer(text):
        language = match.group(1) if language is None else None
    return language
