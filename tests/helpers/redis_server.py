"""A private redis-server for tests: free port, its own directory, AOF on (appendfsync everysec), noeviction;
optionally with a password (``requirepass``), an ACL file, and TLS on loopback (a throwaway CA from ``tls_files``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

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


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, the server's certificate for 127.0.0.1 signed by it, and a client certificate (mutual TLS)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def tls_files(dir: Path) -> TlsFiles:
    """Made with the openssl command line (the `cryptography` package is not among the test dependencies)."""
    dir.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=dir, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=xwinbot test CA",
            "-keyout", "ca.key", "-out", "ca.crt")
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                            ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr")
        (dir / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
    return TlsFiles(dir / "ca.crt", dir / "server.crt", dir / "server.key", dir / "client.crt", dir / "client.key")


class RedisServer:
    """``start()`` / ``kill()`` (SIGKILL) / ``stop()`` a redis-server on ``port`` with its data in ``dir``.

    Restarting on the same ``dir`` and ``port`` reloads the AOF. Use as a context manager (stops on exit).
    ``password``: ``requirepass`` (the default user's); ``acl_file``: users from that file; ``tls``: TLS only
    (no plain port), client certificates optional (``tls_clients="yes"`` demands them).
    """

    def __init__(self, dir: str | Path, port: int | None = None, binary: str = "redis-server",
                 password: str | None = None, acl_file: Path | None = None, tls: TlsFiles | None = None,
                 tls_clients: str = "optional"):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.binary = shutil.which(binary) or binary
        self.password, self.acl_file, self.tls, self.tls_clients = password, acl_file, tls, tls_clients
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.url_for(None, self.password)

    def url_for(self, user: str | None, password: str | None) -> str:
        """This server's URL as XWINBOT_REDIS_URL gives it: ``rediss://`` with TLS, the user and password in it."""
        auth = f"{quote(user or '', safe='')}:{quote(password, safe='')}@" if password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def client(self, **kwargs) -> Redis:
        """A client with every right (the default user, or ``admin`` from an ACL file: see ``start``)."""
        if self.tls:
            kwargs = {"ssl": True, "ssl_ca_certs": str(self.tls.ca), **kwargs}
        if self.acl_file is not None:
            kwargs = {"username": "admin", "password": self.password, **kwargs}
        elif self.password:
            kwargs = {"password": self.password, **kwargs}
        return Redis(host="127.0.0.1", port=self.port, **kwargs)

    def security_args(self) -> list[str]:
        args = []
        if self.password and self.acl_file is None:
            args += ["--requirepass", self.password]
        if self.acl_file is not None:  # the file's users, plus an admin (the test's own client) with this password
            acl = self.dir / "users.acl"
            acl.write_text(Path(self.acl_file).read_text() + f"\nuser admin on >{self.password} ~* &* +@all\n")
            args += ["--aclfile", str(acl)]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.server_cert),
                     "--tls-key-file", str(self.tls.server_key), "--tls-ca-cert-file", str(self.tls.ca),
                     "--tls-auth-clients", self.tls_clients]
        return args

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
            *self.security_args(),
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
