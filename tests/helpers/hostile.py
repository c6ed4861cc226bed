"""What the hostile-input tests share: the corpus (tests/data/hostile_inputs.yaml), its ``$name`` placeholders,
and what a Slack ping looks like in text the bot sent."""

from __future__ import annotations

import re

import yaml

from tests.helpers.paths import TEST_DATA

CORPUS = yaml.safe_load((TEST_DATA / "hostile_inputs.yaml").read_text(encoding="utf-8"))
# A mention Slack would act on: markup that is not broken by the word joiner, or a bare @everyone/@here/@channel.
SLACK_PINGS = re.compile(r"<[!@]|(?<![\w\u2060])@(?:everyone|here|channel)\b", re.IGNORECASE)


def cases(check: str | None) -> list[dict]:
    """The corpus's cases of one section: ``check: injection`` for the injection/privacy test, None for the rest."""
    return [case for case in CORPUS if case.get("check") == check]


def substitute(value, values: dict):
    """``$name`` placeholders of a payload replaced by the case's own ids (a whole ``$name`` keeps its type)."""
    if isinstance(value, dict):
        return {key: substitute(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, values) for item in value]
    if isinstance(value, str):
        for name, replacement in sorted(values.items(), key=lambda item: -len(item[0])):
            value = value.replace(f"${name}", str(replacement))
    return value
