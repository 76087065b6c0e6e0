"""The continual loop: for each task of the order, replay -> SFT -> preference -> SLMC -> save ->
evaluate on every task's test pairs. Resumable: each finished task is one directory, moved into
place atomically with its adapter, strategy state, optimizer and RNG state and its evaluation.

    run_dir/
      config.json            the resolved config of the run (a restart must match it)
      base_eval.json         the untrained base model's row (base_generations.json with generation on)
      tasks/01-<task>/       adapter/ (PEFT format), lora.safetensors (what a restart loads),
                             state.pt (strategy, optimizers, RNG), eval.json, train.json,
                             generations.json
      results.json           rebuilt after every task
"""
import gc
import hashlib
import os
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import data as data_mod
from .config import ConfigError, config_from_dict, parse_override, set_path
from .evaluation import RowEvaluator
from .integrations import trl_engine
from .io import fresh_dir, read_json, replace_dir, torch_save, write_json
from .lora import add_lora, copy_into, lora_parameters
from .losses import PREFERENCE_LOSSES
from .machine import cache_root, machine_description, pick_precision, versions
from .metrics import run_metrics
from .models import freeze_base_in_bf16, load_model, model_fingerprint
from .progress import RunProgress, after_stage_label, task_stages
from .reference import ReferenceCache, autocast
from .run_code import RUN_CODE_VERSION
from .strategies import build_strategy
from .strategies.base import Stage
from .training import (STAGES, ListDataset, StageTrainer, collate_pairs, collate_sft, encode_records,
                       example_lengths, make_preference_loss, pair_tokens, sft_loss, stage_seed, trainable_parameters,
                       training_arguments)


def _rank():
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def adapter_digest(model):
    h = hashlib.sha256()
    for name, p in sorted(lora_parameters(model).items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class ContinualLoop:
    """Holds what the strategy hooks may look at: cfg, model, tokenizer and the task under way
    (`task`, `task_index`); the stage hooks also get the stage (`strategies.base.Stage`)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.rank, self.world_size = _rank()
        self.is_main = self.rank == 0
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.precision = pick_precision(self.device) if cfg.model.precision == "auto" else cfg.model.precision
        self.strategy = build_strategy(cfg)
        # The method's preference loss, resolved here once: DPO, or FPO with its focal gamma.
        self.loss_kwargs = {"gamma": cfg.method.gamma} if self.strategy.loss == "fpo" else {}
        self.preference_loss = make_preference_loss(PREFERENCE_LOSSES[self.strategy.loss], cfg.method.beta,
                                                    **self.loss_kwargs)
        if cfg.engine == "trl":
            trl_engine.check_strategy(self.strategy)
        self.task_index = None
        self.task = None
        self.optimizers = {}
        self.timings = {}
        self.progress = RunProgress(self.out, enabled=False)  # run() starts the real one

    # ---------------------------------------------------------------- set-up
    def setup(self):
        cfg = self.cfg
        self.data_dir = data_dir = data_mod.data_dir(cfg.data.dir)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.order, self.dropped = data_mod.resolve_order(cfg.data.order, data_dir)
        for w in caught:
            print(f"warning: {w.message}")
        if not self.order:
            raise data_mod.DataError(f"no task of {cfg.data.order} has data in {data_dir}")
        self.tasks = {name: data_mod.load_task(name, data_dir, cfg.data.n_train, cfg.data.n_test, cfg.seed,
                                               cfg.data.on_invalid) for name in self.order}

        t0 = time.perf_counter()
        self.progress.stage("model")
        torch.manual_seed(cfg.seed)
        model, tokenizer = load_model(cfg.model.name, device=self.device,
                                      cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None)
        self.fingerprint = model_fingerprint(cfg.model.name, model)
        torch.manual_seed(cfg.seed)  # identical LoRA initialisation on every rank and every restart
        self.model = add_lora(model, cfg.model.lora_r, cfg.model.lora_alpha, cfg.model.lora_dropout,
                              list(cfg.model.lora_targets))
        if self.precision == "bf16":  # every forward of a bf16 run is under autocast: same results, no weight casts
            freeze_base_in_bf16(self.model)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.timings["model_load_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        for task in self.tasks.values():
            encode_records(tokenizer, task.train, cfg.model.max_length, cfg.model.max_prompt_length)
            encode_records(tokenizer, task.test, cfg.model.max_length, cfg.model.max_prompt_length)
        self.timings["tokenize_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else cache_root()
        self.ref_cache = ReferenceCache(cache_dir / "reference" / f"{self.fingerprint}-{self.precision}-"
                                        f"{cfg.model.max_length}-{cfg.model.max_prompt_length}-shared.pt")  # shared-prompt rows
        every = [r for t in self.tasks.values() for r in t.train + t.test]
        self.progress.stage("reference")
        self.ref_cache.fill(self.model, every, self.pad_id, cfg.eval.batch_size, self.precision,
                            progress=cfg.progress and self.is_main, write=self.is_main)
        self.timings["reference_s"] = time.perf_counter() - t0
        self.timings["reference_cache"] = {"hits": self.ref_cache.hits, "misses": self.ref_cache.misses}
        self.evaluator = RowEvaluator(cfg, self.tasks, tokenizer, self.precision, self.fingerprint,
                                      self.strategy.share_prompt, self.is_main, self.progress.stage)
        self.units = self.training_units()

    # ---------------------------------------------------------------- run
    def run(self, console=None):
        """`console`: where progress goes besides <out>/run.log and progress.json (lifealign.progress)."""
        self.progress = RunProgress(self.out, self.cfg.name, console, enabled=self.is_main)
        # The objects alive now (~500k, mostly of imported modules) outlive the run. Frozen, they are skipped by
        # the full collection that the HF Trainer makes at each stage (accelerate's free_memory).
        gc.collect()
        gc.freeze()
        try:
            return self._run()
        finally:
            gc.unfreeze()

    def _run(self):
        with self.progress:
            self.setup()
            self._check_config()
            done = self.completed_tasks()
            self.progress.plan(len(self.units), len(done), task_stages(self.cfg, self.strategy))
            if done:
                self.restore(done[-1])
                print(f"resuming after task {len(done)}: {done[-1].name}")
            base = self._base_eval()
            for index, (name, records) in enumerate(self.units):
                if index < len(done):
                    continue
                self._train_task(index, name, records)
                if index < len(self.units) - 1:
                    self.write_results(base)
            return self.write_results(base, final_adapter_digests=self._gather_digests())

    def training_units(self):
        """What is trained in sequence: one unit per task, or, for a joint (multi-task) method, one
        unit holding every task's pairs, shuffled together by the trainer (same pairs seen)."""
        if getattr(self.strategy, "joint", False):
            return [("joint", [r for name in self.order for r in self.tasks[name].train])]
        return [(name, self.tasks[name].train) for name in self.order]

    def autocast(self):
        """The precision context of this run, for hooks that run forward passes of their own."""
        return autocast(self.precision, self.device)

    def reset_optimizers(self):
        """Forget the optimizer state (e.g. for a fresh model per task)."""
        self.optimizers.clear()

    def _check_config(self):
        path = self.out / "config.json"
        config = self.cfg.to_dict()
        if path.exists():
            old = read_json(path)
            keys = ("seed", "data", "model", "sft", "pref", "method")
            changed = [k for k in keys if old.get(k) != config.get(k)]
            if changed:
                raise ConfigError(f"{self.out} holds a run with a different config ({', '.join(changed)}); "
                                  "use another `out` or delete the folder")
        elif self.is_main:
            write_json(path, config)

    def task_dir(self, index, name):
        return self.out / "tasks" / f"{index + 1:02d}-{name}"

    def completed_tasks(self):
        """The folders of the finished tasks, in training order."""
        done = []
        for index, (name, _) in enumerate(self.units):
            path = self.task_dir(index, name)
            if not path.exists():
                break
            done.append(path)
        return done

    def _base_eval(self):
        path = self.out / "base_eval.json"
        if path.exists():
            return read_json(path)
        self.progress.stage("evaluation")
        t0 = time.perf_counter()
        evals, generations = self.evaluator.row(self.model, base=True)
        self.timings["base_eval_s"] = time.perf_counter() - t0
        self.timings["base_row_cache"] = self.evaluator.base_row_cache
        if self.is_main:
            if generations:
                write_json(self.out / "base_generations.json", generations)
            write_json(path, evals)
        return evals

    # ---------------------------------------------------------------- one task
    def _train_task(self, index, name, train_records):
        cfg = self.cfg
        self.task_index, self.task = index, name
        print(f"== task {index + 1}/{len(self.units)}: {name} ({self.strategy.name}, {len(train_records)} pairs)")
        self.progress.task(index, name)
        record = {"task": name, "stages": {}}
        self.strategy.dispatch("on_task_start", self, name)
        stages = STAGES if cfg.method.sft else ("pref",)
        for kind in stages:
            record["stages"][kind] = self._train_stage(index, kind, name, train_records)
        self.strategy.dispatch("on_task_end", self, name)

        t0 = time.perf_counter()
        self.progress.stage("evaluation")
        evals, generations = self.evaluator.row(self.model)
        record["eval_s"] = time.perf_counter() - t0
        record["eval_tokens"] = sum(pair_tokens(t.test) for t in self.tasks.values())
        record["state_bytes"] = self.strategy.state_nbytes()
        record["adapter_digest"] = adapter_digest(self.model)
        if self.is_main:
            self._save_task(index, name, evals, record, generations)
        self.progress.task_done()
        _barrier()

    def _train_stage(self, index, kind, name, train_records):
        cfg = self.cfg
        stage_cfg = getattr(cfg, kind)
        self.progress.stage(kind)
        records = self.strategy.training_records(self, kind, name, train_records)
        if kind == "pref":
            self.ref_cache.fill(self.model, records, self.pad_id, cfg.eval.batch_size, self.precision,
                                write=self.is_main)
        if kind == "sft":
            loss, collate = sft_loss, lambda ex: collate_sft(ex, self.pad_id)
        else:
            loss = self.preference_loss
            collate = lambda ex: collate_pairs(ex, self.pad_id, self.strategy.share_prompt)  # noqa: E731
        stage = Stage(kind, name, index, records, loss, collate)
        self.strategy.dispatch("on_stage_start", self, stage)
        self.model.train()
        seed = stage_seed(cfg.seed, index, kind)
        args = training_arguments(stage_cfg, self.out / "trainer", seed, self.precision,
                                  False, self.device)  # the stage's bar is self.progress's
        if kind == "pref" and cfg.engine == "trl":  # TRL's DPOTrainer as the preference stage
            trainer = trl_engine.preference_trainer(self, records, stage_cfg, seed)
        else:
            trainer = StageTrainer(
                model=self.model, args=args, train_dataset=ListDataset(records), data_collator=collate,
                optimizers=(self._optimizer(kind, stage_cfg), None), stage_loss=loss,
                extra_loss=lambda model, batch, outputs: self.strategy.extra_loss(self, stage, model, batch, outputs),
                before_optimizer_step=lambda: self.strategy.dispatch("before_optimizer_step", self, stage, self.model),
                lengths=example_lengths(records, kind) if cfg.group_by_length else None,
            )
        trainer.add_callback(self.progress.callback(lambda: getattr(trainer, "tokens_seen", 0) * self.world_size))
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        if after_stage_label(self.strategy):
            self.progress.stage(after_stage_label(self.strategy))
        t0 = time.perf_counter()
        reports = self.strategy.on_stage_end(self, stage)
        consolidate_s = time.perf_counter() - t0
        stats = trainer.stage_stats
        summary = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]} if stats else {}
        return {
            "examples": len(records), "steps": trainer.state.global_step, "train_s": train_s,
            "tokens": trainer.tokens_seen * self.world_size,
            "tokens_per_s": trainer.tokens_seen * self.world_size / max(train_s, 1e-9),
            "plugin_s": consolidate_s, "train_means": summary,
            "plugins": reports,
        }

    def _optimizer(self, kind, stage_cfg):
        """One optimizer per stage kind for the whole run: its state carries over between tasks; the
        LR schedule restarts with each trainer. AdamW at the stage's learning rate
        unless the strategy builds its own (`Strategy.make_optimizer`)."""
        params = list(trainable_parameters(self.model).values())
        opt = self.optimizers.get(kind)
        if opt is None or {id(p) for g in opt.param_groups for p in g["params"]} != {id(p) for p in params}:
            opt = (self.strategy.make_optimizer(self, kind, params, stage_cfg)
                   or torch.optim.AdamW(params, lr=stage_cfg.lr, weight_decay=0.0))
            self.optimizers[kind] = opt
        return opt

    # ---------------------------------------------------------------- save / restore
    def _save_task(self, index, name, evals, record, generations):
        final = self.task_dir(index, name)
        tmp = fresh_dir(final.parent / f".tmp-{final.name}")
        self.model.save_pretrained(tmp / "adapter")  # PEFT format, for users and `lifealign eval`
        # Every LoRA matrix by its exact name (all adapters, frozen ones too): what a restart loads.
        save_file({n: p.detach().cpu().contiguous() for n, p in lora_parameters(self.model).items()},
                  str(tmp / "lora.safetensors"))
        torch_save({
            "strategy": self.strategy.state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        }, tmp / "state.pt")
        write_json(tmp / "eval.json", evals)
        if generations:
            write_json(tmp / "generations.json", generations)
        write_json(tmp / "train.json", record)
        replace_dir(tmp, final)

    def restore(self, task_dir):
        """Load a finished task's adapter, strategy, optimizer and RNG state: the loop as it was then."""
        state = torch.load(task_dir / "state.pt", weights_only=False)
        # Strategy state first: a plugin may rebuild model structure (e.g. one adapter per task).
        self.strategy.load_state_dict(state["strategy"])
        self.strategy.dispatch("on_restore", self)
        weights = load_file(task_dir / "lora.safetensors")
        params = lora_parameters(self.model)
        if set(weights) != set(params):
            raise RuntimeError(f"{task_dir}/lora.safetensors does not match the model's LoRA matrices")
        copy_into(params, weights)
        for kind, opt_state in state["optimizers"].items():
            self._optimizer(kind, getattr(self.cfg, kind)).load_state_dict(opt_state)
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])

    # ---------------------------------------------------------------- results
    def write_results(self, base, **extra):
        rows = []
        for index, (name, _) in enumerate(self.units):
            path = self.task_dir(index, name)
            if not path.exists():
                break
            rows.append((read_json(path / "eval.json"), read_json(path / "train.json")))
        joint = len(self.units) == 1 and len(self.order) > 1  # one unit of every task: no sequence
        metrics = run_metrics([ev for ev, _ in rows], base, self.order, joint)
        results = {
            "name": self.cfg.name,
            "config": self.cfg.to_dict(),
            "method": self.strategy.describe(),
            "order": self.order,
            "dropped_tasks": self.dropped,
            "rows": [name for name, _ in self.units][: len(rows)],
            "complete": len(rows) == len(self.units),
            "tasks_done": len(rows),
            "data": {name: t.report for name, t in self.tasks.items()},
            "model": {"name": self.cfg.model.name, "fingerprint": self.fingerprint, "precision": self.precision,
                      "device": self.device},
            "metrics": metrics,
            "decoding": self.evaluator.decoding() if self.cfg.eval.generation else None,
            "training": [tr for _, tr in rows],
            "timings": self.timings,
            "versions": versions(),
            "run_code_version": RUN_CODE_VERSION,
            "machine": machine_description(self.device),
            "world_size": self.world_size,
            **extra,
        }
        if self.is_main:
            write_json(self.out / "results.json", results)
        return results

    def _gather_digests(self):
        """The final adapter's digest on every rank: replicas must agree."""
        digest = adapter_digest(self.model)
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return [digest]
        digests = [None] * self.world_size
        torch.distributed.all_gather_object(digests, digest)
        return digests


def run(cfg, console=None):
    return ContinualLoop(cfg).run(console)


def reevaluate(run_dir, overrides=()):
    """(Re)evaluate the saved adapters of a run without retraining, e.g. to add generation metrics
    or the judge later. Only `eval.*` (and `progress`) may be overridden; saved generations with
    the same decoding settings are reused, and the judge's cache makes a rerun free."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise ConfigError(f"{run_dir} is not a run folder (no config.json)")
    values = read_json(run_dir / "config.json")
    values["out"] = str(run_dir)
    for item in overrides:
        key, value = parse_override(item)
        if not (key.startswith("eval.") or key in ("progress", "cache_dir")):
            raise ConfigError(f"lifealign eval may only change eval.*, progress and cache_dir, not {key}")
        set_path(values, key, value)
    cfg = config_from_dict(values)
    loop = ContinualLoop(cfg)
    loop.setup()
    base_generations = _read_optional(run_dir / "base_generations.json")
    base, base_generations = loop.evaluator.row(loop.model, base=True, generations=base_generations)
    if loop.is_main:
        write_json(run_dir / "base_eval.json", base)
        if base_generations:
            write_json(run_dir / "base_generations.json", base_generations)
    for task_dir in loop.completed_tasks():
        loop.restore(task_dir)
        evals, generations = loop.evaluator.row(loop.model, generations=_read_optional(task_dir / "generations.json"))
        if loop.is_main:
            write_json(task_dir / "eval.json", evals)
            if generations:
                write_json(task_dir / "generations.json", generations)
        print(f"evaluated {task_dir.name}")
    return loop.write_results(base)


def _read_optional(path):
    return read_json(path) if Path(path).exists() else None
