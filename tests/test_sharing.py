"""Trained adapters through a DVC remote (lifealign.sharing, make push-runs / pull-runs): push a
run folder from one clone to a temporary-directory remote, pull it into a fresh clone, re-evaluate
it there with `lifealign eval`, and get the same matrices. And the faults: no remote, a missing
remote directory, a corrupt file in the remote, a damaged pulled file."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from lifealign import sharing
from lifealign.cli import main as cli

from test_run import run_cli

pytestmark = pytest.mark.slow  # git and DVC subprocesses and a tiny run: ~30 s


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def origin(fake_release, tmp_path_factory):
    """A clone with one finished tiny run under runs/, tracked by DVC and pushed to a remote."""
    tmp = tmp_path_factory.mktemp("sharing")
    repo = tmp / "origin"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    results = run_cli(fake_release, repo / "runs" / "tiny", tmp / "cache")
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "runs"], cwd=repo, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "a run")
    remote = tmp / "remote"
    assert sharing.main(["push", "runs.dvc", "--remote", str(remote), "--root", str(repo)]) == 0
    assert "runs" in (repo / ".dvc" / "config.local").read_text()  # the remote stays out of git
    return {"repo": repo, "remote": remote, "results": results, "tmp": tmp}


def _clone(origin, name):
    target = origin["tmp"] / name
    _git(origin["tmp"], "clone", "-q", str(origin["repo"]), str(target))
    return target


def test_pull_into_a_fresh_clone_and_reevaluate(origin, capsys):
    clone = _clone(origin, "fresh")
    assert not (clone / "runs").exists()
    assert sharing.main(["pull", "runs.dvc", "--remote", str(origin["remote"]), "--root", str(clone)]) == 0
    run_dir = clone / "runs" / "tiny"
    assert (run_dir / "tasks" / "01-hh-rlhf-harmless-base" / "adapter" / "adapter_config.json").is_file()
    os.remove(run_dir / "results.json")  # rebuilt from the re-evaluation alone
    assert cli(["eval", str(run_dir), "--set", f"cache_dir={origin['tmp'] / 'cache2'}"]) == 0
    again = json.loads((run_dir / "results.json").read_text())
    for metric in ("reward_accuracy", "margin", "loglik_accuracy"):
        flat = lambda m: [v for row in m for v in row]  # noqa: E731
        assert flat(again["metrics"][metric]["matrix"]) == pytest.approx(
            flat(origin["results"]["metrics"][metric]["matrix"]), rel=1e-6, abs=1e-9), metric
    # the re-evaluation rewrote files DVC tracks: a second pull keeps them and says so
    assert sharing.main(["pull", "runs.dvc", "--root", str(clone)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "DVC keeps them" in err and "dvc commit" in err
    assert json.loads((run_dir / "results.json").read_text()) == again


def test_pull_without_a_remote_names_the_fix(origin, capsys):
    clone = _clone(origin, "no-remote")
    assert sharing.main(["pull", "runs.dvc", "--root", str(clone)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no DVC remote for the run folders" in err and "RUNS_REMOTE" in err


def test_pull_from_a_missing_directory_names_it(origin, capsys):
    clone = _clone(origin, "missing")
    gone = origin["tmp"] / "not-mounted"
    assert sharing.main(["pull", "runs.dvc", "--remote", str(gone), "--root", str(clone)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: the DVC remote {gone} does not exist: mount or copy it there, or name another with " \
                  "RUNS_REMOTE=DIR"


def test_corrupt_remote_file_fails_the_pull(origin, capsys):
    remote = origin["tmp"] / "remote-corrupt"
    shutil.copytree(origin["remote"], remote)
    objects = [p for p in remote.rglob("*") if p.is_file() and not p.name.endswith(".dir")]
    for p in objects:  # damage every stored file
        p.write_bytes(b"corrupt" + p.read_bytes()[7:])
    clone = _clone(origin, "corrupt")
    assert sharing.main(["pull", "runs.dvc", "--remote", str(remote), "--root", str(clone)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not match its hash" in err and "push it again" in err
    assert not list((clone / "runs").rglob("lora.safetensors")) if (clone / "runs").exists() else True


def test_damaged_local_file_is_named(tmp_path):
    bad = tmp_path / "runs" / "r" / "tasks" / "01-x" / "lora.safetensors"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(sharing.SharingError, match=r"01-x/lora.safetensors is damaged .*make pull-runs"):
        sharing.check_run_files(tmp_path / "runs")
