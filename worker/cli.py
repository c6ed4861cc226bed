"""The ``xwinbot`` command.

    up          Redis (started if needed) + the worker + configured adapters, on this machine
    worker      one worker process joining the queue at XWINBOT_REDIS_URL
    ask         ask one question through the queue, like a chat user; prints the answer as it streams
    chat        an interactive conversation through the queue
    slack       the Slack adapter on its own (``up`` starts it too when its tokens are set)
    discord     the Discord adapter on its own (``up`` starts it too when its token is set)
    discord-invite  the URL that adds the bot to a server, with exactly the permissions it needs
    status      queue depth, workers alive, running and failed jobs (with reasons), model and device
    requeue-failed  put failed jobs back on the queue
    feedback    people's 👍/👎 on answers, newest first with the question and answer; --jsonl exports them
    generate    answer one question right here with the model (no queue; for trying models)
    demo-model  build the offline demo model
"""

from __future__ import annotations

import argparse
import sys
from contextlib import closing
from typing import TYPE_CHECKING

from worker.errors import CheckpointError, PromptTooLong, RedisUnavailable
from worker.settings import Settings

if TYPE_CHECKING:
    from redis import Redis


LISTED_RATINGS = 20  # what `xwinbot feedback` lists without --limit: a screenful or two


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xwinbot", description="A self-hosted GPTQ LLM for team chat.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run Redis (if none answers), the worker and the adapters on this machine")
    worker = commands.add_parser("worker", help="run one worker process on the queue at XWINBOT_REDIS_URL")
    worker.add_argument("--gpus", metavar="all|N|0,2,3",
                        help="one worker process per GPU (all, the first N, or these indices), each seeing only "
                             "its own GPU; /metrics on XWINBOT_METRICS_PORT + 0, 1, …")
    ask = commands.add_parser("ask", help="ask one question through the queue and print the streamed answer")
    ask.add_argument("question")
    commands.add_parser("chat", help="an interactive conversation through the queue")
    commands.add_parser("slack", help="run the Slack adapter (Socket Mode, or HTTP with XWINBOT_SLACK_MODE=http)")
    commands.add_parser("discord", help="run the Discord adapter (XWINBOT_DISCORD_TOKEN)")
    commands.add_parser("api", help="serve the OpenAI-compatible HTTP API (XWINBOT_API_KEYS, XWINBOT_API_PORT)")
    commands.add_parser("status", help="queue, workers, running and failed jobs at a glance")
    requeue = commands.add_parser("requeue-failed", help="put failed jobs back on the queue")
    requeue.add_argument("job_ids", nargs="*", help="only these (default: every failed job)")
    feedback = commands.add_parser("feedback", help="people's 👍/👎 on answers, newest first (or as JSON lines)")
    feedback.add_argument("--limit", type=positive_int, metavar="N",
                          help=f"at most N ratings (default: {LISTED_RATINGS} listed; every one kept with --jsonl)")
    feedback.add_argument("--rating", choices=["good", "bad"], help="only 👍 (good) or only 👎 (bad) ones")
    feedback.add_argument("--jsonl", metavar="PATH",
                          help="write the ratings as JSON lines to PATH ('-': stdout), for evaluating models")
    invite = commands.add_parser("discord-invite", help="print the URL that adds the bot to a Discord server")
    invite.add_argument("--application-id", type=int, help="default: read from XWINBOT_DISCORD_TOKEN")

    generate = commands.add_parser("generate", help="answer one question here with the model, without the queue")
    generate.add_argument("question")
    generate.add_argument("--model", help="GPTQ checkpoint: Hub repo id or local directory (XWINBOT_MODEL)")
    generate.add_argument("--revision", help="Hub branch or commit (XWINBOT_MODEL_REVISION)")
    generate.add_argument("--template", choices=["auto", "vicuna", "alpaca", "chat"], help="prompt template")
    generate.add_argument("--system", help="system prompt")
    generate.add_argument("--temperature", type=float)
    generate.add_argument("--max-new-tokens", type=int)

    demo = commands.add_parser("demo-model", help="build the offline demo model (SmolLM2-135M as 4-bit GPTQ)")
    demo.add_argument("--out", help="directory to write (default: the xwinbot cache)")
    demo.add_argument("--force", action="store_true", help="rebuild even if it exists")
    return parser


def settings_from_args(args: argparse.Namespace, settings: Settings) -> Settings:
    """``settings`` with the options given on the command line in place of theirs (validated like the rest)."""
    overrides = {
        "model": getattr(args, "model", None),
        "model_revision": getattr(args, "revision", None),
        "template": getattr(args, "template", None),
        "system_prompt": getattr(args, "system", None),
        "temperature": getattr(args, "temperature", None),
        "max_new_tokens": getattr(args, "max_new_tokens", None),
    }
    given = {key: value for key, value in overrides.items() if value is not None}
    return Settings.model_validate({**settings.model_dump(), **given}) if given else settings


def run_generate(args: argparse.Namespace, settings: Settings) -> int:
    from worker.inference.model_setup import load_generator
    from worker.inference.prompt import Turn

    generator = load_generator(settings_from_args(args, settings))
    for piece in generator.stream([Turn("user", args.question)]):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def client_redis(settings: Settings) -> Redis:
    """Redis for a one-shot command: probed first, so a Redis that is down is one line at once, not a wait of
    XWINBOT_REDIS_RETRY_S (the client then rides out a restart like every other process's)."""
    from worker.ops.preflight import check
    from worker.queue.redis_connection import redis_from_settings

    check(settings, "client")
    return redis_from_settings(settings)


def print_answer(settings: Settings, turns: list[tuple[str, str]]) -> str | None:
    """Ask through the queue, say on stderr what the question waits for, print the answer as it streams; the
    answer, or None when there is none. Ctrl-C (KeyboardInterrupt) cancels the question on its way out."""
    from bot.console import ask
    from worker.queue.job_queue import job_queue

    redis = client_redis(settings)
    answer = ""
    with closing(ask(redis, job_queue(settings, redis), turns)) as replies:  # closed at once, even on Ctrl-C
        for kind, text in replies:
            if kind == "waiting":
                print(f"xwinbot: {text}", file=sys.stderr, flush=True)
            elif kind == "restart":
                sys.stdout.write("\n(restarting the answer)\n")
                answer = ""
            elif kind == "text":
                sys.stdout.write(text)
                sys.stdout.flush()
                answer += text
            elif kind == "error":
                print(f"xwinbot: {text}", file=sys.stderr)
                return None
    sys.stdout.write("\n")
    return answer


def run_status(args: argparse.Namespace, settings: Settings) -> int:
    from worker.ops.status import read_status, render
    from worker.queue.job_queue import job_queue
    from worker.queue.redis_connection import masked_url

    print(render(read_status(job_queue(settings, client_redis(settings))), masked_url(settings.redis_url)))
    return 0


def run_requeue_failed(args: argparse.Namespace, settings: Settings) -> int:
    from worker.ops.status import requeue_failed
    from worker.queue.job_queue import job_queue

    done = requeue_failed(job_queue(settings, client_redis(settings)), args.job_ids)
    print(f"requeued {len(done)} job{'s' if len(done) != 1 else ''}" + (": " + ", ".join(done) if done else ""))
    return 0


def run_feedback(args: argparse.Namespace, settings: Settings) -> int:
    from worker.feedback.report import render, write_jsonl
    from worker.feedback.store import FeedbackStore
    from worker.queue.keys import RedisKeys

    store = FeedbackStore(client_redis(settings), RedisKeys.for_settings(settings), settings.feedback_retention_days)
    if args.jsonl is None:
        ratings = store.newest(args.limit or LISTED_RATINGS, args.rating)
        print(render(ratings, args.rating, settings.feedback_retention_days))
        return 0
    ratings = store.newest(args.limit, args.rating)
    if args.jsonl == "-":
        written = write_jsonl(ratings, sys.stdout)
        # On stderr: stdout holds only the JSON lines (piped into an evaluation, say).
        print(f"wrote {written} rating{'s' if written != 1 else ''}", file=sys.stderr)
        return 0
    try:
        out = open(args.jsonl, "w", encoding="utf-8")
    except OSError as err:  # one line, like every other mistake on the command line
        raise ValueError(f"cannot write {args.jsonl}: {err.strerror}") from None
    with out:
        written = write_jsonl(ratings, out)
    print(f"wrote {written} rating{'s' if written != 1 else ''} to {args.jsonl}")
    return 0


def run_ask(args: argparse.Namespace, settings: Settings) -> int:
    from bot.console import checked_question

    question = checked_question(args.question)  # BadQuestion: one line, exit code 2 (see main)
    return 0 if print_answer(settings, [("user", question)]) is not None else 1


def run_chat(args: argparse.Namespace, settings: Settings) -> int:
    from bot.console import BadQuestion, checked_question

    turns = []
    print("xwinbot chat — an empty line or Ctrl-D ends it; Ctrl-C cancels a question and ends it")
    while True:
        try:
            line = input("> ")
        except EOFError:
            return 0
        if not line:
            return 0
        try:
            question = checked_question(line)
        except BadQuestion as err:  # say why and keep the conversation going
            print(f"xwinbot: {err}", file=sys.stderr)
            continue
        turns.append(("user", question))
        answer = print_answer(settings, turns)
        if answer is None:
            turns.pop()
        else:
            turns.append(("assistant", answer))


def run_up(args: argparse.Namespace, settings: Settings) -> int:
    from bot.launch import start_adapters
    from worker.ops.preflight import check
    from worker.up import up

    check(settings, "up", redis_must_answer=False)  # `up` starts a local Redis when none answers
    return up(settings, start_adapters)


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    if args.gpus:
        import os

        from worker.gpu_workers import CHILD_COMMAND, GpuWorkers, choose_gpus, visible_gpu_count
        from worker.ops.preflight import check_redis

        devices = choose_gpus(args.gpus, visible_gpu_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        check_redis(settings)  # one line here, rather than every child exiting 2 and being restarted forever
        command = [*CHILD_COMMAND[:3], *(["-v"] if args.verbose else []), *CHILD_COMMAND[3:]]
        return GpuWorkers(devices, command, metrics_port=settings.metrics_port).run()
    from worker.ops.preflight import check

    check(settings, "worker")  # before importing the engine (torch): a wrong setting is said at once
    from worker.serve import WorkerProcess, run_until_stopped

    run_until_stopped(WorkerProcess(settings))
    return 0


def run_slack(args: argparse.Namespace, settings: Settings) -> int:
    from bot.slack.app import run
    from worker.ops.preflight import check

    check(settings, "slack")
    run(settings)
    return 0


def run_discord(args: argparse.Namespace, settings: Settings) -> int:
    from bot.discord.client import run
    from worker.ops.preflight import check

    check(settings, "discord")
    run(settings)
    return 0


def run_api(args: argparse.Namespace, settings: Settings) -> int:
    from bot.api.app import run
    from worker.ops.preflight import check

    check(settings, "api")
    run(settings)
    return 0


def run_discord_invite(args: argparse.Namespace, settings: Settings) -> int:
    from bot.discord.client import application_id_from_token, invite_url

    application_id = args.application_id
    if application_id is None:
        token = settings.discord_token
        if token is None:
            raise ValueError("give --application-id, or set XWINBOT_DISCORD_TOKEN to read it from the token")
        application_id = application_id_from_token(token.get_secret_value())
    print(invite_url(application_id))
    return 0


def run_demo_model(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from worker.model.demo_model import build_demo_model

    print(build_demo_model(Path(args.out) if args.out else None, force=args.force))
    return 0


COMMANDS = {"up": run_up, "worker": run_worker, "ask": run_ask, "chat": run_chat, "generate": run_generate,
            "slack": run_slack, "discord": run_discord, "api": run_api, "status": run_status,
            "requeue-failed": run_requeue_failed, "feedback": run_feedback, "discord-invite": run_discord_invite,
            "demo-model": run_demo_model}


SERVICES = {"up", "worker", "slack", "discord", "api"}
USAGE_ERROR = 2  # argparse's exit code for a bad command line; a question with nothing to ask is one too
REDIS_UNUSABLE = 2  # as a bad setting: the command cannot do anything until XWINBOT_REDIS_URL (or Redis) is fixed
INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        settings = Settings()
    except ValidationError as err:
        print("xwinbot: invalid settings:", file=sys.stderr)
        for problem in err.errors(include_url=False, include_input=False):
            print(f"  - XWINBOT_{str(problem['loc'][0]).upper()}: {problem['msg']}", file=sys.stderr)
        return 2
    except SettingsError as err:  # a value that should be JSON (a list of prompts) is not
        field = str(err).partition('field "')[2].partition('"')[0]
        print(f"xwinbot: invalid settings:\n  - XWINBOT_{field.upper()}: not valid JSON (e.g. [\"one\", \"two\"])",
              file=sys.stderr)
        return 2
    from worker.logs import setup_logging

    # services log at XWINBOT_LOG_LEVEL; ask/chat/generate print answers, and only warnings besides
    level = "DEBUG" if args.verbose else settings.log_level if args.command in SERVICES else "WARNING"
    setup_logging(level, settings.log_format)
    from redis.exceptions import RedisError

    from bot.console import BadQuestion
    from worker.queue.job_queue import Busy

    try:
        return COMMANDS[args.command](args, settings)
    except KeyboardInterrupt:
        if args.command in SERVICES:
            raise
        print("\nxwinbot: cancelled", file=sys.stderr)  # the question, if any, was cancelled on the way here
        return INTERRUPTED
    except BadQuestion as err:
        print(f"xwinbot: {err}", file=sys.stderr)
        return USAGE_ERROR
    except Busy as err:
        print(f"xwinbot: {err.message}", file=sys.stderr)
        return 1
    except RedisUnavailable as err:  # at start: nothing answers, the password or the user refused, TLS failed
        print(f"xwinbot {args.command}: {err}", file=sys.stderr)
        return REDIS_UNUSABLE
    except RedisError as err:  # later: Redis away for longer than XWINBOT_REDIS_RETRY_S, or it refused a command
        from worker.queue.redis_connection import describe_failure

        print(f"xwinbot {args.command}: {describe_failure(err, settings)}", file=sys.stderr)
        return REDIS_UNUSABLE
    except (CheckpointError, PromptTooLong, ValueError, RuntimeError, TimeoutError) as err:
        print(f"xwinbot: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
