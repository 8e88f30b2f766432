"""No credential in a committed DVC config: the check, read as DVC reads the file, and the
pre-commit hook that runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import configobj
import pytest
import yaml
from conftest import REPO_ROOT, run
from test_constraints import pinned

from mlpipeline.devtools import dvc_config_guard
from mlpipeline.devtools.dvc_config_guard import CREDENTIAL_KEYS, credentials, tracked_configs

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
STORAGE = '[remote "storage"]'


def test_the_committed_dvc_configs_hold_no_credential() -> None:
    configs = tracked_configs(REPO_ROOT)
    assert REPO_ROOT / ".dvc" / "config" in configs
    assert [line for path in configs for line in dvc_config_guard.problems(path)] == []


def test_remote_settings_that_are_not_secrets_pass() -> None:
    assert credentials(CLEAN) == []


@pytest.mark.parametrize("key", sorted(CREDENTIAL_KEYS))
def test_every_credential_key_is_refused(key: str) -> None:
    assert credentials(CLEAN + f"    {key} = abc123\n") == [f"{STORAGE} {key}"]


@pytest.mark.parametrize(
    "line",
    [
        '    "secret_access_key" = abc123',  # quoted keys: DVC reads them
        "    'secret_access_key'=abc123",
        "    Secret_Access_Key = abc123",  # DVC lower-cases keys
        '    secret_access_key = """abc\n123"""',  # a multi-line value
    ],
)
def test_a_key_spelled_any_way_dvc_reads_it_is_refused(line: str) -> None:
    assert credentials(CLEAN + line + "\n") == [f"{STORAGE} secret_access_key"]


def test_dvc_itself_reads_a_quoted_key_as_the_credential(tmp_path: Path) -> None:
    """The premise of the test above: DVC's own config loader sees the quoted key."""
    from dvc.config import Config

    dvc_dir = tmp_path / ".dvc"
    dvc_dir.mkdir()
    (dvc_dir / "config").write_text(CLEAN + '    "secret_access_key" = abc123\n')
    assert Config(dvc_dir=str(dvc_dir))["remote"]["storage"]["secret_access_key"] == "abc123"


@pytest.mark.parametrize(
    "url",
    [
        "s3://AKIAKEY:secret@team-bucket/cache",
        "ssh://git:hunter2@example.com:22/cache",
        "webdav://me:hunter2@dav.example.com/cache",
        "webdavs://me:p@ss@dav.example.com/cache",
        "http://user:hunter2@minio.internal:9000",
        "https://user:hunter2@minio.internal:9000",
        "azure://account:key==@container/cache",
        "gs://sa:hunter2@bucket/cache",
        "hdfs://user:hunter2@namenode:8020/cache",
        "http://user:pass:word@minio.internal:9000",  # a password containing ':'
    ],
)
def test_a_password_inside_a_url_of_any_scheme_is_refused(url: str) -> None:
    text = CLEAN.replace("https://minio.internal:9000", url)
    assert credentials(text) == [f"{STORAGE} endpointurl (a password inside the URL)"]


def test_a_password_inside_a_url_of_a_list_value_is_refused() -> None:
    text = CLEAN.replace("https://minio.internal:9000", "http://backup:9000, http://u:hunter2@minio:9000")
    assert credentials(text) == [f"{STORAGE} endpointurl (a password inside the URL)"]


def test_a_url_with_a_user_and_no_password_passes() -> None:
    assert credentials(CLEAN.replace("s3://team-bucket/cache", "ssh://git@example.com/cache")) == []


def test_the_script_runs_without_the_project_and_names_file_and_setting(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(CLEAN + '    "SECRET_ACCESS_KEY" = abc123\n')
    # -I: no site-packages, no PYTHONPATH; configobj alone on the path, as in the hook's environment.
    only_configobj = Path(configobj.__file__).parent.parent
    bootstrap = f"import sys, runpy; sys.path.append({str(only_configobj)!r}); sys.argv = sys.argv[1:]; "
    bootstrap += "runpy.run_path(sys.argv[0], run_name='__main__')"
    command = [sys.executable, "-I", "-c", bootstrap, str(SCRIPT)]
    result = subprocess.run([*command, str(config)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{config}: credential {STORAGE} secret_access_key in a committed DVC config; "
        f"{dvc_config_guard.ADVICE}"
    ]
    assert subprocess.run([*command, str(REPO_ROOT / ".dvc" / "config")]).returncode == 0


def test_a_config_dvc_cannot_read_fails(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(CLEAN + "    region = again\n")
    (line,) = dvc_config_guard.problems(config)
    assert line.startswith(f"{config}: not a config file DVC can read (")


def test_a_force_added_config_local_is_checked(tmp_path: Path) -> None:
    """git ignores .dvc/config.local, but `git add -f` commits it: then it is checked too."""
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text(CLEAN)
    (tmp_path / ".dvc" / ".gitignore").write_text("/config.local\n")
    local = tmp_path / ".dvc" / "config.local"
    local.write_text(f"{STORAGE}\n    secret_access_key = abc123\n")
    run(["git", "init", "-q"], tmp_path)
    run(["git", "add", ".dvc"], tmp_path)
    guard = [sys.executable, str(SCRIPT)]
    assert run(guard, tmp_path).returncode == 0  # ignored, so not committed: fine

    run(["git", "add", "-f", ".dvc/config.local"], tmp_path)
    assert tracked_configs(tmp_path) == [tmp_path / ".dvc" / "config", local]
    result = run(guard, tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(
        ".dvc/config.local, which git tracks (untrack it: git rm --cached .dvc/config.local): "
        f"credential {STORAGE} secret_access_key in a committed DVC config"
    )


def test_the_pre_commit_hook_runs_this_script_on_both_configs() -> None:
    config = yaml.safe_load((REPO_ROOT / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    hook = hooks["no-credentials-in-dvc-config"]
    script = hook["entry"].split()[-1]
    assert (REPO_ROOT / script).resolve() == SCRIPT.resolve()
    assert re.search(hook["files"], ".dvc/config") and re.search(hook["files"], ".dvc/config.local")
    assert not re.search(hook["files"], ".dvc/config.bak")
    assert hook["additional_dependencies"] == [f"configobj=={pinned()['configobj']}"]
    assert {"ruff-check", "ruff-format"} <= set(hooks)


def test_outside_git_the_committed_config_is_checked(tmp_path: Path) -> None:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("access_key_id = abc\n" + CLEAN)
    assert tracked_configs(tmp_path) == [tmp_path / ".dvc" / "config"]
    result = run([sys.executable, str(SCRIPT)], tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(".dvc/config: credential access_key_id in a committed DVC config")
