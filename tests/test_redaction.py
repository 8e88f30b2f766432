"""A password inside a URL, of any scheme DVC accepts, never reaches the screen: not in a stage's
error line, not in a log line, not in `make check-remote`'s verdict."""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run

from mlpipeline.cache import remote_check
from mlpipeline.core import stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.urls import redact_text
from mlpipeline.devtools import s3server

SECRET = "S3CR3T"
# Every scheme DVC takes a remote URL in, and passwords holding the characters that end a
# password early in a naive parser.
SECRET_URLS = [
    f"s3://AKIAEXAMPLE:{SECRET}@team-bucket/cache",
    f"ssh://git:{SECRET}@127.0.0.1:9/cache",
    f"webdav://me:{SECRET}@127.0.0.1:9/cache",
    f"webdavs://me:{SECRET}@127.0.0.1:9/cache",
    f"http://user:{SECRET}@127.0.0.1:9/cache",
    f"https://user:{SECRET}@127.0.0.1:9/cache",
    f"azure://account:{SECRET}==@container/cache",
    f"gs://sa:{SECRET}@bucket/cache",
    f"hdfs://user:{SECRET}@127.0.0.1:9/cache",
    f"http://user:pass:{SECRET}@127.0.0.1:9/cache",  # a password containing ':'
    f"https://user:p@{SECRET}@127.0.0.1:9/cache",  # and '@'
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_redact_text_hides_every_password_in_a_message(url: str) -> None:
    message = f'Could not connect to the endpoint URL: "{url}/x" (after {url})'
    shown = redact_text(message)
    assert SECRET not in shown
    assert shown.count(":***@") == 2 and shown.startswith("Could not connect to the endpoint URL: ")


def test_redact_text_leaves_text_without_passwords_alone() -> None:
    text = "s3://bucket/prefix, ssh://git@example.com/repo and data/raw/digits: ok"
    assert redact_text(text) == text


@pytest.mark.parametrize("url", SECRET_URLS)
def test_a_stage_error_and_its_log_lines_hide_the_password(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def body() -> None:
        logging.getLogger("ingest").info("read 3 images from %s", url)
        raise PipelineError(f"{url}: cannot open ingest.source (Forbidden)")

    with pytest.raises(SystemExit) as exited:
        stage.run("ingest", body)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[1].startswith("ingest: error: ") and ":***@" in lines[1]
    assert SECRET not in "\n".join(lines)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    remote = storage\n")
    run(["git", "init", "-q"], tmp_path)
    return tmp_path


@pytest.mark.parametrize("url", SECRET_URLS)
def test_check_remote_hides_the_password_of_any_remote(repo: Path, url: str) -> None:
    """Whatever the failure (no server, no plugin for the scheme), the verdict hides the password."""
    local = f"['remote \"storage\"']\n    url = {url}\n"
    if url.startswith("s3://"):  # a dead local port, and keys, so nothing waits on AWS
        local += "    endpointurl = http://127.0.0.1:9\n    access_key_id = a\n    secret_access_key = b\n"
    (repo / ".dvc" / "config.local").write_text(local)
    with pytest.raises(remote_check.RemoteCheckFailed) as failed:
        remote_check.check_remote(repo)
    assert SECRET not in str(failed.value)


def test_check_remote_hides_the_password_of_an_endpoint(repo: Path) -> None:
    (repo / ".dvc" / "config.local").write_text(
        f"['remote \"storage\"']\n    url = s3://team-bucket/cache\n"
        f"    endpointurl = http://user:{SECRET}@127.0.0.1:9\n"
    )
    with pytest.raises(remote_check.RemoteCheckFailed) as failed:
        remote_check.check_remote(repo)
    assert str(failed.value).startswith(
        "remote 'storage' (s3://team-bucket/cache at http://user:***@127.0.0.1:9): not reachable: "
    )
    assert SECRET not in str(failed.value)


def test_s3_up_hides_the_password_of_a_remote_it_cannot_serve(repo: Path, tmp_path: Path) -> None:
    (repo / ".dvc" / "config.local").write_text(
        f"['remote \"storage\"']\n    url = https://user:{SECRET}@dav.example.com/cache\n"
    )
    with pytest.raises(s3server.ServerError) as failed:
        s3server.up(repo, tmp_path / "state")
    assert str(failed.value).startswith("remote 'storage' is https://user:***@dav.example.com/cache, not")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/cache", "https://127.0.0.1:9/cache"])
def test_check_remote_calls_a_refused_connection_unreachable(repo: Path, url: str) -> None:
    """HTTP's existence check answers False when nothing listens: the write then fails, and that
    is no reason to call the remote reachable."""
    (repo / ".dvc" / "config.local").write_text(f"['remote \"storage\"']\n    url = {url}\n")
    with pytest.raises(remote_check.RemoteCheckFailed) as failed:
        remote_check.check_remote(repo)
    assert str(failed.value).startswith(f"remote 'storage' ({url}): not reachable: ")


def test_a_local_remote_folder_push_would_create_is_not_called_unwritable(repo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "not" / "yet"
    (repo / ".dvc" / "config.local").write_text(f"['remote \"storage\"']\n    url = {folder}\n")
    verdict = remote_check.check_remote(repo)
    assert (
        verdict
        == f"remote 'storage' ({folder}): does not exist yet; `dvc push` creates it ({tmp_path} is writable)"
    )
    assert not (tmp_path / "not").exists()


class WebSite(http.server.BaseHTTPRequestHandler):
    """A web server, not storage: every read is a 200 HTML page, every write unsupported (501); it
    does not even answer HEAD, as S3 clients check existence."""

    def do_GET(self) -> None:
        page = b"<!doctype html><html><body>Welcome</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_site() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WebSite)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_a_web_site_where_the_remote_should_be_is_named_as_one(
    repo: Path, web_site: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    keys = "    access_key_id = a\n    secret_access_key = b\n"
    s3 = f"    url = s3://bucket/cache\n    endpointurl = {web_site}\n{keys}"
    remote = f"    url = {web_site}/cache\n" if kind == "http" else s3
    (repo / ".dvc" / "config.local").write_text(f"['remote \"storage\"']\n{remote}")
    with pytest.raises(remote_check.RemoteCheckFailed) as failed:
        remote_check.check_remote(repo)
    answering = f"{web_site}/cache" if kind == "http" else web_site
    assert str(failed.value).endswith(
        f"): {answering} answers with a web page (HTTP 200, text/html), not as storage: "
        "check the remote's url and endpointurl"
    )
