"""worker/queue/redis_connection.py: outage waits that are spread and bounded, URLs printed without passwords."""

from __future__ import annotations

import time

from redis.exceptions import ConnectionError

from tests.helpers.redis_server import free_port
from worker.queue.lost_jobs import RETRY_BACKOFF
from worker.queue.redis_connection import BACKOFF_CAP_S, masked_url, outage_retry, redis_client
from worker.queue.rq_workers import RESTART_BACKOFF


def waits(backoff, failures: int, processes: int = 20) -> list[float]:
    """The wait after the ``failures``-th failure of each of ``processes`` processes that lost Redis together."""
    return [backoff.compute(failures) for _ in range(processes)]


def test_processes_waiting_out_one_redis_outage_knock_again_at_spread_times():
    for backoff, nominal in ((outage_retry(30)._backoff, lambda n: min(BACKOFF_CAP_S, 0.05 * 2 ** n)),
                             (RETRY_BACKOFF, lambda n: min(15.0, 1.5 * 2 ** n)),
                             (RESTART_BACKOFF, lambda n: min(30.0, 0.5 * 2 ** n))):
        for failures in (1, 3, 12):
            spread = waits(backoff, failures)
            assert all(nominal(failures) / 2 <= w <= nominal(failures) for w in spread), "half to all of it"
            assert len(set(spread)) == len(spread), "no two at the same moment"


def test_a_command_gives_up_after_about_the_redis_retry_window():
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", retry_s=2)  # nothing listens there
    started = time.monotonic()
    try:
        client.ping()
    except ConnectionError:
        pass
    waited = time.monotonic() - started
    assert 1.0 <= waited <= 4.0, waited


def test_printed_urls_hide_the_password_and_keep_the_rest():
    assert masked_url("rediss://adapter:s3cr%40t@redis:6380/0") == "rediss://adapter:***@redis:6380/0"
    assert masked_url("redis://:s3cret@127.0.0.1:6379/1") == "redis://:***@127.0.0.1:6379/1"
    assert masked_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
