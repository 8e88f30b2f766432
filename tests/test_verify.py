"""`make verify`: a corrupted cache object or a workspace output that differs from dvc.lock (or a
.dvc file) is named in one line, where `dvc checkout` would restore the bad bytes in silence."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from conftest import run

from mlpipeline.cache.verify import verify

VERIFY = [sys.executable, "-m", "mlpipeline.cache.verify"]


def cache_file(repo: Path, content: bytes) -> Path:
    digest = hashlib.md5(content).hexdigest()
    return repo / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]


def overwrite(path: Path, content: bytes) -> None:
    path.chmod(0o644)  # DVC makes its cache files read-only
    path.write_bytes(content)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DVC repo with a stage's directory output (in dvc.lock) and a `dvc add`-ed file (a .dvc file)."""
    repo = tmp_path_factory.mktemp("verify") / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    command = "mkdir -p out && echo hello > out/x.txt && echo world > out/y.txt"
    run(["dvc", "stage", "add", "-q", "-n", "make", "-o", "out", command], repo)
    run(["dvc", "repro", "-q"], repo)
    (repo / "weights.bin").write_bytes(b"\x00\x01weights")
    run(["dvc", "add", "-q", "weights.bin"], repo)
    return repo


@pytest.fixture
def repo(built: Path, tmp_path: Path) -> Path:
    """A fresh copy of the built repo for each test (the copy keeps the cache: DVC links nothing here)."""
    copy = tmp_path / "repo"
    run(["cp", "-a", str(built), str(copy)], tmp_path)
    return copy


def test_an_intact_repo_passes(repo: Path) -> None:
    result = run(VERIFY, repo)
    assert result.stdout.splitlines() == [
        "verify: 7 files hashed against dvc.lock and .dvc files: all match; "
        "0 not present here (not pulled, or the stage has not run)"
    ]


def test_a_corrupted_cache_file_is_named_though_dvc_checkout_restores_it_silently(repo: Path) -> None:
    cached = cache_file(repo, b"hello\n")
    overwrite(cached, b"HELLO\n")
    (repo / "out" / "x.txt").unlink()
    checkout = run(["dvc", "checkout"], repo)  # DVC's behaviour: the bad bytes come back, exit 0
    assert (repo / "out" / "x.txt").read_bytes() == b"HELLO\n" and "error" not in checkout.stderr.lower()

    result = run(VERIFY, repo, check=False)
    assert result.returncode == 1
    shown = cached.relative_to(repo)
    bad, good = hashlib.md5(b"HELLO\n").hexdigest(), hashlib.md5(b"hello\n").hexdigest()
    assert result.stdout.splitlines()[:2] == [
        f"out/x.txt: differs from dvc.lock (md5 {bad}, recorded {good}); restore it with dvc checkout "
        "--relink out/x.txt (dvc status and a plain checkout trust an unchanged size and mtime; "
        "if the change was meant, dvc commit it)",
        f"{shown} (the cache of out/x.txt): corrupted, its bytes hash to {bad}; delete it, "
        "then dvc pull out/x.txt or dvc repro, and dvc checkout --relink out/x.txt",
    ]
    assert result.stdout.splitlines()[2].startswith(
        "verify: 7 files hashed against dvc.lock and .dvc files: 2 differ"
    )


def flip_keeping_mtime(path: Path) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[1] ^= 0x02
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_bit_rot_that_keeps_size_and_mtime_is_found(repo: Path) -> None:
    """DVC's state database would trust this file: same size, same mtime."""
    flip_keeping_mtime(repo / "weights.bin")
    report = verify(repo)
    assert [line.split(":")[0] for line in report.mismatches] == ["weights.bin"]
    assert "differs from weights.bin.dvc" in report.mismatches[0]


@pytest.mark.parametrize(("path", "record"), [("weights.bin", "weights.bin.dvc"), ("out/x.txt", "dvc.lock")])
def test_the_hint_for_a_changed_workspace_file_repairs_it(repo: Path, path: str, record: str) -> None:
    """``dvc status`` and a plain ``dvc checkout`` trust the kept size and mtime; the hint must not."""
    run(["dvc", "status"], repo)  # DVC's state database learns this copy's inodes
    flip_keeping_mtime(repo / path)
    assert "up to date" in run(["dvc", "status"], repo).stdout
    (line,) = verify(repo).mismatches
    hint = f"restore it with dvc checkout --relink {path} "
    assert line.startswith(f"{path}: differs from {record} (md5 ") and hint in line
    run(hint.removeprefix("restore it with ").split(), repo)
    assert verify(repo).mismatches == []


def test_a_corrupted_directory_listing_is_named(repo: Path) -> None:
    (listing,) = (repo / ".dvc" / "cache" / "files" / "md5").glob("*/*.dir")
    overwrite(listing, listing.read_bytes().replace(b"x.txt", b"z.txt"))
    report = verify(repo)
    assert len(report.mismatches) == 1
    assert report.mismatches[0].startswith(f"{listing.relative_to(repo)} (the cache of out): corrupted")


def test_files_not_here_are_counted_not_judged(repo: Path) -> None:
    overwrite(cache_file(repo, b"world\n"), b"world\n")
    cache_file(repo, b"world\n").unlink()
    (repo / "weights.bin").unlink()
    report = verify(repo)
    assert report.mismatches == [] and report.absent == 2 and report.checked == 5


def test_outside_a_dvc_repository_is_one_line(tmp_path: Path) -> None:
    result = run(VERIFY, tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("verify: error: .: not a DVC repository (")
    assert len(result.stderr.splitlines()) == 1


def record_legacy(repo: Path, where: str, digest: str, size: int) -> None:
    """``notes.txt`` recorded as DVC 2 recorded it (no ``hash:`` field: ``md5-dos2unix``)."""
    if where == "dvc.lock":
        with (repo / "dvc.yaml").open("a") as dvc_yaml:
            dvc_yaml.write("  notes:\n    cmd: 'true'\n    outs:\n    - notes.txt\n")
        with (repo / "dvc.lock").open("a") as lock:
            lock.write(f"  notes:\n    cmd: 'true'\n    outs:\n    - path: notes.txt\n      md5: {digest}\n")
            lock.write(f"      size: {size}\n")
    else:
        (repo / "notes.txt.dvc").write_text(f"outs:\n- md5: {digest}\n  size: {size}\n  path: notes.txt\n")


@pytest.mark.parametrize("where", ["dvc.lock", "notes.txt.dvc"])
def test_a_dvc2_output_of_a_crlf_text_file_is_hashed_as_dvc2_did(repo: Path, where: str) -> None:
    """DVC 2 hashed text files with CRLF turned into LF (``md5-dos2unix``) and kept them in the
    cache's top folder; hashed as plain md5 their bytes would look corrupted."""
    crlf = b"first line\r\nsecond line\r\n"
    legacy = hashlib.md5(crlf.replace(b"\r\n", b"\n")).hexdigest()
    assert legacy != hashlib.md5(crlf).hexdigest()
    (repo / "notes.txt").write_bytes(crlf)
    record_legacy(repo, where, legacy, len(crlf))
    cached = repo / ".dvc" / "cache" / legacy[:2] / legacy[2:]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(crlf)
    report = verify(repo)
    assert report.mismatches == []
    assert report.checked == 9 and report.absent == 0  # the two files above, hashed, not skipped
    overwrite(cached, crlf.replace(b"second", b"3rd"))
    assert [line.split(" ")[0] for line in verify(repo).mismatches] == [str(cached.relative_to(repo))]
