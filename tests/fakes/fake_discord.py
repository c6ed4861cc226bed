"""A loopback fake of Discord for running the REAL discord.py client in tests (REST + gateway on 127.0.0.1).

One guild (``guild_id``) with one text channel (``channel_id``), the bot user and some members.  REST is served
under ``fake.api_base`` and the gateway websocket at ``fake.gateway_url`` (also handed out by ``GET /gateway``
and ``GET /gateway/bot``).  The server runs its own asyncio loop in a daemon thread, so synchronous tests can
drive it; everything it sees is recorded (``requests``, ``gateway_events_sent``, ``messages()`` ...).

Recipe (synchronous pytest test)::

    import discord
    from discord.ext import commands
    from tests.fakes.fake_discord import ClientThread, FakeDiscord

    def make_bot():                       # called inside the bot's own event loop (see ClientThread)
        bot = commands.Bot(command_prefix="!", intents=discord.Intents.default(),
                           guild_ready_timeout=0.1)   # on_ready fires this long after the last GUILD_CREATE
        guild = discord.Object(fake.guild_id)         #   (discord.py's default: 2 s)

        @bot.tree.command(name="ping", description="ping", guild=guild)
        async def ping(interaction: discord.Interaction):
            await interaction.response.defer()
            await interaction.followup.send("pong")

        async def setup_hook():           # after login, before the gateway: views and command sync go here
            await bot.tree.sync(guild=guild)  # slash_command() only delivers commands synced to the fake
        bot.setup_hook = setup_hook
        return bot

    with FakeDiscord() as fake, fake.patch_discord_py():   # Route.BASE and DiscordWebSocket.DEFAULT_GATEWAY
        bot = ClientThread(make_bot, fake.bot_token).start()   # login, connect, wait until on_ready
        try:
            fake.slash_command("ping", {})
            fake.wait_for(lambda: [m for m in fake.messages(fake.channel_id) if m["content"] == "pong"])
            assert not bot.errors             # ERROR records of the "discord" logger (failed commands ...)
        finally:
            bot.stop()                        # sets a stop event: the client closes itself inside its loop

Setting ``discord.http.Route.BASE = fake.api_base`` alone is NOT enough: ``discord.Client`` (unlike
``AutoShardedClient``) never asks ``/gateway/bot`` and connects straight to
``DiscordWebSocket.DEFAULT_GATEWAY``, which ``patch_discord_py()`` points at the fake (and restores).
``discord.ui.View`` objects must be created inside the bot's running loop (``setup_hook``, a command):
a view built with no running loop never dispatches its callbacks.  To act as the bot from the test, use
``bot.call(lambda: bot.client.get_channel(cid).send("hi"))``: the lambda runs inside the bot's loop.

Dicts handed out (``messages()``, the payloads returned by ``slash_command()``/``click()``) are wire objects,
ids as strings; every method accepts ids as int or str.  Ids the fake makes up are time-based snowflakes.
Extras beyond the basics: ``gateway_url``, ``patch_discord_py()``, ``dm_channel()``, ``add_thread()``,
``message()``, ``attachment()``, ``commands()``, ``send_reconnect()``, ``invalidate_session()``,
``outage()`` (every REST call refused for a while: 5xx and 429 bursts, see ``platform_outage.py``),
``gateway_received``, ``gateway_connections``, ``server_errors``, ``ack_deadline``,
``allowed_privileged_intents``, ``require_registered_commands``.

Behaviour modelled on Discord's, because bot code depends on it:

* message content intent: a member's message reaches a client that did not IDENTIFY with MESSAGE_CONTENT
  with empty content/embeds/attachments/components, unless it mentions the bot or is a DM (REST reads are
  blanked too when ``allowed_privileged_intents`` lacks it); intents gate MESSAGE_*/THREAD_*/GUILD_MEMBER_*.
* content over 2000 characters -> 400 (50035), empty message -> 400 (50006).
* a message create with ``nonce`` and ``enforce_nonce: true`` that the same author already sent to the channel
  in the last few minutes returns that message (200) and creates none (``drop_after_processing()`` resets the
  connection after a request was carried out, so a client's retry meets this).
* every payload a client sends is kept with its arrival time (``gateway_received``; ``heartbeat_times()``).
* interactions: one callback only (second -> 400 40060); a callback for an expired interaction (or, with
  ``ack_deadline`` set, one later than that many seconds) -> 404 10062 "Unknown interaction"; webhook calls
  with an expired token -> 401 50027; a deferred (type 5) response is a "thinking" message (flag 128) and
  the FIRST followup after it edits that message instead of creating one (Discord's documented behaviour).
* the bot's own messages come back as MESSAGE_CREATE/UPDATE/DELETE (not ephemeral ones), threads as
  THREAD_CREATE, like on Discord.
* rate limits (``rate_limit``): 429 with ``retry_after`` in the body and the X-RateLimit-* headers plus
  ``Via`` (discord.py treats a 429 without ``Via`` as a Cloudflare ban and raises instead of retrying).

The fake is split over a few modules: this one holds ``FakeDiscord`` (set-up, lifecycle, the gateway's view of
the world, what people do, what was recorded) and re-exports ``Request`` and ``ClientThread``;
``fake_discord_world.py`` holds the guild/channel/message state and wire objects (mixin ``World``),
``fake_discord_rest.py`` the REST handlers and route table (mixin ``Rest``), ``fake_discord_gateway.py`` the
gateway websocket and ``fake_discord_client.py`` ``ClientThread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.fakes.fake_discord_client import ClientThread
from tests.fakes.fake_discord_files import FilesAndMenus
from tests.fakes.fake_discord_gateway import GUILD_MEMBERS, GUILDS, INVALID_SESSION, MESSAGE_CONTENT, RECONNECT, Gateway
from tests.fakes.fake_discord_rest import Request, Rest
from tests.fakes.fake_discord_world import (
    BOT_PERMISSIONS,
    EVERYONE_PERMISSIONS,
    World,
    _find_component,
    _option,
    _user,
    _walk,
)
from tests.fakes.platform_outage import BURSTS, Outage

__all__ = ["ClientThread", "FakeDiscord", "Request"]


class FakeDiscord(World, Rest, FilesAndMenus):
    def __init__(self, bot_token="test-token", bot_user_id=1000, application_id=1000, guild_id=2000,
                 channel_id=3000, member_ids=(4001, 4002), heartbeat_interval_ms=41250):
        self.bot_token, self.bot_user_id, self.application_id = bot_token, bot_user_id, application_id
        self.guild_id, self.channel_id = guild_id, channel_id
        self.allowed_privileged_intents = GUILD_MEMBERS | MESSAGE_CONTENT  # what the developer portal allows
        self.application_flags = (1 << 15) | (1 << 19)  # GUILD_MEMBERS_LIMITED | MESSAGE_CONTENT_LIMITED
        self.ack_deadline: float | None = None  # seconds to answer an interaction (Discord: 3), None = no limit
        self.require_registered_commands = True  # slash_command() only for commands synced to the fake
        self.requests: list[Request] = []
        self.server_errors: list[str] = []  # tracebacks of bugs in the fake's handlers
        self.gateway_connections: list[dict] = []  # query params of each gateway connection
        self.gateway_events_sent: list[dict] = []
        self.ready_count = self.resumed_count = 0
        self._lock = threading.RLock()
        self._local = threading.local()  # .pending: events queued while the lock is held
        self._last_id = 0
        self._users: dict[int, dict] = {bot_user_id: _user(bot_user_id, "xwinbot", bot=True)}
        self._members: dict[int, dict] = {}
        self._roles: dict[int, dict] = {}
        self._channels: dict[int, dict] = {}
        self._messages: dict[int, list[dict]] = {}  # channel -> messages, oldest first (deleted ones removed)
        self._by_id: dict[int, dict] = {}
        self._history: dict[int, list[str]] = {}
        self._attachments: dict[tuple[int, str], bytes] = {}
        self._interactions: dict[int, dict] = {}
        self._tokens: dict[str, int] = {}
        self._expired: set[str] = set()
        self._commands: dict[int | None, list[dict]] = {}
        self._rate_limits: list[list] = []
        self._outage: Outage | None = None
        self._drops: list[list] = []  # [method, path regex, times]: processed, then the connection is dropped
        self._nonces: dict[tuple[int, int, str], tuple[float, int]] = {}  # (channel, author, nonce) -> (when, id)
        self._dms: dict[int, int] = {}
        self._gateway = Gateway(self, heartbeat_interval_ms)  # Discord's is 41.25 s; a test may ask for less
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._roles[guild_id] = {"id": str(guild_id), "name": "@everyone", "permissions": str(EVERYONE_PERMISSIONS),
                                 "position": 0, "color": 0, "colors": {"primary_color": 0}, "hoist": False,
                                 "managed": False, "mentionable": False, "flags": 0, "icon": None}
        bot_role = self.add_role("xwinbot", BOT_PERMISSIONS, _managed_by=bot_user_id)
        self._members[bot_user_id] = self._member_record(bot_user_id, [bot_role])
        self._add_text_channel(channel_id, "general")
        for uid in member_ids:
            self.add_member(uid)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeDiscord:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-discord", daemon=True)
        self._thread.start()
        self._call(self._astart())
        return self

    async def _astart(self):
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/ws", self._gateway.handle)
        self.cdn_route(app)
        app.router.add_route("*", "/{tail:.*}", self._handle_http)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            self._call(self._astop(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._loop = None

    async def _astop(self):
        await self._gateway.close_all(1001)
        await self._runner.cleanup()

    def __enter__(self) -> FakeDiscord:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @contextlib.contextmanager
    def patch_discord_py(self):
        """Point discord.py (process-wide class attributes) at this fake for the duration of the block."""
        import discord.gateway
        import discord.http
        import yarl

        old = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield self
        finally:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old

    def _call(self, coro, timeout: float = 10):
        """Run a coroutine on the fake's loop and wait for it (from any other thread)."""
        assert self._loop is not None, "FakeDiscord is not started"
        if threading.current_thread() is self._thread:
            return self._loop.create_task(coro)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ------------------------------------------------------------------ the gateway's view of the world
    def _ready_payload(self, session_id: str, shard) -> dict:
        with self._lock:
            bot = {**self._users[self.bot_user_id], "verified": True, "mfa_enabled": False, "flags": 0,
                   "email": None, "locale": "en-US"}
            return {"v": 10, "user": bot, "guilds": [{"id": str(self.guild_id), "unavailable": True}],
                    "session_id": session_id, "session_type": "normal", "resume_gateway_url": self.gateway_url,
                    "shard": shard or [0, 1], "application": {"id": str(self.application_id),
                                                              "flags": self.application_flags},
                    "private_channels": [], "relationships": [], "presences": [], "guild_join_requests": [],
                    "geo_ordered_rtc_regions": [], "user_settings": {}, "auth": {}, "_trace": ["fake-discord"]}

    def _guild_create_payloads(self, intents: int) -> list[dict]:
        with self._lock:
            return [self._guild_payload(with_members=bool(intents & GUILD_MEMBERS))] if intents & GUILDS else []

    def _member_chunks(self, d: dict) -> list[dict]:
        with self._lock:
            wanted = [int(u) for u in d.get("user_ids") or []] or list(self._members)
            members = [self._member(uid) for uid in wanted if uid in self._members]
            chunk = {"guild_id": str(self.guild_id), "members": members, "chunk_index": 0, "chunk_count": 1}
            if d.get("nonce"):
                chunk["nonce"] = d["nonce"]
            missing = [str(u) for u in wanted if u not in self._members]
            if missing:
                chunk["not_found"] = missing
            return [chunk]

    def _record_gateway_sent(self, payload: dict) -> None:
        self.gateway_events_sent.append(payload)

    def _record_gateway_connect(self, query: dict) -> None:
        self.gateway_connections.append(query)

    def _on_ready_sent(self, resumed: bool = False) -> None:
        with self._lock:
            if resumed:
                self.resumed_count += 1
            else:
                self.ready_count += 1

    # ------------------------------------------------------------------ people's actions
    def user_message(self, channel_id, author_id, content, mentions_bot=False) -> dict:
        with self._change():
            self._users.setdefault(author_id, _user(author_id, f"user{author_id}"))
            mention = f"<@{self.bot_user_id}>"
            if mentions_bot and mention not in content and f"<@!{self.bot_user_id}>" not in content:
                content = f"{mention} {content}"
            msg = self._new_message(int(channel_id), author_id, {"content": content})
            self._emit("MESSAGE_CREATE", self._wire(msg, gateway=True))
            return copy.deepcopy(msg)

    def _interaction_base(self, itype: int, user_id: int, channel_id: int) -> dict:
        ch = self._channel(channel_id)
        iid, token = self._next_id(), "itok_" + secrets.token_urlsafe(24)
        payload = {"id": str(iid), "application_id": str(self.application_id), "type": itype, "token": token,
                   "version": 1, "channel_id": str(channel_id), "channel": copy.deepcopy(ch), "locale": "en-US",
                   "entitlements": [], "attachment_size_limit": 10 * 1024 * 1024,
                   "app_permissions": str(self._permissions(self.bot_user_id))}
        if "guild_id" in ch:
            self._users.setdefault(user_id, _user(user_id, f"user{user_id}"))
            if user_id not in self._members:
                raise AssertionError(f"user {user_id} is not a member of the guild (add_member first)")
            member = self._member(user_id)
            member["permissions"] = str(self._permissions(user_id))
            payload.update(guild_id=ch["guild_id"], guild={"id": ch["guild_id"], "locale": "en-US", "features": []},
                           guild_locale="en-US", member=member, context=0,
                           authorizing_integration_owners={"0": ch["guild_id"]})
        else:
            payload.update(user=copy.deepcopy(self._users[user_id]), context=1,
                           authorizing_integration_owners={"0": "0"})
        self._interactions[iid] = {"id": iid, "token": token, "type": itype, "channel_id": channel_id,
                                   "guild": "guild_id" in ch, "user_id": user_id, "created": time.monotonic(),
                                   "acked": None, "original": None, "followups": [], "responses": [],
                                   "message_id": None, "name": None}
        self._tokens[token] = iid
        return payload

    def _registered(self, name: str, guild_id: int | None) -> tuple[dict | None, bool]:
        for cmd in self._commands.get(guild_id, []) if guild_id else []:
            if cmd["name"] == name and cmd.get("type", 1) == 1:
                return cmd, True
        for cmd in self._commands.get(None, []):
            if cmd["name"] == name and cmd.get("type", 1) == 1:
                return cmd, False
        return None, False

    def slash_command(self, name, options: dict | list | None = None, user_id=4001, channel_id=None,
                      guild_id=None, resolved: dict | None = None) -> dict:
        """A person runs ``/name`` ("parent sub" for subcommands); options as {name: value} (or Discord's list);
        ``resolved`` becomes ``data.resolved`` (see ``slash_command_with_files``)."""
        channel_id = int(channel_id or self.channel_id)
        with self._change():
            parts = name.split()
            in_guild = "guild_id" in self._channel(channel_id)
            cmd, guild_scoped = self._registered(parts[0], int(guild_id or self.guild_id) if in_guild else None)
            if cmd is None and self.require_registered_commands:
                known = {g: [c["name"] for c in cs] for g, cs in self._commands.items()}
                raise AssertionError(f"/{parts[0]} was never registered with the fake (tree.sync); registered: {known}")
            opts = options if isinstance(options, list) else [_option(k, v) for k, v in (options or {}).items()]
            for depth, sub in reversed(list(enumerate(parts[1:]))):
                opts = [{"name": sub, "type": 1 if depth == len(parts) - 2 else 2, "options": opts}]
            payload = self._interaction_base(2, user_id, channel_id)
            data = {"id": (cmd or {}).get("id", str(self._next_id())), "name": parts[0], "type": 1, "options": opts}
            if guild_scoped:
                data["guild_id"] = cmd["guild_id"]
            if resolved:
                data["resolved"] = resolved
            payload["data"] = data
            self._interactions[int(payload["id"])]["name"] = name
            self._emit("INTERACTION_CREATE", copy.deepcopy(payload))
        return payload

    def click(self, custom_id, message_id, channel_id, user_id=4001, values=None) -> dict:
        """A person clicks the component ``custom_id`` on message ``message_id`` (it must carry that component)."""
        with self._change():
            msg = self._message_in(channel_id, message_id, ephemeral_ok=True)
            component = _find_component(msg.get("components") or [], custom_id)
            if component is None:
                ids = [c.get("custom_id") for c in _walk(msg.get("components") or [])]
                raise AssertionError(f"message {message_id} has no component {custom_id!r} (it has {ids})")
            payload = self._interaction_base(3, user_id, int(channel_id))
            payload["data"] = {"custom_id": custom_id, "component_type": component["type"]}
            if component["type"] != 2:
                payload["data"]["values"] = list(values or [])
            payload["message"] = self._wire(msg)
            rec = self._interactions[int(payload["id"])]
            rec["message_id"] = int(message_id)
            self._emit("INTERACTION_CREATE", copy.deepcopy(payload))
        return payload

    def dispatch(self, event: str, data: dict) -> None:
        """Send any gateway event as-is (no intent filtering) to every session."""
        self._call(self._gateway.dispatch(event, data))

    def send_reconnect(self) -> None:
        """Gateway op 7: the client closes (code 4000) and RESUMEs."""
        self._call(self._gateway.send_op(RECONNECT))

    def invalidate_session(self, resumable: bool = False) -> None:
        """Gateway op 9: the client reconnects and IDENTIFYs anew (``resumable``: RESUMEs)."""
        self._call(self._gateway.send_op(INVALID_SESSION, resumable))

    def expire_interaction(self, token) -> None:
        with self._lock:
            self._expired.add(token)

    def rate_limit(self, method: str, path_regex: str, times=1, retry_after=1.0, is_global=False) -> None:
        """The next ``times`` requests ``method`` (or "*") whose path matches ``re.search(path_regex)`` get a 429."""
        with self._lock:
            self._rate_limits.append([method.upper(), re.compile(path_regex), times, retry_after, is_global])

    def drop_after_processing(self, method: str, path_regex: str, times=1) -> None:
        """The next ``times`` requests ``method`` whose path matches are carried out (a message is created), then
        their connection is closed before the answer: the client sees a reset and cannot tell it was taken."""
        with self._lock:
            self._drops.append([method.upper(), re.compile(path_regex), times])

    def outage(self, seconds: float, burst_s: float = 3.0, retry_after: float = 1.0,
               bursts: tuple[int, ...] = BURSTS) -> Outage:
        """From now on, for ``seconds``, every REST request is refused unprocessed: bursts of ``burst_s`` s with the
        statuses in ``bursts`` in turn (429s ask to wait ``retry_after`` s). The gateway stays up."""
        with self._lock:
            self._outage = Outage(seconds, burst_s, retry_after, bursts)
            return self._outage

    # ------------------------------------------------------------------ recording / state
    def requests_to(self, method, path_regex) -> list[Request]:
        rx = re.compile(path_regex)
        return [r for r in list(self.requests) if method in ("*", r.method) and rx.search(r.path)]

    def messages(self, channel_id) -> list[dict]:
        with self._lock:
            return copy.deepcopy(self._messages.get(int(channel_id), []))

    def message(self, message_id) -> dict:
        with self._lock:
            return copy.deepcopy(self._by_id[int(message_id)])

    def history_of(self, channel_id, message_id) -> list[str]:
        with self._lock:
            msg = self._by_id.get(int(message_id))
            assert msg is not None and int(msg["channel_id"]) == int(channel_id), f"no message {message_id}"
            return list(self._history[int(message_id)])

    def attachment(self, message_id, filename) -> bytes:
        with self._lock:
            return self._attachments[(int(message_id), filename)]

    def threads(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(self._threads())

    def interaction_responses(self, interaction_id) -> list[dict]:
        with self._lock:
            return copy.deepcopy(self._interactions[int(interaction_id)]["responses"])

    def commands(self, guild_id=None) -> list[dict]:
        """Application commands registered (tree.sync) globally or for ``guild_id``."""
        with self._lock:
            return copy.deepcopy(self._commands.get(guild_id and int(guild_id), []))

    @property
    def identified(self) -> bool:
        return any(s.conn is not None for s in list(self._gateway.sessions.values()))

    @property
    def gateway_received(self) -> list[dict]:
        return self._gateway.received

    def heartbeat_times(self) -> list[float]:
        """When each heartbeat (op 1) arrived, ``time.time()``, in order."""
        return [p["at"] for p in list(self._gateway.received) if p.get("op") == 1]

    def logins(self) -> list[int]:
        """The op of every IDENTIFY (2) and RESUME (6) clients sent, in order: one 2 for a connection that held."""
        return [p["op"] for p in list(self._gateway.received) if p.get("op") in (2, 6)]

    def wait_ready(self, timeout=10) -> None:
        self.wait_for(lambda: self.ready_count > 0, timeout, "the client to IDENTIFY and get READY + GUILD_CREATE")

    def wait_for(self, predicate: Callable[[], Any], timeout=10, what: str | None = None):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                recent = "\n  ".join(f"{r.method} {r.path} -> {r.status}" for r in self.requests[-10:])
                events = [e.get("t") or e.get("op") for e in self.gateway_events_sent[-10:]]
                raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}"
                                     f"\nlast REST requests:\n  {recent or '(none)'}\nlast gateway events: {events}")
            time.sleep(0.02)
