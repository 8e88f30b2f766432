"""The pull-request workflow: actionlint passes, and its commands are the ones the tests run.

The test job runs ``.ci/run``, which is what CI runs. The train job's shell steps are read from the
workflow file and run here, verbatim and in order, in a clone of a PR branch against the local S3
server: reproduce with ``dvc repro --pull``, push the outputs and the lock file, write the report.
Only ``make setup`` is left to the runner (these tests already run in the venv it builds).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT, run, set_params
from conftest_s3 import S3Remote
from dvcflow import commit_all, dvc, make_consumer, make_producer, stages_ran

from mlpipeline.compare import report

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "pull-request.yml"
SETUP = "make setup"  # the runner builds the venv; the tests run inside one already


def jobs() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]


def commands(job: str) -> list[str]:
    """The shell steps of ``job``, in order."""
    return [step["run"] for step in jobs()[job]["steps"] if "run" in step]


def test_actionlint_passes_on_every_workflow() -> None:
    actionlint = Path(sys.executable).parent / "actionlint"
    result = subprocess.run([actionlint], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_test_job_runs_what_ci_runs() -> None:
    assert commands("test") == ["bash .ci/run"]
    script = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert [line for line in script if line[:1].isalpha()][-1] == "make test"


def test_every_make_command_in_the_workflow_is_a_makefile_target() -> None:
    lines = [line.strip() for job in jobs() for command in commands(job) for line in command.splitlines()]
    makes = [line for line in lines if line.startswith("make ")]
    assert SETUP in makes and any(line.startswith("make report ") for line in makes)
    for line in makes:
        target = line.split()[1]
        dry_run = run(["make", "-n", target], REPO_ROOT, check=False)
        assert dry_run.returncode == 0, f"{line}: {dry_run.stderr}"


def run_step(command: str, repo: Path, env: dict[str, str], log: Path) -> str:
    """One ``run:`` step as the runner would (bash -e), with ``make`` kept off the venv's stamp."""
    venv = Path(sys.executable).parent.parent
    shim = f'make() {{ command make -o "{venv}/.installed" VENV="{venv}" "$@"; }}\n'
    result = run(["bash", "-e", "-c", shim + command], repo, env=env, log=log)
    return result.stdout


@pytest.mark.slow
@pytest.mark.s3
def test_the_train_job_reproduces_pushes_and_reports_against_the_remote(
    pipeline_repo: Path, s3_remote: S3Remote, tmp_path: Path
) -> None:
    main = make_producer(pipeline_repo, s3_remote)
    dvc(main, "repro")
    commit_all(main, "pipeline results")
    dvc(main, "push")
    pr = make_consumer(main, s3_remote, tmp_path / "pr")
    run(["git", "checkout", "-q", "-b", "double-lr"], pr)
    lr = yaml.safe_load((pr / "params.yaml").read_text())["train"]["lr"]
    set_params(pr, {"train.lr": 2 * lr})
    commit_all(pr, "train: double the learning rate")

    env = {
        "BASE": "origin/main",
        "HEAD_REF": "double-lr",
        "IMAGES_URL": "https://example.invalid/pr-reports/pr-1/1",
        "GITHUB_PATH": str(tmp_path / "github_path"),
        "GITHUB_RUN_ID": "1",
    }
    train = [command for command in commands("train") if command != SETUP]
    outputs = [run_step(command, pr, env, tmp_path / f"step{i}.log") for i, command in enumerate(train)]

    assert [stages_ran(out) for out in outputs if stages_ran(out)] == [["train", "export", "evaluate"]]
    unpushed = json.loads(dvc(pr, "status", "--cloud", "--json").stdout)
    assert "new" not in unpushed.values(), unpushed  # ("deleted": on the remote, not needed here)
    pushed = run(["git", "show", "double-lr:dvc.lock"], main).stdout
    assert pushed == (pr / "dvc.lock").read_text() != (main / "dvc.lock").read_text()

    markdown = (pr / report.OUTPUT / report.REPORT).read_text()
    assert re.search(rf"\| train\.lr +\| {lr:g} +\| {2 * lr:g} +\|", markdown), markdown
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert images and all(link.startswith(env["IMAGES_URL"] + "/") for link in images)
    # an output only the DVC cache holds, in neither clone's cache: read from the remote for both
    for rev in ("origin_main", "workspace"):
        assert f"{env['IMAGES_URL']}/{rev}_reports_augment_samples.png" in images
        assert (pr / report.OUTPUT / f"{rev}_reports_augment_samples.png").is_file()
    assert "reports/augment" not in markdown.split("## Params")[0]
