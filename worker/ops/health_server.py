"""One small HTTP server per xwinbot process, on XWINBOT_METRICS_HOST:XWINBOT_METRICS_PORT (port 0: none):

- ``GET /metrics``: Prometheus text (``worker.ops.metrics`` plus the process and Python collectors; the queue
  and the feedback counts, read from Redis, on every process's);
- ``GET /healthz``: JSON ``{"status": "ok"|"unhealthy", "process": …, "redis": true|false, …}``, HTTP 200 when
  every yes/no field is true, else 503. The worker adds ``engine_running``, ``model``, ``device``, ``jobs_running``.

It runs in a daemon thread (one thread per request), so a slow scrape never holds up answers.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from redis.exceptions import RedisError

from worker.feedback.store import FeedbackStore
from worker.ops.metrics import FeedbackCollector, QueueCollector
from worker.queue.job_queue import job_queue
from worker.queue.redis_connection import probe_client
from worker.settings import Settings

log = logging.getLogger(__name__)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        log.debug("metrics endpoint: " + format, *args)


class _Registry:
    """The default registry plus this server's own collectors, as ``generate_latest`` wants them."""

    def __init__(self, collectors: Iterable):
        self.collectors = [REGISTRY, *collectors]

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


class HealthServer:
    def __init__(self, settings: Settings, process: str, details: Callable[[], dict] | None = None,
                 collectors: Iterable = ()):
        self.process, self.details = process, details or dict
        # Its own client: no retries and short timeouts, so a Redis outage shows at once instead of hanging.
        self.redis = probe_client(settings)  # the process's password, ACL user and TLS
        queue = job_queue(settings, self.redis)
        feedback = FeedbackStore(self.redis, queue.keys, settings.feedback_retention_days)
        self.registry = _Registry([QueueCollector(queue), FeedbackCollector(feedback), *collectors])
        server_class = type("Server", (_ThreadingServer,), {
            "address_family": socket.AF_INET6 if ":" in settings.metrics_host else socket.AF_INET})
        self.httpd = make_server(settings.metrics_host, settings.metrics_port, self.app,
                                 server_class=server_class, handler_class=_QuietHandler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="xwinbot-metrics", daemon=True)
        self.thread.start()

    def health(self) -> tuple[bool, dict]:
        try:
            redis_ok = bool(self.redis.ping())
        except RedisError:
            redis_ok = False
        report = {"process": self.process, "redis": redis_ok, **self.details()}
        healthy = all(value for value in report.values() if isinstance(value, bool))
        return healthy, {"status": "ok" if healthy else "unhealthy", **report}

    def app(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            status, content_type, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        elif path == "/healthz":
            healthy, report = self.health()
            status = "200 OK" if healthy else "503 Service Unavailable"
            content_type, body = "application/json", json.dumps(report).encode()
        else:
            status, content_type, body = "404 Not Found", "text/plain", b"try /metrics or /healthz\n"
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
        self.redis.close()


def start_health_server(settings: Settings, process: str, details: Callable[[], dict] | None = None,
                        collectors: Iterable = ()) -> HealthServer | None:
    """Serve /metrics and /healthz for this process; None when XWINBOT_METRICS_PORT is 0 or the port is taken
    (the process goes on serving questions: a missing endpoint must not stop answers)."""
    if not settings.metrics_port:
        return None
    try:
        server = HealthServer(settings, process, details, collectors)
    except OSError as err:
        log.error("no /metrics or /healthz for %s: cannot listen on %s:%d (%s); set XWINBOT_METRICS_PORT",
                  process, settings.metrics_host, settings.metrics_port, err)
        return None
    log.info("%s: /metrics and /healthz on %s:%d", process, settings.metrics_host, server.port)
    return server
