"""What one Slack message of an answer says: the arguments chat.postMessage / chat.update get for it.

Every body is ``text`` plus ``blocks``. A status or an answer part shows its blocks and ``text`` is the fallback
Slack uses in notifications; a warning has no blocks, and its ``blocks=[]`` matters on chat.update, which keeps a
message's previous blocks (an answer's text and buttons) unless given an empty array (Slack's chat.update
reference). The last message of an answer carries the buttons: Stop and Regenerate while it runs, Regenerate and
Slack's feedback buttons once finished; earlier parts carry only their text.
"""

from __future__ import annotations

from worker.posters.slack_controls import answer_blocks, markdown_block, status_blocks
from worker.posters.slack_text import escape, fallback_text


def status_body(status: str, job_id: str) -> dict:
    """A placeholder's status in mrkdwn (our own words, "_thinking…_"), with Stop and Regenerate under it."""
    return {"text": status, "blocks": status_blocks(status, job_id)}


def warning_body(message: str) -> dict:
    """Why there is no answer, as plain mrkdwn, with no buttons."""
    return {"text": f":warning: {escape(message)}", "blocks": []}


def answer_body(part: str, job_id: str, last: bool, running: bool) -> dict:
    """One part of an answer (ping-free Markdown, see ``slack_text``); the last part with the buttons."""
    blocks = answer_blocks(part, job_id, running) if last else [markdown_block(part)]
    return {"text": fallback_text(part), "blocks": blocks}


def as_post(body: dict) -> dict:
    """``body`` for chat.postMessage: a new message has no previous blocks to clear."""
    return body if body.get("blocks") else {key: value for key, value in body.items() if key != "blocks"}
