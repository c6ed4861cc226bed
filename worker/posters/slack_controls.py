"""What the bot's Slack answers carry besides their text: Block Kit Stop/Regenerate buttons and 👍/👎 feedback.

The worker's poster puts these blocks on an answer's last message; the Slack adapter's action listeners
(``bot/slack/actions.py``) read them back. Each button carries the job id in its value, so a click works after
either process restarted: nothing about the buttons lives in a process. Built with slack_sdk's Block Kit models
(which check Slack's limits) and sent as plain dicts.
"""

from __future__ import annotations

from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ContextActionsBlock,
    FeedbackButtonObject,
    FeedbackButtonsElement,
    MarkdownBlock,
    MarkdownTextObject,
    SectionBlock,
)

STOP_ACTION = "xwinbot_stop"  # action_id of the Stop button (value: the job id)
AGAIN_ACTION = "xwinbot_again"  # action_id of the Regenerate button (value: the job id)
FEEDBACK_ACTION = "xwinbot_feedback"  # the 👍/👎 feedback buttons (value: "good:<job id>", "bad:<job id>")
FEEDBACK_REASON_VIEW = "xwinbot_feedback_reason"  # callback_id of the modal asking a 👎 for its reason
CONTROLS_BLOCK = "xwinbot_controls"  # block_id prefixes: what the poster replaces when the answer moves on
FEEDBACK_BLOCK = "xwinbot_feedback"


def markdown_block(text: str) -> dict:
    """The answer's text, rendered by Slack as Markdown (what ``markdown_text`` becomes; limit 12,000 chars)."""
    return MarkdownBlock(text=text).to_dict()


def control_blocks(job_id: str, running: bool) -> list[dict]:
    """Stop while the answer runs, Regenerate always."""
    buttons = [ButtonElement(text="🔁 Regenerate", action_id=AGAIN_ACTION, value=job_id)]
    if running:
        buttons.insert(0, ButtonElement(text="⏹️ Stop", action_id=STOP_ACTION, value=job_id, style="danger"))
    return [ActionsBlock(block_id=f"{CONTROLS_BLOCK}_{'running' if running else 'done'}", elements=buttons).to_dict()]


def feedback_blocks(job_id: str) -> list[dict]:
    """Slack's own 👍/👎 feedback buttons (a context_actions block), under a finished answer."""
    element = FeedbackButtonsElement(
        action_id=FEEDBACK_ACTION,
        positive_button=FeedbackButtonObject(text="👍", accessibility_label="Good answer", value=f"good:{job_id}"),
        negative_button=FeedbackButtonObject(text="👎", accessibility_label="Bad answer", value=f"bad:{job_id}"),
    )
    return [ContextActionsBlock(block_id=FEEDBACK_BLOCK, elements=[element]).to_dict()]


def status_blocks(text: str, job_id: str) -> list[dict]:
    """A placeholder's status ("thinking…", "#3 in queue") in mrkdwn, with Stop and Regenerate under it."""
    return [SectionBlock(text=MarkdownTextObject(text=text)).to_dict(), *control_blocks(job_id, running=True)]


def answer_blocks(text: str, job_id: str, running: bool) -> list[dict]:
    """The last message of an answer: its text, the buttons, and (finished) the feedback buttons."""
    return [markdown_block(text), *control_blocks(job_id, running), *([] if running else feedback_blocks(job_id))]


def parse_feedback_value(value: str) -> tuple[str, str] | None:
    """(rating, job id) from a feedback button's value, or None for anything else."""
    rating, _, job_id = str(value or "").partition(":")
    return (rating, job_id) if rating in ("good", "bad") and job_id else None
