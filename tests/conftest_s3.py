"""Fixtures for the S3 flows: one local S3 server per test session, one remote prefix per test.

Loaded by ``tests/conftest.py`` through ``pytest_plugins``. The server is rclone over a temporary
directory (see ``mlpipeline.devtools.s3server`` for why rclone and not moto); each test gets its
own prefix of one bucket, so tests never see each other's objects.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlpipeline.devtools import s3server
from mlpipeline.devtools.s3server import S3Server

BUCKET = "mlpipeline-tests"


@dataclass(frozen=True)
class S3Remote:
    """A prefix of a bucket on a local server: every clone configured with it shares one DVC remote."""

    server: S3Server
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def directory(self) -> Path:
        """Where the server keeps this remote's objects on disk."""
        return self.server.root / self.bucket / self.prefix

    def configure(self, repo: Path) -> None:
        """Point ``repo``'s default remote here, in its ``.dvc/config.local`` as a user would."""
        s3server.configure_remote(repo, self.server, url=self.url)


def start_server(root: Path) -> S3Server:
    """A server over ``root`` with the tests' bucket in it."""
    return s3server.start(root, buckets=[BUCKET])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_server(tmp_path_factory.mktemp("s3") / "objects")
    yield server
    s3server.stop(server)


@pytest.fixture
def s3_remote(s3_server: S3Server, request: pytest.FixtureRequest) -> S3Remote:
    """This test's own remote on the session's server."""
    prefix = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.nodeid).strip("-")
    return S3Remote(s3_server, BUCKET, prefix)
