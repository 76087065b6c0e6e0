"""Response generation and the generation metrics of the evaluation (the paper's BLEU-4 and ROUGE-L).

`generate_responses` answers a list of prompts, rendered with the chat template
(`lifealign.training.encode_prompt`) and batched with left padding: greedy by default, the paper's
sampling (temperature 0.95, top-p 0.7) with `do_sample=True`, seeded so that it is reproducible.
`decoding_description` is what `results.json` records about decoding (the report must say whether
greedy decoding or sampling was used). `bleu4_char` (character-level BLEU-4, NLTK `sentence_bleu`
with smoothing method3) and `rouge_l` (word-level ROUGE-L F-measure, `rouge_score`) score one
response x100; `generation_scores` averages both over a test set.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
from tqdm.auto import tqdm

from lifealign.reference import autocast
from lifealign.training import encode_prompt

#: The paper's sampling settings (used when `do_sample=True`).
PAPER_TEMPERATURE = 0.95
PAPER_TOP_P = 0.7

#: Top-k filtering is switched off when sampling: the paper specifies only temperature and top-p
#: (nucleus) sampling. 0 disables it in transformers, overriding its default of 50 (with top-p 0.7
#: the difference is negligible).
SAMPLING_TOP_K = 0


def _generation_config(tokenizer, max_new_tokens, do_sample, temperature, top_p):
    """An explicit `transformers.GenerationConfig` for one decoding setting.

    Every knob that changes the output is set here, so a model's own `generation_config` (e.g. a
    Hub model shipping its own temperature or repetition penalty) cannot silently change the
    decoding; the model's config only fills in what is left unset (nothing that affects the output).
    """
    from transformers import GenerationConfig

    settings = dict(max_new_tokens=int(max_new_tokens), num_beams=1, repetition_penalty=1.0,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                    do_sample=bool(do_sample))
    if do_sample:
        settings.update(temperature=float(temperature), top_p=float(top_p), top_k=SAMPLING_TOP_K)
    else:
        # Neutral values (transformers' defaults): unused by greedy decoding, set only so that no
        # sampling setting of the model leaks in and warns.
        settings.update(temperature=1.0, top_p=1.0, top_k=50)
    return GenerationConfig(**settings)


def _left_pad(rows, pad_id):
    """Left-padded ``input_ids`` and ``attention_mask`` tensors for lists of token ids."""
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows], dtype=torch.long)
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows],
                                  dtype=torch.long)
    return input_ids, attention_mask


def _cut_at_eos(ids, eos_id):
    """The ids before the first ``eos_id`` (transformers pads finished rows after their eos)."""
    eos_ids = set(eos_id) if isinstance(eos_id, (list, tuple)) else {eos_id}
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[:position]
    return ids


def generate_token_ids(model, tokenizer, prompts, max_new_tokens=128, batch_size=8, do_sample=False,
                       temperature=PAPER_TEMPERATURE, top_p=PAPER_TOP_P, seed=0, max_prompt_length=512,
                       precision="fp32", progress=False):
    """The generated token ids for each prompt (in the input order), cut before the first eos.

    The work behind `generate_responses`, which decodes these ids; see there for the arguments.
    Each list has at most `max_new_tokens` ids. ValueError when `batch_size` or `max_new_tokens`
    is below 1 or the tokenizer has no pad token.
    """
    prompts = list(prompts)
    if not prompts:
        return []
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token; generation needs one for left padding")

    encoded = [encode_prompt(tokenizer, prompt, max_prompt_length) for prompt in prompts]
    # Longest prompts first: less padding per batch, and an out-of-memory error shows up in the
    # first batch rather than the last.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    config = _generation_config(tokenizer, max_new_tokens, do_sample, temperature, top_p)
    device = next(model.parameters()).device
    outputs: list[list[int] | None] = [None] * len(encoded)

    # Sampling draws from the global torch RNG; seed it inside fork_rng so the caller's RNG state is
    # left exactly as it was.
    rng_devices = [device] if device.type == "cuda" else []
    rng = torch.random.fork_rng(devices=rng_devices) if do_sample else contextlib.nullcontext()

    was_training = model.training
    model.eval()
    try:
        with rng, torch.no_grad(), autocast(precision, device):
            if do_sample:
                torch.manual_seed(seed)
            for batch in tqdm(batches, desc="generate", disable=not progress, leave=False):
                input_ids, attention_mask = _left_pad([encoded[i] for i in batch], tokenizer.pad_token_id)
                generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                           generation_config=config)
                new_tokens = generated[:, input_ids.shape[1]:].cpu().tolist()
                for i, ids in zip(batch, new_tokens):
                    outputs[i] = _cut_at_eos(ids, tokenizer.eos_token_id)
    finally:
        model.train(was_training)
    return outputs


def generate_responses(model, tokenizer, prompts, max_new_tokens=128, batch_size=8, do_sample=False,
                       temperature=PAPER_TEMPERATURE, top_p=PAPER_TOP_P, seed=0, max_prompt_length=512,
                       precision="fp32", progress=False):
    """Generate one response per prompt; returns the decoded strings in the input order.

    Each prompt is rendered as a user turn with the chat template by
    `lifealign.training.encode_prompt`, keeping the last `max_prompt_length` tokens of a long
    prompt. Prompts are sorted by length and batched `batch_size` at a time with left padding built
    here from the id lists (the tokenizer's `padding_side` is never touched; left padding does not
    change greedy outputs), and the results put back in the input order. Decoding is greedy unless
    `do_sample=True`, which samples with `temperature` and `top_p` (the paper: 0.95 and 0.7; top-k
    off) after `torch.manual_seed(seed)` inside `torch.random.fork_rng`: the same call gives the
    same samples (which depend on `batch_size` too) and leaves the caller's RNG state unchanged.
    At most `max_new_tokens` new tokens: generation stops at `tokenizer.eos_token_id` and pads with
    `tokenizer.pad_token_id`; only the new tokens are decoded, special tokens skipped, whitespace
    stripped. The model (plain or a `peft.PeftModel`) runs in eval mode under `torch.no_grad()` and
    `lifealign.reference.autocast` for `precision` ("bf16" or "fp32"); its previous train/eval
    mode is restored afterwards.
    """
    ids = generate_token_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, do_sample=do_sample, temperature=temperature,
                             top_p=top_p, seed=seed, max_prompt_length=max_prompt_length,
                             precision=precision, progress=progress)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def decoding_description(do_sample, temperature=PAPER_TEMPERATURE, top_p=PAPER_TOP_P,
                         max_new_tokens=128, seed=None):
    """What `results.json` records about decoding, matching `generate_responses`.

    Greedy: `{"strategy": "greedy", "do_sample": False, "temperature": None, "top_p": None,
    "top_k": None, "num_beams": 1, "repetition_penalty": 1.0, "max_new_tokens": ...}`. Sampling:
    `"strategy": "sampling"` with the temperature, top-p, `"top_k": None` (off) and, when given, the seed.
    """
    description = {"strategy": "sampling" if do_sample else "greedy", "do_sample": bool(do_sample),
                   "temperature": float(temperature) if do_sample else None,
                   "top_p": float(top_p) if do_sample else None, "top_k": None, "num_beams": 1,
                   "repetition_penalty": 1.0, "max_new_tokens": int(max_new_tokens)}
    if do_sample and seed is not None:
        description["seed"] = int(seed)
    return description


def bleu4_char(prediction: str, reference: str) -> float:
    """Character-level BLEU-4 of `prediction` against `reference`, x100 (0-100).

    `nltk.translate.bleu_score.sentence_bleu([list(reference)], list(prediction),
    weights=(0.25,) * 4, smoothing_function=SmoothingFunction().method3)`. Method3 replaces the
    k-th zero n-gram precision by `1 / (2**k * denominator)`; with no character in common NLTK
    returns 0. An empty prediction (or reference) scores 0.0.

    As in NLTK (and so in the paper's scoring), a prediction shorter than 4 characters has zero
    4-gram (and 3-gram) matches, which method3 smooths: even an exact copy of a 3-character
    reference scores `100 * (1/2) ** 0.25` (84.09), of a 2-character one `100 * (1/8) ** 0.25`.
    """
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if not prediction or not reference:
        return 0.0
    score = sentence_bleu([list(reference)], list(prediction), weights=(0.25, 0.25, 0.25, 0.25),
                          smoothing_function=SmoothingFunction().method3)
    return float(score) * 100.0


@functools.cache
def _rouge_scorer():
    """The shared ``RougeScorer(["rougeL"], use_stemmer=False)``, built on first use."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """Word-level ROUGE-L F-measure of `prediction` against `reference`, x100 (0-100).

    From the longest common subsequence of the word sequences: P = LCS / len(prediction),
    R = LCS / len(reference), F = 2PR / (P + R). Computed with the `rouge_score` package (no
    stemming). Its default tokenizer lowercases and keeps only ASCII letters and digits, splitting
    on everything else: punctuation and case do not count, and text without ASCII alphanumerics
    (e.g. Chinese) scores 0. That is fine for the English tasks here; the paper's Chinese-aware
    variant (jieba + rouge-chinese) is not reproduced.
    """
    if not prediction or not reference:
        return 0.0
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure) * 100.0


def generation_scores(predictions, references) -> dict:
    """Mean BLEU-4 (character) and ROUGE-L (F) over paired predictions/references.

    Returns `{"bleu4": mean x100, "rougel": mean x100, "n": number of pairs, "empty_predictions":
    number of predictions that are empty after stripping}`. Empty predictions count as 0 in both
    means. With no pairs the means are NaN. ValueError if the two lists differ in length.
    """
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    n = len(predictions)
    if n == 0:
        return {"bleu4": math.nan, "rougel": math.nan, "n": 0, "empty_predictions": 0}
    bleu = [bleu4_char(p, r) for p, r in zip(predictions, references)]
    rouge = [rouge_l(p, r) for p, r in zip(predictions, references)]
    return {"bleu4": math.fsum(bleu) / n, "rougel": math.fsum(rouge) / n, "n": n,
            "empty_predictions": sum(1 for p in predictions if not p.strip())}
