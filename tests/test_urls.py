"""Passwords inside URLs never reach the screen, whatever the scheme."""

from __future__ import annotations

import pytest

from mlpipeline.core.urls import redact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:PASSWORD@minio:9000", "http://user:***@minio:9000"),
        ("https://u:p%40ss@host/path?x=1", "https://u:***@host/path?x=1"),
        ("s3://key:secret@bucket/prefix", "s3://key:***@bucket/prefix"),
        ("ssh://git:pa:ss@example.com:22/repo", "ssh://git:***@example.com:22/repo"),
        ("webdavs://me:p@ss@dav.example.com/x", "webdavs://me:***@dav.example.com/x"),
        ("azure://acct:key==@container/x", "azure://acct:***@container/x"),
        ("ssh://git@example.com/repo", "ssh://git@example.com/repo"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("data/raw/digits", "data/raw/digits"),
    ],
)
def test_redact_hides_only_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown
