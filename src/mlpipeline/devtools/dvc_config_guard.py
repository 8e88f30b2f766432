"""Refuse credentials in a committed DVC config: they belong in the environment or config.local.

``.dvc/config`` is committed and shared; ``.dvc/config.local`` is git-ignored. A key such as
``secret_access_key`` in the former leaks with the first push, so this check fails on any
credential key DVC's remotes accept (S3, Azure, GCS, SSH, HTTP, WebDAV, HDFS, OSS, GDrive) and
on a URL with a password in it. Standard library only, so the pre-commit hook runs it as a
plain script: ``python src/mlpipeline/devtools/dvc_config_guard.py [.dvc/config ...]``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CREDENTIAL_KEYS = frozenset(
    {
        "access_key_id",
        "secret_access_key",
        "session_token",
        "sse_customer_key",
        "account_key",
        "sas_token",
        "connection_string",
        "client_secret",
        "gdrive_client_secret",
        "oss_key_id",
        "oss_key_secret",
        "password",
        "passphrase",
        "token",
        "kerb_ticket",
    }
)
_ASSIGNMENT = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=\s*(.*?)\s*$")
_URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


def credential_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, key)`` for each credential a DVC config text holds."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _ASSIGNMENT.match(line)
        if not match:
            continue
        key, value = match.group(1).lower(), match.group(2)
        if key in CREDENTIAL_KEYS:
            found.append((number, key))
        elif _URL_WITH_PASSWORD.search(value):
            found.append((number, f"{key} (a password inside the URL)"))
    return found


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)] or [Path(".dvc/config")]
    problems = [
        f"{path}:{number}: credential '{key}' in a committed DVC config; move it to the environment, "
        f"an AWS profile or .dvc/config.local (dvc remote modify --local ...)"
        for path in paths
        if path.exists()
        for number, key in credential_lines(path.read_text(encoding="utf-8"))
    ]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
