"""GitHub-style pipe tables as aligned plain-text tables in a code block, which every chat platform shows.

Discord does not render Markdown tables at all, and Slack's markdown block reference lists tables among the
Markdown it does not support (docs.slack.dev/reference/block-kit/blocks/markdown-block), so a table the model
writes would show as rows of pipes. In a fenced code block with padded columns it reads as a table anywhere.
Cells lose their inline markup (bold, code ticks) since a code block would show it raw; a link keeps its URL.
Tables inside a code block are left alone: the model meant them literally.
"""

from __future__ import annotations

import re
import unicodedata

FENCE = re.compile(r"^\s*(```|~~~)")
DELIMITER_CELL = re.compile(r"^\s*:?-+:?\s*$")
LINK = re.compile(r"!?\[([^\]\n]*)\]\(([^()\s]*)\)")
INLINE_MARKS = re.compile(r"(\*\*|__|~~|`)")


def tables_to_code(text: str) -> str:
    """``text`` with every pipe table outside code blocks replaced by a code block holding it aligned."""
    lines = text.split("\n")
    out: list[str] = []
    in_fence, i = False, 0
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and _starts_table(lines, i):
            end = i + 2
            while end < len(lines) and "|" in lines[end] and lines[end].strip() and not FENCE.match(lines[end]):
                end += 1
            out.extend(_render(lines[i], lines[i + 1], lines[i + 2:end]))
            i = end
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _starts_table(lines: list[str], i: int) -> bool:
    """A header row followed by a delimiter row (``|---|:--:|``) with as many cells."""
    if i + 1 >= len(lines) or "|" not in lines[i] or "-" not in lines[i + 1]:
        return False
    delimiter = _cells(lines[i + 1])
    return (all(DELIMITER_CELL.match(cell) for cell in delimiter) and "|" in lines[i + 1]
            and len(delimiter) == len(_cells(lines[i])))


def _cells(row: str) -> list[str]:
    """A row's cells: outer pipes dropped, split on pipes that are not escaped (``\\|``)."""
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", row)]


def _plain(cell: str) -> str:
    """A cell as it should read in a code block: links as ``text (url)``, emphasis and code marks dropped."""
    cell = LINK.sub(lambda m: f"{m.group(1)} ({m.group(2)})" if m.group(2) else m.group(1), cell)
    return INLINE_MARKS.sub("", cell)


def _render(header: str, delimiter: str, rows: list[str]) -> list[str]:
    aligns = ["right" if c.strip().endswith(":") and not c.strip().startswith(":") else "left"
              for c in _cells(delimiter)]
    table = [[_plain(c) for c in _cells(row)] for row in [header, *rows]]
    columns = max(len(row) for row in table)
    table = [row + [""] * (columns - len(row)) for row in table]
    aligns += ["left"] * (columns - len(aligns))
    widths = [max(display_width(row[c]) for row in table) for c in range(columns)]
    rendered = [" | ".join(_pad(cell, widths[c], aligns[c]) for c, cell in enumerate(row)).rstrip()
                for row in table]
    rule = "-+-".join("-" * width for width in widths)
    return ["```", rendered[0], rule, *rendered[1:], "```"]


def _pad(cell: str, width: int, align: str) -> str:
    gap = " " * (width - display_width(cell))
    return gap + cell if align == "right" else cell + gap


def display_width(text: str) -> int:
    """Columns ``text`` takes in a monospace font: wide (CJK, most emoji) count 2, combining marks 0."""
    width = 0
    for char in text:
        if unicodedata.combining(char) or char in "\u200b\u200c\u200d\u2060\ufe0f":
            continue
        width += 2 if unicodedata.east_asian_width(char) in "WF" else 1
    return width
