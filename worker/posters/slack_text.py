"""Model output as Slack message text that shows exactly what the model wrote and pings no one.

Slack reads ``<…>`` as links and mentions (``<!channel>``, ``<!here>``, ``<!everyone>``, ``<@U123>``,
``<!subteam^S123>``), so ``&``, ``<`` and ``>`` are escaped as Slack's mrkdwn rules ask; a bare ``@here``,
``@channel`` or ``@everyone`` gets an invisible word joiner after the ``@`` so no client turns it into a ping.
Markdown's ``**bold**`` becomes Slack's ``*bold*``.
"""

from __future__ import annotations

import re

BROADCAST = re.compile(r"@(?=(here|channel|everyone)\b)", re.IGNORECASE)
DOUBLE_STARS = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
WORD_JOINER = "\u2060"


def escape(text: str) -> str:
    """Escape Slack's control characters; the result renders as the literal text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_slack(text: str) -> str:
    """Safe, readable Slack text for model output (or any text we did not write ourselves)."""
    text = DOUBLE_STARS.sub(r"*\1*", text)
    return BROADCAST.sub("@" + WORD_JOINER, escape(text))


def slack_size(text: str) -> int:
    """How long ``text`` is once made Slack text (what Slack's message limit counts)."""
    return len(to_slack(text))
