"""The ``xwinbot`` command. Subcommands: ``ask`` (answer one question here), ``demo-model`` (build it)."""

from __future__ import annotations

import argparse
import logging
import sys

from worker.errors import CheckpointError, PromptTooLong
from worker.prompt import Turn
from worker.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xwinbot", description="A self-hosted GPTQ LLM for team chat.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="answer one question with the configured model, streaming to stdout")
    ask.add_argument("question")
    ask.add_argument("--model", help="GPTQ checkpoint: Hub repo id or local directory (XWINBOT_MODEL)")
    ask.add_argument("--revision", help="Hub branch or commit (XWINBOT_MODEL_REVISION)")
    ask.add_argument("--template", choices=["auto", "vicuna", "alpaca", "chat"], help="prompt template")
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--max-new-tokens", type=int)

    demo = commands.add_parser("demo-model", help="build the offline demo model (SmolLM2-135M as 4-bit GPTQ)")
    demo.add_argument("--out", help="directory to write (default: the xwinbot cache)")
    demo.add_argument("--force", action="store_true", help="rebuild even if it exists")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {
        "model": args.model,
        "model_revision": args.revision,
        "template": args.template,
        "system_prompt": args.system,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
    }
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


def run_ask(args: argparse.Namespace) -> int:
    from worker.model_setup import load_generator

    generator = load_generator(settings_from_args(args))
    for piece in generator.stream([Turn("user", args.question)]):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def run_demo_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from worker.demo_model import build_demo_model

    print(build_demo_model(Path(args.out) if args.out else None, force=args.force))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"ask": run_ask, "demo-model": run_demo_model}[args.command](args)
    except (CheckpointError, PromptTooLong, ValueError, RuntimeError) as err:
        print(f"xwinbot: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
