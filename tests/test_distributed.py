"""Two processes under torchrun (gloo on CPU): the Trainer picks up the environment, both ranks
train on their shard and end with the same consolidated adapter."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_run import tiny_overrides


@pytest.mark.slow
def test_torchrun_two_processes(fake_release, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    out = tmp_path / "out"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "lifealign.cli", "run", os.devnull,
           *tiny_overrides(fake_release, out, tmp_path / "cache", ["sft.batch_size=2", "pref.batch_size=2"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["complete"]
    digests = results["final_adapter_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # data parallel: each rank saw half the batches (8 pairs, 2 per rank per step -> 2 steps per epoch)
    assert results["training"][0]["stages"]["pref"]["steps"] == 2
    # only rank 0 printed the summary
    assert proc.stdout.count("reward_accuracy (row") == 1
