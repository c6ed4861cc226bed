"""Files on a Slack message as ``RemoteFile``s, fetched with the bot token, and read into a job's attachments.

Slack serves a file's bytes at its ``url_private_download`` (else ``url_private``) to a request carrying the bot
token (scope ``files:read``). The token goes only to Slack's own hosts (``slack.com`` and its subdomains, over
HTTPS) or to the host of the configured Web API URL (a fake Slack in tests); a file URL anywhere else is fetched
without it, so a crafted payload cannot make us hand the token to a third party.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from bot.attachments import FileLimits, RemoteFile, read_files
from worker.queue.job import Attachment
from worker.settings import Settings

# The question a file shared without any words asks (a file dropped into one of the bot's threads, or a mention
# with only a file).
FILE_QUESTION = "Please look at the attached file."
SLACK_DOMAIN = "slack.com"


def token_allowed(url: str, api_url: str) -> bool:
    """Whether the bot token may be sent with a request to ``url``."""
    try:
        parts, api = urlsplit(url), urlsplit(api_url)
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and (host == SLACK_DOMAIN or host.endswith("." + SLACK_DOMAIN)):
        return True
    return bool(parts.netloc) and (parts.scheme, parts.netloc.lower()) == (api.scheme, api.netloc.lower())


def has_files(message: dict) -> bool:
    files = message.get("files")
    return isinstance(files, list) and any(isinstance(f, dict) for f in files)


@dataclass(frozen=True)
class SlackFiles:
    """Reads a message's files for a job, within the settings' limits."""

    token: str
    api_url: str
    limits: FileLimits

    @classmethod
    def from_settings(cls, settings: Settings) -> SlackFiles:
        return cls(settings.slack_bot_token.get_secret_value(), settings.slack_api_url,
                   FileLimits.from_settings(settings))

    def remote_files(self, message: dict) -> list[RemoteFile]:
        """The message's files as Slack describes them (``files``: id, name, mimetype, size, url_private…)."""
        if not has_files(message):
            return []
        return [self.remote_file(f) for f in message["files"] if isinstance(f, dict)]

    def remote_file(self, file: dict) -> RemoteFile:
        url = file.get("url_private_download") or file.get("url_private")
        url = url if isinstance(url, str) and url else None
        size = file.get("size")
        name = next((v for v in (file.get("name"), file.get("title"), file.get("id")) if isinstance(v, str) and v),
                    "unnamed file")
        headers = {"Authorization": f"Bearer {self.token}"} if url and token_allowed(url, self.api_url) else {}
        return RemoteFile(name=name, url=url, size=size if isinstance(size, int) else None,
                          mimetype=file.get("mimetype") if isinstance(file.get("mimetype"), str) else None,
                          headers=headers)

    def read(self, message: dict) -> tuple[list[Attachment], list[str]]:
        """The message's readable files as attachments, and a note naming each one skipped."""
        return read_files(self.remote_files(message), self.limits)
