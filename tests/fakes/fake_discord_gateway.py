"""The gateway half of the fake Discord (see ``fake_discord.py``): one websocket endpoint speaking gateway v10.

What the real discord.py 2.7 client does on this socket, and what we answer:

* It connects to ``<gateway>?v=10&encoding=json&compress=zlib-stream`` (``zstd-stream`` when the
  ``zstandard`` package is installed).  With ``zlib-stream`` we send every payload as a binary frame of
  one shared zlib stream, each ending in a ``Z_SYNC_FLUSH`` (``00 00 ff ff``), as Discord does; for any
  other value we send plain JSON text frames, which discord.py accepts as well.
* We send HELLO (op 10); the client heartbeats at once (op 1, ``d`` = last sequence) and then every
  ``heartbeat_interval``; we answer each with HEARTBEAT_ACK (op 11).
* IDENTIFY (op 2): wrong token -> close 4004, privileged intents the application may not use -> close
  4014 (discord.py raises ``PrivilegedIntentsRequired``), otherwise READY (guilds only as unavailable
  stubs, like Discord) followed by one GUILD_CREATE per guild with the full guild.
* RESUME (op 6) of a known session: the events dispatched since ``seq`` are replayed, then RESUMED.
  Unknown session or wrong token: INVALID_SESSION (op 9, ``d: false``) and the client IDENTIFYs anew.
* REQUEST_GUILD_MEMBERS (op 8, sent when the client has the members intent): one GUILD_MEMBERS_CHUNK.
* Dispatches are numbered per session (``s``) and kept, so a RESUME can replay them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, VOICE_STATE = 0, 1, 2, 3, 4
RESUME, RECONNECT, REQUEST_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 6, 7, 8, 9, 10, 11

# Intent bits (https://discord.com/developers/docs/events/gateway#gateway-intents)
GUILDS, GUILD_MEMBERS, GUILD_PRESENCES = 1 << 0, 1 << 1, 1 << 8
GUILD_MESSAGES, DIRECT_MESSAGES, MESSAGE_CONTENT = 1 << 9, 1 << 12, 1 << 15
PRIVILEGED_INTENTS = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT


@dataclass
class Session:
    session_id: str
    intents: int
    seq: int = 0
    log: list = field(default_factory=list)  # every dispatch of this session: (seq, payload)
    conn: Connection | None = None  # the live connection, None while the client is away


class Connection:
    """One websocket.  Sending is serialised so that sequence numbers, the zlib stream and the wire agree."""

    def __init__(self, ws: web.WebSocketResponse, compress: str | None):
        self.ws = ws
        self.zlib = zlib.compressobj() if compress == "zlib-stream" else None
        self.lock = asyncio.Lock()
        self.session: Session | None = None

    async def send(self, payload: dict) -> None:
        text = json.dumps(payload)
        if self.zlib is not None:
            await self.ws.send_bytes(self.zlib.compress(text.encode()) + self.zlib.flush(zlib.Z_SYNC_FLUSH))
        else:
            await self.ws.send_str(text)


class Gateway:
    """Serves ``GET /ws``.  ``world`` is the FakeDiscord: it builds READY/GUILD_CREATE and filters events."""

    def __init__(self, world: Any, heartbeat_interval_ms: int = 41250):
        self.world = world
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.sessions: dict[str, Session] = {}
        self.connections: set[Connection] = set()
        self.sent: list[dict] = []  # every payload sent except heartbeat ACKs
        self.received: list[dict] = []  # every payload the clients sent
        self.undelivered: list[dict] = []  # dispatches made while no session existed (Discord drops them)

    # -- sending ------------------------------------------------------------------------------------
    async def _send(self, conn: Connection, payload: dict) -> None:
        async with conn.lock:
            await self._send_locked(conn, payload)

    async def _send_locked(self, conn: Connection, payload: dict) -> None:
        if conn.ws.closed:
            return
        try:
            await conn.send(payload)
        except (ConnectionError, RuntimeError):
            return
        if payload.get("op") != HEARTBEAT_ACK:
            self.world._record_gateway_sent(payload)

    async def _dispatch_to(self, session: Session, event: str, data: Any) -> None:
        conn = session.conn
        if conn is None:  # client away: keep it for the RESUME replay
            session.seq += 1
            session.log.append((session.seq, {"op": DISPATCH, "t": event, "s": session.seq, "d": data}))
            return
        async with conn.lock:
            session.seq += 1
            payload = {"op": DISPATCH, "t": event, "s": session.seq, "d": data}
            session.log.append((session.seq, payload))
            await self._send_locked(conn, payload)

    async def dispatch(self, event: str, data: Any, filter: Callable[[str, Any, int], Any] | None = None) -> int:
        """Send ``event`` to every session (through ``filter(event, data, intents)``, None = not for it)."""
        delivered = 0
        for session in list(self.sessions.values()):
            payload = data if filter is None else filter(event, data, session.intents)
            if payload is not None:
                await self._dispatch_to(session, event, payload)
                delivered += 1
        if not self.sessions:
            self.undelivered.append({"t": event, "d": data})
        return delivered

    async def send_op(self, op: int, data: Any = None) -> None:
        """A bare opcode (e.g. RECONNECT, INVALID_SESSION) to every live connection."""
        for conn in list(self.connections):
            await self._send(conn, {"op": op, "d": data})

    async def close_all(self, code: int = 1001) -> None:
        for conn in list(self.connections):
            await conn.ws.close(code=code, message=b"fake discord closing")

    # -- the websocket ------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        conn = Connection(ws, request.query.get("compress"))
        self.connections.add(conn)
        self.world._record_gateway_connect(dict(request.query))
        try:
            await self._send(conn, {"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms,
                                                      "_trace": ["fake-discord-gateway"]}})
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    raw = msg.data
                elif msg.type == WSMsgType.BINARY:
                    raw = msg.data.decode()
                else:
                    break
                payload = json.loads(raw)
                self.received.append({**payload, "at": time.time()})
                await self._on_payload(conn, payload)
        finally:
            self.connections.discard(conn)
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
                if ws.close_code in (1000, 1001):  # a clean close ends the session; 4000 etc. keep it resumable
                    self.sessions.pop(session.session_id, None)
        return ws

    async def _on_payload(self, conn: Connection, payload: dict) -> None:
        op, d = payload.get("op"), payload.get("d")
        if op == HEARTBEAT:
            await self._send(conn, {"op": HEARTBEAT_ACK})
        elif op == IDENTIFY:
            await self._identify(conn, d or {})
        elif op == RESUME:
            await self._resume(conn, d or {})
        elif conn.session is None:
            await conn.ws.close(code=4003, message=b"Not authenticated.")
        elif op == REQUEST_MEMBERS:
            for chunk in self.world._member_chunks(d or {}):
                await self._dispatch_to(conn.session, "GUILD_MEMBERS_CHUNK", chunk)
        # PRESENCE_UPDATE / VOICE_STATE_UPDATE and the rest: recorded in ``received`` only

    async def _identify(self, conn: Connection, d: dict) -> None:
        if conn.session is not None:
            await conn.ws.close(code=4005, message=b"Already authenticated.")
            return
        if d.get("token") != self.world.bot_token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(d.get("intents", 0))
        if intents & PRIVILEGED_INTENTS & ~self.world.allowed_privileged_intents:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        session = Session(session_id=uuid.uuid4().hex, intents=intents)
        self.sessions[session.session_id] = session
        conn.session, session.conn = session, conn
        await self._dispatch_to(session, "READY", self.world._ready_payload(session.session_id, d.get("shard")))
        for guild in self.world._guild_create_payloads(intents):
            await self._dispatch_to(session, "GUILD_CREATE", guild)
        self.world._on_ready_sent()

    async def _resume(self, conn: Connection, d: dict) -> None:
        session = self.sessions.get(d.get("session_id") or "")
        if session is None or d.get("token") != self.world.bot_token:
            await self._send(conn, {"op": INVALID_SESSION, "d": False})
            return
        if session.conn is not None and session.conn is not conn:
            await session.conn.ws.close(code=4000, message=b"Session resumed elsewhere.")
        async with conn.lock:
            conn.session, session.conn = session, conn
            last = d.get("seq") or 0
            for seq, payload in session.log:
                if seq > last:
                    await self._send_locked(conn, payload)
            session.seq += 1
            payload = {"op": DISPATCH, "t": "RESUMED", "s": session.seq, "d": {"_trace": ["fake-discord-gateway"]}}
            session.log.append((session.seq, payload))
            await self._send_locked(conn, payload)
        self.world._on_ready_sent(resumed=True)
