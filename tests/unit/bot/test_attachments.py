"""Files on a question: each listed type reaches the prompt as text; everything else is skipped with a reason."""

from __future__ import annotations

import pytest

from bot.attachments import FileLimits, RemoteFile, kind_of, read_files
from tests.helpers.files import FileServer, pdf_with_text

LIMITS = FileLimits(max_bytes=100_000, timeout_s=2.0, max_chars=20_000)
FILES = {
    "/notes.txt": b"plain notes\nsecond line",
    "/README.md": b"# Title\n\n- item *one*",
    "/app.py": b"def main():\n    return 42\n",
    "/data.csv": b"name,count\nalpha,3\n",
    "/config.json": b'{"retries": 3}',
    "/server.log": b"2026-12-04 ERROR disk full\n",
    "/report.pdf": pdf_with_text("Quarterly report", "Revenue grew"),
    "/photo.png": b"\x89PNG\r\n\x1a\n\x00\x00",
    "/archive.zip": b"PK\x03\x04\x00\x00",
    "/big.txt": b"x" * 200_000,
    "/binary.txt": b"abc\x00\x01\x02",
}


@pytest.fixture(scope="module")
def server():
    with FileServer(FILES, slow={"/slow.txt"}, status={"/gone.txt": 404}).running() as running:
        yield running


def remote(server, path, mimetype=None, size=None, headers=None) -> RemoteFile:
    return RemoteFile(name=path.lstrip("/"), url=server.url + path, size=size, mimetype=mimetype,
                      headers=headers or {})


@pytest.mark.parametrize("path, expected", [
    ("/notes.txt", "second line"), ("/README.md", "- item *one*"), ("/app.py", "return 42"),
    ("/data.csv", "alpha,3"), ("/config.json", '"retries": 3'), ("/server.log", "ERROR disk full"),
    ("/report.pdf", "Revenue grew"),
])
def test_each_listed_type_is_read_as_text(server, path, expected):
    attachments, notes = read_files([remote(server, path)], LIMITS)
    assert notes == []
    assert [a.name for a in attachments] == [path.lstrip("/")] and expected in attachments[0].text


@pytest.mark.parametrize("path, mimetype, size, reason", [
    ("/photo.png", "image/png", None, "images are not read"),
    ("/archive.zip", "application/zip", None, "is not one I read"),
    ("/big.txt", "text/plain", 200_000, "too large (0.2 MB; the limit is 0.1 MB)"),
    ("/big.txt", "text/plain", None, "too large (over 0.1 MB"),  # the platform did not say its size
    ("/binary.txt", "text/plain", None, "binary file"),
    ("/gone.txt", "text/plain", None, "could not be downloaded (HTTP 404)"),
    ("/slow.txt", "text/plain", None, "took longer than 2 s"),
])
def test_each_skip_says_which_file_and_why(server, path, mimetype, size, reason):
    attachments, notes = read_files([remote(server, path, mimetype, size)], LIMITS)
    assert attachments == []
    assert len(notes) == 1 and notes[0].startswith(f"`{path.lstrip('/')}` was skipped") and reason in notes[0]


def test_files_share_one_character_budget_and_the_cut_is_said(server):
    small = FileLimits(max_bytes=100_000, timeout_s=2.0, max_chars=30)
    attachments, notes = read_files([remote(server, "/notes.txt"), remote(server, "/app.py"),
                                     remote(server, "/data.csv")], small)
    assert sum(len(a.text) for a in attachments) == 30
    assert [a.name for a in attachments] == ["notes.txt", "app.py"]
    assert any("`app.py` was cut" in n for n in notes) and any("`data.csv` was skipped" in n for n in notes)


def test_the_headers_given_fetch_the_file(server):
    read_files([remote(server, "/notes.txt", headers={"Authorization": "Bearer xoxb-test"})], LIMITS)
    assert server.requests[-1][1].get("Authorization") == "Bearer xoxb-test"


def test_kind_comes_from_the_mimetype_or_the_name():
    assert kind_of(RemoteFile("Dockerfile", None)) == "text"
    assert kind_of(RemoteFile("x", None, mimetype="application/json; charset=utf-8")) == "text"
    assert kind_of(RemoteFile("scan", None, mimetype="application/pdf")) == "pdf"
    assert kind_of(RemoteFile("a.bin", None, mimetype="application/octet-stream")) == "other"
