"""Bearer keys of the HTTP API: ``XWINBOT_API_KEYS`` = comma-separated ``name:key`` pairs.

Only SHA-256 digests of the keys are kept, and a presented key is compared with every one of them in constant
time (``hmac.compare_digest``); the name, never the key, is what the rest of the adapter (and its logs) sees.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr


class ApiKeys:
    def __init__(self, setting: SecretStr | None):
        self._digests: list[tuple[bytes, str]] = []
        if setting is None:
            return
        for pair in setting.get_secret_value().split(","):
            name, _, key = pair.strip().partition(":")
            if name.strip() and key.strip():
                self._digests.append((_digest(key.strip()), name.strip()))

    def __bool__(self) -> bool:
        return bool(self._digests)

    @property
    def names(self) -> list[str]:
        return [name for _, name in self._digests]

    def name_for(self, authorization: str | None) -> str | None:
        """The key's name for an ``Authorization: Bearer <key>`` header, or None (missing or unknown key)."""
        if not authorization:
            return None
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        given, found = _digest(key.strip()), None
        for digest, name in self._digests:  # every digest compared: the time says nothing about which matched
            if hmac.compare_digest(given, digest) and found is None:
                found = name
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
