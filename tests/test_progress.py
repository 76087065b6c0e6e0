"""Live progress: run.log and progress.json of a run, the pipeline's status and group line, and a
smoke-profile run whose run.log is read while it runs."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifealign import pipeline
from lifealign.progress import GroupLine, RunProgress, describe, duration, is_live, read_state

ROOT = Path(__file__).resolve().parents[1]
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def test_run_progress_writes_timestamped_lines_and_state(tmp_path, capsys):
    progress = RunProgress(tmp_path, "demo", console="lines")
    progress.stage("model")
    progress.plan(2)
    progress.task(0, "HC3")
    progress.stage("sft")
    progress.steps(1, 4, tokens=100)
    progress.steps(4, 4, tokens=400)
    state = read_state(tmp_path)
    assert state["task"] == 1 and state["tasks"] == 2 and state["stage"] == "SFT" and state["step"] == 4
    assert state["steps"] == 4 and state["tokens_per_s"] > 0 and is_live(state)
    progress.stage("slmc")
    progress.stage("evaluation")
    progress.task_done()
    state = read_state(tmp_path)
    assert state["eta_s"] is not None and state["state"] == "running"
    progress.task(1, "TruthfulQA")
    progress.stage("pref")
    progress.steps(2, 4, tokens=80)
    assert read_state(tmp_path)["stage"] == "preference"
    progress.finish()
    assert read_state(tmp_path)["state"] == "finished" and not is_live(read_state(tmp_path))

    log = (tmp_path / "run.log").read_text().splitlines()
    assert all(re.match(STAMP + " ", line) for line in log)
    assert any(line.endswith("task 1/2 HC3: SFT") or " task 1/2 HC3: SFT |" in line for line in log)
    assert any("task 1/2 HC3: SFT 4/4 steps" in line for line in log)
    assert any("task 1/2 HC3: finished" in line for line in log) and "run finished" in log[-1]
    assert capsys.readouterr().err.splitlines() == log  # "lines": the same lines on stderr


def test_a_failed_run_and_a_killed_one_are_not_live(tmp_path):
    with pytest.raises(RuntimeError):
        with RunProgress(tmp_path, "demo") as progress:
            progress.plan(3)
            raise RuntimeError("boom")
    assert read_state(tmp_path)["state"] == "failed" and "RuntimeError: boom" in read_state(tmp_path)["error"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = {"state": "running", "pid": dead.pid, "host": socket.gethostname()}
    assert not is_live(state) and is_live(dict(state, pid=os.getpid()))
    assert RunProgress(tmp_path / "off", enabled=False).log_file is None and not (tmp_path / "off").exists()


def test_describe_and_duration():
    assert [duration(s) for s in (None, 5, 125, 3725)] == ["?", "5s", "2m05s", "1h02m"]
    state = {"state": "running", "task": 2, "tasks": 5, "task_name": "HC3", "stage": "preference", "step": 12,
             "steps": 32, "tokens_per_s": 812.4, "elapsed_s": 250, "eta_s": 182}
    assert describe(state) == "task 2/5 HC3: preference 12/32 steps, 812 tok/s | elapsed 4m10s, ETA 3m02s"
    line = GroupLine(Path("."), "[matrix 2/3] er-s0", later=1, durations=[600.0], log=print)
    line.started -= 250
    assert line.line(state) == ("[matrix 2/3] er-s0 | task 2/5 HC3: preference 12/32 steps, 812 tok/s "
                                "| run 4m10s, ETA 3m02s | group ETA 13m02s")


def _repo(tmp_path, release):
    """configs/, notebooks/, the package, params.yaml and dvc.yaml, data/ -> a release."""
    for name in ("configs", "notebooks"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "src" / "lifealign", tmp_path / "src" / "lifealign")
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path)
    (tmp_path / "data").symlink_to(release)
    return tmp_path


def test_run_state_and_status(tmp_path, fake_release):
    root = _repo(tmp_path, fake_release)
    spec = pipeline.RunSpec("matrix", "lifealign", "order1", 0)
    assert pipeline.run_state("smoke", spec, root) == "missing"
    folder = pipeline.run_dir("smoke", spec, root)
    folder.mkdir(parents=True)
    (folder / "progress.json").write_text(json.dumps({
        "state": "running", "pid": os.getpid(), "host": socket.gethostname(), "task": 2, "tasks": 3,
        "task_name": "safe-rlhf", "stage": "SFT", "step": 1, "steps": 2, "elapsed_s": 61, "eta_s": 30}))
    assert pipeline.run_state("smoke", spec, root) == "running"
    lines = pipeline.status("smoke", root=root)
    assert any(re.match(r"matrix\s+lifealign-order1-s0\s+running\s+task 2/3 safe-rlhf: SFT 1/2 steps \| elapsed 1m01s, ETA 30s",
                        line) for line in lines), lines
    state = json.loads((folder / "progress.json").read_text())
    (folder / "progress.json").write_text(json.dumps(dict(state, state="failed")))
    assert pipeline.run_state("smoke", spec, root) == "missing"
    assert any("lifealign-order1-s0" in line and "(failed at task 2/3)" in line for line in pipeline.status("smoke", root=root))

    results = pipeline.results_dir("smoke", spec, root)
    results.mkdir(parents=True)
    config = pipeline.run_config("smoke", spec, root).to_dict()
    (results / "results.json").write_text(json.dumps({"config": config}))
    (results / "provenance.json").write_text(json.dumps({"run_code_version": pipeline.RUN_CODE_VERSION}))
    assert pipeline.run_state("smoke", spec, root) == "done"
    config["pref"]["lr"] = 0.5
    (results / "results.json").write_text(json.dumps({"config": config}))
    assert pipeline.run_state("smoke", spec, root) == "stale"
    assert re.match(r"profile smoke: \d+ runs, \d+ missing, 1 stale", pipeline.status("smoke", root=root)[-1])


def test_a_smoke_run_logs_progress_while_it_runs(tmp_path, fake_release):
    """The pipeline runs one smoke-profile run (the notebook under papermill) in another process;
    its run.log holds the first task's progress lines, and `status` says where it is, before it
    ends. Its executed notebook holds no timings."""
    pytest.importorskip("papermill")
    root = _repo(tmp_path / "repo", fake_release)
    spec = pipeline.grid(pipeline.active_profile(pipeline.load_params(root / "params.yaml"), "smoke")[1], "matrix")[0]
    env = dict(os.environ, PYTHONPATH=str(root / "src"), LIFEALIGN_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop(pipeline.PROFILE_ENV, None)
    proc = subprocess.Popen([sys.executable, "-m", "lifealign.pipeline", "run", "matrix", spec.id, "--profile", "smoke"],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = pipeline.run_dir("smoke", spec, root) / "run.log"
    first_task = re.compile(rf"^{STAMP} task 1/\d+ \S+: (SFT|preference) \d+/\d+ steps", re.M)
    seen, status = None, None
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        text = log.read_text() if log.exists() else ""
        if first_task.search(text):
            status = pipeline.status("smoke", root=root)
            seen = text if proc.poll() is None else None
            break
        time.sleep(0.2)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-3000:]
    assert seen, f"run.log had no first-task progress before the run ended:\n{log.read_text()}"
    assert any(re.match(rf"matrix\s+{re.escape(spec.id)}\s+running\s+task \d/\d", line) for line in status), status
    # The group line polls progress.json each second: it shows the longer stages (setup, reference,
    # evaluation) of this seconds-long run surely, its sub-second task stages only by chance.
    assert f"[matrix 1/1] {spec.id}: running" in output and f"[matrix 1/1] {spec.id} | " in output, output
    assert re.search(rf"\[matrix 1/1\] {re.escape(spec.id)}: finished in \S+ ->", output)
    assert pipeline.run_state("smoke", spec, root) == "done"
    notebook = (pipeline.results_dir("smoke", spec, root) / "experiment.ipynb").read_text()
    assert "tok/s" not in notebook and "elapsed" not in notebook and "progress_bar = False" in notebook
