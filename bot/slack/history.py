"""Slack messages as the conversation the model sees: Slack markup to plain text, the bot's messages as its turns.

The bot's placeholders that never became answers ("thinking…", warnings) are not part of the conversation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from slack_sdk import WebClient

from bot.conversation import build_turns, clean_text, is_blank
from bot.slack.files import FILE_QUESTION, has_files
from worker.posters.slack_text import WORD_JOINER
from worker.posters.status_text import is_status_text
from worker.queue.job import JobTurn

USER_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|([^>]*))?>")
LINK = re.compile(r"<((?:https?|mailto|ftp):[^|>]+)(?:\|([^>]*))?>")
CHANNEL = re.compile(r"<#([CG][A-Z0-9]+)(?:\|([^>]*))?>")
SPECIAL = re.compile(r"<!([a-z]+)(?:\^[^|>]*)?(?:\|([^>]*))?>")
PAGE_SIZE = 200
# Subtypes of a message a person wrote: none, a thread reply also sent to the channel, a file upload. Others are
# edits, deletions, joins, bot messages…
USER_MESSAGE_SUBTYPES = (None, "thread_broadcast", "file_share")


def plain_text(text: str, bot_user_id: str | None) -> str:
    """Slack message text as a person reads it, with the bot's own mention removed."""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", "", text)
    text = USER_MENTION.sub(lambda m: "@" + (m.group(2) or m.group(1)), text)
    text = LINK.sub(lambda m: m.group(2) or m.group(1), text)
    text = CHANNEL.sub(lambda m: "#" + (m.group(2) or m.group(1)), text)
    text = SPECIAL.sub(lambda m: m.group(2) or "@" + m.group(1), text)
    text = text.replace(WORD_JOINER, "")
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


def message_text(message: dict) -> str:
    """A message's text; "" when it has none (or a payload carries something else there)."""
    text = message.get("text")
    return text if isinstance(text, str) else ""


def answer_text(message: dict) -> str:
    """What one of the bot's messages says: the text of its markdown blocks (answers go as a markdown block
    beside a shortened plain ``text`` fallback), else its text (status messages)."""
    blocks = message.get("blocks")
    markdown = [block["text"] for block in blocks if isinstance(block, dict) and block.get("type") == "markdown"
                and isinstance(block.get("text"), str)] if isinstance(blocks, list) else []
    return "\n".join(markdown) if markdown else message_text(message)


def is_from_bot(message: dict, bot_user_id: str | None, bot_id: str | None) -> bool:
    return bool((bot_user_id and message.get("user") == bot_user_id) or (bot_id and message.get("bot_id") == bot_id))


def turns_from_messages(messages: Iterable[dict], bot_user_id: str | None, bot_id: str | None) -> list[JobTurn]:
    """Messages oldest first -> turns; other bots' messages and the bot's status messages are left out."""
    pairs = []
    for message in messages:
        if is_from_bot(message, bot_user_id, bot_id):
            text = answer_text(message)
            if not is_status_text(text):
                pairs.append(("assistant", plain_text(text, bot_user_id)))
        elif not message.get("bot_id") and message.get("subtype") in USER_MESSAGE_SUBTYPES:
            pairs.append(("user", user_text(message, bot_user_id)))
    return build_turns(pairs)


def user_text(message: dict, bot_user_id: str | None) -> str:
    """A person's message as the model reads it; a file shared without words asks about the file."""
    text = plain_text(message_text(message), bot_user_id)
    if is_blank(clean_text(text)) and has_files(message):
        return FILE_QUESTION
    return text


def thread_messages(client: WebClient, channel: str, thread_ts: str, up_to_ts: str, keep: int) -> list[dict]:
    """The thread's messages up to and including ``up_to_ts``, oldest first, at most the newest ``keep``."""
    messages: list[dict] = []
    for page in client.conversations_replies(channel=channel, ts=thread_ts, latest=up_to_ts, inclusive=True,
                                             limit=PAGE_SIZE):
        messages.extend(page.get("messages", []))
        messages = messages[-keep:]
    return messages


def dm_messages(client: WebClient, channel: str, up_to_ts: str, keep: int) -> list[dict]:
    """The direct-message conversation up to and including ``up_to_ts``: its newest ``keep`` messages, oldest first."""
    response = client.conversations_history(channel=channel, latest=up_to_ts, inclusive=True, limit=min(keep, 999))
    return list(reversed(response.get("messages", [])))
