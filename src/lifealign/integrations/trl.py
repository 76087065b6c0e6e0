"""FPO, SLMC and replay for TRL users.

- `FPOTrainer`: TRL's `DPOTrainer` with the FPO loss (`lifealign.losses.fpo_loss`; gamma = 0 is
  DPO). TRL 1.x builds its loss inside `DPOTrainer._compute_loss` from a fixed menu (`loss_type`),
  with no per-pair hook, so the subclass overrides `_compute_loss`: TRL's own fused LM head gives
  the summed response log-probabilities, TRL's `compute_ref_log_probs` the reference ones (or the
  batch's `ref_*_logps` columns), and the per-pair loss is `fpo_loss` itself. Tokenisation,
  collation, precomputed references, PEFT, accelerate / DeepSpeed / FSDP launches stay TRL's.
  The reference is the frozen base model (adapters disabled), as in LifeAlign; TRL's default for a
  model that already has a trained adapter would be a copy of that adapter.
- `SLMCCallback`: a `transformers.TrainerCallback` that snapshots every trainable LoRA matrix when
  training begins and consolidates the updates when it ends (`lifealign.consolidation.SLMC`). Its
  state is written into each trainer checkpoint (`slmc.pt`) and read back on resume, and kept
  across trainers: pass the same callback to each task's trainer.
- `ReplayBuffer`: the next task's training `Dataset` = its rows + the buffer; then the first 20% of
  its rows join the buffer, as the replay of the LifeAlign method.

Usage (examples/trl_continual.py is the whole loop):

    slmc = SLMCCallback(threshold=0.9, lam=0.5)
    replay = ReplayBuffer(fraction=0.2)
    for task in tasks:
        trainer = FPOTrainer(model=peft_model, args=DPOConfig(...), gamma=2.0, callbacks=[slmc],
                             train_dataset=replay.next_training_set(task_train), processing_class=tok)
        trainer.train()
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from accelerate.utils import is_peft_model
from datasets import concatenate_datasets
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import DPOTrainer
from trl.trainer.utils import use_adapter

from ..consolidation import SLMC, summarize_report
from ..io import torch_save
from ..losses import dpo_margin, fpo_loss
from ..strategies.replay import rows_joining

_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
_TOKENIZED = {"prompt_ids", "chosen_ids", "rejected_ids"}


class FPOTrainer(DPOTrainer):
    """`DPOTrainer` whose loss is FPO: per pair -(1 - p)^gamma log p, p = sigmoid(beta * margin).

    gamma: the focal exponent (2.0 in the paper; 0 gives DPO). Everything else is `DPOConfig`'s.
    A training set that already has prompt_ids / chosen_ids / rejected_ids columns is used as it
    is (no second tokenisation); ref_chosen_logps / ref_rejected_logps columns, when present, are
    the reference log-probabilities.
    """

    def __init__(self, *args, gamma: float = 2.0, **kwargs):
        self.gamma = float(gamma)
        super().__init__(*args, **kwargs)
        unsupported = {"loss_type": (self.loss_types, ["sigmoid"]),
                       "f_divergence_type": (self.f_divergence_type, "reverse_kl"),
                       "ld_alpha": (self.ld_alpha, None), "use_weighting": (self.use_weighting, False)}
        for key, (value, wanted) in unsupported.items():
            if value != wanted:
                raise ValueError(f"FPOTrainer replaces DPO's sigmoid loss: set DPOConfig.{key}={wanted!r} "
                                 f"(got {value!r})")
        # The reference is the base model: drop the adapter copy TRL makes of an already trained adapter.
        unwrapped = self.accelerator.unwrap_model(self.model)
        if is_peft_model(unwrapped) and "ref" in unwrapped.peft_config:
            unwrapped.delete_adapter("ref")

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if _TOKENIZED <= set(dataset.column_names or ()):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _reference_context(self):
        """Adapters off on a PEFT model without a separate reference model: the base model."""
        if self.ref_model is None and is_peft_model(self.accelerator.unwrap_model(self.model)):
            return use_adapter(self.accelerator.unwrap_model(self.model), None)
        return contextlib.nullcontext()

    @staticmethod
    def _summed_logps(model, inputs):
        """Summed completion log-probabilities per sequence, from TRL's fused LM head."""
        completion_mask = inputs["completion_mask"]
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, use_cache=False, labels=labels, fused_lm_head=True)
        # log_probs[:, t] scores token t + 1; positions without a label hold 0
        return outputs.log_probs[:, -(completion_mask.shape[1] - 1):].sum(dim=1)

    def compute_ref_log_probs(self, model, inputs):
        with torch.no_grad(), self._reference_context(), self.accelerator.autocast():
            logps = self._summed_logps(self.ref_model or model, inputs)
        return logps.chunk(2, dim=0)

    def pair_logps(self, model, inputs):
        """(chosen, rejected, ref_chosen, ref_rejected) summed response log-probabilities, (B,) each."""
        logps = self._summed_logps(model, inputs)
        chosen, rejected = logps.chunk(2, dim=0)  # TRL's batch is [chosen; rejected]
        if "ref_chosen_logps" in inputs:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = self.compute_ref_log_probs(model, inputs)
        return chosen, rejected, ref_chosen.to(chosen), ref_rejected.to(chosen)

    def pair_losses(self, model, inputs):
        """The per-pair FPO loss of a collated batch, and the pieces it is made of."""
        chosen, rejected, ref_chosen, ref_rejected = self.pair_logps(model, inputs)
        losses = fpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=self.beta, gamma=self.gamma)
        margin = dpo_margin(chosen, rejected, ref_chosen, ref_rejected, beta=self.beta)
        return losses, {"chosen_logps": chosen, "rejected_logps": rejected, "margin": margin,
                        "chosen_rewards": self.beta * (chosen - ref_chosen),
                        "rejected_rewards": self.beta * (rejected - ref_rejected)}

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # FPO's outputs hold no logits to hand to compute_metrics: evaluation reports the loss
        # and the reward metrics logged by _compute_loss.
        return super().prediction_step(model, inputs, True, ignore_keys)

    def _compute_loss(self, model, inputs, return_outputs):
        losses, parts = self.pair_losses(model, inputs)
        mode = "train" if self.model.training else "eval"
        gather = lambda t: self.accelerator.gather_for_metrics(t.detach()).float()  # noqa: E731
        margin = gather(parts["margin"])
        metrics = self._metrics[mode]
        for name, part in (("rewards/chosen", "chosen_rewards"), ("rewards/rejected", "rejected_rewards"),
                           ("logps/chosen", "chosen_logps"), ("logps/rejected", "rejected_logps")):
            metrics[name].append(gather(parts[part]).mean().item())
        metrics["rewards/accuracies"].append((margin > 0).float().mean().item())
        metrics["rewards/margins"].append(margin.mean().item())
        metrics["focal_weight"].append(torch.sigmoid(-margin).pow(self.gamma).mean().item())
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        loss = losses.mean()
        return (loss, {"per_pair_loss": losses, **parts}) if return_outputs else loss


class SLMCCallback(TrainerCallback):
    """SLMC around a trainer's `train()`: snapshot at train begin, consolidate at train end.

    One instance carries the history of refined updates across tasks: pass it to every task's
    trainer. `reports` holds each consolidation's per-matrix report (kept rank, overlap energy).
    Checkpoints: `on_save` writes the history and the train-begin snapshot to
    <checkpoint>/slmc.pt; resuming from output_dir/checkpoint-N (`train(resume_from_checkpoint=...)`)
    reads them back, so the consolidation at train end refers to the weights training started from.
    """

    FILE = "slmc.pt"

    def __init__(self, threshold: float = 0.9, lam: float = 0.5):
        self.slmc = SLMC(threshold, lam)
        self.reports = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step > 0:  # resuming: the snapshot is the one taken when this training began
            path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / self.FILE
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no SLMC state in the checkpoint being resumed; it was saved "
                                        "without SLMCCallback. Resume from a checkpoint saved with it, or start over")
            self.load_state_dict(torch.load(path, weights_only=False))
        else:
            self.slmc.begin_stage(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        report = self.slmc.end_stage(model)
        self.reports.append({**summarize_report(report), "per_matrix": report})

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            torch_save(self.state_dict(), folder / self.FILE)

    def state_dict(self):
        return {"slmc": self.slmc.state_dict(), "start": self.slmc._start, "reports": self.reports}

    def load_state_dict(self, state):
        self.slmc.load_state_dict(state["slmc"])
        self.slmc._start = state["start"]
        self.reports = state["reports"]


class ReplayBuffer:
    """Experience replay for `datasets.Dataset`s (the first 20% of each earlier task, as `strategies.replay.Replay`).

    `next_training_set(task_dataset)` returns the task's rows followed by every buffered row (the
    trainer shuffles), then adds the first `fraction` of the task's rows, in file order, to the
    buffer; the buffer keeps its oldest rows when over `cap`.
    """

    def __init__(self, fraction: float = 0.2, cap: int = 3000):
        self.fraction = fraction
        self.cap = cap
        self.buffer = None

    def next_training_set(self, dataset):
        training = dataset if self.buffer is None else concatenate_datasets([dataset, self.buffer])
        new = dataset.select(range(rows_joining(len(dataset), self.fraction, self.cap, len(self))))
        self.buffer = new if self.buffer is None else concatenate_datasets([self.buffer, new])
        return training

    def __len__(self):
        return 0 if self.buffer is None else len(self.buffer)
