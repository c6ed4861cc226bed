"""Slack's assistant view (an AI app's split view and its DM threads), routed by bolt's ``Assistant``.

* ``assistant_thread_started``: the thread offers the suggested prompts from settings (Slack shows at most 4).
* A person's message in an assistant thread is a question like any DM (``SlackQuestions.on_message``), through
  the inbox, so it is recorded and recovered as every event is.
* ``assistant_thread_context_changed`` (the person looked at another channel) is acknowledged and dropped: we
  do not use that context, and bolt's default listener would save it by reading and editing message metadata,
  Web API calls for nothing.

Bolt's ``Assistant`` is a global middleware registered after the inbox's, so every event is recorded before it
is acknowledged. It acknowledges edits and deletions in assistant threads itself, without a listener; we pass
them on instead, to our ``message`` listener, which ignores them and clears their inbox entry at once.
"""

from __future__ import annotations

from slack_bolt import Assistant
from slack_bolt.request.payload_utils import is_other_message_sub_event_in_assistant_thread
from slack_sdk import WebClient

from bot.slack.inbox import Inbox
from bot.slack.questions import SlackQuestions

MAX_SUGGESTED_PROMPTS = 4  # assistant.threads.setSuggestedPrompts takes at most 4


class InboxAssistant(Assistant):
    """bolt's ``Assistant``, except that edits and deletions in its threads go on to the app's listeners."""

    def process(self, *, req, resp, next):  # noqa: A002 - bolt passes it by this name
        if is_other_message_sub_event_in_assistant_thread(req.body):
            return next()
        return super().process(req=req, resp=resp, next=next)


class AssistantThreads:
    def __init__(self, questions: SlackQuestions, suggested_prompts: list[str]):
        self.questions = questions
        self.suggested_prompts = suggested_prompts[:MAX_SUGGESTED_PROMPTS]

    def assistant(self, inbox: Inbox) -> Assistant:
        """The bolt middleware, its listeners wrapped by the inbox (and known to its recovery)."""
        assistant = InboxAssistant()
        assistant.thread_started(inbox.listener("assistant_thread_started", self.on_thread_started))
        assistant.thread_context_changed(inbox.listener(None, ignore_context_change))
        assistant.user_message(inbox.listener("message", self.questions.on_message))
        return assistant

    # -- listeners (event, client, context), as the inbox calls them ------------------------------------
    def on_thread_started(self, event: dict, client: WebClient, context: dict) -> None:
        thread = event.get("assistant_thread") if isinstance(event.get("assistant_thread"), dict) else {}
        channel, thread_ts = thread.get("channel_id"), thread.get("thread_ts")
        if not self.suggested_prompts or not isinstance(channel, str) or not isinstance(thread_ts, str):
            return  # nothing to suggest; or a broken payload: no thread to suggest them in
        client.assistant_threads_setSuggestedPrompts(channel_id=channel, thread_ts=thread_ts,
                                                     prompts=suggestions(self.suggested_prompts))


def suggestions(prompts: list[str]) -> list[dict]:
    """Each prompt as Slack's {title, message}: the button shows it, and a click sends it as it is."""
    return [{"title": prompt, "message": prompt} for prompt in prompts]


def ignore_context_change(event: dict, client: WebClient, context: dict) -> None:
    pass
