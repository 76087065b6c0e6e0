"""Batching and log-probabilities: the fast paths give the numbers of the plain computation."""
import pytest
import torch

from lifealign.losses import dpo_loss, fpo_loss
from lifealign.models import build_tiny_model
from lifealign.reference import autocast
from lifealign.training import (clean_response, collate_pairs, encode_records, example_lengths, make_preference_loss,
                                sequence_logps)


def _records(tokenizer, n=6):
    recs = [{"prompt": f"Human: question {i} " + "x" * (3 * i) + "?\n\nAssistant:",
             "chosen": "Assistant: " + "yes " * (i + 1), "rejected": "no, " * (2 * i + 1)} for i in range(n)]
    return encode_records(tokenizer, recs, max_length=64, max_prompt_length=40)


def _naive_logps(model, records):
    """Each response scored in a forward pass of its own: prompt + response, no batching, no padding."""
    out = []
    for key in ("chosen", "rejected"):
        for rec in records:
            prompt, response = rec["ids"]["prompt"], rec["ids"][key]
            ids = torch.tensor([prompt + response])
            logits = model(input_ids=ids).logits.float()[0, len(prompt) - 1:-1]
            out.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).sum())
    return torch.stack(out)


def test_encoding_keeps_eos_and_scores_every_response_token():
    model, tok = build_tiny_model(0)
    rec = _records(tok, 1)[0]
    assert rec["ids"]["chosen"][-1] == tok.eos_token_id
    assert tok.decode(rec["ids"]["chosen"][:-1]) == "yes "  # "Assistant: " dropped, nothing else
    for share in (True, False):
        batch = collate_pairs([rec], tok.pad_token_id, share_prompt=share)
        assert torch.bincount(batch["score_index"][:, 3]).tolist() == [len(rec["ids"]["chosen"]),
                                                                        len(rec["ids"]["rejected"])]
    assert clean_response("  Assistant:  hi") == "hi"


@pytest.mark.parametrize("share_prompt,attention", [(True, "sdpa"), (True, "eager"), (False, "sdpa")])
def test_sequence_logps_equals_one_sequence_at_a_time(share_prompt, attention):
    model, tok = build_tiny_model(0)
    model.set_attn_implementation(attention)  # the shared-prompt mask is boolean for SDPA, additive for eager
    records = _records(tok)
    batch = collate_pairs(records, tok.pad_token_id, share_prompt=share_prompt)
    with torch.no_grad():
        fast, counts = sequence_logps(model, batch)
        torch.testing.assert_close(fast, _naive_logps(model, records), rtol=1e-5, atol=1e-4)
    assert counts.tolist() == [len(r["ids"][k]) for k in ("chosen", "rejected") for r in records]


def test_shared_prompt_rows_give_the_same_loss_and_gradients_as_two_rows():
    model, tok = build_tiny_model(0)
    records = _records(tok)
    for rec in records:
        rec["ref"] = (-30.0, -32.0)
    loss_fn = make_preference_loss(fpo_loss, beta=0.1, gamma=2.0)
    results = []
    for share in (True, False):
        model.zero_grad()
        loss, _ = loss_fn(model, collate_pairs(records, tok.pad_token_id, share_prompt=share))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (shared, g_shared), (plain, g_plain) = results
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_shared, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_shared_prompt_mask_hides_the_chosen_response_from_the_rejected():
    _, tok = build_tiny_model(0)
    rec = _records(tok, 1)[0]
    P, C, R = (len(rec["ids"][k]) for k in ("prompt", "chosen", "rejected"))
    batch = collate_pairs([rec], tok.pad_token_id)
    mask = batch["pair_mask"][0, 0]
    assert mask[P + C, :P].all() and not mask[P + C, P:P + C].any() and mask[P + C, P + C]  # first rejected token
    assert mask[P + C - 1, :P + C].all() and not mask[P + C - 1, P + C:].any()  # last chosen token: causal
    assert batch["position_ids"][0, P + C:].tolist() == list(range(P, P + R))


def test_bf16_losses_stay_close_to_fp32():
    """The loss values of the fast path (bf16 autocast, shared-prompt rows) stay within tolerance of
    the fp32 reference computed one sequence at a time."""
    model, tok = build_tiny_model(0)
    records = _records(tok)
    batch = collate_pairs(records, tok.pad_token_id)
    with torch.no_grad():
        fp32 = _naive_logps(model, records)
        with autocast("bf16", "cpu"):
            bf16, _ = sequence_logps(model, batch)
    torch.testing.assert_close(bf16, fp32, rtol=2e-2, atol=0.5)
    c32, r32 = fp32.chunk(2)
    c16, r16 = bf16.chunk(2)
    ref_c, ref_r = c32 - 1.0, r32 + 1.0
    for loss in (dpo_loss, fpo_loss):
        torch.testing.assert_close(loss(c16, r16, ref_c, ref_r), loss(c32, r32, ref_c, ref_r), rtol=2e-2, atol=2e-2)


def test_example_lengths_are_the_row_lengths():
    _, tok = build_tiny_model(0)
    recs = _records(tok, 3)
    lengths = example_lengths(recs, "pref")
    assert lengths == [len(r["ids"]["prompt"]) + len(r["ids"]["chosen"]) + len(r["ids"]["rejected"]) for r in recs]
    assert example_lengths(recs, "sft") == [len(r["ids"]["prompt"]) + len(r["ids"]["chosen"]) for r in recs]
