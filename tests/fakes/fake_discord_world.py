"""The fake Discord's world (see ``fake_discord.py``): one guild's channels, roles, members, messages and
threads, the wire objects built from them (plus slash command options and component lookup), and how a change
to them reaches the gateway.

``World`` is a mixin of ``FakeDiscord``, whose ``__init__`` sets up the state used here (``_users``,
``_members``, ``_roles``, ``_channels``, ``_messages``, ``_by_id`` ...).  A world change raises events with
``_emit``; Discord's rules for who sees what (intents, the message content intent) live in ``_filter``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import re
import time
from typing import Any

from tests.fakes.fake_discord_gateway import DIRECT_MESSAGES, GUILD_MEMBERS, GUILD_MESSAGES, GUILDS, MESSAGE_CONTENT

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


class _Err(Exception):
    def __init__(self, status: int, message: str, code: int = 0, **extra):
        super().__init__(message)
        self.status, self.body = status, {"message": message, "code": code, **extra}


def _now_iso(t: float | None = None) -> str:
    return datetime.datetime.fromtimestamp(time.time() if t is None else t, datetime.UTC).isoformat()


def _user(user_id: int, name: str, bot: bool = False) -> dict:
    return {"id": str(user_id), "username": name, "global_name": None if bot else name.title(),
            "discriminator": "0", "avatar": None, "bot": bot, "public_flags": 0}


class World:
    """Guild state and message store of ``FakeDiscord`` (a mixin; the state is set up by its __init__)."""

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

    # ------------------------------------------------------------------ wire objects
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
