"""Refuse credentials in a committed DVC config: they belong in the environment or config.local.

``.dvc/config`` is committed and shared; ``.dvc/config.local`` is git-ignored. A key such as
``secret_access_key`` in the former leaks with the first push, so this check fails on any
credential key DVC's remotes accept (S3, Azure, GCS, SSH, HTTP, WebDAV, HDFS, OSS, GDrive) and
on a URL with a password in it, in ``.dvc/config`` and in a ``.dvc/config.local`` that was
force-added to git. The file is parsed with configobj, as DVC parses it (keys lower-cased, quoted
keys such as ``"secret_access_key" = X`` unquoted, values split at commas), so what DVC would
read as a credential is what this check sees.

Standard library and configobj only (the pre-commit hook installs configobj alone, see
``.pre-commit-config.yaml``), so it runs as a plain script with no project install:
``python src/mlpipeline/devtools/dvc_config_guard.py [CONFIG ...]`` (default: the DVC configs
git tracks).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from configobj import ConfigObj, ConfigObjError

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
CONFIG = Path(".dvc/config")
LOCAL_CONFIG = Path(".dvc/config.local")
ADVICE = "move it to the environment, an AWS profile or .dvc/config.local (dvc remote modify --local ...)"


def credentials(text: str) -> list[str]:
    """Where each credential a DVC config text holds sits: ``[section] key`` (DVC's reading).

    Raises ``ConfigObjError`` for a text DVC could not read either.
    """
    parsed = ConfigObj(text.splitlines(), interpolation=False).dict()
    found = []
    for section, key, value in _settings(parsed):
        where = f"[{section}] {key}" if section else key
        if key in CREDENTIAL_KEYS:
            found.append(where)
        elif any(_has_password(item) for item in _items(value)):
            found.append(f"{where} (a password inside the URL)")
    return found


def _settings(node: Mapping, section: str = "") -> Iterator[tuple[str, str, object]]:
    """``(section, lower-cased key, value)`` for every setting, sub-sections flattened."""
    for key, value in node.items():
        if isinstance(value, Mapping):
            yield from _settings(value, f"{section} {key}".strip())
        else:
            yield section, key.lower(), value


def _items(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


def _has_password(value: str) -> bool:
    if "://" not in value:
        return False
    try:
        return bool(urlsplit(value).password)
    except ValueError:  # unparseable (an unbalanced "[" in the host): a user-info part is suspect
        return "@" in value


def problems(path: Path, tracked_local: bool = False) -> list[str]:
    """One line per credential in the config at ``path`` (or one saying it cannot be parsed)."""
    where = f"{path}, which git tracks (untrack it: git rm --cached {path})" if tracked_local else str(path)
    try:
        found = credentials(path.read_text(encoding="utf-8"))
    except ConfigObjError as exc:
        return [f"{path}: not a config file DVC can read ({exc})"]
    return [f"{where}: credential {setting} in a committed DVC config; {ADVICE}" for setting in found]


def tracked_configs(repo: Path = Path(".")) -> list[Path]:
    """The DVC config files git tracks in ``repo``: ``.dvc/config`` and a force-added config.local
    (outside a git repository: ``.dvc/config``)."""
    listed = subprocess.run(
        ["git", "ls-files", "--", str(CONFIG), str(LOCAL_CONFIG)], cwd=repo, capture_output=True, text=True
    )
    return [repo / name for name in listed.stdout.split()] if listed.returncode == 0 else [repo / CONFIG]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = [Path(p) for p in args] or tracked_configs()
    found = [
        line
        for path in paths
        if path.exists()
        for line in problems(path, tracked_local=path.name == LOCAL_CONFIG.name)
    ]
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
