"""The channels file: each channel's persona and settings, clear errors at start, reloaded when it changes."""

from __future__ import annotations

import os

import pytest

from bot.channel_config import ChannelRules, ChannelsFileError
from worker.queue.job import GenerationOverrides

YAML = """
slack:
  C0SRE: {system_prompt: "You are the SRE team's assistant.", temperature: 0.2, max_new_tokens: 200}
discord:
  channels:
    "111": {top_k: 5}
  servers:
    "900": {system_prompt: "Answer as the support bot."}
"""

TOML = """
[slack.C0SRE]
system_prompt = "You are the SRE team's assistant."
temperature = 0.2

[discord.servers.900]
max_new_tokens = 64
"""


def write(path, text):
    path.write_text(text, encoding="utf-8")
    stamp = path.stat().st_mtime_ns + 1_000_000_000  # a distinct modification time even on coarse clocks
    os.utime(path, ns=(stamp, stamp))
    return path


def test_yaml_rules_by_slack_channel_and_discord_channel_parent_and_server(tmp_path):
    rules = ChannelRules(write(tmp_path / "channels.yaml", YAML)).current()
    sre = rules.for_slack("C0SRE")
    assert sre.system_prompt == "You are the SRE team's assistant."
    assert sre.overrides() == GenerationOverrides(temperature=0.2, max_new_tokens=200)
    assert rules.for_slack("C0OTHER").system_prompt is None
    assert rules.for_discord(111, server_id=900).top_k == 5  # the channel's rule before the server's
    assert rules.for_discord(222, parent_id=111, server_id=900).top_k == 5  # a thread takes its channel's
    assert rules.for_discord(333, server_id=900).system_prompt == "Answer as the support bot."
    assert rules.for_discord(333, server_id=901).system_prompt is None


def test_what_a_person_asks_for_wins_over_the_channel(tmp_path):
    rule = ChannelRules(write(tmp_path / "c.yaml", YAML)).current().for_slack("C0SRE")
    assert rule.overrides(GenerationOverrides(temperature=1.0)) == GenerationOverrides(temperature=1.0,
                                                                                      max_new_tokens=200)


def test_toml_works_too(tmp_path):
    rules = ChannelRules(write(tmp_path / "channels.toml", TOML)).current()
    assert rules.for_slack("C0SRE").temperature == 0.2 and rules.for_discord(1, server_id=900).max_new_tokens == 64


@pytest.mark.parametrize("text, problems", [
    ("slack:\n  C1: {temprature: 0.2}\n", ["slack.C1.temprature: Extra inputs are not permitted"]),
    ("slack:\n  C1: {temperature: 9}\n  C2: {max_new_tokens: 0}\n",
     ["slack.C1.temperature: Input should be less than or equal to 2", "slack.C2.max_new_tokens"]),
    ("discord:\n  guilds: {}\n", ["discord.guilds: Extra inputs are not permitted"]),
    ("slack: [unclosed\n", ["not valid YAML"]),
])
def test_a_bad_file_names_every_problem_at_start(tmp_path, text, problems):
    with pytest.raises(ChannelsFileError) as info:
        ChannelRules(write(tmp_path / "bad.yaml", text))
    message = str(info.value)
    assert message.startswith(f"XWINBOT_CHANNELS_FILE={tmp_path / 'bad.yaml'}")
    assert all(p in message for p in problems), message


def test_a_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(ChannelsFileError, match="cannot read it"):
        ChannelRules(tmp_path / "nope.yaml")


def test_changes_are_picked_up_and_a_broken_edit_keeps_the_last_good_rules(tmp_path, caplog):
    path = write(tmp_path / "channels.yaml", YAML)
    rules = ChannelRules(path)
    assert rules.current().for_slack("C0SRE").temperature == 0.2
    write(path, YAML.replace("temperature: 0.2", "temperature: 0.7"))
    assert rules.current().for_slack("C0SRE").temperature == 0.7
    write(path, "slack:\n  C0SRE: {temperature: nope}\n")
    assert rules.current().for_slack("C0SRE").temperature == 0.7
    assert any("keeping the previous rules" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_no_file_no_rules():
    assert ChannelRules(None).current().for_slack("C1").overrides() == GenerationOverrides()
