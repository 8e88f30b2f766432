"""No credential in the committed DVC config: the check, and the pre-commit hook that runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from mlpipeline.devtools import dvc_config_guard
from mlpipeline.devtools.dvc_config_guard import CREDENTIAL_KEYS, credential_lines

SCRIPT = Path(dvc_config_guard.__file__)
CLEAN = """[core]
    remote = storage
['remote "storage"']
    url = s3://team-bucket/cache
    endpointurl = https://minio.internal:9000
    region = eu-west-1
    profile = ml-team
    jobs = 8
"""


def test_the_committed_dvc_config_holds_no_credential() -> None:
    assert credential_lines((REPO_ROOT / ".dvc" / "config").read_text()) == []


def test_remote_settings_that_are_not_secrets_pass() -> None:
    assert credential_lines(CLEAN) == []


@pytest.mark.parametrize("key", sorted(CREDENTIAL_KEYS))
def test_every_credential_key_is_refused(key: str) -> None:
    assert credential_lines(CLEAN + f"    {key} = abc123\n") == [(9, key)]


def test_a_password_inside_a_url_is_refused() -> None:
    text = CLEAN.replace("https://minio.internal:9000", "https://ml:hunter2@minio.internal:9000")
    assert credential_lines(text) == [(5, "endpointurl (a password inside the URL)")]


def test_the_script_runs_on_a_bare_python_and_names_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(CLEAN + "    SECRET_ACCESS_KEY = abc123\n")
    # -I: no site-packages, no PYTHONPATH: what the pre-commit hook's fresh environment has.
    result = subprocess.run([sys.executable, "-I", str(SCRIPT), str(config)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{config}:9: credential 'secret_access_key' in a committed DVC config")
    clean = subprocess.run([sys.executable, "-I", str(SCRIPT), str(REPO_ROOT / ".dvc" / "config")])
    assert clean.returncode == 0


def test_the_pre_commit_hook_runs_this_script_on_the_dvc_config() -> None:
    config = yaml.safe_load((REPO_ROOT / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    hook = hooks["no-credentials-in-dvc-config"]
    script = hook["entry"].split()[-1]
    assert (REPO_ROOT / script).resolve() == SCRIPT.resolve()
    assert re.search(hook["files"], ".dvc/config") and not re.search(hook["files"], ".dvc/config.local")
    assert {"ruff-check", "ruff-format"} <= set(hooks)
