"""The product's own logging (worker.logs.setup_logging) into a stream a test reads, undone afterwards."""

from __future__ import annotations

import logging
from contextlib import contextmanager

from worker.logs import setup_logging


@contextmanager
def product_log(stream, level: str, fmt: str):
    """Everything logged in this process, formatted as an operator's log is, goes to ``stream`` meanwhile."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging(level, fmt, stream)
    try:
        yield stream
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
