"""Jobs as the console client makes them, for tests that need queued questions without a chat platform."""

from __future__ import annotations

from bot.console import console_job


def question(text: str, user: str = "tester"):
    job = console_job([("user", text)])
    return job.model_copy(update={"requester": job.requester.model_copy(update={"user_id": user})})
