"""The fake Slack against the real clients: slack_sdk's WebClient, bolt's App and its builtin Socket Mode handler."""

from __future__ import annotations

import json
import time

import pytest
from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier

from tests.fakes.fake_slack import FakeSlack


@pytest.fixture(scope="module")
def fake():
    with FakeSlack() as server:
        yield server


@pytest.fixture
def client(fake):
    return WebClient(token=fake.bot_token, base_url=fake.api_url)


def test_web_client_posts_updates_and_reads_threads_and_history_page_by_page(fake, client):
    parent = fake.add_user_message("CWEB", "U1", "a question")
    posted = [client.chat_postMessage(channel="CWEB", text=f"reply {i}", thread_ts=parent) for i in range(5)]
    assert all(r["ok"] and r["message"]["bot_id"] == fake.bot_id for r in posted)
    first = posted[0]["ts"]
    assert client.chat_update(channel="CWEB", ts=first, text="reply 0, edited")["text"] == "reply 0, edited"
    assert fake.history_of("CWEB", first) == ["reply 0", "reply 0, edited"]

    pages = [page["messages"] for page in client.conversations_replies(channel="CWEB", ts=parent, limit=2)]
    assert [len(p) for p in pages] == [2, 2, 2]
    texts = [m["text"] for p in pages for m in p]
    assert texts == ["a question", "reply 0, edited", "reply 1", "reply 2", "reply 3", "reply 4"]
    assert fake.thread("CWEB", parent)[0]["reply_count"] == 5
    assert [m["ts"] for m in fake.messages("CWEB")] == [parent] + [r["ts"] for r in posted]

    tops = [client.chat_postMessage(channel="CHIST", text=f"top {i}")["ts"] for i in range(3)]
    client.chat_postMessage(channel="CHIST", text="in a thread", thread_ts=tops[0])
    history = [m["ts"] for page in client.conversations_history(channel="CHIST", limit=2) for m in page["messages"]]
    assert history == tops[::-1]  # newest first, thread replies left out

    assert client.chat_delete(channel="CWEB", ts=posted[4]["ts"])["ok"]
    assert fake.thread("CWEB", parent)[0]["reply_count"] == 4
    assert client.chat_postEphemeral(channel="CWEB", user="U1", text="just you")["message_ts"]
    assert client.users_info(user="U1")["user"]["is_bot"] is False
    assert fake.calls_to("chat.postMessage")[0].args == {"channel": "CWEB", "text": "reply 0", "thread_ts": parent}


@pytest.mark.parametrize("call, error", [
    (lambda c, p: c.chat_postMessage(channel="CERR", text="x" * 4001), "msg_too_long"),
    (lambda c, p: c.chat_update(channel="CERR", ts=p, text="hijack"), "cant_update_message"),
    (lambda c, p: c.chat_update(channel="CERR", ts="1.000001", text="gone"), "message_not_found"),
    (lambda c, p: c.conversations_replies(channel="CERR", ts="1.000001"), "thread_not_found"),
    (lambda c, p: c.api_call("chat.scheduleMessage"), "unknown_method"),
    (lambda c, p: WebClient(token="xoxb-wrong", base_url=c.base_url).auth_test(), "invalid_auth"),
    (lambda c, p: c.apps_connections_open(app_token="xapp-wrong"), "invalid_auth"),
])
def test_errors_answer_like_slack(fake, client, call, error):
    human = fake.add_user_message("CERR", "U1", "mine")
    with pytest.raises(SlackApiError) as raised:
        call(client, human)
    assert raised.value.response["error"] == error and fake.calls[-1].status == 200


def test_fail_next_fails_only_the_next_calls(fake, client):
    fake.fail_next("chat.postMessage", "channel_not_found", times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError, match="channel_not_found"):
            client.chat_postMessage(channel="CFAIL", text="hi")
    assert client.chat_postMessage(channel="CFAIL", text="hi")["ok"]


def test_rate_limit_answers_429_and_the_retry_handler_waits_retry_after(fake, client):
    fake.rate_limit("chat.postMessage", times=1, retry_after=3)
    with pytest.raises(SlackApiError) as raised:
        client.chat_postMessage(channel="CRATE", text="too fast")
    assert raised.value.response.status_code == 429 and raised.value.response["error"] == "ratelimited"
    assert raised.value.response.headers["Retry-After"] == "3"

    fake.rate_limit("chat.update", times=1, retry_after=1)
    patient = WebClient(token=fake.bot_token, base_url=fake.api_url, retry_handlers=[RateLimitErrorRetryHandler()])
    ts = patient.chat_postMessage(channel="CRATE", text="v1")["ts"]
    started = time.monotonic()
    assert patient.chat_update(channel="CRATE", ts=ts, text="v2")["ok"]
    assert time.monotonic() - started >= 1.0
    updates = [c for c in fake.calls_to("chat.update") if c.args["channel"] == "CRATE"]
    assert [c.status for c in updates] == [429, 200] and updates[1].at - updates[0].at >= 1.0
    assert fake.history_of("CRATE", ts) == ["v1", "v2"]


def test_bolt_app_on_the_socket_mode_handler_gets_events_and_answers(fake):
    app = App(client=WebClient(token=fake.bot_token, base_url=fake.api_url))  # calls auth.test on the fake
    clicks = []

    @app.event("app_mention")
    def on_mention(event, say):
        say(text=f"hello <@{event['user']}>", thread_ts=event["ts"])

    @app.action("press")
    def on_press(ack, body):
        ack()
        clicks.append(body["actions"][0]["value"])

    opened = len(fake.calls_to("apps.connections.open"))
    handler = SocketModeHandler(app, fake.app_token)  # its web_client defaults to app.client, i.e. the fake
    handler.connect()
    try:
        fake.wait_connected()
        fake.wait_for(lambda: handler.client.current_session.last_ping_pong_time is not None)  # its ping got a pong
        ts = fake.add_user_message("CBOLT", "U1", f"<@{fake.bot_user_id}> hi")
        event = {"type": "app_mention", "user": "U1", "text": f"<@{fake.bot_user_id}> hi", "ts": ts,
                 "channel": "CBOLT", "event_ts": ts, "channel_type": "channel"}
        sent = time.time()
        envelope = fake.send_event(event)
        assert fake.wait_ack(envelope) - sent < 1.0
        fake.wait_for(lambda: len(fake.thread("CBOLT", ts)) == 2)
        reply = fake.thread("CBOLT", ts)[1]
        assert reply["text"] == "hello <@U1>" and reply["user"] == fake.bot_user_id and reply["thread_ts"] == ts
        assert fake.envelopes[-1]["payload"]["authorizations"][0]["user_id"] == fake.bot_user_id

        press = fake.send_interactive({"type": "block_actions", "user": {"id": "U1"}, "trigger_id": "1.2",
                                       "channel": {"id": "CBOLT"}, "container": {"type": "message"},
                                       "actions": [{"type": "button", "action_id": "press", "block_id": "b",
                                                    "value": "yes", "action_ts": "1.3"}]})
        fake.wait_ack(press)
        fake.wait_for(lambda: clicks == ["yes"])

        # Slack asks the client to reconnect: it opens a new socket, and events flow on it
        fake.send_disconnect()
        fake.wait_for(lambda: len(fake.calls_to("apps.connections.open")) == opened + 2)
        fake.wait_connected()
        again = fake.send_event(dict(event, text=f"<@{fake.bot_user_id}> again"))
        fake.wait_ack(again)
        fake.wait_for(lambda: len(fake.thread("CBOLT", ts)) == 3)
    finally:
        handler.close()
    assert [c.token for c in fake.calls_to("apps.connections.open")[opened:]] == [fake.app_token] * 2


def test_signed_headers_pass_slacks_signature_verifier():
    fake = FakeSlack()
    body = json.dumps(fake.event_body({"type": "app_mention", "text": "hi"})).encode()
    headers = FakeSlack.signed_headers(body, "s3cret")
    assert SignatureVerifier("s3cret").is_valid_request(body, headers)
    assert not SignatureVerifier("other").is_valid_request(body, headers)
    stale = FakeSlack.signed_headers(body, "s3cret", timestamp=int(time.time()) - 600)
    assert not SignatureVerifier("s3cret").is_valid_request(body, stale)


def test_metadata_is_returned_only_when_asked_for_and_a_dropped_post_is_stored(fake, client):
    metadata = {"event_type": "xwinbot_message", "event_payload": {"job_id": "slack-job", "part": 1}}
    parent = fake.add_user_message("CMETA", "U1", "a question")
    fake.take_then_drop("chat.postMessage")
    with pytest.raises(OSError):  # the connection dropped before any response (the plain client, no retry)
        WebClient(token=fake.bot_token, base_url=fake.api_url, retry_handlers=[]).chat_postMessage(
            channel="CMETA", thread_ts=parent, text="part 1", metadata=metadata)
    replies = client.conversations_replies(channel="CMETA", ts=parent)["messages"]
    assert [m["text"] for m in replies] == ["a question", "part 1"] and "metadata" not in replies[1]
    with_metadata = client.conversations_replies(channel="CMETA", ts=parent, include_all_metadata=True)["messages"]
    assert with_metadata[1]["metadata"] == metadata
    top = client.chat_postMessage(channel="CMETA", text="top", metadata=metadata)["ts"]
    history = client.conversations_history(channel="CMETA", include_all_metadata=True)["messages"]
    assert history[0]["ts"] == top and history[0]["metadata"] == metadata


def test_a_delayed_call_waits_and_is_noted(fake, client):
    fake.delay("auth.test", 0.5)
    began = time.monotonic()
    assert client.auth_test()["ok"]
    assert time.monotonic() - began >= 0.5
    assert fake.delayed[-1][0] == "auth.test"
    began = time.monotonic()
    client.auth_test()
    assert time.monotonic() - began < 0.5  # only the next call


def test_a_native_stream_grows_in_its_thread_then_stops_into_an_ordinary_message(fake, client):
    question = fake.add_user_message("CSTREAM", "U1", "a question")
    client.assistant_threads_setStatus(channel_id="CSTREAM", thread_ts=question, status="is thinking…")
    started = client.chat_startStream(channel="CSTREAM", thread_ts=question, recipient_user_id="U1",
                                      recipient_team_id=fake.team_id, markdown_text="**Paris** is")
    ts = started["ts"]
    assert fake.status_of("CSTREAM", question) == ""  # the app posted in the thread
    client.chat_appendStream(channel="CSTREAM", ts=ts, markdown_text=" the capital")
    client.chat_appendStream(channel="CSTREAM", ts=ts, chunks=[{"type": "markdown_text", "text": " of France."},
                                                               {"type": "plan_update", "title": "Answering"}])
    assert fake.history_of("CSTREAM", ts) == ["**Paris** is", "**Paris** is the capital",
                                              "**Paris** is the capital of France."]
    assert fake.streaming("CSTREAM", ts)
    with pytest.raises(SlackApiError, match="streaming_state_conflict"):  # no edit while it streams
        client.chat_update(channel="CSTREAM", ts=ts, text="edited")

    metadata = {"event_type": "xwinbot_message", "event_payload": {"job_id": "j", "part": 0}}
    buttons = [{"type": "actions", "elements": [{"type": "button", "action_id": "again",
                                                 "text": {"type": "plain_text", "text": "Again"}}]}]
    client.chat_stopStream(channel="CSTREAM", ts=ts, blocks=buttons, metadata=metadata)
    (reply,) = client.conversations_replies(channel="CSTREAM", ts=question, include_all_metadata=True)["messages"][1:]
    assert reply["bot_id"] == fake.bot_id and reply["thread_ts"] == question and reply["metadata"] == metadata
    assert [b["type"] for b in reply["blocks"]] == ["markdown", "actions"]  # the blocks go under the text
    assert fake.shown("CSTREAM", ts) == "**Paris** is the capital of France." and not fake.streaming("CSTREAM", ts)
    with pytest.raises(SlackApiError, match="message_not_in_streaming_state"):
        client.chat_appendStream(channel="CSTREAM", ts=ts, markdown_text=" More.")
    client.chat_update(channel="CSTREAM", ts=ts, markdown_text="Paris.")  # an ordinary message now
    assert fake.shown("CSTREAM", ts) == "Paris."


@pytest.mark.parametrize("call, error", [
    (lambda c, q: c.chat_startStream(channel="CSTREAMERR", thread_ts="", markdown_text="x"), "invalid_arguments"),
    (lambda c, q: c.chat_startStream(channel="CSTREAMERR", thread_ts=q, markdown_text="x"), "invalid_arguments"),
    (lambda c, q: c.chat_startStream(channel="", thread_ts=q, recipient_user_id="U1", recipient_team_id="T1"),
     "channel_not_found"),
    (lambda c, q: c.chat_startStream(channel="DSTREAMERR", thread_ts=q, markdown_text="x" * 12_001),
     "msg_too_long"),
    (lambda c, q: c.chat_appendStream(channel="CSTREAMERR", ts="1.000001", markdown_text="x"), "message_not_found"),
    (lambda c, q: c.chat_appendStream(channel="CSTREAMERR", ts=q, markdown_text="x"),
     "message_not_in_streaming_state"),
    (lambda c, q: c.chat_stopStream(channel="CSTREAMERR", ts=q), "message_not_in_streaming_state"),
])
def test_stream_errors_answer_like_slack(fake, client, call, error):
    question = fake.add_user_message("CSTREAMERR", "U1", "a question")
    with pytest.raises(SlackApiError) as raised:
        call(client, question)
    assert raised.value.response["error"] == error


def test_a_dm_stream_needs_no_recipient_and_chunks_are_limited_each(fake, client):
    question = fake.add_user_message("DSTREAM", "U1", "a question")
    ts = client.chat_startStream(channel="DSTREAM", thread_ts=question)["ts"]
    client.chat_appendStream(channel="DSTREAM", ts=ts, markdown_text="x" * 12_000)
    with pytest.raises(SlackApiError, match="msg_too_long"):
        client.chat_appendStream(channel="DSTREAM", ts=ts, chunks=[{"type": "markdown_text", "text": "y" * 12_001}])
    client.chat_appendStream(channel="DSTREAM", ts=ts, markdown_text="z")  # the limit is per chunk, not in all
    assert fake.shown("DSTREAM", ts) == "x" * 12_000 + "z"


def test_slack_ends_a_stream_after_its_lifetime_and_a_person_can_stop_one(fake, client):
    question = fake.add_user_message("DSTREAMEND", "U1", "a question")
    fake.stream_lifetime_s = 0.3
    try:
        old = client.chat_startStream(channel="DSTREAMEND", thread_ts=question, markdown_text="slow")["ts"]
        time.sleep(0.35)
        for call in (lambda: client.chat_appendStream(channel="DSTREAMEND", ts=old, markdown_text=" answer"),
                     lambda: client.chat_stopStream(channel="DSTREAMEND", ts=old)):
            with pytest.raises(SlackApiError, match="message_not_in_streaming_state"):
                call()
    finally:
        fake.stream_lifetime_s = 300.0
    client.chat_update(channel="DSTREAMEND", ts=old, markdown_text="slow answer")  # what is left to do: edit it
    assert fake.shown("DSTREAMEND", old) == "slow answer"

    stopped = client.chat_startStream(channel="DSTREAMEND", thread_ts=question, markdown_text="long")["ts"]
    fake.stop_stream_by_user("DSTREAMEND", stopped)
    for call in (lambda: client.chat_appendStream(channel="DSTREAMEND", ts=stopped, markdown_text=" answer"),
                 lambda: client.chat_stopStream(channel="DSTREAMEND", ts=stopped)):
        with pytest.raises(SlackApiError, match="stopped_by_user"):
            call()
    client.chat_update(channel="DSTREAMEND", ts=stopped, markdown_text="long (stopped)")
    assert fake.shown("DSTREAMEND", stopped) == "long (stopped)"


def test_markdown_blocks_share_the_markdown_limit(fake, client):
    blocks = [{"type": "markdown", "text": "x" * 6_000}, {"type": "markdown", "text": "y" * 6_001}]
    with pytest.raises(SlackApiError, match="msg_too_long"):
        client.chat_postMessage(channel="CBLOCKS", text="fallback", blocks=blocks)
    ts = client.chat_postMessage(channel="CBLOCKS", text="fallback", blocks=blocks[:1])["ts"]
    assert fake.shown("CBLOCKS", ts) == "x" * 6_000 and fake.messages("CBLOCKS")[0]["text"] == "fallback"
