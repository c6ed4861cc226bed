"""Turning a chat's messages into the job's conversation: merged, in order, within the job schema's bounds.

Platform adapters read their history (a Slack thread, a Discord thread) as (role, text) pairs; this keeps the
newest messages, merges consecutive messages of one side, and makes sure the user's message comes last. The
worker trims further, oldest first, to the model's context budget.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from worker.queue.job import MAX_TEXT_CHARS, MAX_TURNS, JobTurn

# C0/C1 control characters other than tab, newline and carriage return: they mean nothing in a chat message,
# and NUL is not allowed in a job at all.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Replies both adapters give: to a message that mentions the bot and asks nothing, and to someone who tries to
# stop another person's answer.
EMPTY_QUESTION = "Ask me something after the mention, e.g. “@me what does HTTP 429 mean?”"
ONLY_ASKER_CAN_STOP = "Only the person who asked can stop this answer."


def clean_text(text: str) -> str:
    """A person's message as text every part of the pipeline accepts: control characters dropped, lone
    surrogates (broken UTF-16 or undecodable bytes) shown as U+FFFD, surrogate pairs joined."""
    text = CONTROL_CHARACTERS.sub("", text)
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def is_blank(text: str) -> bool:
    """Nothing a person could read: only whitespace and invisible format characters (zero-width, bidi marks)."""
    return all(char.isspace() or unicodedata.category(char) == "Cf" for char in text)


def build_turns(messages: Iterable[tuple[str, str]]) -> list[JobTurn]:
    """(role, text) pairs, oldest first -> job turns; the last turn is the user's newest message."""
    turns: list[list[str]] = []
    for role, text in messages:
        text = clean_text(text).strip()
        if is_blank(text):
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
    return [JobTurn(role=role, text=_bounded(text, keep_end=i < len(turns) - 1))
            for i, (role, text) in enumerate(turns)]


def _bounded(text: str, keep_end: bool) -> str:
    """Older turns keep their most recent part; the newest message is kept whole (the worker says if too long)."""
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return "…" + text[-(MAX_TEXT_CHARS - 1):] if keep_end else text[:MAX_TEXT_CHARS]
