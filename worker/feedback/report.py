"""What ``xwinbot feedback`` shows: ratings for a person at a terminal, or as JSON lines for evaluating models.

The listing shortens each question and answer to a few lines (the JSON lines keep them whole); an answer whose
record had expired before it was rated (answers are kept a week) says so instead of showing nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TextIO

from worker.feedback.store import Rating

SHOWN_LINES = 4  # of a question or an answer in the listing
SHOWN_LINE_CHARS = 100
THUMBS = {"good": "👍 good", "bad": "👎 bad"}
NO_ANSWER = "(not kept: the answer's record had expired, or the answer never finished, when it was rated)"


def render(ratings: Iterable[Rating], rating: str | None = None, retention_days: float | None = None) -> str:
    """The ratings, as they come (newest first), one block each; a sentence when there are none."""
    blocks = [render_one(found) for found in ratings]
    if blocks:
        return "\n\n".join(blocks)
    which = f"{THUMBS[rating].split()[0]} ratings" if rating else "feedback"
    kept = f" (ratings are kept {retention_days:g} days)" if retention_days else ""
    return f"No {which} yet{kept}: ratings appear here once people click 👍 or 👎 under an answer."


def render_one(found: Rating) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(found.rated_at))
    lines = [
        f"{when}  {THUMBS.get(found.rating, found.rating)}  {found.platform} user {found.user_id}  job {found.job_id}",
        f"  model: {found.model or 'unknown'}  template: {template_of(found)}",
    ]
    if found.reason:
        lines += labelled("reason", found.reason)
    lines += labelled("question", found.question)
    lines += labelled("answer", NO_ANSWER if found.answer is None else found.answer or "(empty)")
    return "\n".join(lines)


def template_of(found: Rating) -> str:
    if found.template:
        return found.template
    # No template with a known model: an external server's, which applies its own. Neither: no record of the answer.
    return "none (external server)" if found.model else "unknown"


def labelled(label: str, text: str) -> list[str]:
    """``  label: first line`` and the next ones indented under it, shortened for the terminal."""
    prefix = f"  {label}: "
    shown = excerpt(text)
    return [prefix + shown[0], *(" " * len(prefix) + line for line in shown[1:])]


def excerpt(text: str, max_lines: int = SHOWN_LINES, width: int = SHOWN_LINE_CHARS) -> list[str]:
    """The first ``max_lines`` non-empty lines, each cut to ``width``, and how many more there were."""
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()] or [""]
    shown = [line if len(line) <= width else line[: width - 1] + "…" for line in lines[:max_lines]]
    if len(lines) > max_lines:
        more = len(lines) - max_lines
        shown.append(f"… ({more} more line{'s' if more != 1 else ''})")
    return shown


def write_jsonl(ratings: Iterable[Rating], out: TextIO) -> int:
    """One JSON object per rating (``Rating.to_json``: job, platform, user, rating, time, question, answer,
    model, template, reason), whole; how many were written."""
    written = 0
    for found in ratings:
        out.write(found.to_json() + "\n")
        written += 1
    return written
