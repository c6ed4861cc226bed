"""Cut a long answer into messages a chat platform accepts, on the most natural boundary that fits.

Boundaries, best first: a blank line (paragraph), a line break, a space, and only then anywhere. A code block
that is open where a message ends is closed there and reopened (with its language) at the start of the next
message, so every message renders on its own. A cut never falls inside a link, an inline code span or an
entity (``markdown_spans.spans``): it moves to the boundary before it, unless that would leave a tiny message (a
"link" longer than most of a message is cut like any text). ``measure`` gives a text's size as the platform
counts it (Slack counts the text it is sent, word joiners included), so a cut never exceeds the limit.

Cuts are stable as an answer grows: once a message is full, the text that streams in after it never changes
where it was cut, so a streaming poster edits only the last message.
"""

from __future__ import annotations

from collections.abc import Callable

from worker.posters.markdown_spans import inside, open_fence_language, spans

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
        language = open_fence_language(body)
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
    # (a span that starts in the window ends within a link's length of it; the reopened fence tells code apart)
    whole = [(start - len(reopen), end - len(reopen)) for start, end in spans(reopen + rest[: fits + 2500])]
    for boundary in BOUNDARIES:
        at = _latest_outside(window, boundary, whole)
        if at > fits // 4:  # a boundary too early would leave a tiny message: fall back to the next kind
            return at
    broken = inside(whole, fits)
    if broken is not None and broken[0] > fits // 4:
        return broken[0]
    return max(fits, 1)


def _latest_outside(window: str, boundary: str, whole: list[tuple[int, int]]) -> int:
    """The last place ``boundary`` occurs in ``window`` that is not inside a span (-1 if none)."""
    at = window.rfind(boundary)
    while at > 0 and (span := inside(whole, at)) is not None:
        at = window.rfind(boundary, 0, span[0])
    return at


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

