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
import math
import re

import torch
from torch.utils.data import Dataset
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

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


def collate_sequences(prompts, responses, pad_id):
    """Right-padded input_ids, attention_mask and response_mask (1 on response tokens)."""
    ids = [p + r for p, r in zip(prompts, responses)]
    return {
        "input_ids": _pad(ids, pad_id),
        "attention_mask": _pad([[1] * len(x) for x in ids], 0),
        "response_mask": _pad([[0] * len(p) + [1] * len(r) for p, r in zip(prompts, responses)], 0),
    }


PAIR_SCORES = ("ref", "old")


def collate_pairs(examples, pad_id):
    """One batch of 2B sequences: the B chosen first, then the B rejected (TRL's layout)."""
    prompts = [e["ids"]["prompt"] for e in examples]
    batch = collate_sequences(prompts + prompts,
                              [e["ids"]["chosen"] for e in examples] + [e["ids"]["rejected"] for e in examples],
                              pad_id)
    for key in PAIR_SCORES:  # per-pair scores computed ahead: the base model's, a previous policy's
        if key in examples[0]:
            batch[f"{key}_chosen_logps"] = torch.tensor([e[key][0] for e in examples], dtype=torch.float32)
            batch[f"{key}_rejected_logps"] = torch.tensor([e[key][1] for e in examples], dtype=torch.float32)
    return batch


def collate_sft(examples, pad_id):
    return collate_sequences([e["ids"]["prompt"] for e in examples], [e["ids"]["chosen"] for e in examples], pad_id)


def sequence_logps(model, batch):
    """Summed log-probabilities of the response tokens of each sequence, and their counts.

    Logits are computed only from the earliest response position on (`logits_to_keep`): the
    vocabulary projection and the log-softmax over it are the largest part of the cost, and prompt
    positions need neither.
    """
    input_ids, response_mask = batch["input_ids"], batch["response_mask"]
    first = int(response_mask.int().argmax(dim=1).min())  # prompts are never empty: first >= 1
    keep = input_ids.shape[1] - first + 1
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"], use_cache=False,
                   logits_to_keep=keep).logits
    logits = logits[:, -keep:-1].float()  # position t predicts token t + 1
    targets = input_ids[:, first:]
    mask = response_mask[:, first:].to(logits.dtype)
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def example_lengths(records, stage):
    """Token length of each training example (the longer sequence of a pair), for length grouping."""
    if stage == "sft":
        return [len(r["ids"]["prompt"]) + len(r["ids"]["chosen"]) for r in records]
    return [len(r["ids"]["prompt"]) + max(len(r["ids"]["chosen"]), len(r["ids"]["rejected"])) for r in records]


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

    `hooks` is the strategy: `extra_loss(model, batch, outputs)` and `before_optimizer_step()`.
    """

    def __init__(self, *args, stage_loss, hooks, lengths=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lengths = lengths
        self.stage_loss = stage_loss
        self.hooks = hooks
        self.loss_is_scaled_for_ga = False  # our loss is a batch mean: let Trainer divide by accumulation
        self.tokens_seen = 0
        self.stage_stats = []
        self.add_callback(_BeforeOptimizerStep(hooks.before_optimizer_step))
        self.remove_callback(PrinterCallback)  # the loop prints its own summary

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self.stage_loss(model, inputs)
        extra = self.hooks.extra_loss(model, inputs, outputs)
        if extra is not None:
            loss = loss + extra
        if model.training:
            self.tokens_seen += int(inputs["attention_mask"].sum())
            self.stage_stats.append({k: float(v) for k, v in outputs.get("log", {}).items()})
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
        margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
        outputs = {
            "chosen_logps": chosen, "rejected_logps": rejected, "per_pair_loss": per_pair, "margin": margin,
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


def steps_per_epoch(n_items, stage_cfg, world_size=1):
    return max(math.ceil(n_items / (stage_cfg.batch_size * world_size * stage_cfg.grad_accum)), 1)
