"""The continual loop end to end on the tiny model, through the CLI, and kill/resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifealign.cli import main

TINY_ARGS = [
    "model.name=tiny-random-llama", "model.precision=fp32", "model.max_length=64", "model.max_prompt_length=40",
    "data.n_train=8", "data.n_test=6", "sft.batch_size=4", "pref.batch_size=4", "sft.lr=0.003", "pref.lr=0.003",
    "progress=false",
]


def tiny_overrides(release, out, cache, extra=()):
    args = TINY_ARGS + [f"data.dir={release}", f"out={out}", f"cache_dir={cache}",
                        "data.order=[hh-rlhf-harmless-base, hh-rlhf-helpful-base, safe-rlhf]", *extra]
    return [a for pair in (("--set", a) for a in args) for a in pair]


def run_cli(release, out, cache, extra=()):
    assert main(["run", os.devnull, *tiny_overrides(release, out, cache, extra)]) == 0
    return json.loads((Path(out) / "results.json").read_text())


@pytest.fixture(scope="module")
def lifealign_run(fake_release, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    return run_cli(fake_release, tmp / "out", tmp / "cache"), tmp


def test_end_to_end_three_tasks(lifealign_run, capsys):
    results, tmp = lifealign_run
    assert results["complete"] and results["order"] == ["hh-rlhf-harmless-base", "hh-rlhf-helpful-base", "safe-rlhf"]
    assert results["method"] == {"name": "lifealign", "loss": "fpo", "plugins": ["replay", "slmc"]}
    acc = results["metrics"]["reward_accuracy"]
    assert acc["base"] == [50.0, 50.0, 50.0]  # the base model is its own reference
    assert len(acc["matrix"]) == 3 and all(len(row) == 3 for row in acc["matrix"])
    assert set(acc["summary"]) == {"last", "ap", "bwt", "fwt", "forgetting"}
    for metric in ("reward_accuracy", "margin", "length_normalised_margin", "loglik_accuracy"):
        assert metric in results["metrics"]
    # the trained task moved: margins after task 1 on task 1 are positive on these easy pairs
    assert results["metrics"]["margin"]["matrix"][0][0] > 0
    # replay grows the training set of later tasks by 20% of each earlier task (8 pairs -> 1)
    examples = [t["stages"]["pref"]["examples"] for t in results["training"]]
    assert examples == [8, 9, 10]
    # SLMC ran after both stages and reported kept rank and overlap
    slmc = results["training"][1]["stages"]["pref"]["plugins"]["slmc"]
    assert slmc["matrices"] == 8 and 0 < slmc["mean_kept_rank"] <= 8 and 0 <= slmc["mean_overlap_energy"] <= 1
    assert results["training"][0]["stages"]["sft"]["plugins"]["slmc"]["mean_overlap_energy"] == 0
    for i in range(3):
        task_dir = tmp / "out" / "tasks" / f"{i + 1:02d}-{results['order'][i]}"
        assert (task_dir / "adapter" / "adapter_model.safetensors").exists()
        assert (task_dir / "state.pt").exists()
    assert results["versions"]["torch"] and results["timings"]["model_load_s"] >= 0


def test_summary_printed(fake_release, tmp_path, capsys):
    run_cli(fake_release, tmp_path / "o", tmp_path / "c", ["method.name=seqft", "method.sft=false"])
    out = capsys.readouterr().out
    assert "reward_accuracy (row = after task" in out and "last" in out and "bwt" in out


def test_reference_cache_is_reused(fake_release, lifealign_run, tmp_path):
    _, tmp = lifealign_run
    results = run_cli(fake_release, tmp_path / "out2", tmp / "cache", ["method.name=er"])
    assert results["timings"]["reference_cache"]["misses"] == 0
    assert results["timings"]["reference_cache"]["hits"] > 0


def test_restart_of_finished_run_changes_nothing(fake_release, lifealign_run):
    results, tmp = lifealign_run
    again = run_cli(fake_release, tmp / "out", tmp / "cache")
    assert again["metrics"] == results["metrics"]


def test_restart_with_other_config_is_refused(fake_release, lifealign_run, capsys):
    _, tmp = lifealign_run
    code = main(["run", os.devnull, *tiny_overrides(fake_release, tmp / "out", tmp / "cache", ["pref.lr=0.1"])])
    assert code == 2
    assert "different config (pref)" in capsys.readouterr().err


def test_bad_data_dir_is_a_clear_error(tmp_path, capsys):
    code = main(["run", os.devnull, "--set", f"data.dir={tmp_path / 'nowhere'}", "--set", "data.order=[safe-rlhf]",
                 "--set", f"out={tmp_path / 'o'}"])
    assert code == 2
    assert "safe-rlhf" in capsys.readouterr().err


def _cli_command(release, out, cache):
    return [sys.executable, "-m", "lifealign.cli", "run", os.devnull, *tiny_overrides(release, out, cache)]


def test_kill_and_resume_give_the_same_results(fake_release, lifealign_run, tmp_path):
    reference, tmp = lifealign_run
    out = tmp_path / "out"
    proc = subprocess.Popen(_cli_command(fake_release, out, tmp / "cache"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "tasks").glob("01-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    # killed inside task 2: a tiny-model task takes a fraction of a second, so no wait
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in (out / "tasks").iterdir() if not p.name.startswith("."))
    assert 1 <= len(finished) < 3
    # a leftover half-written task folder and temp file must not be trusted
    (out / "tasks" / ".tmp-03-safe-rlhf").mkdir(exist_ok=True)
    (out / ".results.json.x.tmp").write_text("{")
    resumed = subprocess.run(_cli_command(fake_release, out, tmp / "cache"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after task" in resumed.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"] == reference["metrics"]
    assert results["final_adapter_digests"] == reference["final_adapter_digests"]


@pytest.mark.parametrize("method,loss,plugins", [("dpo+slmc", "dpo", ["replay", "slmc"]), ("fpo", "fpo", ["replay"]),
                                                 ("seqft", "dpo", [])])
def test_ablation_corners_run_end_to_end(fake_release, tmp_path, method, loss, plugins):
    results = run_cli(fake_release, tmp_path / "out", tmp_path / "cache", [f"method.name={method}"])
    assert results["complete"] and results["method"] == {"name": method, "loss": loss, "plugins": plugins}
    pref = [t["stages"]["pref"] for t in results["training"]]
    assert ("slmc" in pref[-1]["plugins"]) == ("slmc" in plugins)
    assert [p["examples"] for p in pref] == ([8, 9, 10] if "replay" in plugins else [8, 8, 8])
