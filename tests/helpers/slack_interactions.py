"""Slack payloads for the assistant view and for clicks on message buttons, in the shapes Slack's docs print.

* ``assistant_thread_started`` / ``assistant_thread_context_changed``: docs.slack.dev/reference/events/…
* ``block_actions``: docs.slack.dev/reference/interaction-payloads/block_actions-payload (a button, or the
  ``feedback_buttons`` element of a context_actions block: the action carries the clicked button's value).

Token, api_app_id, team and is_enterprise_install are added by ``FakeSlack.send_interactive``.
"""

from __future__ import annotations

import copy
import time
import uuid


def assistant_thread_event(kind: str, user: str, dm: str, thread_ts: str, viewing: str | None = None,
                           team_id: str = "T0001") -> dict:
    """``assistant_thread_started`` (``kind`` "started") or ``assistant_thread_context_changed`` ("context_changed"):
    ``user`` opened (or, looking at ``viewing``, moved around beside) the assistant thread ``thread_ts`` in ``dm``."""
    context = {"channel_id": viewing, "team_id": team_id} if viewing else {}
    return {"type": f"assistant_thread_{kind}",
            "assistant_thread": {"user_id": user, "context": context, "channel_id": dm, "thread_ts": thread_ts},
            "event_ts": f"{time.time():.6f}"}


def assistant_thread_root(fake, dm: str, user: str) -> str:
    """The root message Slack creates when ``user`` opens a new assistant thread in ``dm`` (subtype
    ``assistant_app_thread``: docs.slack.dev/reference/events/message/assistant_app_thread); returns its ts.
    Stored the way the fake stores its own messages, as the fake has no public method for a subtyped one."""
    with fake._cond:
        ts = fake._new_ts()
        fake._store(dm, {"type": "message", "subtype": "assistant_app_thread", "ts": ts, "user": user,
                         "team": fake.team_id, "text": "New Assistant Thread",
                         "assistant_app_thread": {"title": "New Assistant Thread", "artifacts": []}})
    return ts


def assistant_message(fake, dm: str, user: str, text: str, thread_ts: str) -> dict:
    """A person writes ``text`` in the assistant thread ``thread_ts`` of ``dm``: stored in the fake, and the
    message.im event it causes (docs.slack.dev/reference/events/message.im)."""
    ts = fake.add_user_message(dm, user, text, thread_ts=thread_ts)
    return {"type": "message", "channel": dm, "user": user, "text": text, "ts": ts, "thread_ts": thread_ts,
            "team": fake.team_id, "event_ts": ts, "channel_type": "im"}


def element_in(message: dict, action_id: str) -> tuple[str, dict]:
    """(block id, element) of the interactive element ``action_id`` in ``message``'s blocks."""
    for block in message.get("blocks") or []:
        for element in block.get("elements") or []:
            if element.get("action_id") == action_id:
                return block.get("block_id", ""), element
    raise LookupError(f"no element {action_id!r} in the message's blocks: {message.get('blocks')}")


def button_action(message: dict, action_id: str) -> dict:
    """A click on the button ``action_id`` of ``message``: the action as block_actions lists it."""
    block_id, button = element_in(message, action_id)
    action = {"action_id": action_id, "block_id": block_id, "text": copy.deepcopy(button["text"]), "type": "button",
              "action_ts": f"{time.time():.6f}"}
    if "value" in button:
        action["value"] = button["value"]
    return action


def feedback_action(message: dict, action_id: str, positive: bool) -> dict:
    """A click on the 👍 (``positive``) or 👎 of the feedback buttons ``action_id`` of ``message``."""
    block_id, element = element_in(message, action_id)
    button = element["positive_button" if positive else "negative_button"]
    return {"type": "feedback_buttons", "action_id": action_id, "block_id": block_id,
            "text": copy.deepcopy(button["text"]), "value": button["value"], "action_ts": f"{time.time():.6f}"}


def block_actions(fake, channel: str, message: dict, action: dict, user: str = "U1") -> dict:
    """The block_actions payload of ``user`` clicking ``action`` on ``message`` (as conversations.history returns
    it) in ``channel``."""
    container = {"type": "message", "message_ts": message["ts"], "channel_id": channel, "is_ephemeral": False}
    if message.get("thread_ts"):
        container["thread_ts"] = message["thread_ts"]
    return {
        "type": "block_actions",
        "user": {"id": user, "username": f"user-{user.lower()}", "name": f"user-{user.lower()}",
                 "team_id": fake.team_id},
        "container": container,
        "trigger_id": f"{uuid.uuid4().int % 10**13}.{uuid.uuid4().int % 10**13}.{uuid.uuid4().hex}",
        "channel": {"id": channel, "name": "directmessage" if channel.startswith("D") else f"channel-{channel}"},
        "message": copy.deepcopy(message),
        "state": {"values": {}},
        "response_url": f"https://hooks.slack.com/actions/{fake.api_app_id}/1/{uuid.uuid4().hex[:24]}",
        "actions": [action],
    }


def click(fake, channel: str, message: dict, action: dict, user: str = "U1") -> str:
    """Send the click over Socket Mode and wait for its ack; returns the envelope id."""
    envelope = fake.send_interactive(block_actions(fake, channel, message, action, user))
    fake.wait_ack(envelope)
    return envelope
