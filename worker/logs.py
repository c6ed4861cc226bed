"""Logging for every xwinbot process: one line per event, the job id on every line logged while a job runs.

``XWINBOT_LOG_FORMAT=json`` writes one JSON object per line (for log collectors); ``text`` is for people.
Secrets never reach a log: settings hold them as ``SecretStr`` and a filter masks anything that looks like a
Slack or Discord token that a library might print.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys

from worker.settings import DEFAULT_LOG_FORMAT, DEFAULT_LOG_LEVEL

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("xwinbot_job_id", default=None)
TOKEN_LIKE = re.compile(r"(xox[abprs]-[A-Za-z0-9-]+|xapp-[A-Za-z0-9-]+"
                        r"|[MNO][A-Za-z\d_-]{23,25}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,})")


@contextlib.contextmanager
def job_context(job_id: str):
    """Every log line inside carries ``job_id``."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


class _JobAndSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = _job_id.get() or "-"
        message = record.getMessage()
        if TOKEN_LIKE.search(message):
            record.msg, record.args = TOKEN_LIKE.sub("[secret]", message), None
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
                 "logger": record.name, "job_id": getattr(record, "job_id", "-"), "message": record.getMessage()}
        if record.exc_info:
            entry["error"] = TOKEN_LIKE.sub("[secret]", self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = DEFAULT_LOG_LEVEL, fmt: str = DEFAULT_LOG_FORMAT, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_JobAndSecrets())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [job %(job_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
