"""Files on a question, read as text for the prompt: plain text, Markdown, source code, CSV, JSON, logs, and
the text of PDFs (pypdf). Whatever cannot be read is skipped with a reason the reply shows, never silently.

Each adapter says where a file is (``RemoteFile``: its URL and the headers that fetch it, e.g. Slack's bot
token) and calls ``read_files`` off its event loop. Limits come from settings: the largest file downloaded,
the download timeout, and the characters of file text one question may carry (the worker then cuts to the
model's own context).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import requests

from bot.conversation import clean_text
from worker.queue.job import MAX_ATTACHMENTS, Attachment
from worker.settings import Settings

log = logging.getLogger(__name__)

TEXT_SUFFIXES = frozenset(
    ".txt .text .md .markdown .rst .csv .tsv .json .jsonl .ndjson .yaml .yml .toml .ini .cfg .conf .env .log .out "
    ".err .xml .html .htm .css .svg .py .pyi .ipynb .js .mjs .cjs .ts .tsx .jsx .java .kt .kts .scala .go .rs .c .h "
    ".cc .cpp .cxx .hpp .hh .cs .fs .rb .php .pl .pm .lua .r .jl .swift .m .mm .sh .bash .zsh .fish .ps1 .bat .sql "
    ".graphql .proto .tf .hcl .dockerfile .gradle .diff .patch .tex .vue .svelte .dart .ex .exs .erl .hs .ml .clj"
    .split()
)
TEXT_NAMES = frozenset({"dockerfile", "makefile", "readme", "license", "changelog", "procfile", "gemfile"})
TEXT_MIMETYPES = ("text/", "application/json", "application/xml", "application/x-yaml", "application/yaml",
                  "application/javascript", "application/x-sh", "application/sql", "application/toml")
PDF_MIMETYPE = "application/pdf"


@dataclass(frozen=True)
class RemoteFile:
    """A file as the platform describes it: enough to decide whether to fetch it, and how."""

    name: str
    url: str | None
    size: int | None = None  # bytes, when the platform says
    mimetype: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may hold a token: never logged


@dataclass(frozen=True)
class FileLimits:
    max_bytes: int
    timeout_s: float
    max_chars: int  # of file text in one question, all files together

    @classmethod
    def from_settings(cls, settings: Settings) -> FileLimits:
        return cls(settings.attachment_max_bytes, settings.attachment_timeout_s, settings.attachment_max_chars)


class Skipped(Exception):
    """A file that is not part of the prompt; the message says why, for the reply."""


def kind_of(file: RemoteFile) -> str:
    """"text", "pdf", "image" or "other", from the platform's mimetype and the file's name."""
    mimetype = (file.mimetype or "").split(";")[0].strip().lower()
    path = PurePosixPath(file.name.lower())
    if mimetype == PDF_MIMETYPE or path.suffix == ".pdf":
        return "pdf"
    if mimetype.startswith("image/"):
        return "image"
    if mimetype.startswith(TEXT_MIMETYPES) or path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES:
        return "text"
    return "other"


def read_files(files: Sequence[RemoteFile], limits: FileLimits) -> tuple[list[Attachment], list[str]]:
    """The files that could be read, as attachments (in order, within ``limits.max_chars`` together), and a
    note for each one that could not, naming it and saying why."""
    attachments: list[Attachment] = []
    notes: list[str] = []
    room = limits.max_chars
    for file in files:
        name = display_name(file)
        try:
            if len(attachments) >= MAX_ATTACHMENTS:
                raise Skipped(f"only {MAX_ATTACHMENTS} files are read per question")
            if room <= 0:
                raise Skipped("the question's files already fill the context budget")
            text = read_text(file, limits)
        except Skipped as reason:
            notes.append(f"`{name}` was skipped: {reason}")
            continue
        if len(text) > room:
            notes.append(f"`{name}` was cut to its first {room:,} characters (the question's files are limited "
                         f"to {limits.max_chars:,}).")
            text = text[:room]
        room -= len(text)
        attachments.append(Attachment(name=name, text=text))
    return attachments, notes


def display_name(file: RemoteFile) -> str:
    """The file's name as the prompt and the notes show it: clean, one line, bounded."""
    name = " ".join(clean_text(file.name).split()).replace("`", "'")[:200]
    return name or "unnamed file"


def read_text(file: RemoteFile, limits: FileLimits) -> str:
    kind = kind_of(file)
    if kind == "image":
        raise Skipped("images are not read (only text, code, CSV, JSON, logs and PDFs).")
    if kind == "other":
        raise Skipped(f"its type ({file.mimetype or 'unknown'}) is not one I read (text, code, CSV, JSON, logs, PDF).")
    if file.size is not None and file.size > limits.max_bytes:
        raise Skipped(f"it is too large ({megabytes(file.size)}; the limit is {megabytes(limits.max_bytes)}).")
    data = download(file, limits)
    text = pdf_text(data) if kind == "pdf" else plain_text(data)
    if not text.strip():
        raise Skipped("it holds no text I could read.")
    return text


def download(file: RemoteFile, limits: FileLimits) -> bytes:
    """The file's bytes, at most ``limits.max_bytes`` of them, within ``limits.timeout_s`` per read."""
    if not file.url:
        raise Skipped("the platform gave no way to download it.")
    try:
        with requests.get(file.url, headers=file.headers, timeout=limits.timeout_s, stream=True,
                          allow_redirects=True) as response:
            if response.status_code != 200:
                raise Skipped(f"it could not be downloaded (HTTP {response.status_code}).")
            data = bytearray()
            for chunk in response.iter_content(64 * 1024):
                data += chunk
                if len(data) > limits.max_bytes:
                    raise Skipped(f"it is too large (over {megabytes(limits.max_bytes)}, the limit).")
            return bytes(data)
    except requests.Timeout:
        raise Skipped(f"downloading it took longer than {limits.timeout_s:g} s.") from None
    except requests.RequestException as err:
        log.warning("could not download %s: %s", display_name(file), type(err).__name__)
        raise Skipped(f"it could not be downloaded ({type(err).__name__}).") from None


def plain_text(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise Skipped("it looks like a binary file, not text.")
    return clean_text(data.decode("utf-8", errors="replace"))


def pdf_text(data: bytes) -> str:
    from pypdf import PdfReader  # imported when a PDF comes: most questions have none
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as err:
        raise Skipped(f"it is not a PDF I could read ({type(err).__name__}).") from None
    return clean_text("\n\n".join(pages))


def megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"
