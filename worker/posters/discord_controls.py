"""What the bot's Discord messages carry besides text: who they may ping (no one) and the answer's buttons.

The adapter's persistent buttons (``bot/discord/buttons.py``) parse these custom ids, so the buttons keep
working after a restart of either process.
"""

from __future__ import annotations

NO_PINGS = {"parse": []}  # allowed_mentions on every message: @everyone, @here, roles and users ping no one
STOP_ID = "xwinbot:stop:{job_id}"
AGAIN_ID = "xwinbot:again:{job_id}"
BUTTON_JOB_ID_CHARS = 80  # longest job id a button carries: with its prefix it fits Discord's 100-character custom id
CUSTOM_ID_PATTERN = rf"[A-Za-z0-9_-]{{1,{BUTTON_JOB_ID_CHARS}}}"  # the job ids our adapters make
BUTTON, ROW, DANGER, SECONDARY = 2, 1, 4, 2


def answer_buttons(job_id: str, running: bool) -> list[dict]:
    """The action row under an answer: Stop while it runs, Regenerate always (none for a job id too long)."""
    if len(job_id) > BUTTON_JOB_ID_CHARS:
        return []
    buttons = [{"type": BUTTON, "style": SECONDARY, "label": "Regenerate", "emoji": {"name": "🔁"},
                "custom_id": AGAIN_ID.format(job_id=job_id)}]
    if running:
        buttons.insert(0, {"type": BUTTON, "style": DANGER, "label": "Stop", "emoji": {"name": "⏹️"},
                           "custom_id": STOP_ID.format(job_id=job_id)})
    return [{"type": ROW, "components": buttons}]
