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
import contextlib
import hashlib
import json
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
from .evaluation import METRICS, evaluate_base, evaluate_policy
from .generation import decoding_description, generate_responses, generation_scores
from .integrations import trl_engine
from .judge import Judge, JudgeConfig
from .io import fresh_dir, read_json, replace_dir, torch_save, write_json
from .lora import add_lora, copy_into, lora_parameters
from .losses import PREFERENCE_LOSSES
from .machine import cache_root, machine_description, pick_precision, versions
from .metrics import mean_of, summarize
from .models import freeze_base_in_bf16, load_model, model_fingerprint
from .progress import RunProgress, after_stage_label, task_stages
from .reference import ReferenceCache, autocast, pair_key
from .run_code import RUN_CODE_VERSION
from .strategies import build_strategy
from .training import (STAGES, ListDataset, StageTrainer, clean_response, collate_pairs, collate_sft, encode_records,
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
    """Holds what the strategy hooks may look at: cfg, model, tokenizer, the task and stage."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.rank, self.world_size = _rank()
        self.is_main = self.rank == 0
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.precision = pick_precision(self.device) if cfg.model.precision == "auto" else cfg.model.precision
        self.strategy = build_strategy(cfg)
        self.loss_fn = PREFERENCE_LOSSES[self.strategy.loss]
        if cfg.engine == "trl":
            trl_engine.check_strategy(self.strategy)
        self.task_index = None
        self.task = None
        self.stage = None
        self.optimizers = {}
        self.timings = {}
        self.progress = RunProgress(self.out, enabled=False)  # run() starts the real one

    # ---------------------------------------------------------------- set-up
    def setup(self):
        cfg = self.cfg
        data_dir = Path(cfg.data.dir) if cfg.data.dir else data_mod.default_data_dir()
        if data_dir is None:
            raise data_mod.DataError(
                "no data directory: set data.dir, or LIFEALIGN_DATA_DIR, to a folder in the release format "
                "(see README), or run `make data`")
        self.data_dir = data_dir
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

    # ---------------------------------------------------------------- run
    def run(self, console=None):
        """`console`: where progress goes besides <out>/run.log and progress.json (lifealign.progress)."""
        self.progress = RunProgress(self.out, self.cfg.name, console, enabled=self.is_main)
        with self.progress:
            self.setup()
            self._check_config()
            self.units = self.training_units()
            done = self._completed_tasks()
            self.progress.plan(len(self.units), len(done), task_stages(self.cfg, self.strategy))
            if done:
                self._restore(done[-1])
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

    def _completed_tasks(self):
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
        evals, generations = self.evaluate_row(base=True)
        self.timings["base_eval_s"] = time.perf_counter() - t0
        if self.is_main:
            if generations:
                write_json(self.out / "base_generations.json", generations)
            write_json(path, evals)
        return evals

    def base_row_path(self):
        """Where the base model's evaluation row (scores and generations, without the judge) is cached:
        the same for every run with the same model, precision, test pairs, tokenisation and decoding."""
        cfg, ev = self.cfg, self.cfg.eval
        key = {"fingerprint": self.fingerprint, "precision": self.precision, "beta": cfg.method.beta,
               "max_length": cfg.model.max_length, "max_prompt_length": cfg.model.max_prompt_length,
               "pairs": {name: [pair_key(r) for r in task.test] for name, task in self.tasks.items()}}
        if ev.generation:
            key["generation"] = {"decoding": self.decoding(), "batch_size": ev.gen_batch_size,
                                 "seed": cfg.seed if ev.sampling else None,
                                 "prompts": {name: [r["ids"]["prompt"] for r in records]
                                             for name, records in self._generation_records().items()}}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else cache_root()
        return cache_dir / "base-eval" / f"{self.fingerprint}-{self.precision}-{digest}.json"

    def _generation_records(self):
        n = self.cfg.eval.gen_prompts
        return {name: task.test[:n] if n else task.test for name, task in self.tasks.items()}

    # ---------------------------------------------------------------- evaluation
    def evaluate_row(self, base=False, generations=None):
        """Every task's test set scored by the current policy (or the untrained base model):
        judge-free preference scores, and when enabled BLEU-4 / ROUGE-L of generated responses and
        the LLM judge. Saved generations are reused instead of generating again; the base model's
        row comes from the disk cache (base_row_path) when an earlier run computed it."""
        cached = self.base_row_path() if base and not generations else None
        if cached is not None and cached.exists():
            row = read_json(cached)
            evals, generations = row["evals"], row["generations"]
            self.timings["base_row_cache"] = "hit"
        else:
            evals, generations = self._score_row(base, generations)
            if cached is not None:
                self.timings["base_row_cache"] = "miss"
                if self.is_main:
                    write_json(cached, {"evals": evals, "generations": generations})
        if self.cfg.eval.generation and self.cfg.eval.judge:
            self._judge(evals, generations)
        return evals, generations

    def _score_row(self, base, generations):
        cfg, ev = self.cfg, self.cfg.eval
        progress = cfg.progress and self.is_main
        evals, generations = {}, dict(generations or {})
        if ev.generation and ev.judge and not getattr(self, "judge_checked", False):
            self._judge_client().preflight()  # a wrong key or an absent server stops before generating
            self.judge_checked = True
        for name, task in self.tasks.items():
            if base:
                evals[name] = evaluate_base(task.test, cfg.method.beta)
            else:
                evals[name] = evaluate_policy(self.model, task.test, self.pad_id, cfg.method.beta, ev.batch_size,
                                              self.precision, progress=progress, desc=f"eval {name}",
                                              share_prompt=self.strategy.share_prompt)
        if ev.generation:
            self.progress.stage("generation")
            records = self._generation_records()
            todo = [name for name in records
                    if generations.get(name) is None or generations[name].get("decoding") != self.decoding()]
            if todo:
                # One call for every task's prompts: batches of prompts of similar length across tasks.
                prompts = [r["prompt"] for name in todo for r in records[name]]
                adapter_off = self.model.disable_adapter() if base else contextlib.nullcontext()
                with adapter_off:
                    responses = generate_responses(
                        self.model, self.tokenizer, prompts, ev.max_new_tokens, ev.gen_batch_size, ev.sampling,
                        ev.temperature, ev.top_p, cfg.seed, cfg.model.max_prompt_length, self.precision,
                        progress=progress)
                start = 0
                for name in todo:
                    end = start + len(records[name])
                    generations[name] = {"decoding": self.decoding(), "responses": responses[start:end]}
                    start = end
            for name, task_records in records.items():
                references = [clean_response(r["chosen"]) for r in task_records]
                evals[name].update(generation_scores(generations[name]["responses"], references))
        return evals, generations

    def decoding(self):
        ev = self.cfg.eval
        return decoding_description(ev.sampling, ev.temperature, ev.top_p, ev.max_new_tokens)

    def _judge_client(self):
        ev = self.cfg.eval
        config = JudgeConfig.from_env(ev.judge_base_url, ev.judge_model, api_key_env=ev.judge_api_key_env)
        if config is None:
            raise ConfigError("eval.judge is on but no judge is configured: set eval.judge_base_url and "
                              "eval.judge_model (or LIFEALIGN_JUDGE_BASE_URL / LIFEALIGN_JUDGE_MODEL)")
        cache_dir = Path(self.cfg.cache_dir) if self.cfg.cache_dir else cache_root()
        return Judge(config, cache_dir / "judge.sqlite")

    def _judge(self, evals, generations):
        judge = self._judge_client()
        for name, task in self.tasks.items():
            responses = generations[name]["responses"]
            items = [{"prompt": r["prompt"], "response": resp, "reference": clean_response(r["chosen"]),
                      **({"false_answers": r["rejected"]} if name == "TruthfulQA" else {})}
                     for r, resp in zip(task.test, responses)]
            scored = judge.score_many(name, items, progress=self.cfg.progress and self.is_main)
            evals[name]["judge"] = scored["score"]
            evals[name]["judge_failures"] = scored["failures"]
            evals[name]["judge_failure_reasons"] = scored["failure_reasons"]

    # ---------------------------------------------------------------- one task
    def _train_task(self, index, name, train_records):
        cfg = self.cfg
        self.task_index, self.task = index, name
        print(f"== task {index + 1}/{len(self.units)}: {name} ({self.strategy.name}, {len(train_records)} pairs)")
        self.progress.task(index, name)
        record = {"task": name, "stages": {}}
        self.strategy.on_task_start(self, name)
        stages = STAGES if cfg.method.sft else ("pref",)
        for stage in stages:
            record["stages"][stage] = self._train_stage(index, stage, name, train_records)
        self.strategy.on_task_end(self, name)

        t0 = time.perf_counter()
        self.progress.stage("evaluation")
        evals, generations = self.evaluate_row()
        record["eval_s"] = time.perf_counter() - t0
        record["eval_tokens"] = sum(pair_tokens(t.test) for t in self.tasks.values())
        record["state_bytes"] = self.strategy.state_nbytes()
        record["adapter_digest"] = adapter_digest(self.model)
        if self.is_main:
            self._save_task(index, name, evals, record, generations)
        self.progress.task_done()
        _barrier()

    def _train_stage(self, index, stage, name, train_records):
        cfg = self.cfg
        stage_cfg = getattr(cfg, stage)
        self.stage = stage
        self.progress.stage(stage)
        records = self.strategy.training_records(self, stage, name, train_records)
        if stage == "pref":
            self.ref_cache.fill(self.model, records, self.pad_id, cfg.eval.batch_size, self.precision,
                                write=self.is_main)
        self.strategy.on_stage_start(self, stage)
        self.model.train()
        seed = stage_seed(cfg.seed, index, stage)
        args = training_arguments(stage_cfg, self.out / "trainer", seed, self.precision,
                                  False, self.device)  # the stage's bar is self.progress's
        if stage == "sft":
            stage_loss = sft_loss
            collate = lambda ex: collate_sft(ex, self.pad_id)  # noqa: E731
        else:
            stage_loss = make_preference_loss(self.loss_fn, cfg.method.beta,
                                              **({"gamma": cfg.method.gamma} if self.strategy.loss == "fpo" else {}))
            collate = lambda ex: collate_pairs(ex, self.pad_id, self.strategy.share_prompt)  # noqa: E731
        self.stage_records, self.stage_loss, self.collate = records, stage_loss, collate
        if stage == "pref" and cfg.engine == "trl":  # TRL's DPOTrainer as the preference stage
            trainer = trl_engine.preference_trainer(self, records, stage_cfg, seed)
        else:
            trainer = StageTrainer(
                model=self.model, args=args, train_dataset=ListDataset(records), data_collator=collate,
                optimizers=(self._optimizer(stage, stage_cfg), None), stage_loss=stage_loss,
                hooks=_StageHooks(self, stage), lengths=example_lengths(records, stage) if cfg.group_by_length else None,
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

    def _optimizer(self, stage, stage_cfg):
        """One optimizer per stage kind for the whole run: its state carries over between tasks (spec
        section 2); the LR schedule restarts with each trainer. AdamW at the stage's learning rate
        unless the strategy builds its own (`Strategy.make_optimizer`)."""
        params = list(trainable_parameters(self.model).values())
        opt = self.optimizers.get(stage)
        if opt is None or {id(p) for g in opt.param_groups for p in g["params"]} != {id(p) for p in params}:
            opt = (self.strategy.make_optimizer(self, stage, params, stage_cfg)
                   or torch.optim.AdamW(params, lr=stage_cfg.lr, weight_decay=0.0))
            self.optimizers[stage] = opt
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

    def _restore(self, task_dir):
        state = torch.load(task_dir / "state.pt", weights_only=False)
        # Strategy state first: a plugin may rebuild model structure (e.g. one adapter per task).
        self.strategy.load_state_dict(state["strategy"])
        self.strategy.on_restore(self)
        weights = load_file(task_dir / "lora.safetensors")
        params = lora_parameters(self.model)
        if set(weights) != set(params):
            raise RuntimeError(f"{task_dir}/lora.safetensors does not match the model's LoRA matrices")
        copy_into(params, weights)
        for stage, opt_state in state["optimizers"].items():
            self._optimizer(stage, getattr(self.cfg, stage)).load_state_dict(opt_state)
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
        metrics = {}
        present = [m for m in ALL_METRICS if rows and all(m in rows[0][0][t] for t in self.order)]
        for metric in present:
            matrix = [[ev[t][metric] for t in self.order] for ev, _ in rows]
            base_row = [base[t].get(metric) for t in self.order]
            k = len(matrix)
            if len(self.units) == 1 and len(self.order) > 1:  # joint training: one row, no sequence
                summary = {"last": mean_of(matrix[0])} if matrix else {}
            else:
                summary = summarize([r[:k] for r in matrix], base_row[:k]) if k else {}
            metrics[metric] = {"base": base_row, "matrix": matrix, "summary": summary}
            if metric == "judge":
                # failures are counted per cell, never averaged away in silence
                metrics[metric]["failures"] = [[ev[t].get("judge_failures", 0) for t in self.order] for ev, _ in rows]
                metrics[metric]["base_failures"] = [base[t].get("judge_failures", 0) for t in self.order]
        if all(m in metrics for m in ("bleu4", "rougel", "judge")):
            # The paper's AVG: the mean of BLEU-4, ROUGE-L and the judge, per summary statistic.
            parts = [metrics[m]["summary"] for m in ("bleu4", "rougel", "judge")]
            metrics["avg"] = {"summary": {k: mean_of([p.get(k) for p in parts]) for k in parts[0]}}
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
            "decoding": self.decoding() if self.cfg.eval.generation else None,
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


ALL_METRICS = METRICS + ("bleu4", "rougel", "judge")


class _StageHooks:
    """Binds the strategy's per-step hooks to the loop and stage for the trainer."""

    def __init__(self, loop, stage):
        self.loop, self.stage = loop, stage

    def extra_loss(self, model, batch, outputs):
        return self.loop.strategy.extra_loss(self.loop, self.stage, model, batch, outputs)

    def before_optimizer_step(self):
        self.loop.strategy.before_optimizer_step(self.loop, self.stage, self.loop.model)


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
    loop.units = loop.training_units()
    done = loop._completed_tasks()
    base_generations = _read_optional(run_dir / "base_generations.json")
    base, base_generations = loop.evaluate_row(base=True, generations=base_generations)
    if loop.is_main:
        write_json(run_dir / "base_eval.json", base)
        if base_generations:
            write_json(run_dir / "base_generations.json", base_generations)
    for task_dir in done:
        loop._restore(task_dir)
        evals, generations = loop.evaluate_row(generations=_read_optional(task_dir / "generations.json"))
        if loop.is_main:
            write_json(task_dir / "eval.json", evals)
            if generations:
                write_json(task_dir / "generations.json", generations)
        print(f"evaluated {task_dir.name}")
    return loop.write_results(base)


def _read_optional(path):
    return read_json(path) if Path(path).exists() else None


def format_summary(results, timings=True):
    """The run's matrices and summaries as text; `timings=False` leaves out the (machine-dependent)
    time and throughput lines, e.g. for notebooks that must rerun to identical outputs."""
    lines = [f"run {results['name']}: method {results['method']['name']} "
             f"({results['method']['loss']}, plugins: {', '.join(results['method']['plugins']) or 'none'}), "
             f"model {results['model']['name']} [{results['model']['precision']}]",
             f"order: {' -> '.join(results['order'])}"]
    for d in results["dropped_tasks"]:
        lines.append(f"dropped: {d['task']} ({d['reason']})")
    short = {name: data_mod.TASKS[name].short for name in results["order"]}
    fmt = lambda v: f"{v:11.2f}" if v is not None else f"{'-':>11}"  # noqa: E731
    shown = [m for m in ("reward_accuracy", "loglik_accuracy", "margin", "bleu4", "rougel", "judge")
             if m in results["metrics"]]
    for metric in shown:
        m = results["metrics"][metric]
        lines.append(f"\n{metric} (row = after task, column = evaluated task)")
        lines.append(f"{'':>12}" + "".join(f"{short[t]:>11}" for t in results["order"]))
        lines.append(f"{'base':>12}" + "".join(fmt(v) for v in m["base"]))
        for name, row in zip(results["rows"], m["matrix"]):
            lines.append(f"{short.get(name, name):>12}" + "".join(fmt(v) for v in row))
        if "failures" in m and (any(any(r) for r in m["failures"]) or any(m["base_failures"])):
            lines.append(f"  judge failures per cell: base {m['base_failures']}, rows {m['failures']}")
        s = m["summary"]
        lines.append("  " + "  ".join(f"{k} {v:.2f}" for k, v in s.items() if v is not None))
    if "avg" in results["metrics"]:
        s = results["metrics"]["avg"]["summary"]
        lines.append("\nAVG (mean of BLEU-4, ROUGE-L, judge): "
                     + "  ".join(f"{k} {v:.2f}" for k, v in s.items() if v is not None))
    if results.get("decoding"):
        lines.append(f"decoding: {results['decoding']}")
    for tr in results["training"] if timings else []:
        if not tr["stages"]:
            continue
        parts = [f"{st} {v['train_s']:.0f}s {v['tokens_per_s']:.0f} tok/s" for st, v in tr["stages"].items()]
        lines.append(f"{tr['task']}: " + ", ".join(parts) + f", eval {tr['eval_s']:.0f}s")
    return "\n".join(lines)
