"""What a placeholder says before the answer starts: one wording for every platform and both processes."""

from __future__ import annotations

THINKING = "thinking…"


def waiting_text(position: int | None) -> str:
    """'thinking… #3 in queue' while queued (1 = next), 'thinking…' once the model works on it."""
    if position is None:
        return THINKING
    return f"{THINKING} #{position} in queue"


def assistant_status(position: int | None) -> str:
    """The same words as the status line of a Slack assistant thread, which Slack shows after the app's name
    ("xwinbot is thinking… #3 in queue"); "" clears it."""
    return f"is {waiting_text(position)}"


RESTARTING = "thinking… (starting over: the worker answering this was restarted)"

STOPPED_BEFORE_START = "(stopped before it started)"


def is_status_text(text: str) -> bool:
    """A bot message that shows a status (waiting, busy, stopped, an error), not an answer."""
    text = text.lstrip("_")
    return text.startswith((THINKING, STOPPED_BEFORE_START, "⚠️", "⏳", ":warning:", ":hourglass:"))
