"""The Slack adapter's inbox: every event is recorded in Redis before Slack is told it arrived, and stays there
until it has been handled, so no question is lost to a crash or to Slack's own Web API being down.

Bolt acknowledges an event before it runs our listener (in a thread). So a global middleware, which bolt runs
synchronously before any listener and the ack, claims the event id and records the event in one Lua script;
when Redis cannot be reached it answers 503 instead, which is no acknowledgement (the Socket Mode adapter sends
nothing for a non-200, the HTTP adapter returns the status) and Slack delivers the event again. An event id
seen before is acknowledged and dropped: its first delivery is in the inbox.

The listener (``Inbox.listener`` wraps each one) removes the entry once the event is handled: the question
queued, or its final reply given. A listener that failed because Slack's Web API is down (``platform_down``)
leaves it, due again after a jittered exponential backoff (redis-py's ``EqualJitterBackoff``), for up to
``XWINBOT_SLACK_QUESTION_RETRY_S``; then it is given up with a log line.

Recovery (``Inbox.recover_due``, run once at start and then every second by ``start_recovery``'s daemon thread)
handles entries that are due and whose handler is not alive. Alive means holding the entry's lease, a key with
a short expiry that the process handling the event renews; so two adapter replicas never both take an entry,
and a restarted adapter takes a dead one's entries once their lease lapses. Recovery calls the same listeners,
with the bot's ids from auth.test, the event's workspace and ``RECOVERED`` set in the context (the placeholder
is then looked for before it is posted: the crashed handler may have posted it).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from redis import Redis
from redis.backoff import EqualJitterBackoff
from redis.exceptions import RedisError
from slack_bolt import BoltResponse
from slack_sdk import WebClient

from worker.posters.base import MAX_BACKOFF_S, platform_down
from worker.queue.keys import RedisKeys
from worker.queue.redis_connection import as_text
from worker.settings import DEFAULT_SLACK_QUESTION_RETRY_S

log = logging.getLogger(__name__)

EVENT_ID_TTL_S = 3600  # Slack redelivers an event for about 5 minutes
GRACE_S = 3.0  # an entry is recovery's business only this long after it came (its own handler is quicker)
LEASE_S = 6  # a handler's lease; renewed every RECOVERY_INTERVAL_S while it runs
RECOVERY_INTERVAL_S = 1.0
MAX_RENEW_S = 600.0  # a handler running longer than this is stuck: its lease is left to lapse
FIRST_BACKOFF_S = 0.5
RECOVERED = "xwinbot_recovered"  # context key: the event is handled again (after a crash or a failed try)
EVENT_ID = "xwinbot_event_id"  # context key: the event's id (the owner of the claims its handling makes)
Handler = Callable[[dict, WebClient, dict], None]  # (event, client, context), as SlackQuestions' listeners

# Claim the event id and record the event, or do nothing when the id was seen: one atomic step.
RECORD = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[6])
return 1
"""


class Inbox:
    def __init__(self, redis: Redis, keys: RedisKeys, client: WebClient,
                 give_up_s: float = DEFAULT_SLACK_QUESTION_RETRY_S, clock: Callable[[], float] = time.time):
        self.redis, self.keys, self.client, self.give_up_s, self.clock = redis, keys, client, give_up_s, clock
        self.owner = uuid.uuid4().hex  # this process, as the holder of leases
        self.handlers: dict[str, Handler] = {}  # event type -> listener, for recovery
        self.running: dict[str, float] = {}  # event id -> when its handler began, in this process
        self.lock = threading.Lock()
        self.record_script = redis.register_script(RECORD)
        self.backoff = EqualJitterBackoff(cap=MAX_BACKOFF_S, base=FIRST_BACKOFF_S)
        self.bot_ids: dict | None = None

    # -- the middleware: record, then let bolt acknowledge --------------------------------------------
    def middleware(self, body: dict, context, next):  # noqa: A002 - bolt passes it by this name
        event_id = body.get("event_id")
        if body.get("type") != "event_callback" or not isinstance(event_id, str):
            return next()  # interactivity (shortcuts, modals) carries no event id and is not redelivered
        try:
            recorded = self.record(event_id, body)
        except RedisError as err:
            log.warning("not acknowledging Slack event %s: Redis cannot record it (%s); Slack will send it again",
                        event_id, err)
            return BoltResponse(status=503, body="")
        if not recorded:
            log.info("dropping repeated Slack event %s", event_id)
            return context.ack()
        context[EVENT_ID] = event_id
        return next()

    def record(self, event_id: str, body: dict) -> bool:
        now = self.clock()
        entry = json.dumps({"body": body, "at": now, "failures": 0})
        with self.lock:
            self.running[event_id] = now
        recorded = bool(self.record_script(
            keys=[self.keys.seen("slack-event", event_id), self.keys.slack_inbox(), self.keys.slack_inbox_due(),
                  self.keys.slack_inbox_lease(event_id)],
            args=[EVENT_ID_TTL_S, event_id, entry, now + GRACE_S, self.owner, LEASE_S]))
        if not recorded:
            self._stop_running(event_id)
        return recorded

    # -- listeners ------------------------------------------------------------------------------------
    def listener(self, event_type: str | None, handler: Handler):
        """``handler`` as a bolt listener that clears the event's inbox entry once it is handled (and as the
        handler recovery calls for events of ``event_type``; None: recovery just clears the entry)."""
        if event_type is not None:
            self.handlers[event_type] = handler

        def listener(body: dict, event: dict, client: WebClient, context) -> None:
            self.handle(body, lambda: handler(event, client, context))

        return listener

    def handle(self, body: dict, run: Callable[[], None]) -> None:
        event_id = body.get("event_id")
        if not isinstance(event_id, str):
            run()
            return
        try:
            run()
        except Exception as err:  # SlackQuestions.guarded lets only "Slack is down" through
            if platform_down(err):
                self._retry_later(event_id, err)
                return
            log.warning("a Slack event's handler failed (%s: %s)", type(err).__name__, err)
        finally:
            self._stop_running(event_id)
        self.done(event_id)

    def done(self, event_id: str) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.slack_inbox(), event_id)
            pipe.zrem(self.keys.slack_inbox_due(), event_id)
            pipe.delete(self.keys.slack_inbox_lease(event_id))
            pipe.execute()

    def _retry_later(self, event_id: str, err: Exception) -> None:
        entry = self._entry(event_id)
        if entry is None:
            return
        age = self.clock() - entry["at"]
        if age > self.give_up_s:
            log.error("giving up on Slack event %s after %.0f s: Slack's Web API still fails (%s)", event_id, age, err)
            self.done(event_id)
            return
        entry["failures"] += 1
        wait = self.backoff.compute(entry["failures"])
        log.warning("Slack's Web API is down (%s); handling event %s again in %.1f s (try %d)", err, event_id, wait,
                    entry["failures"] + 1)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.slack_inbox(), event_id, json.dumps(entry))
            pipe.zadd(self.keys.slack_inbox_due(), {event_id: self.clock() + wait})
            pipe.delete(self.keys.slack_inbox_lease(event_id))
            pipe.execute()

    def _entry(self, event_id: str) -> dict | None:
        raw = self.redis.hget(self.keys.slack_inbox(), event_id)
        return None if raw is None else json.loads(raw)

    def _stop_running(self, event_id: str) -> None:
        with self.lock:
            self.running.pop(event_id, None)

    # -- recovery -------------------------------------------------------------------------------------
    def recover_due(self, pool: ThreadPoolExecutor | None = None) -> int:
        """Handle every due entry no live handler holds (in ``pool``, else here); returns how many were taken."""
        taken = 0
        for event_id in self.redis.zrangebyscore(self.keys.slack_inbox_due(), "-inf", self.clock()):
            event_id = as_text(event_id)
            if not self.redis.set(self.keys.slack_inbox_lease(event_id), self.owner, nx=True, ex=LEASE_S):
                continue  # its handler is alive (here or in another adapter)
            with self.lock:
                self.running[event_id] = self.clock()
            taken += 1
            if pool is None:
                self.recover(event_id)
            else:
                pool.submit(self.recover, event_id)
        return taken

    def recover(self, event_id: str) -> None:
        entry = self._entry(event_id)
        if entry is None:  # handled meanwhile
            self._stop_running(event_id)
            self.done(event_id)
            return
        body = entry["body"]
        event = body.get("event") if isinstance(body.get("event"), dict) else {}
        handler = self.handlers.get(str(event.get("type")))
        log.info("handling Slack event %s again (%s, %.1f s old)", event_id, event.get("type"),
                 self.clock() - entry["at"])
        self.handle(body, lambda: handler and handler(event, self.client, self._context(event_id, body)))

    def _context(self, event_id: str, body: dict) -> dict:
        """What bolt's context gives a listener and the listeners use: the bot's ids, the workspace."""
        if self.bot_ids is None:  # asked once; a failure (Slack down) is a platform_down error for handle()
            auth = self.client.auth_test()
            self.bot_ids = {"bot_user_id": auth.get("user_id"), "bot_id": auth.get("bot_id")}
        return {**self.bot_ids, "team_id": body.get("team_id"), RECOVERED: True, EVENT_ID: event_id}

    def renew_leases(self) -> None:
        now = self.clock()
        with self.lock:
            alive = [event_id for event_id, began in self.running.items() if now - began < MAX_RENEW_S]
        if alive:
            with self.redis.pipeline(transaction=False) as pipe:
                for event_id in alive:
                    pipe.expire(self.keys.slack_inbox_lease(event_id), LEASE_S)
                pipe.execute()

    def start_recovery(self, stop: threading.Event | None = None) -> threading.Thread:
        """Recover once now, then keep renewing this process's leases and recovering due entries in a daemon
        thread; a Redis error there is logged and the loop goes on."""
        stop = stop or threading.Event()
        pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="slack-inbox")
        self._recovery_round(pool)
        thread = threading.Thread(target=self._recovery_loop, args=(pool, stop), name="slack-inbox", daemon=True)
        thread.start()
        return thread

    def _recovery_loop(self, pool: ThreadPoolExecutor, stop: threading.Event) -> None:
        while not stop.wait(RECOVERY_INTERVAL_S):
            self._recovery_round(pool)

    def _recovery_round(self, pool: ThreadPoolExecutor) -> None:
        try:
            self.renew_leases()
            self.recover_due(pool)
        except RedisError as err:
            log.warning("the Slack inbox could not be read (%s); trying again in %.0f s", err, RECOVERY_INTERVAL_S)


def claim_once(redis: Redis, keys: RedisKeys, source_id: str, owner: str | None) -> bool:
    """True the first time a message (``source_id``) is claimed, and again for the same ``owner`` (the event
    that claimed it, handled again after a crash): a different event for the same message is dropped."""
    previous = redis.set(keys.seen("slack", source_id), owner or "1", nx=True, ex=24 * 3600, get=True)
    return previous is None or (owner is not None and as_text(previous) == owner)
