"""Batching and log-probabilities: the fast paths give the numbers of the plain computation."""
import torch

from lifealign.losses import dpo_loss, fpo_loss
from lifealign.models import build_tiny_model
from lifealign.reference import autocast
from lifealign.training import clean_response, collate_pairs, encode_records, example_lengths, sequence_logps


def _records(tokenizer, n=6):
    recs = [{"prompt": f"Human: question {i} " + "x" * (3 * i) + "?\n\nAssistant:",
             "chosen": "Assistant: " + "yes " * (i + 1), "rejected": "no, " * (2 * i + 1)} for i in range(n)]
    return encode_records(tokenizer, recs, max_length=64, max_prompt_length=40)


def _naive_logps(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (logp * batch["response_mask"][:, 1:]).sum(-1)


def test_encoding_masks_prompt_and_keeps_eos():
    model, tok = build_tiny_model(0)
    rec = _records(tok, 1)[0]
    assert rec["ids"]["chosen"][-1] == tok.eos_token_id
    assert tok.decode(rec["ids"]["chosen"][:-1]) == "yes "  # "Assistant: " dropped, nothing else
    batch = collate_pairs([rec], tok.pad_token_id)
    assert batch["response_mask"][0].sum() == len(rec["ids"]["chosen"])
    assert clean_response("  Assistant:  hi") == "hi"


def test_sequence_logps_equals_full_computation():
    model, tok = build_tiny_model(0)
    batch = collate_pairs(_records(tok), tok.pad_token_id)
    with torch.no_grad():
        fast, counts = sequence_logps(model, batch)
        torch.testing.assert_close(fast, _naive_logps(model, batch), rtol=1e-5, atol=1e-4)
    assert counts.tolist() == batch["response_mask"].sum(1).tolist()


def test_bf16_losses_stay_close_to_fp32():
    model, tok = build_tiny_model(0)
    batch = collate_pairs(_records(tok), tok.pad_token_id)
    with torch.no_grad():
        fp32, _ = sequence_logps(model, batch)
        with autocast("bf16", "cpu"):
            bf16, _ = sequence_logps(model, batch)
    torch.testing.assert_close(bf16, fp32, rtol=2e-2, atol=0.5)
    c32, r32 = fp32.chunk(2)
    c16, r16 = bf16.chunk(2)
    ref_c, ref_r = c32 - 1.0, r32 + 1.0
    for loss in (dpo_loss, fpo_loss):
        torch.testing.assert_close(loss(c16, r16, ref_c, ref_r), loss(c32, r32, ref_c, ref_r), rtol=2e-2, atol=2e-2)


def test_example_lengths_take_the_longer_response():
    _, tok = build_tiny_model(0)
    recs = _records(tok, 3)
    lengths = example_lengths(recs, "pref")
    assert lengths == [len(r["ids"]["prompt"]) + max(len(r["ids"]["chosen"]), len(r["ids"]["rejected"])) for r in recs]
    assert example_lengths(recs, "sft") == [len(r["ids"]["prompt"]) + len(r["ids"]["chosen"]) for r in recs]
