"""Tokenisation, batching, log-probabilities and the two training stages (SFT and preference).

Both stages are `transformers.Trainer`s, so accelerate, DeepSpeed and FSDP launches work unchanged.
The preference stage reads the frozen base model's log-probabilities from the batch (computed once
per model and data, see `reference.py`), so it never runs a reference forward while training.

Why not TRL's DPOTrainer: handed a PEFT model that already has a trained adapter, it takes a copy
of that adapter as the reference, while the method's reference is the frozen base model; its loss
is a fixed menu with no focal weighting; and it re-tokenises every dataset per trainer. The loss
convention (per-pair loss of summed response log-probabilities) and the batch layout
([chosen; rejected] in one forward pass) follow TRL's.
"""
import re

import torch
from torch.utils.data import Dataset
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from .losses import dpo_margin

_ROLE_PREFIX = re.compile(r"^\s*Assistant:\s*")


def clean_response(text):
    """Drop the 'Assistant: ' prefix most hh-rlhf responses carry: the chat template adds the role."""
    return _ROLE_PREFIX.sub("", text, count=1)


def encode_prompt(tokenizer, prompt, max_prompt_length):
    """Token ids of the prompt as a user turn in the model's chat template, ending with the
    assistant header. Long prompts keep their end: in multi-turn transcripts that is the request."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             add_generation_prompt=True, tokenize=False)
    else:
        text = prompt + "\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_prompt_length:]


def encode_response(tokenizer, response, max_tokens):
    ids = tokenizer(clean_response(response), add_special_tokens=False)["input_ids"]
    return ids[: max(max_tokens - 1, 0)] + [tokenizer.eos_token_id]


def encode_records(tokenizer, records, max_length, max_prompt_length):
    """Tokenise each record once: adds record["ids"] = {prompt, chosen, rejected} token id lists."""
    for rec in records:
        if "ids" in rec:
            continue
        prompt = encode_prompt(tokenizer, rec["prompt"], max_prompt_length)
        budget = max_length - len(prompt)
        rec["ids"] = {
            "prompt": prompt,
            "chosen": encode_response(tokenizer, rec["chosen"], budget),
            "rejected": encode_response(tokenizer, rec["rejected"], budget),
        }
    return records


def _pad(rows, value):
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _score_index(rows):
    """Which logits score which tokens: rows of (batch row, predicting position, target position,
    sequence). `rows` lists, per batch row, (sequence, predicting positions, target positions)."""
    index = [(b, p, t, s) for b, row in enumerate(rows) for s, preds, targets in row for p, t in zip(preds, targets)]
    return torch.tensor(index, dtype=torch.long).reshape(-1, 4)


def collate_sequences(prompts, responses, pad_id):
    """One right-padded row per prompt + response; each response token is predicted by the
    position before it. Sequence i is row i."""
    ids = [p + r for p, r in zip(prompts, responses)]
    rows = [[(i, range(len(p) - 1, len(p) + len(r) - 1), range(len(p), len(p) + len(r)))]
            for i, (p, r) in enumerate(zip(prompts, responses))]
    return {
        "input_ids": _pad(ids, pad_id),
        "attention_mask": _pad([[1] * len(x) for x in ids], 0),
        "score_index": _score_index(rows),
    }


PROMPT, CHOSEN, REJECTED = 1, 2, 3  # segment ids of a shared-prompt row; 0 is padding


def collate_shared_prompt(prompts, chosen, rejected, pad_id):
    """One row per pair, [prompt | chosen | rejected | padding], the prompt computed once.

    A 4D attention mask keeps the rejected tokens from seeing the chosen ones, and the rejected
    response's positions restart where the prompt ends, so every response token gets the logits it
    would get in its own sequence (prefix sharing, as in Wang et al. 2024, "Accelerating Direct
    Preference Optimization with Prefix Sharing"). The prompt's last position predicts the first
    token of both responses. Sequences 0..B-1 are the chosen, B..2B-1 the rejected (TRL's order).
    """
    n = len(prompts)
    ids, segments, positions, rows = [], [], [], []
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected)):
        P, C, R = len(p), len(c), len(r)
        ids.append(p + c + r)
        segments.append([PROMPT] * P + [CHOSEN] * C + [REJECTED] * R)
        positions.append(list(range(P + C)) + list(range(P, P + R)))
        rows.append([(i, range(P - 1, P + C - 1), range(P, P + C)),
                     (n + i, [P - 1] + list(range(P + C, P + C + R - 1)), range(P + C, P + C + R))])
    seg = _pad(segments, 0)
    width = seg.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    q, k = seg[:, :, None], seg[:, None, :]
    mask = causal & (k != 0) & ~((q == REJECTED) & (k == CHOSEN))
    mask |= torch.eye(width, dtype=torch.bool) & (q == 0)  # padding attends to itself: no empty softmax rows
    return {
        "input_ids": _pad(ids, pad_id),
        "attention_mask": (seg != 0).long(),
        "position_ids": _pad(positions, 0),
        "pair_mask": mask[:, None],
        "score_index": _score_index(rows),
    }


PAIR_SCORES = ("ref", "old")


def collate_pairs(examples, pad_id, share_prompt=True):
    """A batch of B pairs, 2B sequences (the B chosen first, then the B rejected: TRL's order).
    With `share_prompt` each pair is one row with its prompt once; otherwise two rows."""
    prompts = [e["ids"]["prompt"] for e in examples]
    chosen = [e["ids"]["chosen"] for e in examples]
    rejected = [e["ids"]["rejected"] for e in examples]
    if share_prompt:
        batch = collate_shared_prompt(prompts, chosen, rejected, pad_id)
    else:
        batch = collate_sequences(prompts + prompts, chosen + rejected, pad_id)
    for key in PAIR_SCORES:  # per-pair scores computed ahead: the base model's, a previous policy's
        if key in examples[0]:
            batch[f"{key}_chosen_logps"] = torch.tensor([e[key][0] for e in examples], dtype=torch.float32)
            batch[f"{key}_rejected_logps"] = torch.tensor([e[key][1] for e in examples], dtype=torch.float32)
    return batch


def collate_sft(examples, pad_id):
    return collate_sequences([e["ids"]["prompt"] for e in examples], [e["ids"]["chosen"] for e in examples], pad_id)


def _attention_mask(model, batch):
    """The batch's mask in the form the model's attention takes: the 2D padding mask, or the 4D
    shared-prompt mask (boolean for SDPA and flash kernels, additive for eager attention)."""
    if "pair_mask" not in batch:
        return batch["attention_mask"]
    mask = batch["pair_mask"]
    inner = getattr(model, "module", model)  # under DDP the model is wrapped
    if getattr(inner.config, "_attn_implementation", "sdpa") == "eager":
        device = mask.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else inner.dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def sequence_logps(model, batch):
    """Summed log-probabilities of the response tokens of each sequence, and their counts.

    Logits are computed only from the earliest predicting position on (`logits_to_keep`), and the
    log-softmax over the vocabulary only at the positions that predict a response token: the
    vocabulary projection and its softmax are the largest part of the cost, and prompt positions
    need neither.
    """
    input_ids = batch["input_ids"]
    row, pred, target, seq = batch["score_index"].unbind(1)
    first = int(pred.min())
    extra = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
    logits = model(input_ids=input_ids, attention_mask=_attention_mask(model, batch), use_cache=False,
                   logits_to_keep=input_ids.shape[1] - first, **extra).logits
    picked = logits[row, pred - first].float()  # (response tokens, vocabulary)
    token_logps = picked.gather(-1, input_ids[row, target].unsqueeze(-1)).squeeze(-1) - picked.logsumexp(-1)
    n = int(seq.max()) + 1
    sums = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device).index_add(0, seq, token_logps)
    counts = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device).index_add(0, seq, torch.ones_like(token_logps))
    return sums, counts


def pair_length(rec):
    """Tokens of a pair's shared-prompt row: prompt + chosen + rejected."""
    return sum(len(rec["ids"][k]) for k in ("prompt", "chosen", "rejected"))


def pair_tokens(records):
    """Non-pad tokens of prompt + chosen and prompt + rejected over encoded records: what a
    run reports as eval_tokens, and the benchmarks' token count."""
    return sum(2 * len(r["ids"]["prompt"]) + len(r["ids"]["chosen"]) + len(r["ids"]["rejected"]) for r in records)


def example_lengths(records, stage):
    """Token length of each training example's row, for length grouping."""
    if stage == "sft":
        return [len(r["ids"]["prompt"]) + len(r["ids"]["chosen"]) for r in records]
    return [pair_length(r) for r in records]


STAGES = ("sft", "pref")  # the training stages of a task, in order


def stage_seed(seed, task_index, stage):
    """The seed of one stage of one task: every stage of a run draws from its own seed, the same
    for the same (run seed, position in the order, stage) in every run and on every restart."""
    return seed * 1000 + task_index * 10 + STAGES.index(stage)


def trainable_parameters(model):
    """The parameters a stage trains (requires_grad), by name, in the model's order."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class ListDataset(Dataset):
    def __init__(self, items):
        self.items = list(items)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _BeforeOptimizerStep(TrainerCallback):
    def __init__(self, hook):
        self.hook = hook

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.hook()


class StageTrainer(Trainer):
    """A Trainer whose loss is `stage_loss(model, batch)` plus the strategy's extra loss terms.

    `extra_loss(model, batch, outputs)` returns a term to add (or None); `before_optimizer_step()`
    runs between backward and the optimizer step (gradient projection).
    """

    def __init__(self, *args, stage_loss, extra_loss=None, before_optimizer_step=None, lengths=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lengths = lengths
        self.stage_loss = stage_loss
        self.extra_loss = extra_loss or (lambda model, batch, outputs: None)
        self.loss_is_scaled_for_ga = False  # our loss is a batch mean: let Trainer divide by accumulation
        self.tokens_seen = 0
        self.stage_stats = []
        if before_optimizer_step is not None:
            self.add_callback(_BeforeOptimizerStep(before_optimizer_step))
        self.remove_callback(PrinterCallback)  # the loop prints its own summary

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self.stage_loss(model, inputs)
        extra = self.extra_loss(model, inputs, outputs)
        if extra is not None:
            loss = loss + extra
        if model.training:
            self.tokens_seen += int(inputs["attention_mask"].sum())
            stats = {k: float(v) for k, v in outputs.get("log", {}).items()}
            if extra is not None:
                stats["extra_loss"] = float(extra.detach())
            self.stage_stats.append(stats)
        return (loss, outputs) if return_outputs else loss

    def _remove_unused_columns(self, dataset, description=None):
        return dataset

    def _get_train_sampler(self, train_dataset=None):
        """Batches of similar length (less padding), still shuffled, seeded for exact resumes."""
        if self.lengths is None:
            return super()._get_train_sampler(train_dataset)
        generator = torch.Generator().manual_seed(self.args.seed)
        return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                    lengths=self.lengths, generator=generator)


def sft_loss(model, batch):
    """Mean negative log-likelihood of the response tokens."""
    logps, counts = sequence_logps(model, batch)
    loss = -logps.sum() / counts.sum().clamp(min=1)
    return loss, {"logps": logps, "log": {"nll": loss.detach()}}


def make_preference_loss(loss_fn, beta, **loss_kwargs):
    """Stage loss for DPO/FPO: the batch mean of the per-pair loss; outputs keep the pieces
    (policy log-probs, margins) that strategies such as CPPO or GEM need."""

    def preference_loss(model, batch):
        logps, counts = sequence_logps(model, batch)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        per_pair = loss_fn(chosen, rejected, ref_chosen, ref_rejected, beta=beta, **loss_kwargs)
        margin = dpo_margin(chosen, rejected, ref_chosen, ref_rejected, beta)
        outputs = {
            "chosen_logps": chosen, "rejected_logps": rejected, "per_pair_loss": per_pair, "margin": margin,
            "chosen_counts": counts.chunk(2)[0],
            "log": {"loss": per_pair.mean().detach(), "reward_accuracy": (margin > 0).float().mean().detach(),
                    "margin": margin.mean().detach()},
        }
        return per_pair.mean(), outputs

    return preference_loss


def training_arguments(stage_cfg, out_dir, seed, precision, progress, device):
    return TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=stage_cfg.epochs,
        per_device_train_batch_size=stage_cfg.batch_size,
        gradient_accumulation_steps=stage_cfg.grad_accum,
        learning_rate=stage_cfg.lr,
        lr_scheduler_type=stage_cfg.scheduler,
        warmup_steps=stage_cfg.warmup_ratio,  # a float < 1 is a ratio of the stage's steps
        max_grad_norm=stage_cfg.max_grad_norm,
        weight_decay=0.0,
        bf16=precision == "bf16",
        use_cpu=device == "cpu",
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        report_to="none",
        logging_strategy="no",
        disable_tqdm=not progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )

