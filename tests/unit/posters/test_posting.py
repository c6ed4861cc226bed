"""Streamed replies: throttled edits, retries with backoff, a clear failure when a reply cannot be delivered."""

import pytest

from worker.posters.base import DeliveryFailed, StreamingReply, deliver


class Recorder:
    """Stands in for a chat platform (the boundary): records every call, can fail the first N."""

    def __init__(self, failures: int = 0):
        self.calls, self.failures = [], failures

    def _record(self, kind, text):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("platform unavailable")
        self.calls.append((kind, text))

    def waiting(self, job, position):
        self._record("waiting", position)

    def update(self, job, text):
        self._record("update", text)

    def finish(self, job, text):
        self._record("finish", text)

    def fail(self, job, message):
        self._record("fail", message)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_edits_are_throttled_to_one_per_interval():
    poster, clock = Recorder(), FakeClock()
    reply = StreamingReply(poster, job=None, interval=1.0, clock=clock)
    for i in range(30):  # 30 pieces over 3 seconds
        clock.now = i * 0.1
        reply.add(f"w{i} ")
    reply.finish()
    updates = [text for kind, text in poster.calls if kind == "update"]
    assert len(updates) == 3  # at 0.0, 1.0, 2.0 s
    assert updates[0] == "w0 "  # the first token shows at once
    assert poster.calls[-1] == ("finish", " ".join(f"w{i}" for i in range(30)))


def test_a_flaky_platform_is_retried(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    poster = Recorder(failures=2)
    deliver(lambda: poster.finish(None, "Paris."), attempts=4)
    assert poster.calls == [("finish", "Paris.")]


def test_an_undeliverable_reply_says_why(monkeypatch):
    delays = []
    monkeypatch.setattr("time.sleep", delays.append)
    poster = Recorder(failures=10)
    with pytest.raises(DeliveryFailed, match="could not deliver the answer after 4 attempts: platform unavailable"):
        deliver(lambda: poster.finish(None, "Paris."), attempts=4, what="answer")
    assert all(nominal / 2 <= d <= nominal for d, nominal in zip(delays, [0.5, 1.0, 2.0], strict=True))


def test_answers_waiting_out_one_outage_retry_at_spread_times_within_the_bounds(monkeypatch):
    """Twenty answers that all met the same outage do not all hit the platform again at the same moment."""
    waits = []
    monkeypatch.setattr("time.sleep", waits.append)
    for _ in range(20):
        with pytest.raises(DeliveryFailed):
            deliver(lambda: Recorder(failures=10).finish(None, "x"), attempts=6, max_delay=4.0)
    by_attempt = [waits[n::5] for n in range(5)]  # each delivery waits 5 times
    for nominal, spread in zip([0.5, 1.0, 2.0, 4.0, 4.0], by_attempt, strict=True):
        assert all(nominal / 2 <= w <= nominal for w in spread), "between half and all of the nominal wait"
        assert len(set(spread)) > 15, "spread, not one shared moment"


def test_cancelled_answer_says_so():
    poster = Recorder()
    reply = StreamingReply(poster, job=None, interval=1.0, clock=FakeClock())
    reply.add("The capital")
    reply.finish("\n\n(stopped)")
    assert poster.calls[-1] == ("finish", "The capital\n\n(stopped)")


class Down(Exception):
    """A platform error as our posters see them: an HTTP status, and for a 429 how long to wait."""

    def __init__(self, status, retry_after=None):
        super().__init__(f"platform answered {status}")
        self.status, self.retry_after = status, retry_after


class SteppingClock(FakeClock):
    """time.sleep moves this clock, so retry windows pass without waiting."""

    def sleep(self, seconds):
        self.now += seconds


def test_a_platform_down_for_a_while_is_retried_until_it_is_back_with_capped_backoff(monkeypatch):
    clock = SteppingClock()
    delays, calls = [], []

    def call():
        calls.append(clock.now)
        if clock.now < 60:  # a minute of 5xx
            raise Down(503)

    monkeypatch.setattr("time.sleep", lambda s: (delays.append(s), clock.sleep(s)))
    deliver(call, what="answer", window_s=180, clock=clock)
    nominal = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert all(n / 2 <= d <= n for d, n in zip(delays, nominal, strict=False)) and max(delays) <= 10.0  # capped
    assert 60 <= calls[-1] <= 70  # delivered within one backoff of the platform coming back


def test_a_429_waits_as_long_as_retry_after_says(monkeypatch):
    clock = SteppingClock()
    delays = []
    monkeypatch.setattr("time.sleep", lambda s: (delays.append(s), clock.sleep(s)))
    answers = iter([Down(429, retry_after=7.5), None])

    def call():
        if error := next(answers):
            raise error

    deliver(call, what="answer", clock=clock)
    assert delays == [7.5]


def test_a_platform_down_for_longer_than_the_window_fails_with_the_reason(monkeypatch):
    clock = SteppingClock()
    monkeypatch.setattr("time.sleep", clock.sleep)
    poster = Recorder(failures=10_000)
    with pytest.raises(DeliveryFailed, match="could not deliver the answer after .* platform unavailable"):
        deliver(lambda: poster.finish(None, "Paris."), what="answer", window_s=30, clock=clock)
    assert 20 <= clock.now <= 30


def test_an_error_that_is_not_an_outage_fails_after_a_few_attempts(monkeypatch):
    clock = SteppingClock()
    monkeypatch.setattr("time.sleep", clock.sleep)
    attempts = []

    def call():
        attempts.append(clock.now)
        raise Down(400)  # a bad request: retrying for minutes would not help

    with pytest.raises(DeliveryFailed, match="after 4 attempts"):
        deliver(call, what="answer", window_s=180, clock=clock)
    assert len(attempts) == 4


def test_refused_streamed_edits_are_skipped_and_the_final_answer_still_arrives(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    poster, clock = Recorder(failures=3), FakeClock()
    reply = StreamingReply(poster, job=None, interval=1.0, clock=clock)
    for i in range(50):  # 50 pieces over 5 seconds; the platform refuses the first 3 edits
        clock.now = i * 0.1
        reply.add(f"w{i} ")
    reply.finish()
    updates = [text for kind, text in poster.calls if kind == "update"]
    assert len(updates) <= 2  # backed off after each refusal instead of retrying every piece
    assert poster.calls[-1] == ("finish", " ".join(f"w{i}" for i in range(50)))
