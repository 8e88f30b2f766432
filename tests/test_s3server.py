"""The local S3 server helper, `make s3-up`/`s3-down` (its ``up``/``down``) and `make check-remote`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run

from mlpipeline.cache import remote_check
from mlpipeline.devtools import s3server
from mlpipeline.devtools.s3server import S3Server

pytestmark = pytest.mark.s3

TEAM_CONFIG = """[core]
    remote = storage
['remote "storage"']
    url = s3://team-bucket/cache
"""


@pytest.fixture
def team_repo(tmp_path: Path) -> Path:
    """A git + DVC repo whose committed config names an S3 remote, as the template's does."""
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / ".dvc" / "config").write_text(TEAM_CONFIG)
    run(["git", "init", "-q"], repo)
    return repo


def local_config(repo: Path) -> str:
    path = repo / ".dvc" / "config.local"
    return path.read_text() if path.exists() else ""


def test_objects_survive_a_restart_on_the_same_port_and_directory(tmp_path: Path) -> None:
    server = s3server.start(tmp_path / "objects", buckets=["kept"])
    try:
        s3server.client(server.endpoint).put_object(Bucket="kept", Key="a/b.bin", Body=b"payload")
        s3server.stop(server)
        assert not server.is_running()
        server = s3server.start(server.root, port=server.port)
        body = s3server.client(server.endpoint).get_object(Bucket="kept", Key="a/b.bin")["Body"].read()
        assert body == b"payload"
    finally:
        s3server.stop(server)


def test_stop_leaves_alone_a_process_that_is_not_an_rclone_server(tmp_path: Path) -> None:
    impostor = S3Server(root=tmp_path, port=1, pid=os.getpid())  # a reused pid, say
    assert not impostor.is_running()
    s3server.stop(impostor)  # returns without signalling this very process


def test_a_port_already_taken_is_a_one_line_error(tmp_path: Path, s3_server: S3Server) -> None:
    with pytest.raises(s3server.ServerError, match=rf"port {s3_server.port} on 127.0.0.1 is already in use"):
        s3server.start(tmp_path / "objects", port=s3_server.port)


def test_up_points_the_remote_at_a_local_server_and_down_undoes_it(team_repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    line = s3server.up(team_repo, state)
    first = s3server.load_state(state)
    assert first is not None and first.is_running()
    assert first.endpoint in line and "remote 'storage'" in line
    assert f"endpointurl = {first.endpoint}" in local_config(team_repo)
    assert (state / "objects" / "team-bucket").is_dir()  # the committed URL's bucket
    assert "reachable and writable" in remote_check.check_remote(team_repo)

    s3server.up(team_repo, state)  # again: a restart, not a second server
    second = s3server.load_state(state)
    assert second is not None and second.is_running() and not first.is_running()

    assert "stopped" in s3server.down(team_repo, state)
    assert not second.is_running()
    assert local_config(team_repo).strip() == ""
    assert (state / "objects" / "team-bucket").is_dir()  # objects are kept
    assert s3server.down(team_repo, state) == "no local S3 server was started here"


def test_down_keeps_a_remote_the_user_has_since_pointed_elsewhere(team_repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    s3server.up(team_repo, state)
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", "https://minio.example"], team_repo)
    assert ".dvc/config.local left as is" in s3server.down(team_repo, state)
    assert "endpointurl = https://minio.example" in local_config(team_repo)


def test_up_refuses_a_remote_that_is_not_s3(team_repo: Path, tmp_path: Path) -> None:
    (team_repo / ".dvc" / "config").write_text(TEAM_CONFIG.replace("s3://team-bucket/cache", "/mnt/cache"))
    with pytest.raises(s3server.ServerError, match="remote 'storage' is /mnt/cache, not an s3:// URL"):
        s3server.up(team_repo, tmp_path / "state")


def test_check_remote_names_a_missing_bucket(team_repo: Path, s3_server: S3Server) -> None:
    s3server.configure_remote(team_repo, s3_server, url="s3://no-such-bucket/cache")
    with pytest.raises(
        remote_check.RemoteCheckFailed, match="not writable: The specified bucket does not exist"
    ):
        remote_check.check_remote(team_repo)


def test_check_remote_without_a_remote_says_so(team_repo: Path) -> None:
    (team_repo / ".dvc" / "config").write_text("")
    with pytest.raises(remote_check.RemoteCheckFailed, match="no remote specified"):
        remote_check.check_remote(team_repo)


@pytest.mark.slow
def test_check_remote_on_a_stopped_server_fails_in_one_line(team_repo: Path, tmp_path: Path) -> None:
    server = s3server.start(tmp_path / "objects", buckets=["team-bucket"])
    s3server.configure_remote(team_repo, server)
    s3server.stop(server)
    result = run(["python", "-m", "mlpipeline.cache.remote_check"], team_repo, check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"remote 'storage' (s3://team-bucket/cache at {server.endpoint}): not reachable: "
        f'Could not connect to the endpoint URL: "{server.endpoint}/team-bucket/cache"'
    )
