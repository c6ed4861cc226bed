"""A small synchronous client for the Discord REST calls the worker makes (it runs in plain threads).

Every call waits out a 429 for as long as Discord's ``retry_after`` says, then tries again (up to
``max_rate_limit_waits`` times); any other error, a 5xx included, raises ``DiscordError`` with Discord's status,
code and message (and ``retry_after`` for a 429 still refused), and ``deliver()`` decides whether to retry. The
bot token is sent only to bot routes (interaction webhooks are authorised by their token in the URL) and never
logged.

A new message carries a ``nonce`` with ``enforce_nonce``: when the connection drops after Discord took a message,
``deliver()``'s retry sends the same nonce and Discord answers with the message it already created (it dedupes a
nonce from the same author for a few minutes) instead of posting it twice. The nonce is derived from what the
message is (``message_nonce``), so a worker that crashed and runs the job again reuses it too.
"""

from __future__ import annotations

import hashlib
import logging
import time

import requests

from worker.settings import DISCORD_API_URL

log = logging.getLogger(__name__)

ORIGINAL = "@original"  # the message id of an interaction's own response in webhook routes (a private answer)
NONCE_CHARS = 25  # Discord's longest nonce
USER_AGENT = "DiscordBot (https://github.com/xwinbot/xwinbot, 0.1) xwinbot"


def message_nonce(*what: str) -> str:
    """A nonce for the message that shows ``what`` (e.g. a job id and a part number): the same on every try."""
    return hashlib.sha256("\x1f".join(what).encode()).hexdigest()[:NONCE_CHARS]


class DiscordError(RuntimeError):
    def __init__(self, status: int, code: int | None, message: str, retry_after: float | None = None):
        super().__init__(f"Discord answered {status} (code {code}): {message}")
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after  # seconds Discord asked to wait (a 429 still refused after our waits)


class DiscordRest:
    def __init__(self, token: str, base_url: str = DISCORD_API_URL, max_rate_limit_waits: int = 5,
                 timeout_s: float = 15):
        self._token = token
        self.base_url = base_url.rstrip("/")
        self.max_rate_limit_waits = max_rate_limit_waits
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT

    def __repr__(self) -> str:
        return f"DiscordRest({self.base_url!r})"  # no token

    # -- bot routes ------------------------------------------------------------------------------------
    def send(self, channel_id: str, payload: dict, nonce: str | None = None) -> dict:
        """A new message; with ``nonce``, sent again it returns the message the first send created."""
        if nonce is not None:
            payload = dict(payload, nonce=nonce, enforce_nonce=True)
        return self.request("POST", f"/channels/{channel_id}/messages", payload)

    def edit(self, channel_id: str, message_id: str, payload: dict) -> dict:
        return self.request("PATCH", f"/channels/{channel_id}/messages/{message_id}", payload)

    def delete(self, channel_id: str, message_id: str) -> None:
        self.request("DELETE", f"/channels/{channel_id}/messages/{message_id}")

    def open_dm(self, user_id: str) -> str:
        """The id of the direct-message channel with a user."""
        return self.request("POST", "/users/@me/channels", {"recipient_id": str(user_id)})["id"]

    # -- interaction webhook routes (valid for 15 minutes after the interaction) --------------------------
    def edit_interaction_message(self, application_id: str, token: str, message_id: str, payload: dict) -> dict:
        return self.request("PATCH", f"/webhooks/{application_id}/{token}/messages/{message_id}", payload, bot=False)

    def send_followup(self, application_id: str, token: str, payload: dict) -> dict:
        return self.request("POST", f"/webhooks/{application_id}/{token}?wait=true", payload, bot=False)

    def delete_interaction_message(self, application_id: str, token: str, message_id: str) -> None:
        self.request("DELETE", f"/webhooks/{application_id}/{token}/messages/{message_id}", bot=False)

    # -- the one request loop --------------------------------------------------------------------------
    def request(self, method: str, path: str, payload: dict | None = None, bot: bool = True) -> dict:
        headers = {"Authorization": f"Bot {self._token}"} if bot else {}
        for _ in range(self.max_rate_limit_waits + 1):
            response = self.session.request(method, self.base_url + path, json=payload, headers=headers,
                                            timeout=self.timeout_s)
            if response.status_code != 429:
                break
            wait = _retry_after(response)
            log.warning("Discord rate limit on %s %s: waiting %.2f s", method, path.split("?")[0], wait)
            time.sleep(wait)
        if response.status_code >= 400:
            body = _json(response)
            wait = _retry_after(response) if response.status_code == 429 else None
            raise DiscordError(response.status_code, body.get("code"), body.get("message", response.reason), wait)
        return _json(response)


def _json(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(response: requests.Response) -> float:
    """Seconds to wait: the body's ``retry_after`` (Discord's own), else the Retry-After header, else 1."""
    value = _json(response).get("retry_after") or response.headers.get("Retry-After") or 1
    try:
        return min(max(float(value), 0.0), 60.0)
    except (TypeError, ValueError):
        return 1.0
