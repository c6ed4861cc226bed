"""What the bot's Discord messages carry besides text: who they may ping (no one) and the answer's buttons.

The adapter's persistent buttons (``bot/discord/buttons.py``) parse these custom ids, so the buttons keep
working after a restart of either process.
"""

from __future__ import annotations

NO_PINGS = {"parse": []}  # allowed_mentions on every message: @everyone, @here, roles and users ping no one
STOP_ID = "xwinbot:stop:{job_id}"
AGAIN_ID = "xwinbot:again:{job_id}"
GOOD_ID = "xwinbot:good:{job_id}"  # 👍 under a finished answer (worker.feedback records it)
BAD_ID = "xwinbot:bad:{job_id}"  # 👎 under a finished answer: recorded, then a modal asks what was wrong
BUTTON_JOB_ID_CHARS = 80  # longest job id a button carries: with its prefix it fits Discord's 100-character custom id
CUSTOM_ID_PATTERN = rf"[A-Za-z0-9_-]{{1,{BUTTON_JOB_ID_CHARS}}}"  # the job ids our adapters make
BUTTON, ROW, DANGER, SECONDARY = 2, 1, 4, 2


def answer_buttons(job_id: str, running: bool) -> list[dict]:
    """The action row under an answer: Stop while it runs, Regenerate always, 👍 and 👎 once it is finished
    (no buttons for a job id too long)."""
    if len(job_id) > BUTTON_JOB_ID_CHARS:
        return []
    again = _button(AGAIN_ID, job_id, SECONDARY, "🔁", "Regenerate")
    if running:
        buttons = [_button(STOP_ID, job_id, DANGER, "⏹️", "Stop"), again]
    else:
        buttons = [again, _button(GOOD_ID, job_id, SECONDARY, "👍"), _button(BAD_ID, job_id, SECONDARY, "👎")]
    return [{"type": ROW, "components": buttons}]


def _button(custom_id_format: str, job_id: str, style: int, emoji: str, label: str | None = None) -> dict:
    """A button acting on ``job_id``; the feedback buttons show their emoji alone, as reactions do."""
    button = {"type": BUTTON, "style": style, "emoji": {"name": emoji},
              "custom_id": custom_id_format.format(job_id=job_id)}
    if label:
        button["label"] = label
    return button
