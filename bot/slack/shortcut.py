"""The "Ask about this message" message shortcut: a modal asks what to know, the answer goes in the message's thread.

Slack sends a ``message_action`` payload (the chosen message, its channel, a ``trigger_id``); we open a modal
with ``views.open`` and keep the message's channel and ts in the view's ``private_metadata`` (3000 characters at
most: too small for the message itself). On ``view_submission`` the message is read again
(``conversations.replies``) and becomes an attachment of the question, its files too; the placeholder and the
answer go into the message's thread, as for a mention. Allowlists and per-user caps apply as for any question.
"""

from __future__ import annotations

import json
import logging

from slack_sdk import WebClient

from bot.slack.history import message_text, plain_text
from bot.slack.questions import SlackQuestions
from worker.ops import metrics
from worker.queue.job import MAX_ATTACHMENTS, Attachment, JobTurn, Requester

log = logging.getLogger(__name__)

CALLBACK_ID = "ask_about_message"  # the shortcut's and the modal's (bot/slack/manifest.yml)
QUESTION_BLOCK = QUESTION_ACTION = "question"
DEFAULT_QUESTION = "Explain this message."
MODAL_TITLE = "Ask xwinbot"


def question_view(channel: str, ts: str, thread_ts: str | None) -> dict:
    return {
        "type": "modal", "callback_id": CALLBACK_ID, "title": {"type": "plain_text", "text": MODAL_TITLE},
        "submit": {"type": "plain_text", "text": "Ask"}, "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": json.dumps({"channel": channel, "ts": ts, "thread_ts": thread_ts}),
        "blocks": [{
            "type": "input", "block_id": QUESTION_BLOCK, "optional": True,
            "label": {"type": "plain_text", "text": "What do you want to know about it?"},
            "element": {"type": "plain_text_input", "action_id": QUESTION_ACTION, "multiline": True,
                        "placeholder": {"type": "plain_text", "text": DEFAULT_QUESTION}},
        }],
    }


def refusal_view(text: str) -> dict:
    return {"type": "modal", "title": {"type": "plain_text", "text": MODAL_TITLE},
            "close": {"type": "plain_text", "text": "OK"},
            "blocks": [{"type": "section", "text": {"type": "plain_text", "text": text}}]}


def metadata_of(view: dict) -> dict | None:
    """The chosen message's channel, ts and thread ts, as ``question_view`` stored them; None if unreadable."""
    try:
        meta = json.loads(view.get("private_metadata") or "")
    except (TypeError, ValueError):
        return None
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) and meta[k] for k in ("channel", "ts")):
        return None
    return meta


def submitted_question(view: dict) -> str:
    values = ((view.get("state") or {}).get("values") or {}).get(QUESTION_BLOCK) or {}
    value = (values.get(QUESTION_ACTION) or {}).get("value")
    return value.strip() if isinstance(value, str) and value.strip() else DEFAULT_QUESTION


def author_of(message: dict) -> str:
    profile = message.get("user_profile") if isinstance(message.get("user_profile"), dict) else {}
    for name in (profile.get("display_name"), profile.get("real_name"), message.get("username"),
                 message.get("user") and f"<@{message['user']}>", message.get("bot_id")):
        if isinstance(name, str) and name.strip():
            return " ".join(name.split())[:200]
    return "someone"


def chosen_message(client: WebClient, channel: str, ts: str, thread_ts: str | None) -> dict:
    """The message as it is now (edits included), read from its thread."""
    response = client.conversations_replies(channel=channel, ts=thread_ts or ts, oldest=ts, latest=ts,
                                            inclusive=True, limit=1)
    for message in response.get("messages", []):
        if message.get("ts") == ts:
            return message
    raise LookupError("the message is gone")


class MessageShortcut:
    def __init__(self, questions: SlackQuestions):
        self.questions = questions

    # -- bolt listeners (arguments by name, as bolt passes them) ---------------------------------------
    def on_shortcut(self, ack, shortcut: dict, client: WebClient) -> None:
        ack()
        channel = (shortcut.get("channel") or {}).get("id")
        user = (shortcut.get("user") or {}).get("id")
        message = shortcut.get("message") if isinstance(shortcut.get("message"), dict) else {}
        ts = message.get("ts") or shortcut.get("message_ts")
        if not all(isinstance(v, str) and v for v in (channel, user, ts, shortcut.get("trigger_id"))):
            log.info("ignoring a message shortcut without a channel, user, message or trigger")
            return
        refusal = self.questions.allowlist.refusal(channel_ids={channel}, user_id=user)
        view = refusal_view(refusal) if refusal else question_view(channel, ts, message.get("thread_ts"))
        client.views_open(trigger_id=shortcut["trigger_id"], view=view)

    def on_submit(self, ack, body: dict, view: dict, client: WebClient, context: dict) -> None:
        ack()  # closes the modal
        meta, user = metadata_of(view), (body.get("user") or {}).get("id")
        if meta is None or not isinstance(user, str):
            log.info("ignoring a shortcut submission without its message or user")
            return
        where = (meta["channel"], meta.get("thread_ts") or meta["ts"])
        # A modal submission is not redelivered and not in the inbox: Slack being down is reported like any failure.
        self.questions.guarded(self._ask, meta, client, user, view, context, where=lambda: where,
                               retry_when_down=False)

    # -- the question ----------------------------------------------------------------------------------
    def _ask(self, meta: dict, client: WebClient, user: str, view: dict, context: dict) -> None:
        questions, channel, ts = self.questions, meta["channel"], meta["ts"]
        thread_ts = meta.get("thread_ts") or ts
        if not questions.index.claim("slack", f"shortcut:{view.get('id') or channel + ts + user}"):
            return  # the same submission delivered twice
        metrics.QUESTIONS.labels("slack").inc()
        if refusal := questions.allowlist.refusal(channel_ids={channel}, user_id=user):
            metrics.NOT_ALLOWED.labels("slack").inc()
            client.chat_postEphemeral(channel=channel, user=user, thread_ts=thread_ts, text=refusal)
            return
        message = chosen_message(client, channel, ts, meta.get("thread_ts"))
        attachments, notes = self.attachments_of(message, context.get("bot_user_id"))
        job_id = questions.queue.keys.job_id("slack", f"about-{channel}-{ts}-{view.get('id') or user}")
        questions.submit(client, job_id, [JobTurn(role="user", text=submitted_question(view))],
                         Requester(platform="slack", user_id=user), questions.reply_target(channel, thread_ts),
                         questions.job_context(channel, attachments, notes))

    def attachments_of(self, message: dict, bot_user_id: str | None) -> tuple[list[Attachment], list[str]]:
        """The message's text as an attachment named after its author, then its files."""
        files, notes = self.questions.files.read(message)
        text = plain_text(message_text(message), bot_user_id)
        quoted = [Attachment(name=f"the message from {author_of(message)}", text=text)] if text else []
        attachments = quoted + files
        if len(attachments) > MAX_ATTACHMENTS:
            dropped = attachments[MAX_ATTACHMENTS:]
            notes.extend(f"`{a.name}` was skipped: only {MAX_ATTACHMENTS} files are read per question"
                         for a in dropped)
        return attachments[:MAX_ATTACHMENTS], notes
