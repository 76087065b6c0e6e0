"""Tests for lifealign.generation: metrics against hand-computed values, and generation
on the tiny random model (batching, left padding, seeding, modes, LoRA)."""

import copy
import math

import pytest
import torch

from lifealign.generation import (
    PAPER_TEMPERATURE,
    PAPER_TOP_P,
    _cut_at_eos,
    _left_pad,
    bleu4_char,
    decoding_description,
    generate_responses,
    generate_token_ids,
    generation_scores,
    rouge_l,
)
from lifealign.lora import add_lora
from lifealign.models import build_tiny_model

# Prompts of clearly different lengths, so that a batch needs left padding.
PROMPTS = [
    "hi",
    "What is the capital of France? Please answer briefly.",
    "x" * 40,
    "Tell me a story",
    "a",
]


# --------------------------------------------------------------------------
# BLEU-4 (character level)
# --------------------------------------------------------------------------


def test_bleu_identical_is_100():
    assert bleu4_char("hello world", "hello world") == pytest.approx(100.0)


def test_bleu_no_common_character_is_0():
    # NLTK returns 0 when no unigram matches, before any smoothing.
    assert bleu4_char("abcd", "wxyz") == 0.0


def test_bleu_empty_prediction_is_0():
    assert bleu4_char("", "reference") == 0.0
    assert bleu4_char("", "") == 0.0


def test_bleu_method3_smoothing_by_hand():
    # hypothesis a b d c, reference a b c d (same length: brevity penalty 1)
    # p1 = 4/4; p2: {ab, bd, dc} vs {ab, bc, cd} -> 1/3;
    # p3: {abd, bdc} vs {abc, bcd} -> 0/2 -> method3: 1/(2^1 * 2) = 1/4;
    # p4: {abdc} vs {abcd} -> 0/1 -> method3: 1/(2^2 * 1) = 1/4.
    # BLEU = (1 * 1/3 * 1/4 * 1/4) ** (1/4) = (1/48) ** 0.25
    expected = (1 / 48) ** 0.25 * 100
    assert expected == pytest.approx(37.9918, abs=1e-3)
    assert bleu4_char("abdc", "abcd") == pytest.approx(expected, rel=1e-9)


def test_bleu_brevity_penalty_by_hand():
    # "abcd" is a prefix of "abcdef": every n-gram precision is 1,
    # brevity penalty exp(1 - 6/4) = exp(-0.5).
    assert bleu4_char("abcd", "abcdef") == pytest.approx(100 * math.exp(-0.5), rel=1e-9)


def test_bleu_short_exact_copy_is_smoothed_below_100():
    # 3 characters: p1 = p2 = p3 = 1, no 4-gram at all: p4 = 0/1 -> method3: 1/2.
    assert bleu4_char("ghi", "ghi") == pytest.approx(100 * 0.5 ** 0.25, rel=1e-9)
    # 2 characters: p3 = 0/1 -> 1/2, p4 = 0/1 -> 1/4.
    assert bleu4_char("gh", "gh") == pytest.approx(100 * (1 / 8) ** 0.25, rel=1e-9)


def test_bleu_is_character_level():
    # Word order changes character n-grams only at the seams, so the score stays high
    # but below 100; a word-level BLEU-4 of two 2-word sentences would be ~0.
    score = bleu4_char("world hello", "hello world")
    assert 0 < score < 100
    assert score > 50


# --------------------------------------------------------------------------
# ROUGE-L (word level, F-measure)
# --------------------------------------------------------------------------


def test_rouge_identical_is_100():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)


def test_rouge_disjoint_is_0():
    assert rouge_l("dogs bark loudly", "the cat sat") == 0.0


def test_rouge_empty_is_0():
    assert rouge_l("", "the cat") == 0.0


def test_rouge_lcs_by_hand_equal_lengths():
    # prediction: the cat lay on a mat / reference: the cat sat on the mat
    # LCS = the cat on mat = 4; P = 4/6, R = 4/6, F = 2/3
    assert rouge_l("the cat lay on a mat", "the cat sat on the mat") == pytest.approx(200 / 3)


def test_rouge_lcs_by_hand_precision_differs_from_recall():
    # prediction: cat on the mat (4 words) / reference: the cat sat on the mat (6 words)
    # LCS = cat on the mat = 4; P = 4/4 = 1, R = 4/6; F = 2 * 1 * 2/3 / (1 + 2/3) = 0.8
    assert rouge_l("cat on the mat", "the cat sat on the mat") == pytest.approx(80.0)
    # swapping roles swaps P and R; F is symmetric
    assert rouge_l("the cat sat on the mat", "cat on the mat") == pytest.approx(80.0)


def test_rouge_ignores_case_and_punctuation():
    # rouge_score's tokenizer lowercases and keeps only ASCII alphanumerics (documented).
    assert rouge_l("The CAT, sat!", "the cat sat") == pytest.approx(100.0)


# --------------------------------------------------------------------------
# generation_scores
# --------------------------------------------------------------------------


def test_generation_scores_averages_and_counts_empties():
    predictions = ["the cat sat on the mat", "", "cat on the mat", "  "]
    references = ["the cat sat on the mat", "anything", "the cat sat on the mat", "x"]
    scores = generation_scores(predictions, references)
    assert scores["n"] == 4
    assert scores["empty_predictions"] == 2
    expected_bleu = sum(bleu4_char(p, r) for p, r in zip(predictions, references)) / 4
    assert scores["bleu4"] == pytest.approx(expected_bleu)
    # ROUGE-L: 100, 0, 80, 0 (whitespace only has no words)
    assert scores["rougel"] == pytest.approx((100 + 0 + 80 + 0) / 4)
    assert scores["bleu4"] > 25  # at least the identical pair's 100 / 4


def test_generation_scores_identical():
    scores = generation_scores(["abc def", "ghij"], ["abc def", "ghij"])
    assert scores == {"bleu4": pytest.approx(100.0), "rougel": pytest.approx(100.0), "n": 2,
                      "empty_predictions": 0}


def test_generation_scores_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        generation_scores(["a"], ["a", "b"])


def test_generation_scores_empty_input_is_nan():
    scores = generation_scores([], [])
    assert scores["n"] == 0 and scores["empty_predictions"] == 0
    assert math.isnan(scores["bleu4"]) and math.isnan(scores["rougel"])


# --------------------------------------------------------------------------
# decoding_description
# --------------------------------------------------------------------------


def test_decoding_description_greedy_and_sampling():
    greedy = decoding_description(False, 0.95, 0.7, 128)
    assert greedy["strategy"] == "greedy" and greedy["do_sample"] is False
    assert greedy["temperature"] is None and greedy["top_p"] is None
    assert greedy["max_new_tokens"] == 128
    sampling = decoding_description(True, PAPER_TEMPERATURE, PAPER_TOP_P, 1024, seed=3)
    assert sampling["strategy"] == "sampling" and sampling["do_sample"] is True
    assert sampling["temperature"] == 0.95 and sampling["top_p"] == 0.7
    assert sampling["top_k"] is None and sampling["max_new_tokens"] == 1024
    assert sampling["seed"] == 3


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def test_left_pad():
    input_ids, attention_mask = _left_pad([[5, 6, 7], [8]], pad_id=3)
    assert input_ids.tolist() == [[5, 6, 7], [3, 3, 8]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_cut_at_eos():
    assert _cut_at_eos([5, 6, 2, 3, 3], 2) == [5, 6]
    assert _cut_at_eos([5, 6], 2) == [5, 6]
    assert _cut_at_eos([2, 5], [7, 2]) == []


# --------------------------------------------------------------------------
# Generation on the tiny model
# --------------------------------------------------------------------------


def _lively_tiny_model(seed=0):
    """The tiny random model with larger layer weights.

    With its default init (std 0.02) the residual stream barely changes, and
    tied embeddings make greedy decoding repeat the last prompt token ("\\n")
    for every prompt -- outputs that would make the batching tests vacuous.
    Std 0.2 in the layers makes the continuation depend on the prompt.
    """
    model, tokenizer = build_tiny_model(seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".layers." in name and param.dim() == 2:
                param.normal_(0.0, 0.2, generator=generator)
    return model, tokenizer


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Generation with the tiny model is dominated by per-op overhead; on a busy
    machine two threads are many times slower than one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny():
    return _lively_tiny_model(0)


def test_greedy_outputs_depend_on_the_prompt(tiny):
    # Guard for the tests below: the outputs are not all the same.
    model, tokenizer = tiny
    ids = generate_token_ids(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=4)
    assert len({tuple(row) for row in ids}) == len(PROMPTS)
    assert all(len(set(row)) > 1 for row in ids)


def test_greedy_batched_equals_one_at_a_time(tiny):
    model, tokenizer = tiny
    kwargs = dict(max_new_tokens=16)
    batched_ids = generate_token_ids(model, tokenizer, PROMPTS, batch_size=4, **kwargs)
    single_ids = generate_token_ids(model, tokenizer, PROMPTS, batch_size=1, **kwargs)
    assert batched_ids == single_ids
    batched = generate_responses(model, tokenizer, PROMPTS, batch_size=4, **kwargs)
    assert batched == generate_responses(model, tokenizer, PROMPTS, batch_size=1, **kwargs)
    # and equal to generating each prompt in a call of its own, in the input order
    alone = [generate_responses(model, tokenizer, [p], batch_size=1, **kwargs)[0] for p in PROMPTS]
    assert batched == alone
    assert len(batched) == len(PROMPTS) and all(isinstance(r, str) for r in batched)


def test_greedy_is_deterministic(tiny):
    model, tokenizer = tiny
    first = generate_responses(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=3)
    second = generate_responses(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=3)
    assert first == second


def test_output_order_follows_input_order(tiny):
    model, tokenizer = tiny
    forward = generate_responses(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=2)
    backward = generate_responses(model, tokenizer, PROMPTS[::-1], max_new_tokens=8, batch_size=2)
    assert backward == forward[::-1]


def test_max_new_tokens_respected(tiny):
    model, tokenizer = tiny
    for max_new_tokens in (1, 7):
        ids = generate_token_ids(model, tokenizer, PROMPTS, max_new_tokens=max_new_tokens, batch_size=4)
        assert all(len(row) <= max_new_tokens for row in ids)
        assert max(len(row) for row in ids) == max_new_tokens  # the random model never stops early
        texts = generate_responses(model, tokenizer, PROMPTS, max_new_tokens=max_new_tokens, batch_size=4)
        # byte tokens: one token decodes to at most one character
        assert all(len(text) <= max_new_tokens for text in texts)


def test_stops_at_eos_and_decodes_only_new_tokens(tiny):
    model, tokenizer = tiny
    ids = generate_token_ids(model, tokenizer, PROMPTS[:1], max_new_tokens=12)[0]
    # Pretend the 4th generated token is the end-of-sequence token.
    stop = ids[3]
    stopping = copy.deepcopy(tokenizer)
    stopping.eos_token = tokenizer.convert_ids_to_tokens(stop)
    assert stopping.eos_token_id == stop
    cut = generate_token_ids(model, stopping, PROMPTS[:1], max_new_tokens=12)[0]
    assert cut == ids[: ids.index(stop)]
    text = generate_responses(model, stopping, PROMPTS[:1], max_new_tokens=12)[0]
    assert text == tokenizer.decode(cut, skip_special_tokens=True).strip()
    # no trace of the prompt or the chat template in the decoded response
    assert "user" not in text and "assistant" not in text


def test_sampling_reproducible_and_different_from_greedy(tiny):
    model, tokenizer = tiny
    kwargs = dict(max_new_tokens=16, batch_size=4, do_sample=True)
    rng_before = torch.get_rng_state()
    first = generate_responses(model, tokenizer, PROMPTS, seed=1, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
    torch.manual_seed(12345)  # the global RNG state does not matter
    second = generate_responses(model, tokenizer, PROMPTS, seed=1, **kwargs)
    assert first == second
    other_seed = generate_responses(model, tokenizer, PROMPTS, seed=2, **kwargs)
    assert other_seed != first
    greedy = generate_responses(model, tokenizer, PROMPTS, max_new_tokens=16, batch_size=4)
    assert first != greedy


def test_padding_side_and_training_mode_restored(tiny):
    model, tokenizer = tiny
    assert tokenizer.padding_side == "right"
    model.train()
    generate_responses(model, tokenizer, PROMPTS[:2], max_new_tokens=4)
    assert model.training is True
    assert tokenizer.padding_side == "right"
    model.eval()
    generate_responses(model, tokenizer, PROMPTS[:2], max_new_tokens=4, do_sample=True)
    assert model.training is False
    assert tokenizer.padding_side == "right"


def test_empty_prompt_list(tiny):
    model, tokenizer = tiny
    assert generate_responses(model, tokenizer, [], max_new_tokens=4) == []


def test_long_prompt_truncated_to_max_prompt_length(tiny):
    model, tokenizer = tiny
    long_prompt = "once upon a time " * 20
    out = generate_responses(model, tokenizer, [long_prompt, "hi"], max_new_tokens=5, max_prompt_length=32)
    assert len(out) == 2


def test_bf16_precision_runs(tiny):
    model, tokenizer = tiny
    out = generate_responses(model, tokenizer, PROMPTS[:2], max_new_tokens=4, precision="bf16")
    assert len(out) == 2 and all(isinstance(r, str) for r in out)


def test_works_with_lora_wrapped_model():
    model, tokenizer = _lively_tiny_model(1)
    plain = generate_responses(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=4)
    peft_model = add_lora(model)  # lora_B = 0: the adapter starts as a no-op
    peft_model.train()
    wrapped = generate_responses(peft_model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=4)
    assert wrapped == plain
    assert peft_model.training is True
    assert wrapped == generate_responses(peft_model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=1)
    # a non-zero adapter changes the outputs, i.e. generate() really runs through the adapter
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 1.0, generator=generator)
    changed = generate_responses(peft_model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=4)
    assert changed != plain
