"""Turning a chat's messages into the job's conversation: merged, in order, within the job schema's bounds.

Platform adapters read their history (a Slack thread, a Discord thread) as (role, text) pairs; this keeps the
newest messages, merges consecutive messages of one side, and makes sure the user's message comes last. The
worker trims further, oldest first, to the model's context budget.
"""

from __future__ import annotations

from collections.abc import Iterable

from worker.job import MAX_TEXT_CHARS, MAX_TURNS, JobTurn


def build_turns(messages: Iterable[tuple[str, str]]) -> list[JobTurn]:
    """(role, text) pairs, oldest first -> job turns; the last turn is the user's newest message."""
    turns: list[list[str]] = []
    for role, text in messages:
        text = text.strip()
        if not text:
            continue
        if turns and turns[-1][0] == role:
            turns[-1][1] += "\n\n" + text
        else:
            turns.append([role, text])
    while turns and turns[-1][0] != "user":
        turns.pop()
    while turns and turns[0][0] != "user":  # a conversation starts with a question
        turns.pop(0)
    turns = turns[-MAX_TURNS:]
    if turns and turns[0][0] != "user":
        turns.pop(0)
    return [JobTurn(role=role, text=_bounded(text, keep_end=i < len(turns) - 1)) for i, (role, text) in enumerate(turns)]


def _bounded(text: str, keep_end: bool) -> str:
    """Older turns keep their most recent part; the newest message is kept whole (the worker says if too long)."""
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return "…" + text[-(MAX_TEXT_CHARS - 1):] if keep_end else text[:MAX_TEXT_CHARS]
