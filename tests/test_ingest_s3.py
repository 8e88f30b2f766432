"""Ingesting from S3 (the local S3-compatible server): the same data as the local folder, and an
unreachable store answered in one line naming the URL and the cause, without retrying for seconds."""

from __future__ import annotations

import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest
import yaml
from conftest import repo_params, run
from conftest_s3 import BUCKET
from imagedata import ingest_params, make_folder, run_ingest

from mlpipeline.devtools import s3server
from mlpipeline.devtools.s3server import S3Server

pytestmark = pytest.mark.s3


def credentials(endpoint: str, key: str = s3server.ACCESS_KEY_ID, secret: str = s3server.SECRET_ACCESS_KEY):
    """The environment a user sets for an S3-compatible store (botocore reads each of these)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture
def remote_raw(s3_server: S3Server, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    """Three classes of PNGs uploaded under this test's own prefix; returns its URL and the local copy."""
    raw = make_folder(tmp_path / "raw", {"a": 6, "b": 5, "c": 5})
    prefix = f"ingest/{request.node.name}"
    client = s3server.client(s3_server.endpoint)
    for path in sorted(raw.rglob("*.png")):
        client.put_object(
            Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(raw).as_posix()}", Body=path.read_bytes()
        )
    return f"s3://{BUCKET}/{prefix}", raw


def test_s3_source_gives_the_same_data_as_the_local_folder(
    remote_raw: tuple[str, Path], s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in credentials(s3_server.endpoint).items():
        monkeypatch.setenv(name, value)
    fsspec.filesystem("s3").clear_instance_cache()
    url, raw = remote_raw
    remote = run_ingest(ingest_params(url), tmp_path / "remote")
    local = run_ingest(ingest_params(raw), tmp_path / "local")
    np.testing.assert_array_equal(remote.images(), local.images())
    assert remote.manifest["source"].tolist() == local.manifest["source"].tolist()


def run_stage(tmp_path: Path, source: str, env: dict[str, str]):
    params = repo_params()
    params["ingest"]["source"] = source
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return run([sys.executable, "-m", "mlpipeline.stages.ingest"], tmp_path, check=False, env=env, timeout=60)


@pytest.mark.parametrize("case", ["dead port", "bad credentials", "missing bucket"])
def test_unreachable_store_is_one_line(
    case: str, remote_raw: tuple[str, Path], s3_server: S3Server, tmp_path: Path
) -> None:
    url, _ = remote_raw
    env = {
        "dead port": credentials(f"http://127.0.0.1:{s3server.free_port()}"),
        "bad credentials": credentials(s3_server.endpoint, key="nobody-at-all", secret="not-the-secret"),
        "missing bucket": credentials(s3_server.endpoint),
    }[case]
    source = url.replace(BUCKET, "no-such-bucket") if case == "missing bucket" else url
    result = run_stage(tmp_path, source, env)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    expected = {
        "dead port": f"{source}: cannot be read (Could not connect to the endpoint URL",
        "bad credentials": f"{source}: cannot be read (The Access Key Id you provided does not exist",
        "missing bucket": f"{source}: source not found",
    }[case]
    assert lines[0].startswith(f"ingest: error: {expected}"), lines[0]
    assert not (tmp_path / "data").exists() or list((tmp_path / "data").iterdir()) == []


def test_a_password_in_the_source_url_is_never_printed(tmp_path: Path) -> None:
    port = s3server.free_port()
    result = run_stage(tmp_path, f"http://user:hunter2@127.0.0.1:{port}/images", {})
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "hunter2" not in result.stderr
    assert result.stderr.startswith(f"ingest: error: http://user:***@127.0.0.1:{port}/images: ")
