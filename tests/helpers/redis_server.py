"""A private redis-server for tests: free port, its own directory, AOF on (appendfsync everysec), noeviction."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis


def drop_queue(redis: Redis, queue_name: str) -> None:
    """Remove every key of a test's queue (RQ's and ours)."""
    for key in redis.scan_iter(match=f"*{queue_name}*", count=1000):
        redis.delete(key)
    redis.srem("rq:queues", f"rq:queue:{queue_name}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``start()`` / ``kill()`` (SIGKILL) / ``stop()`` a redis-server on ``port`` with its data in ``dir``.

    Restarting on the same ``dir`` and ``port`` reloads the AOF. Use as a context manager (stops on exit).
    """

    def __init__(self, dir: str | Path, port: int | None = None, binary: str = "redis-server"):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.binary = shutil.which(binary) or binary
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs) -> Redis:
        return Redis(host="127.0.0.1", port=self.port, **kwargs)

    def start(self, timeout: float = 10) -> RedisServer:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("redis-server already running")
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.dir / 'redis.log'}")
            try:
                c = self.client(socket_timeout=1)
                if c.ping():
                    # AOF loading answers LOADING errors to PING; ping() succeeding means it is ready.
                    c.close()
                    return self
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, no shutdown save: what survives is what the AOF already had on disk."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
