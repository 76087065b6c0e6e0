"""The CUDA path (skipped without a CUDA device; benchmarks/gpu_check.sh runs these on a GPU machine):
the continual loop, the pair scorer and greedy generation on CUDA agree with the CPU."""
import json

import pytest
import torch

from lifealign.generation import generate_token_ids
from lifealign.models import TINY, load_model
from lifealign.reference import score_pairs
from lifealign.training import encode_records

from test_run import run_cli

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _records(n=6):
    return [{"prompt": f"Human: question {i} about rivers and stones?\n\nAssistant:",
             "chosen": f"Assistant: a short kind answer {i}.", "rejected": f"Assistant: no {i} " * (i + 2)}
            for i in range(n)]


def test_scorer_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model, tok = load_model(TINY)
    records = _records()
    encode_records(tok, records, 64, 40)
    cpu = score_pairs(model, records, tok.pad_token_id, 4, "fp32")
    gpu = score_pairs(model.to("cuda"), records, tok.pad_token_id, 4, "fp32")
    assert torch.allclose(cpu, gpu, rtol=1e-4, atol=1e-3)


def test_greedy_generation_on_cuda_matches_plain_generate():
    torch.manual_seed(0)
    model, tok = load_model(TINY, device="cuda")
    prompts = [r["prompt"] for r in _records(4)]
    ours = generate_token_ids(model, tok, prompts, max_new_tokens=8, batch_size=4, max_prompt_length=40)
    for prompt, ids in zip(prompts, ours):
        one = generate_token_ids(model, tok, [prompt], max_new_tokens=8, batch_size=1, max_prompt_length=40)[0]
        assert ids == one


def test_continual_loop_on_cuda(fake_release, tmp_path):
    results = run_cli(fake_release, tmp_path / "out", tmp_path / "cache")
    assert results["complete"] and results["model"]["device"] == "cuda"
    assert json.loads((tmp_path / "out" / "results.json").read_text())["machine"]["gpu"]
