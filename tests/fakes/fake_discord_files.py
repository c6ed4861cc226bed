"""More of the fake Discord (see ``fake_discord.py``), a mixin of ``FakeDiscord``: people's messages with files
(attachments shaped as Discord's docs print them, their URLs served by the fake like the CDN serves them), a
message's context-menu command, and submitting the modal the bot opened.

Attachment object: https://discord.com/docs/resources/message#attachment-object; message command and modal
submit interactions: https://discord.com/docs/interactions/receiving-and-responding#interaction-object.
"""

from __future__ import annotations

import copy
import secrets

from aiohttp import web

from tests.fakes.fake_discord_world import _option, _user


class FilesAndMenus:
    """``user_message_with_files``, ``message_command``, ``submit_modal``, and the CDN route for attachments."""

    def cdn_route(self, app: web.Application) -> None:
        """Attachment URLs: ``/attachments/<channel>/<attachment>/<filename>`` (signed on Discord: no auth)."""
        app.router.add_get("/attachments/{channel}/{attachment}/{filename}", self._h_cdn)

    async def _h_cdn(self, request: web.Request) -> web.Response:
        with self._lock:
            self.cdn_requests = [*getattr(self, "cdn_requests", []), dict(request.headers)]
            loose = getattr(self, "_loose_files", {}).get(request.match_info["attachment"])
            if loose and loose[0] == request.match_info["filename"]:
                return web.Response(body=loose[1])
            for (mid, name), data in self._attachments.items():
                msg = self._by_id.get(mid) or {}
                ids = {a["id"] for a in msg.get("attachments", []) if a["filename"] == name}
                if request.match_info["attachment"] in ids and request.match_info["filename"] == name:
                    return web.Response(body=data)
        return web.Response(status=404, text="404: Not Found")

    def attachment_object(self, channel_id: int, filename: str, data: bytes, content_type: str | None) -> dict:
        """An attachment as MESSAGE_CREATE carries it (the docs' fields; ``ex``/``is``/``hm`` sign the URL)."""
        aid = self._next_id()
        url = (f"http://127.0.0.1:{self.port}/attachments/{channel_id}/{aid}/{filename}"
               f"?ex=66a0b0c0&is=669f5f40&hm={secrets.token_hex(16)}&")
        obj = {"id": str(aid), "filename": filename, "size": len(data), "url": url, "proxy_url": url, "flags": 0}
        if content_type:
            obj["content_type"] = content_type
        if content_type and content_type.startswith("image/"):
            obj.update(width=64, height=64, placeholder="", placeholder_version=1)
        return obj

    def hosted_file(self, channel_id, filename: str, data: bytes, content_type: str | None) -> dict:
        """A file uploaded with a command (``/ask file:``) or put into a payload by hand: its attachment object,
        its URL served by the CDN route (it belongs to no message)."""
        with self._lock:
            obj = self.attachment_object(int(channel_id), filename, data, content_type)
            self._loose_files = {**getattr(self, "_loose_files", {}), obj["id"]: (filename, data)}
            return obj

    def slash_command_with_files(self, name, options: dict, files: dict[str, tuple[str, bytes, str | None]],
                                 **kwargs) -> dict:
        """``/name`` with attachment options: ``files`` maps an option to ``(filename, bytes, content_type)``. As
        Discord sends it: the option (type 11) holds the attachment's id, ``data.resolved.attachments`` maps that
        id to the attachment object (docs: interaction object, resolved data structure)."""
        channel_id = kwargs.get("channel_id") or self.channel_id
        resolved, opts = {}, [_option(k, v) for k, v in options.items()]
        for option, (filename, data, ctype) in files.items():
            obj = self.hosted_file(channel_id, filename, data, ctype)
            resolved[obj["id"]] = obj
            opts.append({"name": option, "type": 11, "value": obj["id"]})
        return self.slash_command(name, opts, resolved={"attachments": resolved}, **kwargs)

    def documented_interaction(self, itype: int, user_id, channel_id, name: str | None = None) -> dict:
        """Ids for an interaction payload written by hand (tests/data/discord_payloads): the fake knows its id and
        token, so the bot's responses to it are accepted. Returns ``{"ID": id, "TOKEN": token}``."""
        with self._lock:
            base = self._interaction_base(itype, int(user_id), int(channel_id))
            self._interactions[int(base["id"])]["name"] = name
            return {"ID": base["id"], "TOKEN": base["token"]}

    def stored_message_id(self, channel_id, author_id, content: str) -> str:
        """A message the fake keeps (threads can start from it, REST finds it) but sends nowhere: its id is for
        a hand-written MESSAGE_CREATE payload (tests/data/discord_payloads) dispatched as-is."""
        with self._lock:
            self._users.setdefault(author_id, _user(author_id, f"user{author_id}"))
            return self._new_message(int(channel_id), author_id, {"content": content})["id"]

    def user_message_with_files(self, channel_id, author_id, content, files: dict[str, tuple[bytes, str | None]],
                                mentions_bot=False, not_on_cdn: tuple[str, ...] = ()) -> dict:
        """A person's message with files: ``{filename: (bytes, content_type or None)}``; the CDN answers 404 for
        those named in ``not_on_cdn`` from the start (removing them after the event would race the bot's download)."""
        with self._change():
            self._users.setdefault(author_id, _user(author_id, f"user{author_id}"))
            mention = f"<@{self.bot_user_id}>"
            if mentions_bot and mention not in content:
                content = f"{mention} {content}".strip()
            cid = int(channel_id)
            attachments = [self.attachment_object(cid, name, data, ctype) for name, (data, ctype) in files.items()]
            msg = self._new_message(cid, author_id, {"content": content}, extra={"attachments": attachments},
                                    files={name: data for name, (data, _) in files.items() if name not in not_on_cdn})
            self._emit("MESSAGE_CREATE", self._wire(msg, gateway=True))
            return copy.deepcopy(msg)

    def _registered_of_type(self, name: str, ctype: int) -> dict | None:
        for commands in (self._commands.get(self.guild_id, []), self._commands.get(None, [])):
            for cmd in commands:
                if cmd["name"] == name and cmd.get("type", 1) == ctype:
                    return cmd
        return None

    def message_command(self, name: str, message_id, user_id=4001, without: tuple[str, ...] = ()) -> dict:
        """A person picks ``name`` in message ``message_id``'s Apps menu (type 2, data.type 3, resolved message);
        ``without`` leaves out optional top-level fields (e.g. ``("channel",)``)."""
        with self._change():
            msg = self._by_id[int(message_id)]
            cmd = self._registered_of_type(name, 3)
            if cmd is None:
                raise AssertionError(f"message command {name!r} was never registered with the fake (tree.sync)")
            payload = self._interaction_base(2, user_id, int(msg["channel_id"]))
            data = {"id": cmd["id"], "name": name, "type": 3, "target_id": msg["id"],
                    "resolved": {"messages": {msg["id"]: self._wire(msg)}}}
            if cmd.get("guild_id"):
                data["guild_id"] = cmd["guild_id"]
            payload["data"] = data
            self._interactions[int(payload["id"])]["name"] = name
            for key in without:
                payload.pop(key, None)
            self._emit("INTERACTION_CREATE", copy.deepcopy(payload))
        return payload

    def modal_of(self, interaction_id) -> dict | None:
        """The modal the bot opened in answer to ``interaction_id`` (callback type 9), or None."""
        return next((r["data"] for r in self.interaction_responses(interaction_id) if r.get("type") == 9), None)

    def submit_modal(self, interaction_id, values: dict[str, str] | None = None, user_id=4001) -> dict:
        """The person submits the modal opened for ``interaction_id`` (type 5); text inputs keep their default
        unless ``values`` (custom_id -> text) says otherwise."""
        modal = self.modal_of(interaction_id)
        if modal is None:
            raise AssertionError(f"interaction {interaction_id} opened no modal")
        values = values or {}

        def submitted(component: dict) -> dict:
            if component["type"] == 1:
                return {"type": 1, "components": [submitted(c) for c in component["components"]]}
            if component["type"] == 18:
                return {"type": 18, "component": submitted(component["component"])}
            return {"type": component["type"], "custom_id": component["custom_id"],
                    "value": values.get(component["custom_id"], component.get("value") or "")}

        with self._change():
            channel_id = self._interactions[int(interaction_id)]["channel_id"]
            payload = self._interaction_base(5, user_id, channel_id)
            payload["data"] = {"custom_id": modal["custom_id"],
                               "components": [submitted(c) for c in modal["components"]]}
            self._emit("INTERACTION_CREATE", copy.deepcopy(payload))
        return payload

    def raw_message(self, channel_id, author_id, content, **fields) -> dict:
        """A message stored as usual but sent to every session as-is, with ``fields`` set on it (e.g.
        ``mention_roles``): no intent filter, as when Discord's rules deliver its content."""
        with self._change():
            self._users.setdefault(author_id, _user(author_id, f"user{author_id}"))
            msg = self._new_message(int(channel_id), author_id, {"content": content}, extra=fields)
            wire = self._wire(msg, gateway=True)
        self.dispatch("MESSAGE_CREATE", wire)
        return copy.deepcopy(msg)
