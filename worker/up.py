"""``xwinbot up``: everything on one machine — Redis (started if none answers), the worker, the adapters.

With no model configured and no GPU, the worker serves the offline demo model on CPU, so
``xwinbot ask "..."`` works out of the box in a second terminal.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from redis import Redis
from redis.exceptions import RedisError

from worker.ops.health_server import start_health_server
from worker.serve import WorkerProcess, run_until_stopped
from worker.settings import Settings


class RunningAdapters(Protocol):
    """What ``start_adapters`` returns (``bot.launch``): the names of the adapters it started, and how to stop them."""

    names: list[str]

    def stop(self) -> None: ...

log = logging.getLogger(__name__)


def redis_answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except RedisError:
        return False


def start_local_redis(url: str, data_dir: Path) -> subprocess.Popen:
    """A redis-server for this machine: AOF every second, no eviction (an evicted job is a lost question)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no Redis answers at XWINBOT_REDIS_URL and redis-server is not installed "
                           "(Debian/Ubuntu: apt-get install redis-server)")
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise RuntimeError(f"no Redis answers at {url}; start it there, or point XWINBOT_REDIS_URL at this machine")
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(parsed.port or 6379), "--dir", str(data_dir),
         "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start on port {parsed.port or 6379} (exit code {process.poll()})")
        time.sleep(0.1)
    return process


def up(settings: Settings, start_adapters: Callable[[Settings], RunningAdapters]) -> int:
    """Redis (a local one when none answers), the chat adapters ``start_adapters`` starts, and the worker."""
    local_redis = None
    if not redis_answers(settings.redis_url):
        data_dir = Path(settings.data_dir).expanduser() / "redis"
        print(f"xwinbot: starting redis-server (append-only file in {data_dir})", flush=True)
        local_redis = start_local_redis(settings.redis_url, data_dir)
    adapters = start_adapters(settings)
    print(f"xwinbot: chat adapters: {', '.join(adapters.names) or 'none configured (see README: Slack)'}", flush=True)
    worker = WorkerProcess(settings, serve_health=False)  # the worker and the adapters share one endpoint
    health = start_health_server(settings, "up", worker.health, worker.collectors())
    try:
        run_until_stopped(worker)
    finally:
        adapters.stop()
        if health:
            health.stop()
        if local_redis is not None:
            try:
                Redis.from_url(settings.redis_url).shutdown()  # flushes the append-only file
            except RedisError:
                pass  # the connection closes as the server exits
            local_redis.wait(timeout=10)
    return 0
