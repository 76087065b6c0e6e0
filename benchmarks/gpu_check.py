"""The GPU check: one command on a lent GPU machine, under 8 minutes, one JSON.

Steps, each timed, with its exit status and output tail kept:
  1. tests  -- the suite's CUDA-marked tests (`pytest -m cuda`): the loop, scorer and generation on CUDA;
  2. arch   -- benchmarks/gpu_preference.py on the Qwen2.5-0.5B and -7B configs (random bf16 weights);
  3. smollm -- a SmolLM2 run of configs/cpu.yaml on CUDA (the one real model there: no Hub access).

    bash benchmarks/gpu_check.sh            # on the GPU machine -> benchmarks/results/gpu_check.json
    bash benchmarks/gpu_check.sh --smoke    # the same steps on the CPU with tiny models (the suite runs it)

In --smoke mode the CUDA tests are collected and skipped, the architectures are a 2-layer Qwen2, and
the run is configs/tiny.yaml: the JSON shows the machinery works, not how fast a GPU is.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]


def step(name, cmd, timeout, env=None):
    print(f"[gpu_check] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, out = 124, f"timed out after {timeout} s\n{err.stdout or ''}{err.stderr or ''}"
    seconds = time.perf_counter() - t0
    print(f"[gpu_check] {name}: exit {rc} in {seconds:.0f} s", flush=True)
    return {"cmd": cmd, "rc": rc, "seconds": round(seconds, 1), "output_tail": out[-3000:]}


def pytest_counts(junit):
    """passed / failed / skipped counts from pytest's JUnit XML."""
    import xml.etree.ElementTree as ET

    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models: check the machinery (seconds)")
    p.add_argument("--out", default=None, help=f"folder for the JSON (default {common.RESULTS})")
    args = p.parse_args(argv)
    python = sys.executable
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    steps = {}

    junit = work / "cuda-tests.xml"
    # On a GPU every test file is searched for CUDA-marked tests; the smoke run needs only their file.
    where = "tests/test_cuda.py" if args.smoke else "tests"
    steps["tests"] = step("tests", [python, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                                    f"--junitxml={junit}", where], timeout=150)
    if junit.exists():
        steps["tests"].update(pytest_counts(junit))
    if steps["tests"]["rc"] == 5:  # pytest: no test collected is a failure of the check
        steps["tests"]["rc"] = 1

    arch = [python, "benchmarks/gpu_preference.py", "--out", str(work)]
    arch += ["--smoke"] if args.smoke else ["--archs", "qwen2.5-0.5b,qwen2.5-7b", "--pairs", "32"]
    steps["arch"] = step("arch", arch, timeout=180)
    if (work / "gpu_preference.json").exists():
        steps["arch"]["results"] = json.loads((work / "gpu_preference.json").read_text())["results"]

    config = "configs/tiny.yaml" if args.smoke else "configs/cpu.yaml"
    run_dir = work / "run"
    overrides = [f"out={run_dir}", f"cache_dir={work / 'cache'}"] if args.smoke else [f"out={run_dir}"]
    if (ROOT / "data").is_dir():  # `make data`; else $LIFEALIGN_DATA_DIR or ../shared
        overrides.append("data.dir=data")
    cmd = [python, "-m", "lifealign.cli", "run", config] + [a for o in overrides for a in ("--set", o)]
    steps["smollm"] = step("smollm", cmd, timeout=240)
    if (run_dir / "results.json").exists():
        res = json.loads((run_dir / "results.json").read_text())
        steps["smollm"]["run"] = {
            "config": config, "model": res["model"], "complete": res["complete"],
            "reward_accuracy": res["metrics"]["reward_accuracy"]["summary"],
            "stage_seconds": [{k: round(v["train_s"], 1) for k, v in t["stages"].items()} | {"eval": round(t["eval_s"], 1)}
                              for t in res["training"]]}

    ok = all(s["rc"] == 0 for s in steps.values())
    rows = [{"step": k, "exit": s["rc"], "seconds": s["seconds"]} for k, s in steps.items()]
    markdown = (f"The GPU check on {common.device()}: {'passed' if ok else 'failed'}.\n\n"
                + common.markdown_table(rows, ["step", "exit", "seconds"]))
    common.write_result("gpu_check", args, {"device": common.device(), "ok": ok,
                                            "seconds": round(sum(s["seconds"] for s in steps.values()), 1),
                                            "steps": steps}, markdown)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
