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
from urllib.parse import unquote, urlparse

from redis.exceptions import RedisError

from worker.errors import RedisUnavailable
from worker.ops.health_server import start_health_server
from worker.ops.preflight import check_redis
from worker.queue.redis_connection import TLS_SCHEMES, describe_failure, masked_url, nothing_listens, probe_client
from worker.serve import WorkerProcess, run_until_stopped
from worker.settings import Settings


class RunningAdapters(Protocol):
    """What ``start_adapters`` returns (``bot.launch``): the names of the adapters it started, and how to stop them."""

    names: list[str]

    def stop(self) -> None: ...

log = logging.getLogger(__name__)


def local_redis_needed(settings: Settings) -> bool:
    """True when nothing listens at XWINBOT_REDIS_URL; RedisUnavailable when something does but refuses us (a
    wrong password, TLS): starting a second Redis would not fix that."""
    client = probe_client(settings, timeout_s=1)
    try:
        client.ping()
        return False
    except RedisError as err:
        if nothing_listens(err):
            return True
        raise RedisUnavailable(describe_failure(err, settings)) from None
    finally:
        client.close()


def _answers(settings: Settings) -> bool:
    """Whether Redis answers a PING yet (a starting one says LOADING while it reads its append-only file)."""
    client = probe_client(settings, timeout_s=1)
    try:
        return bool(client.ping())
    except RedisError:
        return False
    finally:
        client.close()


def local_redis_config(url: str, data_dir: Path) -> str:
    """redis-server's configuration, given on its stdin so the password never shows in ``ps``: AOF every second,
    no eviction (an evicted job is a lost question), and the URL's password for the URL's user."""
    parsed = urlparse(url)
    lines = ["bind 127.0.0.1", f"port {parsed.port or 6379}", f'dir "{data_dir}"', "appendonly yes",
             "appendfsync everysec", "maxmemory-policy noeviction", 'save ""']
    user = unquote(parsed.username or "default")
    if parsed.password and user == "default":
        lines.append(f"requirepass {unquote(parsed.password)}")
    elif parsed.password:  # the URL names its own user: only that one may connect, with every right on this Redis
        lines += ["user default off", f"user {user} on >{unquote(parsed.password)} ~* &* +@all"]
    return "\n".join(lines) + "\n"


def start_local_redis(settings: Settings, data_dir: Path) -> subprocess.Popen:
    """A redis-server for this machine at XWINBOT_REDIS_URL, with its password."""
    url = settings.redis_url
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no Redis answers at XWINBOT_REDIS_URL and redis-server is not installed "
                           "(Debian/Ubuntu: apt-get install redis-server)")
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise RedisUnavailable(f"no Redis answers at XWINBOT_REDIS_URL={masked_url(url)}; start it there, or point "
                               "XWINBOT_REDIS_URL at this machine")
    if parsed.scheme in TLS_SCHEMES:
        raise RedisUnavailable(f"no Redis answers at XWINBOT_REDIS_URL={masked_url(url)}; `xwinbot up` starts a "
                               "local Redis only for redis:// URLs: start your TLS Redis first")
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([binary, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    process.stdin.write(local_redis_config(url, data_dir))
    process.stdin.close()
    deadline = time.monotonic() + 10
    while not _answers(settings):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start on port {parsed.port or 6379} (exit code {process.poll()})")
        time.sleep(0.1)
    return process


def up(settings: Settings, start_adapters: Callable[[Settings], RunningAdapters]) -> int:
    """Redis (a local one when none answers), the chat adapters ``start_adapters`` starts, and the worker."""
    local_redis = None
    if local_redis_needed(settings):
        data_dir = Path(settings.data_dir).expanduser() / "redis"
        print(f"xwinbot: starting redis-server (append-only file in {data_dir})", flush=True)
        local_redis = start_local_redis(settings, data_dir)
    check_redis(settings)  # answers, and takes our password
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
                probe_client(settings).shutdown()  # flushes the append-only file
            except RedisError:
                pass  # the connection closes as the server exits
            local_redis.wait(timeout=10)
    return 0
