"""Model output shown in Slack exactly as written, pinging no one; Slack markup read back as plain text."""

from bot.slack.history import plain_text, turns_from_messages
from tests.helpers.paths import REPO
from worker.posters.slack_text import WORD_JOINER, escape, message_parts, no_pings, slack_size


def test_broadcast_and_user_mentions_are_neutralised():
    text = "Hey <!channel> and <!here|here> and <!everyone>, ping <@U123ABC> and <!subteam^S999|@devs>, see <#C1>"
    out = no_pings(text)
    assert "<!" not in out and "<@" not in out and "<#" not in out  # no Slack mention token survives
    assert out.replace(WORD_JOINER, "") == text  # and the person reads exactly what the model wrote


def test_entity_spelled_mentions_are_neutralised_too():
    """In case Slack decodes HTML entities in markdown_text before it looks for mentions."""
    out = no_pings("&lt;!channel&gt; &#60;@U1&gt; &#x3C;!here&gt;")
    assert "&lt;!" not in out and "&#60;@" not in out and "&#x3C;!" not in out
    assert out.replace(WORD_JOINER, "") == "&lt;!channel&gt; &#60;@U1&gt; &#x3C;!here&gt;"


def test_bare_at_here_gets_a_word_joiner():
    out = no_pings("@here @channel @Everyone but not @herein or email@here.com")
    assert out.count("@" + WORD_JOINER) == 4  # includes email@here: harmless, and cannot ping
    assert "@herein" in out


def test_markdown_is_left_for_slack_to_render():
    text = "# Title\n\n**bold**, *italic*, ~~strike~~, [a link](https://example.com), `a < b && c > d`"
    assert message_parts(text, 12_000) == [text]


def test_links_and_autolinks_are_kept():
    assert no_pings("<https://example.com> and <mailto:a@b.c>") == "<https://example.com> and <mailto:a@b.c>"


def test_size_counts_word_joiners_and_utf16_units():
    assert slack_size("@here") == 6
    assert slack_size("\U0001F600") == 2


def test_status_text_escaping_for_mrkdwn():
    assert escape("a < b & <!channel>") == "a &lt; b &amp; &lt;!channel&gt;"


def test_ampersands_and_angle_brackets_round_trip_through_history():
    text = "if a < b && b > c: print('<tag>') <!channel>"
    assert plain_text(no_pings(text), None) == text


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
    assert events == {"app_mention", "message.channels", "message.groups", "message.im", "reaction_added",
                      "assistant_thread_started", "assistant_thread_context_changed"}
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == {
        "app_mentions:read", "chat:write", "channels:history", "groups:history", "im:history", "reactions:read",
        "files:read", "commands", "assistant:write"}
    assert [(s["type"], s["callback_id"]) for s in manifest["features"]["shortcuts"]] == [
        ("message", "ask_about_message")]
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["settings"]["interactivity"]["is_enabled"] is True  # the shortcut, the buttons, the modals


def test_the_manifests_assistant_view_suggests_the_default_prompts():
    import yaml

    from worker.settings import DEFAULT_SLACK_SUGGESTED_PROMPTS

    view = yaml.safe_load((REPO / "bot/slack/manifest.yml").read_text())["features"]["assistant_view"]
    assert view["assistant_description"].strip()
    # Slack's manifest schema: title and message each, at most 4 prompts
    assert view["suggested_prompts"] == [{"title": p, "message": p} for p in DEFAULT_SLACK_SUGGESTED_PROMPTS]
    assert len(view["suggested_prompts"]) <= 4
