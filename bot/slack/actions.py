"""The buttons under Slack answers: Stop and Regenerate, and Slack's 👍/👎 feedback buttons with a 👎's reason.

Each button's value holds the job id (``worker.posters.slack_controls``) and the reply index holds the job, so a
click works after either process restarted. A click is a ``block_actions`` interactive payload: acknowledged at
once (Slack wants that within 3 s), handled once (claimed by its action_ts: a payload delivered twice does
nothing twice), and not redelivered nor kept in the inbox, so a failure is told in the thread like any other.

* Stop / Regenerate run the very code of the ❌ / 🔁 reactions (``SlackQuestions.stop`` / ``regenerate``).
* 👍 / 👎 record the person's rating of the answer (``FeedbackStore``) and thank them privately; a 👎 also opens
  a modal asking what was wrong, whose answer is added to that rating.

An answer the index no longer knows (kept a week) gets a private "I no longer know this answer".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.slack.questions import Gesture, SlackQuestions
from worker.feedback.store import MAX_REASON_CHARS, FeedbackStore
from worker.posters.slack_controls import FEEDBACK_REASON_VIEW, parse_feedback_value
from worker.queue.job import Job

log = logging.getLogger(__name__)

REASON_BLOCK = REASON_ACTION = "reason"
FORGOTTEN_ANSWER = "I no longer know this answer (answers are kept for a week), so I can't do that."
FORGOTTEN_FEEDBACK = "I no longer know this answer (answers are kept for a week), so I can't record feedback on it."
THANKS = {"good": "Thanks for the 👍!", "bad": "Thanks for the 👎: it helps make the answers better."}


@dataclass(frozen=True)
class Click:
    """A click on one of an answer's buttons, as the block_actions payload describes it."""
    user: str
    value: str  # the button's value
    ts: str  # the click's action_ts
    channel: str
    message_ts: str  # the message the button is on
    thread_ts: str | None  # its thread (None: a top-level message, as plain DM answers are)
    trigger_id: str | None  # what opens a modal, for 3 s


def click_of(body: dict, action: dict) -> Click | None:
    """The click in a block_actions payload; None when a field Slack always sends is missing."""
    user = (body.get("user") or {}).get("id")
    container = body.get("container") if isinstance(body.get("container"), dict) else {}
    channel = container.get("channel_id") or (body.get("channel") or {}).get("id")
    message_ts = container.get("message_ts")
    value, ts = action.get("value"), action.get("action_ts")
    if not all(isinstance(v, str) and v for v in (user, channel, message_ts, value, ts)):
        return None
    thread_ts = container.get("thread_ts")
    return Click(user, value, ts, channel, message_ts, thread_ts if isinstance(thread_ts, str) else None,
                 body.get("trigger_id"))


def reason_view(job_id: str) -> dict:
    """The modal a 👎 opens: what was wrong, optional (the rating is already kept)."""
    return {
        "type": "modal", "callback_id": FEEDBACK_REASON_VIEW, "private_metadata": job_id,
        "title": {"type": "plain_text", "text": "Your feedback"},
        "submit": {"type": "plain_text", "text": "Send"}, "close": {"type": "plain_text", "text": "Skip"},
        "blocks": [{
            "type": "input", "block_id": REASON_BLOCK, "optional": True,
            "label": {"type": "plain_text", "text": "What was wrong?"},
            "element": {"type": "plain_text_input", "action_id": REASON_ACTION, "multiline": True,
                        "max_length": MAX_REASON_CHARS},
        }],
    }


def submitted_reason(view: dict) -> str:
    values = ((view.get("state") or {}).get("values") or {}).get(REASON_BLOCK) or {}
    value = (values.get(REASON_ACTION) or {}).get("value")
    return value.strip() if isinstance(value, str) else ""


class SlackActions:
    def __init__(self, questions: SlackQuestions, feedback: FeedbackStore):
        self.questions, self.feedback = questions, feedback

    # -- bolt listeners (arguments by name, as bolt passes them) ---------------------------------------
    def on_stop(self, ack, body: dict, action: dict, client: WebClient, context: dict) -> None:
        ack()
        self._handle(self._control, body, action, client, self.questions.stop, context)

    def on_again(self, ack, body: dict, action: dict, client: WebClient, context: dict) -> None:
        ack()
        self._handle(self._control, body, action, client, self.questions.regenerate, context)

    def on_feedback(self, ack, body: dict, action: dict, client: WebClient) -> None:
        ack()
        self._handle(self._rate, body, action, client)

    def on_reason(self, ack, body: dict, view: dict) -> None:
        ack()  # closes the modal
        user, job_id, reason = (body.get("user") or {}).get("id"), view.get("private_metadata"), submitted_reason(view)
        if not reason or not isinstance(user, str) or not isinstance(job_id, str):
            return  # nothing said (the field is optional); or a broken payload
        if self.feedback.add_reason(job_id, "slack", user, reason) is None:
            log.info("a 👎's reason came for an answer %s no longer rated by its user; dropped", job_id)

    # -- the clicks -----------------------------------------------------------------------------------
    def _handle(self, run: Callable, body: dict, action: dict, client: WebClient, *rest) -> None:
        """``run(click, client, *rest)``; a failure is told in the answer's thread (``SlackQuestions.guarded``)."""
        click = click_of(body, action)
        if click is None:
            log.info("ignoring a button click without a user, channel, message, value or action_ts")
            return
        self.questions.guarded(run, click, client, *rest, retry_when_down=False,
                               where=lambda: (click.channel, click.thread_ts or click.message_ts))

    def _control(self, click: Click, client: WebClient, handler: Callable[[Gesture, WebClient, Job, dict], None],
                 context: dict) -> None:
        """Stop or Regenerate: the reactions' code, for the job the button names."""
        if not self._first_time(click):
            return
        job = self.questions.index.job(click.value)
        if job is None:
            self._tell(client, click, FORGOTTEN_ANSWER)
            return
        handler(Gesture(click.user, "button", click.ts), client, job, context)

    def _rate(self, click: Click, client: WebClient) -> None:
        parsed = parse_feedback_value(click.value)
        if parsed is None:
            log.info("ignoring a feedback click whose value is not ours")
            return
        if not self._first_time(click):
            return
        rating, job_id = parsed
        job = self.questions.index.job(job_id)
        if job is None:
            self._tell(client, click, FORGOTTEN_FEEDBACK)
            return
        self.feedback.rate(job, "slack", click.user, rating)  # the rating first: it is what counts
        if rating == "bad" and click.trigger_id:  # then at once: the trigger is good for 3 s after the click
            self._ask_reason(client, click.trigger_id, job_id)
        self._tell(client, click, THANKS[rating])

    @staticmethod
    def _ask_reason(client: WebClient, trigger_id: str, job_id: str) -> None:
        """Open the reason modal; if Slack will not (the trigger expired), the 👎 is kept without a reason."""
        try:
            client.views_open(trigger_id=trigger_id, view=reason_view(job_id))
        except SlackApiError as err:
            log.warning("could not ask for a 👎's reason on %s (%s); the rating is kept", job_id,
                        err.response.get("error"))

    def _first_time(self, click: Click) -> bool:
        return self.questions.index.claim("slack", f"click:{click.ts}:{click.user}")

    @staticmethod
    def _tell(client: WebClient, click: Click, text: str) -> None:
        """A reply only the clicker sees, beside the answer."""
        client.chat_postEphemeral(channel=click.channel, user=click.user, thread_ts=click.thread_ts, text=text)
