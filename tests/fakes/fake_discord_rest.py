"""The REST half of the fake Discord (see ``fake_discord.py``): the aiohttp handler that records each request,
applies an ``outage()`` and the rate limits set with ``rate_limit()`` and routes it, the route handlers, and the
route table.

``Rest`` is a mixin of ``FakeDiscord``; its handlers run on the fake's loop with the lock held and change the
world through ``World``'s methods (the events they raise are queued in ``self._local.pending`` and dispatched
once the handler is done).
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
import traceback
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.fake_discord_world import EPHEMERAL, LOADING, _Err, _user
from tests.fakes.platform_outage import Outage


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



# Discord: "the nonce is checked for uniqueness in the past few minutes" (Create Message, enforce_nonce)
NONCE_WINDOW_S = 300.0


class Rest:
    """The REST API of ``FakeDiscord`` (a mixin): ``_handle_http`` and the ``_h_*`` route handlers."""

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
            limited = self._take_outage(rec) or self._take_rate_limit(rec)
            if limited is not None:
                rec.status, self._local.pending = limited.status, None
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
        if self._take_drop(rec):  # processed, but the client never hears back (a reset connection)
            status = rec.status = 0
            request.transport.close()
        pending, self._local.pending = self._local.pending, None
        for event, data in pending:
            await self._gateway.dispatch(event, data, self._filter)
        if payload is None or status == 204:
            return web.Response(status=204)
        return _json_response(payload, status)

    def _take_outage(self, rec: Request) -> web.Response | None:
        """During ``outage()``: a 5xx, or a 429 with the usual rate-limit headers; nothing is processed."""
        outage: Outage | None = self._outage
        status = outage.refusal() if outage else None
        if status is None:
            return None
        if status == 429:
            return _rate_limited(float(outage.retry_after), "outage", is_global=False)
        return _json_response({"message": f"{status}: Service Unavailable", "code": 0}, status)

    def _take_drop(self, rec: Request) -> bool:
        """A request ``drop_after_processing()`` matches: it was done, and its connection is closed unanswered."""
        with self._lock:
            for rule in self._drops:
                method, rx, times = rule
                if times > 0 and method == rec.method and rx.search(rec.path):
                    rule[2] -= 1
                    return True
        return False

    def _nonce_message(self, channel_id: int, author_id: int, body: dict) -> dict | None:
        """Discord's message-create idempotency: with ``enforce_nonce``, a message the same author created in the
        channel with the same nonce within the last few minutes (and not deleted since)."""
        if body.get("nonce") is None or not body.get("enforce_nonce"):
            return None
        key = (channel_id, author_id, str(body["nonce"]))
        found = self._nonces.get(key)
        if found is None or time.monotonic() - found[0] > NONCE_WINDOW_S:
            return None
        earlier = self._by_id.get(found[1])
        return None if earlier is None or earlier.get("deleted") else earlier

    def _remember_nonce(self, msg: dict, body: dict) -> None:
        if body.get("nonce") is not None and body.get("enforce_nonce"):
            key = (int(msg["channel_id"]), int(msg["author"]["id"]), str(body["nonce"]))
            self._nonces[key] = (time.monotonic(), int(msg["id"]))

    def _take_rate_limit(self, rec: Request) -> web.Response | None:
        with self._lock:
            for rule in self._rate_limits:
                method, rx, times, retry_after, is_global = rule
                if times > 0 and method in ("*", rec.method) and rx.search(rec.path):
                    rule[2] -= 1
                    break
            else:
                return None
        return _rate_limited(retry_after, rx.pattern, is_global)

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
            body = rec.json or {}
            earlier = self._nonce_message(int(cid), self.bot_user_id, body)
            if earlier is not None:  # Discord returns the message created before and creates none
                return 200, self._wire(earlier)
            msg = self._new_message(int(cid), self.bot_user_id, body, files=rec.files)
            self._remember_nonce(msg, body)
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
        if inter["acked"] == 5 and original is not None and not original.get("deleted") and original["flags"] & LOADING:
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
    ("GET", "/gateway", Rest._h_gateway),
    ("GET", "/gateway/bot", Rest._h_gateway_bot),
    ("GET", "/users/@me", Rest._h_me),
    ("POST", "/users/@me/channels", Rest._h_open_dm),
    ("GET", f"/users/{_ID}", Rest._h_user),
    ("GET", "/oauth2/applications/@me", Rest._h_app),
    ("GET", f"/applications/{_ID}/commands", Rest._h_commands),
    ("PUT", f"/applications/{_ID}/commands", Rest._h_commands),
    ("GET", f"/applications/{_ID}/guilds/{_ID}/commands", Rest._h_commands),
    ("PUT", f"/applications/{_ID}/guilds/{_ID}/commands", Rest._h_commands),
    ("POST", f"/interactions/{_ID}/{_TOK}/callback", Rest._h_callback),
    ("POST", f"/webhooks/{_ID}/{_TOK}", Rest._h_followup),
    *[(m, f"/webhooks/{_ID}/{_TOK}/messages/(@original|\\d+)", Rest._h_webhook_message)
      for m in ("GET", "PATCH", "DELETE")],
    ("GET", f"/channels/{_ID}", Rest._h_channel),
    ("GET", f"/channels/{_ID}/messages", Rest._h_messages),
    ("POST", f"/channels/{_ID}/messages", Rest._h_messages),
    *[(m, f"/channels/{_ID}/messages/{_ID}", Rest._h_message) for m in ("GET", "PATCH", "DELETE")],
    ("POST", f"/channels/{_ID}/typing", Rest._h_typing),
    *[(m, f"/channels/{_ID}/messages/{_ID}/reactions/{_TOK}/@me", Rest._h_reaction) for m in ("PUT", "DELETE")],
    ("POST", f"/channels/{_ID}/messages/{_ID}/threads", Rest._h_thread_from_message),
    ("POST", f"/channels/{_ID}/threads", Rest._h_thread),
    *[(m, f"/channels/{_ID}/thread-members/@me", Rest._h_thread_member) for m in ("PUT", "DELETE")],
    ("GET", f"/guilds/{_ID}", Rest._h_guild),
    ("GET", f"/guilds/{_ID}/channels", Rest._h_guild_channels),
    ("GET", f"/guilds/{_ID}/roles", Rest._h_guild_roles),
    ("GET", f"/guilds/{_ID}/members/{_ID}", Rest._h_guild_member),
]]


def _rate_limited(retry_after: float, bucket: str, is_global: bool) -> web.Response:
    headers = {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
               "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
               "X-RateLimit-Reset-After": f"{retry_after:.3f}",
               "X-RateLimit-Bucket": f"fake{zlib.crc32(bucket.encode()):08x}",
               "X-RateLimit-Scope": "global" if is_global else "user", "Retry-After": str(math.ceil(retry_after)),
               "Via": "1.1 google"}
    if is_global:
        headers["X-RateLimit-Global"] = "true"
    body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global}
    return _json_response(body, 429, headers)


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
