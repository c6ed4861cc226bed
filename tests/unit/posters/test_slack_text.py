"""Model output shown in Slack exactly as written, pinging no one; Slack markup read back as plain text."""

from bot.slack.history import plain_text, turns_from_messages
from tests.helpers.paths import REPO
from worker.posters.slack_text import WORD_JOINER, to_slack


def test_broadcast_and_user_mentions_are_neutralised():
    out = to_slack("Hey <!channel> and <!here|here> and <!everyone>, ping <@U123ABC> and <!subteam^S999|@devs>")
    assert "<" not in out and ">" not in out  # no Slack link/mention syntax survives
    assert "&lt;!channel&gt;" in out and "&lt;@U123ABC&gt;" in out and "&lt;!subteam^S999|@devs&gt;" in out


def test_bare_at_here_gets_a_word_joiner():
    out = to_slack("@here @channel @Everyone but not @herein or email@here.com")
    assert out.count("@" + WORD_JOINER) == 4  # includes email@here: harmless, and cannot ping
    assert "@herein" in out


def test_ampersands_and_angle_brackets_round_trip():
    text = "if a < b && b > c: print('<tag>') &amp;"
    assert plain_text(to_slack(text), None) == text


def test_bold_becomes_slack_bold():
    assert to_slack("This is **very** important") == "This is *very* important"


def test_plain_text_strips_the_bot_mention_and_reads_markup():
    text = "<@UBOT> what is <https://example.com|this site> about, <@U42>? See <#C1|general> &amp; <!here>"
    assert plain_text(text, "UBOT") == "what is this site about, @U42? See #general & @here"


def test_thread_history_becomes_alternating_turns():
    messages = [
        {"ts": "1.0", "user": "U1", "text": "<@UBOT> capital of France?"},
        {"ts": "1.1", "user": "UBOT", "bot_id": "BBOT", "text": "Paris."},
        {"ts": "1.2", "user": "U2", "text": "and Germany?"},
        {"ts": "1.3", "user": "U1", "text": "(I mean the capital)"},
        {"ts": "1.4", "user": "UOTHER", "bot_id": "BOTHER", "text": "another bot's chatter"},
        {"ts": "1.5", "user": "UBOT", "bot_id": "BBOT", "text": "_thinking… #2 in queue_"},
        {"ts": "1.6", "user": "U1", "text": "<@UBOT> please answer", "subtype": None},
        {"ts": "1.7", "user": "U1", "text": "edited", "subtype": "message_changed"},
    ]
    turns = turns_from_messages(messages, "UBOT", "BBOT")
    assert [(t.role, t.text) for t in turns] == [
        ("user", "capital of France?"),
        ("assistant", "Paris."),
        ("user", "and Germany?\n\n(I mean the capital)\n\nplease answer"),
    ]


def test_the_manifest_subscribes_exactly_the_events_the_app_listens_to():

    import yaml

    manifest = yaml.safe_load((REPO / "bot/slack/manifest.yml").read_text())
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert events == {"app_mention", "message.channels", "message.groups", "message.im", "reaction_added"}
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == {
        "app_mentions:read", "chat:write", "channels:history", "groups:history", "im:history", "reactions:read",
        "files:read", "commands"}
    assert [(s["type"], s["callback_id"]) for s in manifest["features"]["shortcuts"]] == [
        ("message", "ask_about_message")]
    assert manifest["settings"]["socket_mode_enabled"] is True
