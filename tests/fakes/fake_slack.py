"""A loopback fake of Slack (Web API + Socket Mode) for tests, served by aiohttp on 127.0.0.1.

The real ``slack_sdk.WebClient``, the real bolt ``App`` and the real Socket Mode handler talk to it over real
sockets. The server runs its own asyncio loop in a daemon thread; every public method is safe to call from any
test thread. State (messages, calls, acks) lives under one lock.

Wiring the real clients to it::

    from slack_bolt import App
    from slack_bolt.adapter.socket_mode import SocketModeHandler
    from slack_sdk import WebClient

    with FakeSlack() as fake:
        # Pass `client=` only: bolt takes the token from it (giving `token=` too just logs a warning).
        # App construction calls auth.test on the fake (user_id=fake.bot_user_id, bot_id=fake.bot_id).
        app = App(client=WebClient(token=fake.bot_token, base_url=fake.api_url))
        # The handler's own SocketModeClient calls apps.connections.open through `web_client`, which defaults to
        # `app.client` (already pointed at the fake); apps_connections_open sends the app token as Bearer itself.
        # `web_client=WebClient(base_url=fake.api_url)` (no token) works just as well.
        handler = SocketModeHandler(app, fake.app_token)
        handler.connect()           # non-blocking; `start()` would block forever
        fake.wait_connected()
        envelope_id = fake.send_event({"type": "app_mention", "user": "U1", "text": "<@UBOT> hi",
                                       "channel": "C1", "ts": ts, "event_ts": ts})
        fake.wait_ack(envelope_id)
        ...
        handler.close()             # close the handler before the fake stops (else it tries to reconnect)

Socket Mode notes: apps.connections.open answers ``ws://127.0.0.1:PORT/socket``; slack_sdk's builtin client opens
a plain (non-TLS) socket for any port other than 443. On connect the fake sends Slack's ``hello``; aiohttp answers
the client's pings with pongs. The fake also pings the client every ``server_ping_interval`` s (no pong required):
the builtin client's reader blocks in recv() for up to 3 s and ``close()`` waits for it, so the pings keep
``handler.close()`` at about 1 s (its message queue polls once a second). Envelopes go to the newest connection;
the client acks with ``{"envelope_id": ...}`` (plus ``"payload"`` if the listener returned one), kept in ``acks``
and ``ack_payloads``; ``envelopes`` lists what was sent. ``send_disconnect()`` sends Slack's ``disconnect``
message, on which the client opens a new connection at once.

Web API notes: requests are POSTs (slack_sdk ignores ``http_verb``), form-encoded or JSON (chat.postMessage /
update / postEphemeral); both are accepted, plus the query string. The token is taken from ``Authorization:
Bearer`` (else a ``token`` arg) and kept out of ``ApiCall.args``. Form values stay strings except ``blocks`` /
``attachments`` / ``metadata``, which are JSON-decoded. Message ts come from the wall clock, strictly increasing.
``markdown_text`` (chat.postMessage / update) is kept as Slack shows it: a ``markdown`` block holding it, and the
message's ``text`` set to it; it may not come with ``text`` or ``blocks`` ("should not be used in conjunction with
blocks or text": the fake answers ``invalid_arguments``) and is limited to 12,000 characters (``msg_too_long``).
chat.update without ``blocks`` keeps the message's blocks, as Slack documents ("To remove previous blocks, include
an empty array"), so a ``text`` edit of a markdown message changes only its fallback text; given ``metadata`` it
replaces the message's (without, it keeps it). ``history_of`` and
``shown`` give what a person sees: the markdown blocks' text when there are any, else ``text``.
Native streaming (chat.startStream / appendStream / stopStream, JSON bodies): the stream is a bot message replying
in ``thread_ts`` (required: ``invalid_arguments``; so are ``recipient_user_id`` and ``recipient_team_id`` outside
a DM, a channel id not starting with "D") whose markdown block grows by each call's ``markdown_text`` or
``markdown_text`` chunks (each at most 12,000 characters: ``msg_too_long``); each growth is a ``history_of``
entry. stopStream's ``blocks`` go under the text and its ``metadata`` is kept as chat.postMessage keeps it. A
stream takes appends until it is stopped or ``stream_lifetime_s`` (Slack: about 5 minutes) after it started;
then appends and stops answer ``message_not_in_streaming_state``, or ``stopped_by_user`` after a test called
``stop_stream_by_user`` (the person pressed stop in Slack). chat.update of a stream still live answers
``streaming_state_conflict`` (our guard); once it ended it is an ordinary bot message. ``streaming()`` says
whether a message still streams.
``rate_limit()`` / ``fail_next()`` refuse the next calls of one method; ``outage()`` refuses every Web API call
for a while (bursts of 5xx and of 429 with Retry-After, unprocessed; see ``platform_outage.py``).

Redelivery: with ``event_retries`` (seconds after the first try), ``send_event`` behaves as Slack does for an
event that was not acknowledged: no client connected is no error, and the event is sent again as new envelopes
with ``retry_attempt``/``retry_reason`` until one is acknowledged (Slack: at once, after 1 and after 5 minutes).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import hashlib
import hmac
import inspect
import itertools
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.loopback_server import LoopbackServer
from tests.fakes.platform_outage import BURSTS, Outage

JSON_ARGS = ("blocks", "attachments", "metadata", "chunks")


@dataclass
class ApiCall:
    method: str
    args: dict
    at: float
    status: int
    token: str | None


class _ApiError(Exception):
    def __init__(self, error: str):
        super().__init__(error)
        self.error = error


@dataclass
class _Stream:
    """A message streamed with chat.startStream: live until stopped (by the app or the person) or too old."""

    started_at: float  # time.monotonic()
    ended_by: str | None = None  # None while live; "app" (chat.stopStream), "user" (stop_stream_by_user), "slack"


@dataclass
class _Connection:
    ws: web.WebSocketResponse
    ready: bool = False  # "hello" was sent


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = str(ts).partition(".")
    return int(seconds), int(micros or 0)


def _flag(value: Any) -> bool:
    return str(value).lower() in ("1", "true")


class FakeSlack(LoopbackServer):
    max_text_chars: int = 4000  # longer chat.postMessage / chat.update text answers msg_too_long
    max_markdown_chars: int = 12_000  # likewise for markdown_text (its documented limit)
    # An assistant thread's loading status disappears this long after it was set unless set again (Slack: two
    # minutes without a message); tests shorten it to see a status kept alive.
    status_lifetime_s: float = 120.0
    max_suggested_prompts: int = 4
    # Slack ends a streamed message this long after chat.startStream (appends do not extend it); tests shorten it.
    stream_lifetime_s: float = 300.0

    def __init__(self, bot_token="xoxb-test", app_token="xapp-test", bot_user_id="UBOT", bot_id="BBOT",
                 team_id="T0001", api_app_id="A0001", *, server_ping_interval: float | None = 0.5,
                 event_retries: tuple[float, ...] = ()):
        self.bot_token, self.app_token = bot_token, app_token
        self.bot_user_id, self.bot_id, self.team_id, self.api_app_id = bot_user_id, bot_id, team_id, api_app_id
        self.server_ping_interval = server_ping_interval
        self.event_retries = event_retries  # see send_event
        self._redeliveries: list = []  # futures of the pending redeliveries
        self.verification_token = "fake-verification-token"
        self.calls: list[ApiCall] = []
        self.acks: dict[str, float] = {}
        self.ack_payloads: dict[str, dict | None] = {}
        self.envelopes: list[dict] = []  # every envelope sent to a client, in order
        self.port: int | None = None
        self.api_url = ""
        self._cond = threading.Condition(threading.RLock())
        self._channels: dict[str, dict[str, dict]] = {}
        self._texts: dict[tuple[str, str], list[str]] = {}
        self._rate_limits: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._failures: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._drops: collections.Counter[str] = collections.Counter()  # see take_then_drop
        self._delays: dict[str, collections.deque] = collections.defaultdict(collections.deque)  # see delay
        self.delayed: list[tuple[str, float]] = []  # (method, when it arrived) of each delayed call
        self._outage: Outage | None = None
        self._connections: list[_Connection] = []
        self._last_micros = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        # The assistant (AI app) thread surfaces: (channel, thread_ts) -> what Slack shows there.
        self._statuses: dict[tuple[str, str], tuple[str, float]] = {}  # -> (status, when it was set)
        self.status_history: list[tuple[str, str, str]] = []  # (channel, thread_ts, status) of every setStatus
        self.suggested_prompts: dict[tuple[str, str | None], dict] = {}  # -> {"title": …, "prompts": […]}
        self.titles: dict[tuple[str, str], str] = {}
        self._streams: dict[tuple[str, str], _Stream] = {}  # (channel, ts) -> every message ever streamed

    # ------------------------------------------------------------------ lifecycle

    thread_name = "fake-slack"

    def _on_port(self, port: int) -> None:
        self.api_url = f"http://127.0.0.1:{port}/api/"

    async def _serve(self, sock: socket.socket) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        for path, handler in self._extra_routes():
            app.router.add_get(path, handler)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def _extra_routes(self) -> list[tuple[str, Callable]]:
        return []  # GET routes a subclass serves besides the Web API and the socket

    async def _shutdown(self) -> None:
        self._stopping.set()
        for redelivery in self._redeliveries:
            redelivery.cancel()
        with self._cond:
            live = list(self._connections)
        for conn in live:
            if conn.ready:
                await conn.ws.close(code=1001, message=b"fake slack stopping")
        await self._runner.cleanup()

    # ------------------------------------------------------------------ Web API

    async def _api(self, request: web.Request) -> web.Response:
        at = time.time()
        args: dict[str, Any] = dict(request.query)
        if request.body_exists:
            if request.content_type == "application/json":
                try:
                    body = await request.json()
                except ValueError:  # then the method complains about its missing args
                    body = None
                args.update(body if isinstance(body, dict) else {})
            else:
                form = await request.post()
                args.update({k: v for k, v in form.items() if isinstance(v, str)})
                for key in JSON_ARGS:
                    if isinstance(args.get(key), str) and args[key][:1] in "[{":
                        try:
                            args[key] = json.loads(args[key])
                        except ValueError:
                            pass
        header = request.headers.get("Authorization", "")
        token = header[len("Bearer "):] if header.startswith("Bearer ") else None
        token = token or args.get("token")
        args.pop("token", None)
        method = request.match_info["method"]
        with self._cond:
            pause = self._delays[method].popleft() if self._delays[method] else 0.0
            if pause:
                self.delayed.append((method, at))
                self._cond.notify_all()
        if pause:  # cut short when the fake stops (no request left pending on a closed loop)
            try:
                await asyncio.wait_for(self._stopping.wait(), pause)
            except TimeoutError:
                pass
        with self._cond:
            status, body, headers = self._dispatch(method, args, token)
            self.calls.append(ApiCall(method, args, at, status, token))
            drop = status == 200 and body.get("ok") and self._drops[method] > 0
            self._drops[method] -= 1 if drop else 0
            self._cond.notify_all()
        if drop:  # taken, but the client never hears so: a connection reset after Slack processed the call
            request.transport.abort()
            raise asyncio.CancelledError
        return web.json_response(body, status=status, headers=headers)

    def _dispatch(self, method: str, args: dict, token: str | None) -> tuple[int, dict, dict]:
        refused = self._outage.refusal() if self._outage else None
        if refused == 429:
            return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(self._outage.retry_after)}
        if refused:
            return refused, {"ok": False, "error": "service_unavailable"}, {}
        if self._rate_limits[method]:
            retry_after = self._rate_limits[method].popleft()
            return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)}
        if token != (self.app_token if method == "apps.connections.open" else self.bot_token):
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        if self._failures[method]:
            return 200, {"ok": False, "error": self._failures[method].popleft()}, {}
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method"}, {}
        try:
            return 200, {"ok": True, **handler(args)}, {}
        except _ApiError as err:
            return 200, {"ok": False, "error": err.error}, {}
        except (TypeError, ValueError):  # e.g. limit=abc
            return 200, {"ok": False, "error": "invalid_arguments"}, {}

    def _m_auth_test(self, args: dict) -> dict:
        return {"url": "https://xwin-test.slack.com/", "team": "xwin-test", "user": "xwinbot",
                "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id,
                "is_enterprise_install": False}

    def _m_apps_connections_open(self, args: dict) -> dict:
        return {"url": f"ws://127.0.0.1:{self.port}/socket"}

    def _m_chat_postMessage(self, args: dict) -> dict:
        channel = self._arg(args, "channel", "channel_not_found")
        markdown = self._markdown(args)
        text = markdown if markdown is not None else self._text(args)
        msg = {"type": "message", "ts": self._new_ts(), "text": text, "user": self.bot_user_id,
               "bot_id": self.bot_id, "app_id": self.api_app_id, "team": self.team_id}
        if args.get("thread_ts"):
            msg["thread_ts"] = str(args["thread_ts"])
        if args.get("blocks"):
            msg["blocks"] = args["blocks"]
        if markdown is not None:
            msg["blocks"] = [{"type": "markdown", "text": markdown}]
        self._keep_metadata(msg, args)
        self._store(channel, msg)
        return {"channel": channel, "ts": msg["ts"], "message": copy.deepcopy(msg)}

    def _m_chat_update(self, args: dict) -> dict:
        channel, msg = self._find(args)
        if msg.get("bot_id") != self.bot_id:
            raise _ApiError("cant_update_message")
        if self._stream_state(channel, msg["ts"]) == "live":
            # Our guard: Slack's chat.update reference does not say what a message still streaming answers;
            # streaming_state_conflict is the error other Slack clients report for it.
            raise _ApiError("streaming_state_conflict")
        markdown = self._markdown(args)
        text = markdown if markdown is not None else self._text(args, required=False)
        msg["text"] = text if "text" in args or markdown is not None else msg["text"]
        if "blocks" in args:
            msg["blocks"] = args["blocks"]
        if markdown is not None:
            msg["blocks"] = [{"type": "markdown", "text": markdown}]
        if not msg.get("blocks"):
            msg.pop("blocks", None)
        self._keep_metadata(msg, args)
        msg["edited"] = {"user": self.bot_user_id, "ts": self._new_ts()}
        self._texts[(channel, msg["ts"])].append(self._shown(msg))
        return {"channel": channel, "ts": msg["ts"], "text": msg["text"], "message": copy.deepcopy(msg)}

    def _m_chat_delete(self, args: dict) -> dict:
        channel, msg = self._find(args)
        if msg.get("bot_id") != self.bot_id:
            raise _ApiError("cant_delete_message")
        del self._channels[channel][msg["ts"]]
        parent = self._channels[channel].get(msg.get("thread_ts", msg["ts"]))
        if parent is not None and parent.get("reply_count"):
            parent["reply_count"] -= 1
        return {"channel": channel, "ts": msg["ts"]}

    def _m_chat_postEphemeral(self, args: dict) -> dict:
        self._arg(args, "channel", "channel_not_found")
        self._arg(args, "user", "user_not_in_channel")
        self._text(args)
        return {"message_ts": self._new_ts()}

    def _m_conversations_replies(self, args: dict) -> dict:
        channel = self._arg(args, "channel", "channel_not_found")
        stored = self._channels.get(channel, {})
        msg = stored.get(str(self._arg(args, "ts", "thread_not_found")))
        if msg is None:
            raise _ApiError("thread_not_found")
        root = msg.get("thread_ts", msg["ts"])
        thread = [m for m in stored.values() if m["ts"] == root or m.get("thread_ts") == root]
        return self._page(sorted(thread, key=lambda m: _ts_key(m["ts"])), args, 1000, newest_first=False)

    def _m_conversations_history(self, args: dict) -> dict:
        channel = self._arg(args, "channel", "channel_not_found")
        top = [m for m in self._channels.get(channel, {}).values() if m.get("thread_ts", m["ts"]) == m["ts"]]
        return self._page(sorted(top, key=lambda m: _ts_key(m["ts"]), reverse=True), args, 100, newest_first=True)

    def _m_reactions_add(self, args: dict) -> dict:
        return {}

    def _m_users_info(self, args: dict) -> dict:
        user = self._arg(args, "user", "user_not_found")
        name = "xwinbot" if user == self.bot_user_id else f"user-{user.lower()}"
        return {"user": {"id": user, "team_id": self.team_id, "name": name, "real_name": name.title(),
                         "is_bot": user == self.bot_user_id, "deleted": False,
                         "profile": {"real_name": name.title(), "display_name": name}}}

    def _m_assistant_threads_setStatus(self, args: dict) -> dict:
        """Slack's assistant.threads.setStatus: the "is thinking…" line under a thread; "" clears it. It also
        disappears when the app posts in the thread (``_store``) and ``status_lifetime_s`` after it was set."""
        channel = self._arg(args, "channel_id", "channel_not_found")
        thread_ts = str(self._arg(args, "thread_ts", "invalid_thread_ts"))
        if "status" not in args:
            raise _ApiError("invalid_arguments")
        status = str(args["status"] or "")
        loading = args.get("loading_messages")
        if loading is not None and (not isinstance(loading, list) or len(loading) > 10):
            raise _ApiError("invalid_arguments")
        self._statuses[(channel, thread_ts)] = (status, time.monotonic())
        self.status_history.append((channel, thread_ts, status))
        return {}

    def _m_assistant_threads_setSuggestedPrompts(self, args: dict) -> dict:
        channel = self._arg(args, "channel_id", "channel_not_found")
        prompts = args.get("prompts")
        if (not isinstance(prompts, list) or not prompts or len(prompts) > self.max_suggested_prompts
                or not all(isinstance(p, dict) and p.get("title") and p.get("message") for p in prompts)):
            raise _ApiError("invalid_arguments")
        self.suggested_prompts[(channel, args.get("thread_ts"))] = {"title": args.get("title"), "prompts": prompts}
        return {}

    def _m_assistant_threads_setTitle(self, args: dict) -> dict:
        channel = self._arg(args, "channel_id", "channel_not_found")
        thread_ts = str(self._arg(args, "thread_ts", "invalid_thread_ts"))
        self.titles[(channel, thread_ts)] = str(self._arg(args, "title", "invalid_arguments"))
        return {}

    # -- native streaming: chat.startStream / appendStream / stopStream

    def _m_chat_startStream(self, args: dict) -> dict:
        """A bot message replying in a thread whose Markdown then grows with each append. Outside a DM (a channel
        id not starting with "D") Slack wants the recipient user and team."""
        channel = self._arg(args, "channel", "channel_not_found")
        if not args.get("thread_ts"):
            raise _ApiError("invalid_arguments")
        if not str(channel).startswith("D") and not (args.get("recipient_user_id") and args.get("recipient_team_id")):
            raise _ApiError("invalid_arguments")
        markdown = self._stream_text(args, required=False)
        msg = {"type": "message", "ts": self._new_ts(), "text": markdown, "user": self.bot_user_id,
               "bot_id": self.bot_id, "app_id": self.api_app_id, "team": self.team_id,
               "thread_ts": str(args["thread_ts"]), "blocks": [{"type": "markdown", "text": markdown}]}
        self._streams[(channel, msg["ts"])] = _Stream(time.monotonic())
        self._store(channel, msg)
        return {"channel": channel, "ts": msg["ts"]}

    def _m_chat_appendStream(self, args: dict) -> dict:
        channel, msg = self._live_stream(args)
        self._grow(channel, msg, self._stream_text(args, required=True))
        return {"channel": channel, "ts": msg["ts"]}

    def _m_chat_stopStream(self, args: dict) -> dict:
        """Ends the stream, with optional last text; ``blocks`` are shown under the text, ``metadata`` is kept as
        chat.postMessage keeps it. The message is an ordinary bot message from then on."""
        channel, msg = self._live_stream(args)
        markdown = self._stream_text(args, required=False)
        blocks = args.get("blocks") if isinstance(args.get("blocks"), list) else []
        self._check_markdown_blocks(blocks)
        if markdown:
            self._grow(channel, msg, markdown)
        msg["blocks"] = [*msg["blocks"], *copy.deepcopy(blocks)]
        self._keep_metadata(msg, args)
        self._streams[(channel, msg["ts"])].ended_by = "app"
        return {"channel": channel, "ts": msg["ts"], "message": copy.deepcopy(msg)}

    def _stream_text(self, args: dict, required: bool) -> str:
        """The Markdown a stream call adds: ``markdown_text`` or the ``markdown_text`` chunks (other chunk types,
        tasks and plans, are accepted and not shown). Each piece is limited to 12,000 characters."""
        pieces = [args["markdown_text"]] if args.get("markdown_text") is not None else []
        chunks = args.get("chunks")
        if chunks is not None:
            if not isinstance(chunks, list) or not all(isinstance(c, dict) and c.get("type") for c in chunks):
                raise _ApiError("invalid_chunks")
            pieces += [c.get("text") for c in chunks if c["type"] == "markdown_text"]
        if not all(isinstance(piece, str) for piece in pieces):
            raise _ApiError("invalid_chunks")
        if required and not pieces:
            raise _ApiError("invalid_arguments")
        if any(len(piece) > self.max_markdown_chars for piece in pieces):
            raise _ApiError("msg_too_long")
        return "".join(pieces)

    def _live_stream(self, args: dict) -> tuple[str, dict]:
        """The message of a stream that still takes appends, or the error Slack answers."""
        channel, msg = self._find(args)
        state = self._stream_state(channel, msg["ts"])
        if state == "stopped_by_user":
            raise _ApiError("stopped_by_user")
        if state != "live":
            raise _ApiError("message_not_in_streaming_state")
        return channel, msg

    def _stream_state(self, channel: str, ts: str) -> str:
        """"live", "stopped_by_user", or "ended" (stopped by the app, past its lifetime, or never a stream)."""
        stream = self._streams.get((channel, ts))
        if stream is None:
            return "ended"
        if stream.ended_by is None and time.monotonic() - stream.started_at >= self.stream_lifetime_s:
            stream.ended_by = "slack"  # ended for good, whatever the lifetime is later
        if stream.ended_by in ("app", "slack"):
            return "ended"
        return "stopped_by_user" if stream.ended_by == "user" else "live"

    def _grow(self, channel: str, msg: dict, markdown: str) -> None:
        msg["text"] += markdown
        msg["blocks"][0]["text"] += markdown
        self._texts[(channel, msg["ts"])].append(self._shown(msg))

    # -- helpers for the methods (called under the lock)

    @staticmethod
    def _arg(args: dict, name: str, error: str) -> Any:
        if not args.get(name):
            raise _ApiError(error)
        return args[name]

    def _text(self, args: dict, required: bool = True) -> str:
        text = str(args.get("text") or "")
        if required and not text and not args.get("blocks") and not args.get("attachments"):
            raise _ApiError("no_text")
        if len(text) > self.max_text_chars:
            raise _ApiError("msg_too_long")
        return text

    def _markdown(self, args: dict) -> str | None:
        """The ``markdown_text`` argument (None without it), refused with ``text`` or ``blocks`` or too long.
        Markdown blocks share the same limit ("the cumulative limit for all markdown blocks in a single payload
        is 12,000 characters", Slack's markdown block reference); that Slack then answers msg_too_long is our
        assumption."""
        self._check_markdown_blocks(args.get("blocks"))
        if "markdown_text" not in args:
            return None
        if args.get("text") or args.get("blocks"):
            raise _ApiError("invalid_arguments")
        markdown = str(args["markdown_text"] or "")
        if not markdown.strip():
            raise _ApiError("no_text")
        if len(markdown) > self.max_markdown_chars:
            raise _ApiError("msg_too_long")
        return markdown

    @staticmethod
    def _keep_metadata(msg: dict, args: dict) -> None:
        """The message ``metadata`` a call gives (chat.postMessage, chat.update, chat.stopStream), as Slack keeps it."""
        if isinstance(args.get("metadata"), dict):
            msg["metadata"] = {"event_type": str(args["metadata"].get("event_type", "")),
                               "event_payload": args["metadata"].get("event_payload") or {}}

    def _check_markdown_blocks(self, blocks: Any) -> None:
        markdown = [b for b in blocks or [] if isinstance(b, dict) and b.get("type") == "markdown"]
        if sum(len(str(b.get("text", ""))) for b in markdown) > self.max_markdown_chars:
            raise _ApiError("msg_too_long")

    @staticmethod
    def _shown(msg: dict) -> str:
        """What a person sees of a message: its markdown blocks' text, else its text."""
        markdown = [b["text"] for b in msg.get("blocks") or [] if isinstance(b, dict) and b.get("type") == "markdown"]
        return "\n".join(markdown) if markdown else msg["text"]

    def _find(self, args: dict) -> tuple[str, dict]:
        channel = self._arg(args, "channel", "channel_not_found")
        msg = self._channels.get(channel, {}).get(str(args.get("ts")))
        if msg is None:
            raise _ApiError("message_not_found")
        return channel, msg

    def _new_ts(self) -> str:
        self._last_micros = max(self._last_micros + 1, time.time_ns() // 1000)
        return f"{self._last_micros // 1_000_000}.{self._last_micros % 1_000_000:06d}"

    def _store(self, channel: str, msg: dict) -> None:
        stored = self._channels.setdefault(channel, {})
        parent = stored.get(msg.get("thread_ts", ""))
        if parent is not None and parent.get("thread_ts", parent["ts"]) != parent["ts"]:
            msg["thread_ts"] = parent["thread_ts"]  # a reply to a reply goes to the thread, as in Slack
            parent = stored.get(msg["thread_ts"])
        if parent is not None:
            parent["thread_ts"] = parent["ts"]
            parent["reply_count"] = parent.get("reply_count", 0) + 1
            parent["latest_reply"] = msg["ts"]
            parent.setdefault("reply_users", [])
            if msg["user"] not in parent["reply_users"]:
                parent["reply_users"].append(msg["user"])
        stored[msg["ts"]] = msg
        self._texts[(channel, msg["ts"])] = [self._shown(msg)]
        if msg.get("bot_id") == self.bot_id and msg.get("thread_ts"):  # the app replied: its status goes
            self._statuses.pop((channel, msg["thread_ts"]), None)
        self._cond.notify_all()

    def _page(self, msgs: list[dict], args: dict, default_limit: int, newest_first: bool) -> dict:
        """Filter by oldest/latest, then cut one page; the cursor names the ts the next page starts at."""
        inclusive = _flag(args.get("inclusive", "0"))
        if args.get("oldest"):
            low = _ts_key(args["oldest"])
            msgs = [m for m in msgs if _ts_key(m["ts"]) > low or (inclusive and _ts_key(m["ts"]) == low)]
        if args.get("latest"):
            high = _ts_key(args["latest"])
            msgs = [m for m in msgs if _ts_key(m["ts"]) < high or (inclusive and _ts_key(m["ts"]) == high)]
        start = 0
        if args.get("cursor"):
            try:
                kind, _, ts = base64.b64decode(args["cursor"]).decode().partition(":")
                key = _ts_key(ts)
            except ValueError:
                kind = ""
            if kind != "next_ts":
                raise _ApiError("invalid_cursor")
            after = (lambda m: _ts_key(m["ts"]) <= key) if newest_first else (lambda m: _ts_key(m["ts"]) >= key)
            start = next((i for i, m in enumerate(msgs) if after(m)), len(msgs))
        limit = int(args.get("limit") or default_limit) or default_limit
        page, rest = msgs[start:start + limit], msgs[start + limit:]
        cursor = base64.b64encode(f"next_ts:{rest[0]['ts']}".encode()).decode() if rest else ""
        page = copy.deepcopy(page)
        if not _flag(args.get("include_all_metadata", "0")):  # Slack returns metadata only when asked to
            for msg in page:
                msg.pop("metadata", None)
        return {"messages": page, "has_more": bool(rest), "response_metadata": {"next_cursor": cursor}}

    # ------------------------------------------------------------------ Web API state, for tests

    def calls_to(self, method: str) -> list[ApiCall]:
        with self._cond:
            return [c for c in self.calls if c.method == method]

    def messages(self, channel: str) -> list[dict]:
        with self._cond:
            return copy.deepcopy(sorted(self._channels.get(channel, {}).values(), key=lambda m: _ts_key(m["ts"])))

    def thread(self, channel: str, thread_ts: str) -> list[dict]:
        return [m for m in self.messages(channel) if m["ts"] == thread_ts or m.get("thread_ts") == thread_ts]

    def shown(self, channel: str, ts: str) -> str:
        """What a person sees of a message now (its markdown when it was sent as markdown_text)."""
        with self._cond:
            return self._shown(self._channels[channel][ts])

    @classmethod
    def shown_in(cls, message: dict) -> str:
        """What a person sees of a message as ``messages``/``thread`` return it."""
        return cls._shown(message)

    def history_of(self, channel: str, ts: str) -> list[str]:
        with self._cond:
            return list(self._texts.get((channel, ts), []))

    def streaming(self, channel: str, ts: str) -> bool:
        """Whether a message is a stream that still takes appends."""
        with self._cond:
            return self._stream_state(channel, ts) == "live"

    def stop_stream_by_user(self, channel: str, ts: str) -> None:
        """The person presses stop on a streaming message in Slack: later appends answer ``stopped_by_user``."""
        with self._cond:
            self._streams[(channel, ts)].ended_by = "user"
            self._cond.notify_all()

    def status_of(self, channel: str, thread_ts: str) -> str:
        """The loading status a person sees under an assistant thread now ("" for none)."""
        with self._cond:
            status, at = self._statuses.get((channel, thread_ts), ("", 0.0))
            return status if time.monotonic() - at < self.status_lifetime_s else ""

    def add_user_message(self, channel: str, user: str, text: str, thread_ts: str | None = None) -> str:
        with self._cond:
            msg = {"type": "message", "ts": self._new_ts(), "text": text, "user": user, "team": self.team_id}
            if thread_ts:
                msg["thread_ts"] = thread_ts
            self._store(channel, msg)
            return msg["ts"]

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        with self._cond:
            self._rate_limits[method].extend([retry_after] * times)

    def fail_next(self, method: str, error: str, times: int = 1) -> None:
        with self._cond:
            self._failures[method].extend([error] * times)

    def take_then_drop(self, method: str, times: int = 1) -> None:
        """The next ``times`` successful calls of ``method`` are processed (a post is stored), then the connection
        is dropped without a response: what a reset after Slack took the call looks like to the client."""
        with self._cond:
            self._drops[method] += times

    def delay(self, method: str, seconds: float, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` wait ``seconds`` before they are processed (noted in
        ``delayed`` when they arrive): a slow Slack, to hold a listener at a known point."""
        with self._cond:
            self._delays[method].extend([seconds] * times)

    def outage(self, seconds: float, burst_s: float = 3.0, retry_after: int = 1,
               bursts: tuple[int, ...] = BURSTS) -> Outage:
        """From now on, for ``seconds``, every Web API call is refused unprocessed: bursts of ``burst_s`` s with the
        statuses in ``bursts`` in turn (429s with ``Retry-After: retry_after``); Socket Mode stays up."""
        with self._cond:
            self._outage = Outage(seconds, burst_s, retry_after, bursts)
            return self._outage

    # ------------------------------------------------------------------ Socket Mode

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, timeout=2)
        conn = _Connection(ws)
        pinger = None
        with self._cond:
            self._connections.append(conn)  # before the 101, so it is the newest once the client is connected
        try:
            await ws.prepare(request)
            with self._cond:
                live = len(self._connections)
            await ws.send_str(json.dumps({
                "type": "hello", "num_connections": live,
                "debug_info": {"host": "fake-slack", "build_number": 1, "approximate_connection_time": 18060},
                "connection_info": {"app_id": self.api_app_id}}))
            with self._cond:
                conn.ready = True
                self._cond.notify_all()
            if self.server_ping_interval:
                pinger = asyncio.ensure_future(self._ping(ws))
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_client_text(msg.data)
        finally:
            if pinger is not None:
                pinger.cancel()
            with self._cond:
                self._connections.remove(conn)
                self._cond.notify_all()
        return ws

    async def _ping(self, ws: web.WebSocketResponse) -> None:
        """Ping the client now and then, as Slack does (no pong is required; aiohttp's heartbeat would close
        the socket when a busy client answers late)."""
        while not ws.closed:
            await asyncio.sleep(self.server_ping_interval)
            try:
                await ws.ping(b"fake-slack")
            except Exception:
                return

    def _on_client_text(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("envelope_id"):
            with self._cond:
                self.acks[message["envelope_id"]] = time.time()
                self.ack_payloads[message["envelope_id"]] = message.get("payload")
                self._cond.notify_all()

    def _live_connection(self) -> _Connection | None:
        """The newest open connection, once it was sent hello (a newer one still opening is waited for)."""
        newest = self._connections[-1] if self._connections else None
        return newest if newest is not None and newest.ready else None

    def connected(self) -> bool:
        """Whether a Socket Mode client is connected now."""
        with self._cond:
            return self._live_connection() is not None

    def wait_connected(self, timeout: float = 10) -> None:
        with self._cond:
            if not self._cond.wait_for(self._live_connection, timeout):
                raise TimeoutError(f"no Socket Mode client connected to the fake within {timeout} s")

    def _send_envelope(self, envelope: dict, timeout: float = 5) -> str:
        with self._cond:
            conn = self._cond.wait_for(self._live_connection, timeout)
            if conn is None:
                raise RuntimeError("no Socket Mode client is connected to the fake (call wait_connected first?)")
            self.envelopes.append(envelope)
        self._run(conn.ws.send_str(json.dumps(envelope)), timeout)
        return envelope.get("envelope_id", "")

    def event_body(self, event: dict, event_id: str | None = None) -> dict:
        return {
            "token": self.verification_token, "team_id": self.team_id, "context_team_id": self.team_id,
            "context_enterprise_id": None, "api_app_id": self.api_app_id, "event": copy.deepcopy(event),
            "type": "event_callback", "event_id": event_id or f"Ev{next(self._ids):04d}{uuid.uuid4().hex[:8].upper()}",
            "event_time": int(time.time()),
            "authorizations": [{"enterprise_id": None, "team_id": self.team_id, "user_id": self.bot_user_id,
                                "is_bot": True, "is_enterprise_install": False}],
            "is_ext_shared_channel": False, "event_context": "4-fake-event-context",
        }

    def send_event(self, event: dict, event_id: str | None = None, retry_attempt: int = 0,
                   retry_reason: str = "") -> str:
        """Sends an ``events_api`` envelope. With ``event_retries`` (seconds after this first try), the event is
        delivered as Slack does it: no client connected is no error, and while no envelope of the event was
        acknowledged it is sent again at each of those times (Slack: at once, after 1 and after 5 minutes), as a
        new envelope with ``retry_attempt`` 1, 2, … and ``retry_reason`` "timeout" (sent, not acknowledged) or
        "connection_failed" (no client was connected): the Events API's HTTP retry reasons."""
        envelope = {
            "envelope_id": str(uuid.uuid4()), "type": "events_api", "payload": self.event_body(event, event_id),
            "accepts_response_payload": False, "retry_attempt": retry_attempt, "retry_reason": retry_reason}
        if not self.event_retries:
            return self._send_envelope(envelope)
        sent = self._run(self._try_envelope(envelope))
        self._redeliveries.append(asyncio.run_coroutine_threadsafe(self._redeliver(envelope, sent), self._loop))
        return envelope["envelope_id"]

    async def _try_envelope(self, envelope: dict) -> bool:
        """Send to the live connection, if any (on the fake's loop); True if sent."""
        with self._cond:
            conn = self._live_connection()
            if conn is None:
                return False
            self.envelopes.append(envelope)
        try:
            await conn.ws.send_str(json.dumps(envelope))
        except ConnectionError:
            return False
        return True

    async def _redeliver(self, first: dict, sent: bool) -> None:
        started, event_id = time.monotonic(), first["payload"]["event_id"]
        for attempt, at in enumerate(self.event_retries, 1):
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            if self.acked_event(event_id):
                return
            retry = {**first, "envelope_id": str(uuid.uuid4()), "retry_attempt": attempt,
                     "retry_reason": "timeout" if sent else "connection_failed"}
            sent = await self._try_envelope(retry)

    def acked_event(self, event_id: str) -> bool:
        """Whether any envelope of this event was acknowledged."""
        with self._cond:
            return any(e.get("payload", {}).get("event_id") == event_id and e.get("envelope_id") in self.acks
                       for e in self.envelopes)

    def send_interactive(self, payload: dict) -> str:
        """Sends an ``interactive`` envelope; fills in token/api_app_id/team when the payload lacks them."""
        payload = copy.deepcopy(payload)
        payload.setdefault("token", self.verification_token)
        payload.setdefault("api_app_id", self.api_app_id)
        payload.setdefault("team", {"id": self.team_id, "domain": "xwin-test"})
        payload.setdefault("is_enterprise_install", False)
        return self._send_envelope({"envelope_id": str(uuid.uuid4()), "type": "interactive", "payload": payload,
                                    "accepts_response_payload": False})

    def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Slack's ``disconnect`` message: the builtin client reconnects at once through apps.connections.open."""
        self._send_envelope({"type": "disconnect", "reason": reason,
                             "debug_info": {"host": "fake-slack"}})

    def wait_ack(self, envelope_id: str, timeout: float = 5) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: envelope_id in self.acks, timeout):
                raise TimeoutError(f"envelope {envelope_id} was not acked within {timeout} s")
            return self.acks[envelope_id]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                try:
                    what = inspect.getsource(predicate).strip()
                except (OSError, TypeError):
                    what = repr(predicate)
                with self._cond:
                    recent = [(c.method, c.status, {k: str(v)[:80] for k, v in c.args.items()})
                              for c in self.calls[-8:]]
                raise AssertionError(f"timed out after {timeout} s waiting for: {what}\n"
                                     f"last Web API calls (method, status, args): {recent}")
            time.sleep(0.02)

    # ------------------------------------------------------------------ HTTP mode

    @staticmethod
    def signed_headers(body: bytes, signing_secret: str, timestamp: int | None = None) -> dict:
        timestamp = int(time.time()) if timestamp is None else timestamp
        base = f"v0:{timestamp}:".encode() + body
        digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
        return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={digest}",
                "Content-Type": "application/json"}


class FakeSlackFiles(FakeSlack):
    """``FakeSlack`` that also serves files and interactivity (kept apart from the base for easy merging):

    * ``share_file(...)`` stores a message with a Slack file object whose ``url_private`` /
      ``url_private_download`` point at the fake's own HTTP server (``/files-pri/<team>-<id>/…``), and returns
      the ``message`` event (subtype ``file_share``) Slack sends for it. A download needs the bot token as
      ``Authorization: Bearer``: without it 403, an unknown file 404 (``file_downloads`` records each request).
    * ``views.open`` (recorded in ``views``), and ``send_message_shortcut`` / ``send_view_submission``, which
      send the ``message_action`` and ``view_submission`` interactive payloads over Socket Mode.
    """

    @cached_property
    def shared_files(self) -> dict[str, tuple[dict, bytes]]:  # file id -> (file object, bytes)
        return {}

    @cached_property
    def file_downloads(self) -> list[tuple[str, str | None]]:  # (path, bearer token or None)
        return []

    @cached_property
    def views(self) -> list[dict]:  # every views.open call's view, with the id the fake gave it
        return []

    def file_object(self, name: str, content: bytes, mimetype: str = "text/plain", filetype: str = "text",
                    user: str = "U1") -> dict:
        """A file as files.info and message events describe it (the fields the docs list for a file object)."""
        with self._cond:
            file_id = f"F{next(self._ids):08d}"
            base = f"http://127.0.0.1:{self.port}/files-pri/{self.team_id}-{file_id}"
            file = {"id": file_id, "created": int(time.time()), "timestamp": int(time.time()), "name": name,
                    "title": name, "mimetype": mimetype, "filetype": filetype, "pretty_type": filetype.title(),
                    "user": user, "user_team": self.team_id, "editable": False, "size": len(content),
                    "mode": "hosted", "is_external": False, "external_type": "", "is_public": True,
                    "public_url_shared": False, "display_as_bot": False, "username": "",
                    "url_private": f"{base}/{name}", "url_private_download": f"{base}/download/{name}",
                    "permalink": f"https://xwin-test.slack.com/files/{user}/{file_id}/{name}",
                    "is_starred": False, "has_rich_preview": False, "file_access": "visible"}
            self.shared_files[file_id] = (file, content)
            return copy.deepcopy(file)

    def share_file(self, channel: str, user: str, name: str, content: bytes, mimetype: str = "text/plain",
                   filetype: str = "text", text: str = "", thread_ts: str | None = None,
                   channel_type: str = "channel", files: list[dict] | None = None) -> dict:
        """A person uploads a file (or ``files``) with ``text``: stored, and the message event Slack sends."""
        files = files if files is not None else [self.file_object(name, content, mimetype, filetype, user)]
        with self._cond:
            msg = {"type": "message", "subtype": "file_share", "ts": self._new_ts(), "text": text, "user": user,
                   "team": self.team_id, "files": copy.deepcopy(files), "upload": False, "display_as_bot": False}
            if thread_ts:
                msg["thread_ts"] = thread_ts
            self._store(channel, msg)
        event = {**copy.deepcopy(msg), "channel": channel, "event_ts": msg["ts"], "channel_type": channel_type}
        return event

    def _extra_routes(self) -> list[tuple[str, Callable]]:
        return [("/files-pri/{file_key}/{tail:.*}", self._file_download)]

    async def _file_download(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        token = header[len("Bearer "):] if header.startswith("Bearer ") else None
        file_id = request.match_info["file_key"].removeprefix(f"{self.team_id}-")
        with self._cond:
            self.file_downloads.append((request.path, token))
            stored = self.shared_files.get(file_id)
        if token != self.bot_token:
            return web.Response(status=403, text="forbidden")
        if stored is None:
            return web.Response(status=404, text="not found")
        file, content = stored
        return web.Response(body=content, content_type=file["mimetype"].split(";")[0])

    def _m_views_open(self, args: dict) -> dict:
        self._arg(args, "trigger_id", "invalid_trigger_id")
        view = args.get("view")
        view = json.loads(view) if isinstance(view, str) else view
        if not isinstance(view, dict) or view.get("type") != "modal":
            raise _ApiError("invalid_arguments")
        view = {**copy.deepcopy(view), "id": f"V{next(self._ids):08d}", "team_id": self.team_id,
                "app_id": self.api_app_id, "bot_id": self.bot_id, "state": {"values": {}}, "hash": uuid.uuid4().hex}
        view.setdefault("private_metadata", "")
        view.setdefault("callback_id", "")
        self.views.append(view)
        self._cond.notify_all()
        return {"view": copy.deepcopy(view)}

    def send_message_shortcut(self, channel: str, message: dict, user: str = "U1",
                              callback_id: str = "ask_about_message") -> str:
        """Someone picks the app's message shortcut on ``message`` (as conversations.history returns it)."""
        trigger = f"{next(self._ids)}.{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:32]}"
        return self.send_interactive({
            "type": "message_action", "callback_id": callback_id, "trigger_id": trigger,
            "action_ts": f"{time.time():.6f}", "message_ts": message["ts"],
            "response_url": f"https://hooks.slack.com/app/{self.team_id}/1/fake",
            "user": {"id": user, "username": f"user-{user.lower()}", "name": f"user-{user.lower()}",
                     "team_id": self.team_id},
            "channel": {"id": channel, "name": f"channel-{channel.lower()}"},
            "message": copy.deepcopy(message)})

    def send_view_submission(self, view: dict, user: str = "U1", values: dict | None = None) -> str:
        """``user`` presses the modal's submit button; ``values``: block id -> action id -> typed value."""
        state = {block: {action: {"type": "plain_text_input", "value": value} for action, value in actions.items()}
                 for block, actions in (values or {}).items()}
        return self.send_interactive({
            "type": "view_submission", "trigger_id": f"{next(self._ids)}.{uuid.uuid4().hex[:12]}",
            "user": {"id": user, "username": f"user-{user.lower()}", "name": f"user-{user.lower()}",
                     "team_id": self.team_id},
            "view": {**copy.deepcopy(view), "state": {"values": state}}, "response_urls": []})

    def wait_view(self, count: int = 1, timeout: float = 5) -> dict:
        """The ``count``-th view opened (waits for it)."""
        self.wait_for(lambda: len(self.views) >= count, timeout)
        return copy.deepcopy(self.views[count - 1])
