"""Pieces of Markdown that only render whole, so a message cut or a streamed edit must not break them.

A link ``[text](url)`` cut in two shows as raw brackets in both messages; an inline code span cut in two
turns the rest of the message into code; a Slack entity (``<https://…|label>``, ``<@U…>``) or an HTML entity
(``&amp;``) cut in two shows as garbage. ``spans`` lists where they are, for ``split_message``;
``hold_back_unfinished`` keeps a streamed answer from showing one that has started but not yet closed, or a
table row still being written (the next edit shows it whole; the final answer is never held back);
``close_open_fence`` closes a code block the answer has opened but not closed, so a
streamed (or unterminated) code block renders as code, not as a stray fence.
"""

from __future__ import annotations

import re

LINK = r"!?\[[^\[\]\n]{0,500}\]\((?:[^()\s]|\([^()\s]*\)){0,2000}(?:\s+\"[^\"\n]*\")?\)"
CODE_SPAN = r"(?<!`)`[^`\n]+`(?!`)"
SLACK_ENTITY = r"<[^<>\s][^<>\n]{0,500}>"
HTML_ENTITY = r"&#?\w{1,10};"
WHOLE = re.compile("|".join((LINK, CODE_SPAN, SLACK_ENTITY, HTML_ENTITY)))

# An answer that ends inside one of them: a link still being written, an open code span, an entity.
# Bounded, so a stray "[" or "<" in prose holds back at most a label's length of the line, not the rest of it.
UNFINISHED = re.compile(
    r"(?:!?\[[^\[\]\n]{0,200}(?:\]\((?:[^()\s]|\([^()\s]*\)){0,2000})?\]?"
    r"|<[!@#a-z][^<>\s|]{0,500}(?:\|[^<>\n]{0,200})?"
    r"|&#?\w{0,10})$", re.IGNORECASE)
SINGLE_TICK = re.compile(r"(?<!`)`(?!`)")
FENCE = re.compile(r"^\s*```(\S*)", re.MULTILINE)


def spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every link, inline code span and entity in ``text``, in order; code blocks excluded."""
    found = []
    for start, end in _outside_code_blocks(text):
        found += [(m.start(), m.end()) for m in WHOLE.finditer(text, start, end)]
    return found


def _outside_code_blocks(text: str) -> list[tuple[int, int]]:
    """The stretches of ``text`` that are not inside a fenced code block (where Markdown is not read)."""
    stretches, start, open_at = [], 0, None
    for match in FENCE.finditer(text):
        if open_at is None:
            stretches.append((start, match.start()))
            open_at = match.start()
        else:
            start, open_at = match.end(), None
    if open_at is None:
        stretches.append((start, len(text)))
    return stretches


def inside(found: list[tuple[int, int]], at: int) -> tuple[int, int] | None:
    """The span of ``found`` that a cut at ``at`` would break (strictly inside it), if any."""
    return next(((start, end) for start, end in found if start < at < end), None)


def hold_back_unfinished(text: str) -> str:
    """``text`` without a trailing link, code span or entity that has not closed yet (outside code blocks)."""
    if open_fence_language(text) is not None:
        return text  # inside a code block everything is literal: nothing to hold back
    cut = len(text)
    match = UNFINISHED.search(text)
    if match is not None:
        cut = match.start()
    last_line = text.rfind("\n") + 1
    ticks = [m.start() for m in SINGLE_TICK.finditer(text, last_line)]
    if len(ticks) % 2:  # an odd tick on the last line opens a code span that has not closed
        cut = min(cut, ticks[-1])
    cut = min(cut, _table_tail_start(text))
    return text if cut == len(text) else text[:cut].rstrip(" ")


def _table_tail_start(text: str) -> int:
    """Where a table row still being written starts, or a header row whose delimiter row has not come yet
    (either shows as raw pipes until the table is whole enough to be rewritten); else len(text)."""
    lines = text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    run = 0  # table-looking lines just before the last, unfinished line
    while run < len(lines) - 1 and lines[-2 - run].lstrip().startswith("|"):
        run += 1
    lone_header = run == 1
    if lines[-1].lstrip().startswith("|"):
        return starts[-2] if lone_header else starts[-1]
    if lines[-1] == "" and lone_header:
        return starts[-2]
    return len(text)


def close_open_fence(text: str) -> str:
    """``text`` with a code block it leaves open closed at its end."""
    return text + "\n```" if open_fence_language(text) is not None else text


def open_fence_language(text: str) -> str | None:
    """The language of a code block left open at the end of ``text`` ('' for none), or None if all closed."""
    language = None
    for match in FENCE.finditer(text):
        language = match.group(1) if language is None else None
    return language
