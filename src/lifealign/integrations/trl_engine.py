"""`engine: trl`: the continual loop's preference stage run by TRL's DPOTrainer (as `FPOTrainer`).

The loop stays ours: data, replay, the SFT stage, SLMC and the other plugins' stage hooks,
evaluation, saving and resuming. Only the preference stage's trainer changes, so TRL's launch
options (accelerate, DeepSpeed, FSDP configs in DPOConfig's TrainingArguments) apply to it. The
trainer gets our tokenisation and the frozen base model's cached log-probabilities as dataset
columns, so both engines train on the same tokens against the same reference.

Methods whose plugins act inside a training step (extra loss terms, gradient projection, prompt
rewriting: EWC, GEM, A-GEM, CPPO, O-LoRA, L2P) need our engine; the check runs before any training.
"""
from ..config import ConfigError
from ..strategies.base import Plugin
from .hf_datasets import records_dataset

_STEP_HOOKS = ("extra_loss", "before_optimizer_step")


def check_strategy(strategy):
    """ConfigError unless every plugin of the method works around whole stages only."""
    for plugin in strategy.plugins:
        step_hooks = [h for h in _STEP_HOOKS if getattr(type(plugin), h) is not getattr(Plugin, h)]
        if step_hooks or plugin.rewrites_inputs:
            what = ", ".join(step_hooks) or "rewrites the model's inputs"
            raise ConfigError(f"engine: trl cannot run method {strategy.name!r}: its {plugin.name} plugin acts inside "
                              f"each training step ({what}); use engine: ours for it")


def preference_trainer(loop, records, stage_cfg, seed):
    """A `FPOTrainer` for one preference stage of the loop, with the attributes the loop reads
    after training (`state.global_step`, `tokens_seen`, `stage_stats`)."""
    from trl import DPOConfig
    from transformers import PrinterCallback

    from .trl import FPOTrainer

    class LoopFPOTrainer(FPOTrainer):
        tokens_seen = 0
        stage_stats = []

        def pair_losses(self, model, inputs):
            losses, parts = super().pair_losses(model, inputs)
            if model.training:
                self.tokens_seen += int(inputs["attention_mask"].sum())
                margin = parts["margin"].detach()
                self.stage_stats.append({"loss": float(losses.detach().mean()), "margin": float(margin.mean()),
                                         "reward_accuracy": float((margin > 0).float().mean())})
            return losses, parts

    cfg = loop.cfg
    args = DPOConfig(
        output_dir=str(loop.out / "trainer"), num_train_epochs=stage_cfg.epochs,
        per_device_train_batch_size=stage_cfg.batch_size, gradient_accumulation_steps=stage_cfg.grad_accum,
        learning_rate=stage_cfg.lr, lr_scheduler_type=stage_cfg.scheduler, warmup_steps=stage_cfg.warmup_ratio,
        max_grad_norm=stage_cfg.max_grad_norm, weight_decay=0.0, bf16=loop.precision == "bf16",
        use_cpu=loop.device == "cpu", seed=seed, data_seed=seed, beta=cfg.method.beta,
        max_length=cfg.model.max_length, gradient_checkpointing=False, precompute_ref_log_probs=False,
        save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=not (cfg.progress and loop.is_main),
        dataloader_num_workers=0, ddp_find_unused_parameters=False)
    trainer = LoopFPOTrainer(
        model=loop.model, args=args, processing_class=loop.tokenizer,
        train_dataset=records_dataset(records, tokenized=True),
        gamma=loop.loss_kwargs.get("gamma", 0.0),  # FPO with gamma 0 is DPO
        optimizers=(loop._optimizer("pref", stage_cfg), None))
    trainer.stage_stats = []
    trainer.remove_callback(PrinterCallback)
    return trainer
