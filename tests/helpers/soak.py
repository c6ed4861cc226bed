"""The soak test's parts: the product's processes under a small supervisor, questions asked on Slack, Discord and
the console with what each thread ends up showing, the processes' memory over time, and the Redis keys left.

A question is *answered once* when its part of the thread holds exactly one bot message, that message is a final
answer (no "thinking…", no error) and its job ran to the end once; *duplicated* when more than one answer message
shows or the job ran to the end twice; *lost* otherwise (nothing, a status or an error left showing). On the
console: ``xwinbot ask`` exited 0 and printed an answer, with no traceback.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result

from tests.helpers.discord_helpers import bot_messages
from tests.helpers.fault_helpers import rq_result
from tests.helpers.processes import kill, memory_mb, spawn
from tests.helpers.slack_helpers import mention, message, unique
from worker.posters.status_text import is_status_text
from worker.queue.job_queue import SERIALIZER, JobQueue
from worker.queue.keys import RedisKeys
from worker.queue.reply_index import ReplyIndex

# Short questions the demo model answers in a sentence (see test_fault_crashes.CAPITALS), and a follow-up that
# needs the thread's history.
COUNTRIES = ["France", "Japan", "Italy", "Germany", "England", "Russia", "Egypt", "China", "Canada"]
FOLLOW_UP = "Repeat the name of that city."
RESTARTED = "(restarting the answer)"  # what `xwinbot ask` prints when the answer starts over
STARTED_S = 5.0  # a process's "start" memory: past Python's start-up and imports, before any work


@dataclass
class Asked:
    platform: str
    prompt: str
    asked_at: float
    job_id: str | None = None
    where: dict = field(default_factory=dict)  # platform-specific: channel/ts, thread/message id, process
    follow_up_of: Asked | None = None
    followed: bool = False  # a follow-up was asked in its thread


def times_run(redis: Redis, job_id: str) -> int:
    """How many runs of the job ran to the end (RQ keeps one result per run)."""
    try:
        job = RQJob.fetch(job_id, connection=redis, serializer=SERIALIZER)
    except NoSuchJobError:
        return 0
    return sum(result.type == Result.Type.SUCCESSFUL for result in job.results())


def verdict(redis: Redis, job_id: str, shown: list[str]) -> tuple[str, str]:
    """("once" | "duplicated" | "lost", why) from the bot messages a question's part of the thread shows."""
    answers = [text for text in shown if not is_status_text(text) and not text.startswith(":warning:")]
    runs = times_run(redis, job_id)
    if len(answers) > 1 or runs > 1:
        return "duplicated", f"{len(answers)} answer messages, job ran {runs} times: {shown}"
    if len(shown) == 1 and len(answers) == 1 and runs == 1 and rq_result(redis, job_id)["status"] == "answered":
        return "once", ""
    return "lost", f"shows {shown}; job ran {runs} times"


def segment(messages: list[dict], after: float, is_bot, key) -> list[dict]:
    """The bot's messages after position ``after`` up to the next person's message (a thread with follow-ups
    holds one part per question)."""
    later = sorted((m for m in messages if key(m) > after), key=key)
    part = []
    for m in later:
        if not is_bot(m):
            break
        part.append(m)
    return part


class SlackQuestions:
    platform = "slack"

    def __init__(self, fake, redis: Redis, keys: RedisKeys):
        self.fake, self.redis, self.keys = fake, redis, keys

    def ask(self, n: int) -> Asked:
        channel, user = unique("CSOAK"), f"USOAK{n % 7}"
        prompt = f"What is the capital of {COUNTRIES[n % len(COUNTRIES)]}?"
        event = mention(self.fake, channel, prompt, user=user)
        return self._send(event, prompt, dict(channel=channel, root=event["ts"], ts=event["ts"], user=user))

    def follow_up(self, first: Asked) -> Asked:
        where = first.where
        event = message(self.fake, where["channel"], FOLLOW_UP, user=where["user"], thread_ts=where["root"])
        asked = self._send(event, FOLLOW_UP, {**where, "ts": event["ts"]})
        asked.follow_up_of = first
        return asked

    def _send(self, event: dict, prompt: str, where: dict) -> Asked:
        where["event_id"] = unique("EvSOAK")  # to tell when Slack saw it acknowledged
        self.fake.send_event(event, event_id=where["event_id"])
        job_id = self.keys.job_id("slack", f"{where['channel']}-{where['ts']}")
        return Asked(self.platform, prompt, time.time(), job_id, where)

    def shown(self, asked: Asked) -> list[str]:
        where = asked.where
        messages = self.fake.thread(where["channel"], where["root"])
        part = segment(messages, float(where["ts"]), lambda m: m.get("bot_id") == self.fake.bot_id,
                       lambda m: float(m["ts"]))
        return [m["text"] for m in part]

    def acked(self, asked: Asked) -> bool:
        return self.fake.acked_event(asked.where["event_id"])


class DiscordQuestions:
    platform = "discord"

    def __init__(self, fake, redis: Redis, keys: RedisKeys, users=(4001, 4002, 4003)):
        self.fake, self.redis, self.keys, self.users = fake, redis, keys, users
        for user in users:
            fake.add_member(user)

    def ask(self, n: int) -> Asked:
        prompt = f"What is the capital of {COUNTRIES[n % len(COUNTRIES)]}?"
        user = self.users[n % len(self.users)]
        interaction = self.fake.slash_command("ask", {"prompt": prompt}, user_id=user)
        job_id = self.keys.job_id("discord", f"ask-{interaction['id']}")
        return Asked(self.platform, prompt, time.time(), job_id, dict(user=user, after=0))

    def follow_up(self, first: Asked) -> Asked:
        thread = self.thread(first)
        sent = self.fake.user_message(thread, first.where["user"], FOLLOW_UP, mentions_bot=True)
        job_id = self.keys.job_id("discord", f"msg-{sent['id']}")
        return Asked(self.platform, FOLLOW_UP, time.time(), job_id,
                     dict(user=first.where["user"], thread=thread, after=int(sent["id"])), follow_up_of=first)

    def thread(self, asked: Asked) -> str | None:
        if "thread" not in asked.where:
            job = ReplyIndex(self.redis, self.keys).job(asked.job_id)
            if job is None:
                return None
            asked.where["thread"] = job.reply_to.thread_id or job.reply_to.channel_id
        return asked.where["thread"]

    def shown(self, asked: Asked) -> list[str]:
        thread = self.thread(asked)
        if thread is None:
            return []
        bot_ids = {m["id"] for m in bot_messages(self.fake, thread)}
        part = segment(self.fake.messages(thread), asked.where["after"], lambda m: m["id"] in bot_ids,
                       lambda m: int(m["id"]))
        return [m["content"] for m in part]


class ConsoleQuestions:
    """``xwinbot ask`` processes, one a question; their output is read when they end."""

    platform = "console"

    def __init__(self, env: dict, log_dir: Path):
        self.env, self.log_dir = env, log_dir

    def ask(self, n: int) -> Asked:
        prompt = f"What is the capital of {COUNTRIES[n % len(COUNTRIES)]}?"
        process = spawn(["ask", prompt], self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return Asked(self.platform, prompt, time.time(), None, dict(process=process))

    @staticmethod
    def done(asked: Asked) -> bool:
        return asked.where["process"].poll() is not None

    @staticmethod
    def verdict(asked: Asked, timeout: float) -> tuple[str, str]:
        process = asked.where["process"]
        try:
            out, err = process.communicate(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            kill(process)
            return "lost", "`xwinbot ask` still waiting at the end"
        answer = out.rsplit(RESTARTED, 1)[-1].strip()
        if process.returncode != 0 or not answer or "Traceback" in out + err:
            return "lost", f"exit {process.returncode}; stdout {out[-200:]!r}; stderr {err[-300:]!r}"
        return "once", ""


class MemoryLog:
    """Samples the resident memory of every process watched, every ``every_s`` s, one series per incarnation."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self.series: dict[str, list[tuple[float, float]]] = {}
        self._pids: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, label: str, pid: int) -> None:
        with self._lock:
            self._pids[label] = pid
            self.series.setdefault(label, [])
        self.sample()

    def forget(self, label: str) -> None:
        self.sample()
        with self._lock:
            self._pids.pop(label, None)

    def sample(self) -> None:
        with self._lock:
            for label, pid in list(self._pids.items()):
                try:
                    self.series[label].append((time.monotonic(), memory_mb(pid)["rss"]))
                except (FileNotFoundError, KeyError, ProcessLookupError):
                    del self._pids[label]

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> MemoryLog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def report(self, warm_up_s: float) -> dict[str, dict]:
        """Per incarnation: RSS at start (``STARTED_S`` in), once warm (``warm_up_s`` in: model loaded, first
        answers given), at the end, and the growth from warm to end in MB and as MB per hour."""
        out = {}
        for label, samples in self.series.items():
            if not samples:
                continue
            start_t = samples[0][0]
            start = next((rss for t, rss in samples if t - start_t >= STARTED_S), samples[-1][1])
            warm = next(((t, rss) for t, rss in samples if t - start_t >= warm_up_s), samples[-1])
            end = samples[-1]
            measured_s = end[0] - warm[0]
            out[label] = dict(
                rss_start_mb=round(start, 1), rss_warm_mb=round(warm[1], 1), rss_end_mb=round(end[1], 1),
                lived_s=round(end[0] - start_t), measured_s=round(measured_s),
                growth_mb=round(end[1] - warm[1], 1),
                growth_mb_per_h=round((end[1] - warm[1]) * 3600 / measured_s, 1) if measured_s > 0 else None)
        return out


@dataclass
class Fleet:
    """The product's long-running processes, started, stopped and killed as a supervisor would."""

    env: dict
    log_dir: Path
    memory: MemoryLog
    commands: dict[str, tuple[list[str], str]]  # role -> (command, module)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    starts: Counter = field(default_factory=Counter)

    def label(self, role: str) -> str:
        return f"{role}#{self.starts[role]}"

    def start(self, role: str) -> subprocess.Popen:
        command, module = self.commands[role]
        self.starts[role] += 1
        log = open(self.log_dir / f"{self.label(role)}.log", "w")
        process = spawn(command, self.env, module=module, stdout=log, stderr=subprocess.STDOUT)
        log.close()  # the child holds its own descriptor
        self.processes[role] = process
        self.memory.watch(self.label(role), process.pid)
        return process

    def stop(self, role: str, how: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int | None:
        """``how`` to the role's process; waits for it to end (SIGKILL after ``timeout``); its exit status."""
        process = self.processes.pop(role)
        self.memory.forget(self.label(role))
        process.send_signal(how)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(process)
            return None

    def alive(self) -> dict[str, bool]:
        return {role: process.poll() is None for role, process in self.processes.items()}

    def tracebacks(self) -> dict[str, int]:
        """How many tracebacks each process wrote to its log (its terminal)."""
        return {path.stem: path.read_text(errors="replace").count("Traceback")
                for path in sorted(self.log_dir.glob("*#*.log"))}

    def stop_all(self) -> None:
        for role in list(self.processes):
            kill(self.processes.pop(role))


def key_group(key: str, queue_name: str) -> str:
    """``<q>:dedupe``, ``rq:job``, ``rq:wip`` …: a key's kind, with the deployment's name as ``<q>``."""
    return ":".join(key.replace(queue_name, "<q>").split(":")[:2])


def redis_keys_report(redis: Redis, queue_name: str) -> dict:
    """DBSIZE, the keys by kind, those without a TTL by kind, and what RQ's registries and the queue hold."""
    groups, no_ttl = Counter(), Counter()
    for raw in redis.scan_iter(count=1000):
        key = raw.decode()
        groups[key_group(key, queue_name)] += 1
        if redis.ttl(raw) == -1:
            no_ttl[key_group(key, queue_name)] += 1
    rq = JobQueue(redis, name=queue_name).rq
    registries = dict(
        queued=rq.count, started=len(StartedJobRegistry(queue=rq)), failed=len(FailedJobRegistry(queue=rq)),
        deferred=len(DeferredJobRegistry(queue=rq)), scheduled=len(ScheduledJobRegistry(queue=rq)),
        canceled=len(CanceledJobRegistry(queue=rq)), finished=len(FinishedJobRegistry(queue=rq)))
    return dict(dbsize=redis.dbsize(), by_kind=dict(sorted(groups.items())), without_ttl=dict(sorted(no_ttl.items())),
                registries=registries)
