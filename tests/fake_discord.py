"""A loopback fake of Discord for running the REAL discord.py client in tests (REST + gateway on 127.0.0.1).

One guild (``guild_id``) with one text channel (``channel_id``), the bot user and some members.  REST is served
under ``fake.api_base`` and the gateway websocket at ``fake.gateway_url`` (also handed out by ``GET /gateway``
and ``GET /gateway/bot``).  The server runs its own asyncio loop in a daemon thread, so synchronous tests can
drive it; everything it sees is recorded (``requests``, ``gateway_events_sent``, ``messages()`` ...).

Recipe (synchronous pytest test)::

    import discord
    from discord.ext import commands
    from tests.fake_discord import ClientThread, FakeDiscord

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
``gateway_received``, ``gateway_connections``, ``server_errors``, ``ack_deadline``,
``allowed_privileged_intents``, ``require_registered_commands``.

Behaviour modelled on Discord's, because bot code depends on it:

* message content intent: a member's message reaches a client that did not IDENTIFY with MESSAGE_CONTENT
  with empty content/embeds/attachments/components, unless it mentions the bot or is a DM (REST reads are
  blanked too when ``allowed_privileged_intents`` lacks it); intents gate MESSAGE_*/THREAD_*/GUILD_MEMBER_*.
* content over 2000 characters -> 400 (50035), empty message -> 400 (50006).
* interactions: one callback only (second -> 400 40060); a callback for an expired interaction (or, with
  ``ack_deadline`` set, one later than that many seconds) -> 404 10062 "Unknown interaction"; webhook calls
  with an expired token -> 401 50027; a deferred (type 5) response is a "thinking" message (flag 128) and
  the FIRST followup after it edits that message instead of creating one (Discord's documented behaviour).
* the bot's own messages come back as MESSAGE_CREATE/UPDATE/DELETE (not ephemeral ones), threads as
  THREAD_CREATE, like on Discord.
* rate limits (``rate_limit``): 429 with ``retry_after`` in the body and the X-RateLimit-* headers plus
  ``Via`` (discord.py treats a 429 without ``Via`` as a Cloudflare ban and raises instead of retrying).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import inspect
import json
import logging
import math
import re
import secrets
import socket
import threading
import time
import traceback
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

if __package__:
    from .fake_discord_gateway import (DIRECT_MESSAGES, GUILD_MEMBERS, GUILD_MESSAGES, GUILDS, INVALID_SESSION,
                                       MESSAGE_CONTENT, RECONNECT, Gateway)
else:  # tests/ itself on sys.path
    from fake_discord_gateway import (DIRECT_MESSAGES, GUILD_MEMBERS, GUILD_MESSAGES, GUILDS, INVALID_SESSION,
                                      MESSAGE_CONTENT, RECONNECT, Gateway)

DISCORD_EPOCH_MS = 1420070400000
EPHEMERAL, LOADING = 1 << 6, 1 << 7
_P = {"add_reactions": 1 << 6, "view_channel": 1 << 10, "send_messages": 1 << 11, "manage_messages": 1 << 13,
      "embed_links": 1 << 14, "attach_files": 1 << 15, "read_message_history": 1 << 16, "external_emojis": 1 << 18,
      "use_application_commands": 1 << 31, "manage_threads": 1 << 34, "create_public_threads": 1 << 35,
      "create_private_threads": 1 << 36, "send_messages_in_threads": 1 << 38}
EVERYONE_PERMISSIONS = sum(_P[k] for k in ("add_reactions", "view_channel", "send_messages", "embed_links",
                                           "attach_files", "read_message_history", "external_emojis",
                                           "use_application_commands", "create_public_threads",
                                           "send_messages_in_threads"))
BOT_PERMISSIONS = EVERYONE_PERMISSIONS | _P["manage_messages"] | _P["manage_threads"] | _P["create_private_threads"]
ADMINISTRATOR, ALL_PERMISSIONS = 1 << 3, (1 << 51) - 1
MESSAGE_EVENTS = ("MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE")


@dataclass
class Request:
    method: str
    path: str  # without /api/v10
    query: dict
    json: Any
    headers: dict
    at: float
    status: int = 0
    files: dict = field(default_factory=dict)  # multipart uploads: filename -> bytes


class _Err(Exception):
    def __init__(self, status: int, message: str, code: int = 0, **extra):
        super().__init__(message)
        self.status, self.body = status, {"message": message, "code": code, **extra}


def _now_iso(t: float | None = None) -> str:
    return datetime.datetime.fromtimestamp(time.time() if t is None else t, datetime.timezone.utc).isoformat()


def _user(user_id: int, name: str, bot: bool = False) -> dict:
    return {"id": str(user_id), "username": name, "global_name": None if bot else name.title(),
            "discriminator": "0", "avatar": None, "bot": bot, "public_flags": 0}


class FakeDiscord:
    def __init__(self, bot_token="test-token", bot_user_id=1000, application_id=1000, guild_id=2000,
                 channel_id=3000, member_ids=(4001, 4002)):
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
        self._dms: dict[int, int] = {}
        self._gateway = Gateway(self)
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
    def start(self) -> "FakeDiscord":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-discord", daemon=True)
        self._thread.start()
        self._call(self._astart())
        return self

    async def _astart(self):
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/ws", self._gateway.handle)
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

    def __enter__(self) -> "FakeDiscord":
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

    # ------------------------------------------------------------------ world
    def _next_id(self) -> int:
        """Time-based snowflakes (discord.py derives created_at and history(after=datetime) from ids)."""
        with self._lock:
            self._last_id = max(self._last_id + 1, (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22)
            return self._last_id

    def _member_record(self, user_id: int, roles) -> dict:
        return {"roles": [str(r) for r in roles], "joined_at": _now_iso(), "nick": None, "avatar": None,
                "premium_since": None, "deaf": False, "mute": False, "flags": 0, "pending": False,
                "communication_disabled_until": None}

    def _member(self, user_id: int, with_user: bool = True) -> dict | None:
        rec = self._members.get(user_id)
        if rec is None:
            return None
        out = copy.deepcopy(rec)
        if with_user:
            out["user"] = copy.deepcopy(self._users[user_id])
        return out

    def _permissions(self, user_id: int) -> int:
        rec = self._members.get(user_id, {"roles": []})
        perms = EVERYONE_PERMISSIONS
        for rid in rec["roles"]:
            perms |= int(self._roles[int(rid)]["permissions"])
        return ALL_PERMISSIONS if perms & ADMINISTRATOR else perms

    def _add_text_channel(self, channel_id: int, name: str) -> dict:
        ch = {"id": str(channel_id), "type": 0, "guild_id": str(self.guild_id), "name": name,
              "position": sum(1 for c in self._channels.values() if c["type"] == 0), "permission_overwrites": [],
              "parent_id": None, "topic": None, "nsfw": False, "last_message_id": None, "rate_limit_per_user": 0,
              "default_auto_archive_duration": 1440, "flags": 0}
        self._channels[channel_id] = ch
        self._messages[channel_id] = []
        return ch

    def add_channel(self, name: str = "general") -> int:
        with self._change():
            ch = self._add_text_channel(self._next_id(), name)
            self._emit("CHANNEL_CREATE", copy.deepcopy(ch))
        return int(ch["id"])

    def add_role(self, name: str, permissions: int = 0, *, _managed_by: int | None = None) -> int:
        with self._change():
            rid = self._next_id()
            role = {"id": str(rid), "name": name, "permissions": str(permissions), "position": len(self._roles),
                    "color": 0, "colors": {"primary_color": 0}, "hoist": False, "managed": _managed_by is not None,
                    "mentionable": False, "flags": 0, "icon": None}
            if _managed_by is not None:
                role["tags"] = {"bot_id": str(_managed_by)}
            self._roles[rid] = role
            self._emit("GUILD_ROLE_CREATE", {"guild_id": str(self.guild_id), "role": copy.deepcopy(role)})
        return rid

    def add_member(self, user_id: int, roles=()) -> None:
        with self._change():
            self._users.setdefault(user_id, _user(user_id, f"user{user_id}"))
            known = user_id in self._members
            rec = self._members.get(user_id) or self._member_record(user_id, roles)
            rec["roles"] = [str(r) for r in roles]
            self._members[user_id] = rec
            data = {**self._member(user_id), "guild_id": str(self.guild_id)}
            self._emit("GUILD_MEMBER_UPDATE" if known else "GUILD_MEMBER_ADD", data)

    def dm_channel(self, user_id: int) -> int:
        """The DM channel between the bot and ``user_id`` (created on first use; also POST /users/@me/channels)."""
        with self._lock:
            if user_id not in self._dms:
                cid = self._next_id()
                self._users.setdefault(user_id, _user(user_id, f"user{user_id}"))
                self._channels[cid] = {"id": str(cid), "type": 1, "last_message_id": None, "flags": 0,
                                       "recipients": [copy.deepcopy(self._users[user_id])]}
                self._messages[cid] = []
                self._dms[user_id] = cid
            return self._dms[user_id]

    def _channel(self, channel_id) -> dict:
        ch = self._channels.get(int(channel_id))
        if ch is None:
            raise _Err(404, "Unknown Channel", 10003)
        return ch

    def _guild_channels(self) -> list[dict]:
        return [c for c in self._channels.values() if c["type"] == 0]

    def _threads(self) -> list[dict]:
        return [c for c in self._channels.values() if c["type"] in (10, 11, 12)]

    # ------------------------------------------------------------------ payloads for the gateway
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

    def _guild_payload(self, with_members: bool) -> dict:
        member_ids = list(self._members) if with_members else [self.bot_user_id]
        return {"id": str(self.guild_id), "name": "Fake Guild", "icon": None, "splash": None, "banner": None,
                "description": None, "owner_id": "1", "roles": copy.deepcopy(list(self._roles.values())),
                "emojis": [], "stickers": [], "features": [], "member_count": len(self._members), "large": False,
                "unavailable": False, "joined_at": _now_iso(), "application_id": None,
                "system_channel_id": str(self.channel_id), "preferred_locale": "en-US", "premium_tier": 0,
                "verification_level": 0, "default_message_notifications": 0, "explicit_content_filter": 0,
                "mfa_level": 0, "nsfw_level": 0, "afk_timeout": 300, "afk_channel_id": None,
                "channels": [{k: v for k, v in c.items() if k != "guild_id"} for c in self._guild_channels()],
                "threads": copy.deepcopy([t for t in self._threads()
                                          if not t["thread_metadata"]["archived"]]),
                "members": [self._member(uid) for uid in member_ids], "voice_states": [], "presences": [],
                "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": []}

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

    def _content_visible(self, msg: dict) -> bool:
        return (int(msg.get("author", {}).get("id", 0)) == self.bot_user_id or "guild_id" not in msg
                or any(int(u["id"]) == self.bot_user_id for u in msg.get("mentions", [])))

    @staticmethod
    def _blank(msg: dict) -> dict:
        return {**msg, "content": "", "embeds": [], "attachments": [], "components": []}

    def _filter(self, event: str, data: Any, intents: int) -> Any:
        """What a session with ``intents`` receives of ``event`` (None: nothing), as Discord decides."""
        if event in MESSAGE_EVENTS:
            if not intents & (GUILD_MESSAGES if data.get("guild_id") else DIRECT_MESSAGES):
                return None
            if event != "MESSAGE_DELETE" and not intents & MESSAGE_CONTENT and not self._content_visible(data):
                return self._blank(data)
        elif event.startswith(("THREAD_", "CHANNEL_", "GUILD_ROLE_")) and not intents & GUILDS:
            return None
        elif event.startswith("GUILD_MEMBER_") and not intents & GUILD_MEMBERS:
            return None
        return data

    def _emit(self, event: str, data: Any) -> None:
        """Dispatch a world event through the intent filter; inside ``_change()`` or a REST handler it is queued
        and sent once the lock is released (waiting for the loop while holding the lock could deadlock)."""
        if self._loop is None:
            return
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append((event, data))
        else:
            self._call(self._gateway.dispatch(event, data, self._filter))

    @contextlib.contextmanager
    def _change(self):
        """Hold the lock while changing the world; the events raised meanwhile are dispatched afterwards."""
        if getattr(self._local, "pending", None) is not None:  # nested: the outer level dispatches
            with self._lock:
                yield
            return
        self._local.pending = []
        try:
            with self._lock:
                yield
            pending = self._local.pending
        except _Err as exc:  # e.g. Unknown Channel: a mistake in the test, not an HTTP answer
            raise AssertionError(f"{exc.status} {exc.body}") from None
        finally:
            self._local.pending = None
        for event, data in pending:
            self._emit(event, data)

    # ------------------------------------------------------------------ messages
    def _mentions(self, content: str, allowed: dict | None, reply_to: dict | None, guild: bool) -> list[dict]:
        ids: list[int] = []
        for m in re.findall(r"<@!?(\d+)>", content or ""):
            uid = int(m)
            ok = (allowed is None or "users" in allowed.get("parse", [])
                  or str(uid) in map(str, allowed.get("users", [])))
            if ok and uid in self._users and uid not in ids:
                ids.append(uid)
        if reply_to is not None and (allowed is None or allowed.get("replied_user", False)):
            rid = int(reply_to["author"]["id"])
            if rid not in ids:
                ids.append(rid)
        out = []
        for uid in ids:
            u = copy.deepcopy(self._users[uid])
            if guild and uid in self._members:
                u["member"] = self._member(uid, with_user=False)
            out.append(u)
        return out

    def _store(self, channel_id: int, msg: dict) -> dict:
        ch = self._channels[channel_id]
        self._messages[channel_id].append(msg)
        self._by_id[int(msg["id"])] = msg
        self._history[int(msg["id"])] = [msg["content"]]
        if not msg["flags"] & EPHEMERAL:
            ch["last_message_id"] = msg["id"]
            if ch["type"] in (11, 12):
                ch["message_count"] += 1
                ch["total_message_sent"] += 1
        return msg

    def _wire(self, msg: dict, gateway: bool = False) -> dict:
        """The message as Discord sends it (REST; ``gateway``: with guild_id and member, as in MESSAGE_CREATE)."""
        out = {k: copy.deepcopy(v) for k, v in msg.items() if k not in ("allowed_mentions", "deleted")}
        if gateway and "guild_id" in msg:
            member = self._member(int(msg["author"]["id"]), with_user=False)
            if member is not None and "webhook_id" not in msg:
                out["member"] = member
        elif not gateway:
            out.pop("guild_id", None)
        return out

    def _rest_view(self, msg: dict) -> dict:
        out = self._wire(msg)
        if not self.allowed_privileged_intents & MESSAGE_CONTENT and not self._content_visible(msg):
            out = self._blank(out)
        return out

    def _new_message(self, channel_id: int, author_id: int, body: dict, *, files=None, mtype: int = 0,
                     extra: dict | None = None, flags: int = 0) -> dict:
        ch = self._channel(channel_id)
        content = body.get("content") or ""
        if len(content) > 2000:
            raise _Err(400, "Invalid Form Body", 50035, errors={"content": {"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}})
        attachments = self._new_attachments(files or {})
        if not (content or body.get("embeds") or attachments or body.get("components") or body.get("sticker_ids")
                or body.get("poll") or flags & LOADING):
            raise _Err(400, "Cannot send an empty message", 50006)
        reply_to = None
        ref = body.get("message_reference")
        if ref and ref.get("message_id"):
            reply_to = self._by_id.get(int(ref["message_id"]))
            if reply_to is None and ref.get("fail_if_not_exists", True):
                raise _Err(400, "Invalid Form Body", 50035, errors={"message_reference": {"_errors": [
                    {"code": "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "message": "Unknown message"}]}})
        guild = "guild_id" in ch
        allowed = body.get("allowed_mentions")
        mid = self._next_id()
        msg = {"id": str(mid), "channel_id": str(channel_id), "author": copy.deepcopy(self._users[author_id]),
               "content": content, "timestamp": _now_iso(), "edited_timestamp": None, "tts": bool(body.get("tts")),
               "mention_everyone": bool(re.search(r"@(everyone|here)", content)) and (
                   allowed is None or "everyone" in allowed.get("parse", [])),
               "mentions": self._mentions(content, allowed, reply_to, guild), "mention_roles": [],
               "attachments": attachments, "embeds": copy.deepcopy(body.get("embeds") or []),
               "components": copy.deepcopy(body.get("components") or []), "pinned": False,
               "type": 19 if reply_to is not None else mtype,
               "flags": (int(body.get("flags") or 0) & ~LOADING) | flags, "reactions": []}
        if guild:
            msg["guild_id"] = ch["guild_id"]
        if body.get("nonce") is not None:
            msg["nonce"] = body["nonce"]
        if reply_to is not None:
            msg["message_reference"] = {"type": 0, "message_id": reply_to["id"], "channel_id": reply_to["channel_id"],
                                        **({"guild_id": ch["guild_id"]} if guild else {})}
            msg["referenced_message"] = self._wire(reply_to)
        if "allowed_mentions" in body:
            msg["allowed_mentions"] = copy.deepcopy(allowed)
        msg.update(extra or {})
        for name, data in (files or {}).items():
            self._attachments[(mid, name)] = data
        return self._store(channel_id, msg)

    def _new_attachments(self, files: dict) -> list[dict]:
        return [{"id": str(self._next_id()), "filename": name, "size": len(data), "content_type": "text/plain",
                 "url": f"http://127.0.0.1:{self.port}/attachments/{name}", "proxy_url": "", "ephemeral": False}
                for name, data in files.items()]

    def _edit(self, msg: dict, body: dict, files=None) -> dict:
        if "content" in body:
            content = body["content"] or ""
            if len(content) > 2000:
                raise _Err(400, "Invalid Form Body", 50035, errors={"content": {"_errors": [
                    {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}})
            msg["content"] = content
            self._history[int(msg["id"])].append(content)
            msg["mentions"] = self._mentions(content, body.get("allowed_mentions", msg.get("allowed_mentions")),
                                             None, "guild_id" in msg)
        for key in ("embeds", "components"):
            if key in body:
                msg[key] = copy.deepcopy(body[key] or [])
        if "allowed_mentions" in body:
            msg["allowed_mentions"] = copy.deepcopy(body["allowed_mentions"])
        if "attachments" in body or files:
            keep = {str(a.get("id")) for a in body.get("attachments") or []}
            msg["attachments"] = [a for a in msg["attachments"] if a["id"] in keep] + self._new_attachments(files or {})
            for name, data in (files or {}).items():
                self._attachments[(int(msg["id"]), name)] = data
        msg["flags"] &= ~LOADING
        msg["edited_timestamp"] = _now_iso()
        return msg

    def _announce(self, event: str, msg: dict) -> None:
        if msg["flags"] & EPHEMERAL:
            return
        if event == "MESSAGE_DELETE":
            data = {"id": msg["id"], "channel_id": msg["channel_id"]}
            if "guild_id" in msg:
                data["guild_id"] = msg["guild_id"]
            self._emit(event, data)
        else:
            self._emit(event, self._wire(msg, gateway=True))

    def _delete(self, msg: dict) -> None:
        self._messages[int(msg["channel_id"])].remove(msg)
        msg["deleted"] = True
        self._announce("MESSAGE_DELETE", msg)

    def _message_in(self, channel_id, message_id, ephemeral_ok: bool = False) -> dict:
        msg = self._by_id.get(int(message_id))
        if msg is None or msg.get("deleted") or int(msg["channel_id"]) != int(channel_id) or (
                msg["flags"] & EPHEMERAL and not ephemeral_ok):
            raise _Err(404, "Unknown Message", 10008)
        return msg

    # ------------------------------------------------------------------ threads
    def _create_thread(self, parent_id: int, name: str, owner_id: int, *, thread_id: int | None = None,
                       type_: int = 11, auto_archive: int = 1440) -> dict:
        parent = self._channel(parent_id)
        if parent["type"] != 0:
            raise _Err(400, "Cannot execute action on this channel type", 50024)
        tid = thread_id or self._next_id()
        thread = {"id": str(tid), "guild_id": str(self.guild_id), "parent_id": str(parent_id),
                  "owner_id": str(owner_id), "name": name, "type": type_, "last_message_id": None,
                  "message_count": 0, "member_count": 1, "total_message_sent": 0, "rate_limit_per_user": 0,
                  "flags": 0, "thread_metadata": {"archived": False, "auto_archive_duration": auto_archive,
                                                  "archive_timestamp": _now_iso(), "locked": False,
                                                  "create_timestamp": _now_iso()}}
        if owner_id == self.bot_user_id:
            thread["member"] = {"id": str(tid), "user_id": str(owner_id), "join_timestamp": _now_iso(), "flags": 1}
        self._channels[tid] = thread
        self._messages[tid] = []
        self._emit("THREAD_CREATE", {**copy.deepcopy(thread), "newly_created": True})
        return thread

    def add_thread(self, channel_id: int, name: str, owner_id: int = 4001, message_id: int | None = None) -> int:
        """A thread a person started (from ``message_id`` when given, then the thread id equals it)."""
        with self._change():
            thread = self._create_thread(int(channel_id), name, owner_id, thread_id=message_id)
            if message_id is not None:
                self._by_id[int(message_id)]["thread"] = copy.deepcopy(thread)
        return int(thread["id"])

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
                      guild_id=None) -> dict:
        """A person runs ``/name`` ("parent sub" for subcommands); options as {name: value} (or Discord's list)."""
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

    # ------------------------------------------------------------------ HTTP
    async def _handle_http(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        api = path.startswith("/api/v10/") or path.startswith("/api/v9/")
        rel = path.split("/", 3)[3] if api else path.lstrip("/")
        rel = "/" + rel
        body, files = await _read_body(request)
        rec = Request(request.method, rel, dict(request.query), body, dict(request.headers), time.time(), files=files)
        with self._lock:
            self.requests.append(rec)
        self._local.pending = []  # no await until it is taken back below
        try:
            limited = self._take_rate_limit(rec)
            if limited is not None:
                rec.status, self._local.pending = 429, None
                return limited
            if not api:
                raise _Err(404, "404: Not Found", 0)
            status, payload = self._route(rec)
        except _Err as e:
            status, payload = e.status, e.body
        except Exception:  # a bug in the fake: answer 400 at once (discord.py would retry a 500 for ~25 s)
            self.server_errors.append(traceback.format_exc())
            status, payload = 400, {"message": "fake discord crashed, see fake.server_errors", "code": 0}
        rec.status = status
        pending, self._local.pending = self._local.pending, None
        for event, data in pending:
            await self._gateway.dispatch(event, data, self._filter)
        if payload is None or status == 204:
            return web.Response(status=204)
        return _json_response(payload, status)

    def _take_rate_limit(self, rec: Request) -> web.Response | None:
        with self._lock:
            for rule in self._rate_limits:
                method, rx, times, retry_after, is_global = rule
                if times > 0 and method in ("*", rec.method) and rx.search(rec.path):
                    rule[2] -= 1
                    break
            else:
                return None
        headers = {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                   "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
                   "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                   "X-RateLimit-Bucket": f"fake{zlib.crc32(rx.pattern.encode()):08x}",
                   "X-RateLimit-Scope": "global" if is_global else "user", "Retry-After": str(math.ceil(retry_after)),
                   "Via": "1.1 google"}
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global}
        return _json_response(body, 429, headers)

    def _route(self, rec: Request) -> tuple[int, Any]:
        needs_auth = not rec.path.startswith(("/webhooks/", "/interactions/", "/gateway"))
        if needs_auth and rec.headers.get("Authorization") != f"Bot {self.bot_token}":
            raise _Err(401, "401: Unauthorized", 0)
        for method, rx, handler in _ROUTES:
            m = rx.fullmatch(rec.path)
            if m and method == rec.method:
                with self._lock:
                    status, payload = handler(self, rec, *m.groups())
                    return status, copy.deepcopy(payload)
        raise _Err(404, "404: Not Found", 0)

    # --- handlers (run on the fake's loop with the lock held; world events are queued in self._local.pending) ---
    def _h_gateway(self, rec):
        return 200, {"url": self.gateway_url}

    def _h_gateway_bot(self, rec):
        return 200, {"url": self.gateway_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1}}

    def _h_me(self, rec):
        return 200, {**self._users[self.bot_user_id], "verified": True, "mfa_enabled": False, "flags": 0,
                     "email": None, "locale": "en-US"}

    def _h_user(self, rec, uid):
        if int(uid) not in self._users:
            raise _Err(404, "Unknown User", 10013)
        return 200, self._users[int(uid)]

    def _h_app(self, rec):
        return 200, {"id": str(self.application_id), "name": "xwinbot", "icon": None, "description": "",
                     "bot_public": True, "bot_require_code_grant": False, "verify_key": "0" * 64,
                     "owner": _user(1, "owner"), "flags": self.application_flags, "team": None,
                     "bot": self._users[self.bot_user_id], "interactions_endpoint_url": None,
                     "redirect_uris": [], "tags": []}

    def _h_open_dm(self, rec):
        return 200, self._channels[self.dm_channel(int((rec.json or {})["recipient_id"]))]

    def _h_commands(self, rec, app_id, guild_id=None):
        if int(app_id) != self.application_id:
            raise _Err(403, "Missing Access", 50001)
        key = int(guild_id) if guild_id else None
        if rec.method == "PUT":
            old = {c["name"]: c["id"] for c in self._commands.get(key, [])}
            cmds = []
            for c in rec.json or []:
                cmd = {"id": old.get(c["name"]) or str(self._next_id()), "application_id": str(self.application_id),
                       "version": str(self._next_id()), "type": 1, "description": "", "options": [],
                       "default_member_permissions": None, "nsfw": False, **copy.deepcopy(c)}
                if key:
                    cmd["guild_id"] = str(key)
                cmds.append(cmd)
            self._commands[key] = cmds
        return 200, copy.deepcopy(self._commands.get(key, []))

    def _h_channel(self, rec, cid):
        return 200, self._channel(cid)

    def _h_messages(self, rec, cid):
        ch = self._channel(cid)
        if rec.method == "POST":
            if ch["type"] in (11, 12) and ch["thread_metadata"]["locked"]:
                raise _Err(403, "Missing Permissions", 50013)
            msg = self._new_message(int(cid), self.bot_user_id, rec.json or {}, files=rec.files)
            self._announce("MESSAGE_CREATE", msg)
            return 200, self._wire(msg)
        q = rec.query
        limit = int(q.get("limit", 50))
        if not 1 <= limit <= 100:
            raise _Err(400, "Invalid Form Body", 50035)
        visible = [m for m in self._messages[int(cid)] if not m["flags"] & EPHEMERAL]
        if "before" in q:
            picked = [m for m in visible if int(m["id"]) < int(q["before"])][-limit:]
        elif "after" in q:
            picked = [m for m in visible if int(m["id"]) > int(q["after"])][:limit]
        elif "around" in q:
            ids = [int(m["id"]) for m in visible]
            centre = next((i for i, x in enumerate(ids) if x >= int(q["around"])), len(ids))
            start = max(0, centre - limit // 2)
            picked = visible[start:start + limit]
        else:
            picked = visible[-limit:]
        return 200, [self._rest_view(m) for m in reversed(picked)]  # newest first, like Discord

    def _h_message(self, rec, cid, mid):
        self._channel(cid)
        msg = self._message_in(cid, mid)
        if rec.method == "GET":
            return 200, self._rest_view(msg)
        if rec.method == "PATCH":
            if int(msg["author"]["id"]) != self.bot_user_id:
                raise _Err(403, "Cannot edit a message authored by another user", 50005)
            self._edit(msg, rec.json or {}, rec.files)
            self._announce("MESSAGE_UPDATE", msg)
            return 200, self._wire(msg)
        self._delete(msg)
        return 204, None

    def _h_typing(self, rec, cid):
        self._channel(cid)
        return 204, None

    def _h_reaction(self, rec, cid, mid, emoji):
        msg = self._message_in(cid, mid)
        reactions = [r for r in msg["reactions"] if r["emoji"]["name"] != emoji]
        if rec.method == "PUT":
            reactions.append({"emoji": {"id": None, "name": emoji}, "count": 1, "me": True})
        msg["reactions"] = reactions
        return 204, None

    def _h_thread_from_message(self, rec, cid, mid):
        msg = self._message_in(cid, mid)
        if "thread" in msg:
            raise _Err(400, "A thread has already been created for this message", 160004)
        body = rec.json or {}
        thread = self._create_thread(int(cid), body.get("name") or "thread", self.bot_user_id, thread_id=int(mid),
                                     auto_archive=body.get("auto_archive_duration") or 1440)
        msg["thread"] = copy.deepcopy(thread)
        return 201, copy.deepcopy(thread)

    def _h_thread(self, rec, cid):
        body = rec.json or {}
        thread = self._create_thread(int(cid), body.get("name") or "thread", self.bot_user_id,
                                     type_=body.get("type") or 12,
                                     auto_archive=body.get("auto_archive_duration") or 1440)
        return 201, copy.deepcopy(thread)

    def _h_thread_member(self, rec, cid):
        self._channel(cid)
        return 204, None

    def _h_guild(self, rec, gid):
        if int(gid) != self.guild_id:
            raise _Err(404, "Unknown Guild", 10004)
        g = self._guild_payload(with_members=False)
        for key in ("channels", "threads", "members", "voice_states", "presences", "joined_at", "large",
                    "member_count", "unavailable"):
            g.pop(key)
        return 200, g

    def _h_guild_channels(self, rec, gid):
        self._h_guild(rec, gid)
        return 200, copy.deepcopy(self._guild_channels())

    def _h_guild_roles(self, rec, gid):
        self._h_guild(rec, gid)
        return 200, copy.deepcopy(list(self._roles.values()))

    def _h_guild_member(self, rec, gid, uid):
        self._h_guild(rec, gid)
        member = self._member(int(uid))
        if member is None:
            raise _Err(404, "Unknown Member", 10007)
        return 200, member

    # --- interactions ---
    def _h_callback(self, rec, iid, token):
        inter = self._interactions.get(int(iid))
        if inter is None or inter["token"] != token:
            raise _Err(404, "Unknown interaction", 10062)
        entry = {**copy.deepcopy(rec.json or {}), "at": rec.at}
        inter["responses"].append(entry)
        try:
            return self._respond(rec, inter)
        except _Err as e:
            entry["status"] = e.status
            raise

    def _respond(self, rec, inter):
        late = self.ack_deadline is not None and time.monotonic() - inter["created"] > self.ack_deadline
        if inter["token"] in self._expired or (inter["acked"] is None and late):
            raise _Err(404, "Unknown interaction", 10062)
        if inter["acked"] is not None:
            raise _Err(400, "Interaction has already been acknowledged.", 40060)
        body = rec.json or {}
        rtype, data = body.get("type"), body.get("data") or {}
        component = inter["type"] == 3
        msg = None
        if rtype in (4, 5):
            flags = int(data.get("flags") or 0) & EPHEMERAL
            msg = self._new_message(inter["channel_id"], self.bot_user_id, {} if rtype == 5 else data,
                                    files=rec.files, mtype=0 if component else 20, extra=self._meta(inter),
                                    flags=flags | (LOADING if rtype == 5 else 0))
            self._announce("MESSAGE_CREATE", msg)
        elif rtype in (6, 7) and component:
            msg = self._by_id[inter["message_id"]]
            if rtype == 7:
                self._edit(msg, data, rec.files)
                self._announce("MESSAGE_UPDATE", msg)
        elif not ((rtype == 9 and inter["type"] in (2, 3)) or (rtype == 8 and inter["type"] == 4)):
            raise _Err(400, "Invalid Form Body", 50035, errors={"type": {"_errors": [
                {"code": "INTERACTION_RESPONSE_TYPE_INVALID", "message": f"Response type {rtype} is not valid here"}]}})
        inter["acked"] = rtype
        inter["original"] = int(msg["id"]) if msg is not None else None
        inter["responses"][-1]["status"] = 200
        if rec.query.get("with_response") not in ("1", "true", "True"):
            inter["responses"][-1]["status"] = 204
            return 204, None
        result = {"interaction": {"id": str(inter["id"]), "type": inter["type"],
                                  "response_message_id": msg and msg["id"],
                                  "response_message_loading": rtype == 5,
                                  "response_message_ephemeral": bool(msg and msg["flags"] & EPHEMERAL)},
                  "resource": {"type": rtype}}
        if msg is not None and rtype != 6:
            result["resource"]["message"] = self._wire(msg)
        return 200, result

    def _meta(self, inter) -> dict:
        user = copy.deepcopy(self._users[inter["user_id"]])
        meta = {"webhook_id": str(self.application_id), "application_id": str(self.application_id),
                "interaction_metadata": {"id": str(inter["id"]), "type": inter["type"], "user": user,
                                         "authorizing_integration_owners": {"0": str(self.guild_id)}}}
        if inter["type"] == 2:
            meta["interaction"] = {"id": str(inter["id"]), "type": 2, "name": inter["name"], "user": user}
        if inter["message_id"]:
            meta["interaction_metadata"]["interacted_message_id"] = str(inter["message_id"])
        return meta

    def _webhook_interaction(self, app_id, token) -> dict:
        if int(app_id) != self.application_id:
            raise _Err(404, "Unknown Webhook", 10015)
        iid = self._tokens.get(token)
        if iid is None or token in self._expired:
            raise _Err(401, "Invalid Webhook Token", 50027)
        inter = self._interactions[iid]
        if inter["acked"] is None:
            raise _Err(404, "Unknown Webhook", 10015)
        return inter

    def _h_followup(self, rec, app_id, token):
        inter = self._webhook_interaction(app_id, token)
        body = rec.json or {}
        original = self._by_id.get(inter["original"] or 0)
        if inter["acked"] == 5 and original is not None and original["flags"] & LOADING:
            # Discord: the first followup after a deferral edits the "thinking" message (keeping its ephemerality)
            msg = self._edit(original, {k: v for k, v in body.items() if k != "flags"}, rec.files)
            self._announce("MESSAGE_UPDATE", msg)
        else:
            channel_id = int(rec.query.get("thread_id") or inter["channel_id"])
            msg = self._new_message(channel_id, self.bot_user_id, body, files=rec.files, extra=self._meta(inter))
            inter["followups"].append(int(msg["id"]))
            self._announce("MESSAGE_CREATE", msg)
        if rec.query.get("wait") in ("1", "true", "True"):
            return 200, self._wire(msg)
        return 204, None

    def _h_webhook_message(self, rec, app_id, token, which):
        inter = self._webhook_interaction(app_id, token)
        mid = inter["original"] if which == "@original" else int(which)
        msg = self._by_id.get(mid or 0)
        if msg is None or msg.get("deleted") or (mid != inter["original"] and mid not in inter["followups"]):
            raise _Err(404, "Unknown Message", 10008)
        if rec.method == "GET":
            return 200, self._wire(msg)
        if rec.method == "PATCH":
            self._edit(msg, rec.json or {}, rec.files)
            self._announce("MESSAGE_UPDATE", msg)
            return 200, self._wire(msg)
        self._delete(msg)
        return 204, None


_ID, _TOK = r"(\d+)", r"([^/]+)"
_ROUTES = [(m, re.compile(p), h) for m, p, h in [
    ("GET", "/gateway", FakeDiscord._h_gateway),
    ("GET", "/gateway/bot", FakeDiscord._h_gateway_bot),
    ("GET", "/users/@me", FakeDiscord._h_me),
    ("POST", "/users/@me/channels", FakeDiscord._h_open_dm),
    ("GET", f"/users/{_ID}", FakeDiscord._h_user),
    ("GET", "/oauth2/applications/@me", FakeDiscord._h_app),
    ("GET", f"/applications/{_ID}/commands", FakeDiscord._h_commands),
    ("PUT", f"/applications/{_ID}/commands", FakeDiscord._h_commands),
    ("GET", f"/applications/{_ID}/guilds/{_ID}/commands", FakeDiscord._h_commands),
    ("PUT", f"/applications/{_ID}/guilds/{_ID}/commands", FakeDiscord._h_commands),
    ("POST", f"/interactions/{_ID}/{_TOK}/callback", FakeDiscord._h_callback),
    ("POST", f"/webhooks/{_ID}/{_TOK}", FakeDiscord._h_followup),
    *[(m, f"/webhooks/{_ID}/{_TOK}/messages/(@original|\\d+)", FakeDiscord._h_webhook_message)
      for m in ("GET", "PATCH", "DELETE")],
    ("GET", f"/channels/{_ID}", FakeDiscord._h_channel),
    ("GET", f"/channels/{_ID}/messages", FakeDiscord._h_messages),
    ("POST", f"/channels/{_ID}/messages", FakeDiscord._h_messages),
    *[(m, f"/channels/{_ID}/messages/{_ID}", FakeDiscord._h_message) for m in ("GET", "PATCH", "DELETE")],
    ("POST", f"/channels/{_ID}/typing", FakeDiscord._h_typing),
    *[(m, f"/channels/{_ID}/messages/{_ID}/reactions/{_TOK}/@me", FakeDiscord._h_reaction) for m in ("PUT", "DELETE")],
    ("POST", f"/channels/{_ID}/messages/{_ID}/threads", FakeDiscord._h_thread_from_message),
    ("POST", f"/channels/{_ID}/threads", FakeDiscord._h_thread),
    *[(m, f"/channels/{_ID}/thread-members/@me", FakeDiscord._h_thread_member) for m in ("PUT", "DELETE")],
    ("GET", f"/guilds/{_ID}", FakeDiscord._h_guild),
    ("GET", f"/guilds/{_ID}/channels", FakeDiscord._h_guild_channels),
    ("GET", f"/guilds/{_ID}/roles", FakeDiscord._h_guild_roles),
    ("GET", f"/guilds/{_ID}/members/{_ID}", FakeDiscord._h_guild_member),
]]


def _json_response(payload: Any, status: int, headers: dict | None = None) -> web.Response:
    # exactly "application/json": discord.py's json_or_text() compares the header verbatim and would hand the
    # text (not a dict) to the caller for aiohttp's default "application/json; charset=utf-8"
    return web.Response(body=json.dumps(payload).encode(), status=status,
                        headers={**(headers or {}), "Content-Type": "application/json"})


async def _read_body(request: web.Request) -> tuple[Any, dict]:
    """JSON body, or discord.py's multipart upload (``payload_json`` + ``files[n]``)."""
    if request.content_type == "multipart/form-data":
        payload, files = None, {}
        async for part in await request.multipart():
            data = await part.read()
            if part.name == "payload_json":
                payload = json.loads(data)
            else:
                files[part.filename or part.name] = bytes(data)
        return payload, files
    raw = await request.read()
    if not raw:
        return None, {}
    try:
        return json.loads(raw), {}
    except ValueError:
        return raw.decode(errors="replace"), {}


def _option(name: str, value: Any) -> dict:
    if isinstance(value, dict) and "type" in value:
        return {"name": name, **value}
    if isinstance(value, bool):
        return {"name": name, "type": 5, "value": value}
    if isinstance(value, int):
        return {"name": name, "type": 4, "value": value}
    if isinstance(value, float):
        return {"name": name, "type": 10, "value": value}
    return {"name": name, "type": 3, "value": str(value)}


def _walk(components: list) -> list[dict]:
    out = []
    for c in components:
        out.append(c)
        out.extend(_walk(c.get("components") or []))
        if isinstance(c.get("accessory"), dict):
            out.append(c["accessory"])
    return out


def _find_component(components: list, custom_id: str) -> dict | None:
    return next((c for c in _walk(components) if c.get("custom_id") == custom_id), None)


class ClientThread:
    """Runs a discord.py client (or a factory making one inside the loop) on its own loop in a daemon thread.

    ``start()`` logs in (setup_hook runs), connects and waits for on_ready; ``call(fn, *args)`` runs a
    coroutine function in the client's loop and returns its result; ``stop()`` closes the client and joins the
    thread.  ``errors`` collects ERROR log records of the ``discord`` logger (exceptions in commands, views,
    event handlers), so a test can assert none happened.
    """

    def __init__(self, client, token: str, name: str = "discord-client"):
        self._client_or_factory, self.token, self.name = client, token, name
        self.client = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.errors: list[logging.LogRecord] = []
        self._ready = threading.Event()
        self._handler = _ListHandler(self.errors)

    def start(self, timeout: float = 15) -> "ClientThread":
        logging.getLogger("discord").addHandler(self._handler)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise AssertionError(f"discord client not ready after {timeout}s")
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported through start()/stop()
            self.error = self.error or exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        import discord

        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        target = self._client_or_factory
        self.client = client = target if isinstance(target, discord.Client) else target()
        connect = None
        try:
            await client.login(self.token)
            connect = asyncio.create_task(client.connect())
            ready = asyncio.create_task(client.wait_until_ready())
            await asyncio.wait({connect, ready}, return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                ready.cancel()
                connect.result()  # raises why it ended
                raise RuntimeError("discord client stopped before it was ready")
            self._ready.set()
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait({connect, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if connect.done():
                connect.result()
        except BaseException as exc:
            self.error = exc
        finally:
            # close from inside the loop: a close() sent from another thread gets cancelled by asyncio.run's
            # cleanup as soon as connect() returns, leaving the HTTP session open
            await client.close()
            if connect is not None and not connect.done():
                await asyncio.wait_for(connect, 10)

    def call(self, fn, *args, timeout: float = 10, **kwargs):
        """Run ``fn(*args, **kwargs)`` in the client's loop (awaiting it if it returns an awaitable); its result.

        ``fn`` itself is called inside the loop, so ``call(lambda: channel.send(view=MyView()))`` builds the
        view there (a View built outside a running loop never dispatches its callbacks)."""
        async def inside():
            result = fn(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return asyncio.run_coroutine_threadsafe(inside(), self.loop).result(timeout)

    def stop(self, timeout: float = 10) -> None:
        try:
            if self._thread.is_alive() and getattr(self, "_stop", None) is not None:
                with contextlib.suppress(RuntimeError):  # loop already closed
                    self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "discord client thread did not stop"
        finally:
            logging.getLogger("discord").removeHandler(self._handler)

    def __enter__(self) -> "ClientThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _ListHandler(logging.Handler):
    def __init__(self, sink: list):
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record)
