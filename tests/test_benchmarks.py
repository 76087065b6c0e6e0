"""The benchmark scripts run (--smoke: tiny model, a few pairs) and write the JSON their README documents."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script, out, env, *args):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--out", str(out), *args],
                          cwd=out, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    name = script.removesuffix(".py")
    doc = json.loads((out / f"{name}.json").read_text())
    assert doc["name"] == name and doc["args"]["smoke"]
    assert {"cpu", "cores", "torch_threads", "versions", "peak_rss_mb"} <= set(doc["machine"])
    if name != "gpu_preference":  # every script the book shows writes its page beside its JSON
        page = (out / f"{name}.md").read_text()
        assert "Measured " in page and "*Measured with `--smoke`" in page and page.count("|") > 4, page
    return doc


@pytest.mark.slow  # several processes, ~60 s
def test_benchmarks_smoke(fake_release, tmp_path):
    env = dict(os.environ, LIFEALIGN_DATA_DIR=str(fake_release), LIFEALIGN_CACHE=str(tmp_path / "cache"))

    doc = run("preference_throughput.py", tmp_path, env)
    assert set(doc["results"]) == {"ours", "ours-two-rows", "trl-default", "trl-best", "trl-engine"}
    ours, two_rows = doc["results"]["ours"], doc["results"]["ours-two-rows"]
    assert ours["tokens"] == two_rows["tokens"] == two_rows["processed_tokens"] > ours["processed_tokens"]
    for r in doc["results"].values():
        assert r["tokens"] > 0 and r["seconds"] > 0 and r["tokens_per_s"] > 0 and r["precision"] in ("bf16", "fp32")
    assert doc["results"]["trl-default"]["precision"] == "fp32" and doc["results"]["trl-best"]["precision"] == "bf16"
    assert doc["results"]["trl-engine"]["tokens"] == ours["tokens"]  # the same pairs, our tokenisation
    assert doc["ratios"]["vs_trl_default"] > 0 and doc["ratios"]["vs_trl_best"] > 0
    assert doc["model"]["params"] > 0 and set(doc["goals"]) == {"vs_trl_default", "vs_trl_best"}

    doc = run("eval_throughput.py", tmp_path, env)
    assert set(doc["forward"]) == {f"{p}/{layout}" for p in ("bf16", "fp32") for layout in ("shared-prompt", "two-rows")}
    assert all(v["tokens_per_s"] > 0 for v in doc["forward"].values())
    assert set(doc["generation"]) == {"1", "8", "16"}
    assert all(v["generated_tokens"] > 0 and v["tokens_per_s"] > 0 for v in doc["generation"].values())

    doc = run("generation_speed.py", tmp_path, env)
    gen = doc["generation"]
    assert isinstance(gen["identical"], bool) and gen["new"]["calls"] == 1  # batches differ: ids may too
    assert gen["old"]["generated_tokens"] > 0 and gen["new"]["generated_tokens"] > 0 and gen["speedup_cpu"] > 0
    assert doc["forward"]["fp32-weights"]["tokens_per_s"] > 0 and doc["forward"]["bf16-weights"]["tokens_per_s"] > 0
    assert doc["base_row"]["computed_s"] > doc["base_row"]["cached_s"] > 0

    doc = run("machinery_cost.py", tmp_path, env, "--tasks", "2", "--launch", str(ROOT / "configs" / "tiny.yaml"),
              "--set", f"out={tmp_path / 'run'}", "--set", f"cache_dir={tmp_path / 'cache'}",
              "--set", "data.order=[hh-rlhf-helpful-base]", "--set", "data.n_train=4", "--set", "data.n_test=4")
    syn = doc["synthetic"]
    assert len(syn["stages"]) == 4 and all(s["slmc_s"] > 0 for s in syn["stages"])
    assert [set(r) for r in syn["state_bytes"]] == [{"task", "slmc", "replay", "ewc", "gem", "olora", "cppo"}] * 2
    assert syn["state_bytes"][1]["slmc"] > syn["state_bytes"][0]["slmc"] > 0
    assert doc["launched"]["peak_rss_mb"] > 0 and doc["launched"]["wall_s"] > 0
    assert [s["stage"] for s in doc["run"]["stages"]] == ["sft", "pref"]
    assert all(s["share_pct"] >= 0 for s in doc["run"]["stages"]) and "slmc" in doc["run"]["state_bytes"][0]

    doc = run("gpu_preference.py", tmp_path, env)  # the GPU check's machinery, on a 2-layer Qwen2 on the CPU
    r = doc["results"]["smoke"]
    assert r["pair_tokens"] > r["processed_tokens"] > 0 and r["tokens_per_s"] > 0 and r["model_tflops"] > 0

    doc = run("hardware_limit.py", tmp_path, env, "--from", str(tmp_path / "preference_throughput.json"),
              str(tmp_path / "eval_throughput.json"))
    assert doc["peak_gflops"]["bf16"] > 0 and doc["peak_gflops"]["fp32"] > 0
    assert len(doc["achieved"]) == 5 + 4 + 3 and all(r["share_pct"] > 0 for r in doc["achieved"])

    doc = run("parallel_workers.py", tmp_path, env)
    assert doc["cores"] == os.cpu_count() and set(doc["results"]) == {"preference_throughput", "eval_throughput"}
    for r in doc["results"].values():
        assert r["parallel"]["processes"] == 2 and len(r["parallel"]["wall_s"]) == 2
        assert r["parallel"]["threads_each"] == max(os.cpu_count() // 2, 1) and r["work_per_hour_ratio"] > 0
        assert all(v["one_process_tokens_per_s"] > 0 and v["parallel_tokens_per_s"] > 0 for v in r["parts"].values())
    assert set(doc["results"]["eval_throughput"]["parts"]) == {"scoring forward", "generation"}


@pytest.mark.slow  # three processes, ~1 min
def test_gpu_check_smoke(fake_release, tmp_path):
    """The GPU check's one command runs its three steps on the CPU and writes one JSON."""
    env = dict(os.environ, LIFEALIGN_DATA_DIR=str(fake_release), LIFEALIGN_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=400)
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert proc.returncode == 0 and doc["ok"], json.dumps(doc["steps"], indent=1)[-4000:]
    assert set(doc["steps"]) == {"tests", "arch", "smollm"}
    if doc["device"] == "cpu":  # collected, skipped: the CUDA tests exist and run where there is a GPU
        assert doc["steps"]["tests"]["skipped"] >= 3 and doc["steps"]["tests"]["failed"] == 0
    assert doc["steps"]["arch"]["results"]["smoke"]["tokens_per_s"] > 0
    assert doc["steps"]["smollm"]["run"]["complete"]


@pytest.mark.slow  # two tiny runs in two processes, ~40 s
def test_whole_run_smoke(fake_release, tmp_path):
    """Before and after code run the same config back to back; the JSON holds both and the ratios."""
    env = dict(os.environ, LIFEALIGN_DATA_DIR=str(fake_release), LIFEALIGN_CACHE=str(tmp_path / "cache"))
    doc = run("whole_run.py", tmp_path, env, "--before", "HEAD", "--set", "data.order=[hh-rlhf-helpful-base, safe-rlhf]")
    assert set(doc["runs"]) == {"before", "after"}
    for r in doc["runs"].values():
        assert r["wall_s"] > r["train_s"] > 0 and r["eval_s"] > 0 and r["precision"] in ("bf16", "fp32")
    assert doc["ratios"]["wall_s"] > 0 and doc["ratios"]["grid_wall_s"] > 0
    assert all(d < 1e-6 for d in doc["matrix_max_abs_difference"].values())  # same code: the same numbers


@pytest.mark.slow  # one process, ~15 s
def test_stage_profile_smoke(fake_release, tmp_path):
    env = dict(os.environ, LIFEALIGN_DATA_DIR=str(fake_release), LIFEALIGN_CACHE=str(tmp_path / "cache"))
    doc = run("stage_profile.py", tmp_path, env)
    assert abs(sum(doc["group_share_pct"].values()) - 100) < 1 and doc["group_share_pct"]["matmul"] > 0
    assert doc["steps"] > 0 and doc["tokens_per_s"] > 0 and doc["top_ops"][0]["self_ms"] > 0
