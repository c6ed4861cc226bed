"""Model output as Slack ``markdown_text`` that renders the model's Markdown and pings no one.

Why ``markdown_text``: LLM answers are Markdown, and chat.postMessage / chat.update take it as
``markdown_text`` ("Accepts message text formatted in markdown. This argument should not be used in conjunction
with blocks or text. Limit this field to 12,000 characters.", Slack's API reference; slack_sdk 3.48's
``chat_postMessage``/``chat_update`` pass it through). Slack renders it as its markdown block does
(docs.slack.dev/reference/block-kit/blocks/markdown-block): bold, italic, strike ``~~…~~``, links
``[text](url)``, headers, lists, block quotes, inline code and code blocks. That reference lists tables (and, in
its published version, code highlighting) as unsupported, so tables become aligned code blocks first
(``markdown_tables``); a fence's language tag is kept (newer versions of the page highlight it).

Pings: nothing in the docs says markdown_text leaves ``<!channel>``, ``<!here>``, ``<!everyone>``, ``<@U…>`` or
``<!subteam^…>`` unparsed, so we assume it parses them. Escaping ``<`` as ``&lt;`` is not an option: the markdown
block documents backslash escapes, not HTML entities, so ``&lt;`` might show literally. Instead an invisible word
joiner (U+2060) goes after every ``<`` (or ``&lt;``/``&#60;``, in case entities are decoded) that is followed by
``!``, ``@`` or ``#``: the text looks the same, but no mention token ``<!…>``/``<@…>`` exists any more (and no
CommonMark HTML or autolink either). A bare ``@here``/``@channel``/``@everyone`` gets the word joiner after
its ``@``. This is done everywhere, code blocks included (copying such code carries the invisible character).

Size: ``slack_size`` counts the text as sent, word joiners included, in UTF-16 code units (never fewer than
characters, so the 12,000 limit holds however Slack counts).

Status texts (placeholders, errors) are our own words in Slack's mrkdwn (``_thinking…_``, ``:warning:``) and go
as ``text``, escaped by ``escape``.

Blocks: an answer shown with Block Kit buttons goes as a markdown block (the same rendering as markdown_text, which
cannot be combined with blocks), and its ``text`` is only the fallback Slack shows in notifications: the part,
escaped and cut by ``fallback_text`` (Slack advises keeping ``text`` under 4,000 characters).
"""

from __future__ import annotations

import re

from worker.posters.markdown_spans import close_open_fence
from worker.posters.markdown_tables import tables_to_code
from worker.posters.split import split_message

BROADCAST = re.compile(r"@(?=(here|channel|everyone)\b)", re.IGNORECASE)
MENTION_OPENER = re.compile(r"(<|&lt;|&#0*60;|&#x0*3c;)(?=[!@#])", re.IGNORECASE)
WORD_JOINER = "\u2060"


def escape(text: str) -> str:
    """Escape mrkdwn's control characters (for ``text``); the result renders as the literal text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


FALLBACK_CHARS = 3000  # the most a blocks message's plain ``text`` holds


def fallback_text(markdown: str, limit: int = FALLBACK_CHARS) -> str:
    """A message part as the plain ``text`` beside its blocks: escaped, so it pings no one and shows literally,
    and cut to ``limit`` characters (never inside an entity), with "…" when cut."""
    escaped = escape(markdown)
    if len(escaped) <= limit:
        return escaped
    head = escaped[:limit - 1]
    entity = head.rfind("&")
    if entity != -1 and ";" not in head[entity:]:
        head = head[:entity]
    return head + "…"


def message_parts(text: str, limit: int) -> list[str]:
    """The markdown_text of each message that shows ``text``: tables rewritten, code blocks closed, cut to
    ``limit`` (by ``slack_size``), each part made ping-free."""
    prepared = close_open_fence(tables_to_code(text))
    return [no_pings(part) for part in split_message(prepared, limit, measure=slack_size)]


def no_pings(markdown: str) -> str:
    """``markdown`` that shows the same but holds no mention token and no bare broadcast."""
    markdown = MENTION_OPENER.sub(lambda m: m.group(1) + WORD_JOINER, markdown)
    return BROADCAST.sub("@" + WORD_JOINER, markdown)


def slack_size(markdown: str) -> int:
    """How long ``markdown`` is once made safe, as Slack's markdown_text limit counts it (UTF-16 units)."""
    return len(no_pings(markdown).encode("utf-16-le")) // 2
