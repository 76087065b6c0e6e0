"""Judge-free preference scores of a policy on held-out pairs, all 0-100 or raw.

- reward_accuracy: share of pairs with implicit-reward margin r > 0 (base model as reference), a
  tie counting 1/2, so the base model scores 50 by construction;
- margin: mean r; length_normalised_margin: the same with per-token log-ratios;
- loglik_accuracy: share of pairs where the policy's own length-normalised log-probability of the
  chosen response exceeds the rejected one's (ties 1/2); needs no reference.

`RowEvaluator.row` evaluates one row of a run's matrices: these scores on every task, and with
generation on, BLEU-4 / ROUGE-L of greedy responses and the LLM judge.
"""
import contextlib
import hashlib
import itertools
import json
from pathlib import Path

import torch

from .config import ConfigError
from .generation import decoding_description, generate_responses, generation_scores
from .io import read_json, write_json
from .judge import Judge, JudgeConfig
from .losses import dpo_margin
from .machine import cache_root
from .reference import pair_key, score_pairs
from .training import clean_response

METRICS = ("reward_accuracy", "margin", "length_normalised_margin", "loglik_accuracy")


def _accuracy(diff):
    return float(100 * ((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def preference_scores(policy, reference, beta=0.1):
    """policy: (n, 4) [chosen, rejected, chosen_len, rejected_len]; reference: (n, 2)."""
    pc, pr, nc, nr = policy.double().unbind(1)
    rc, rr = reference.double().unbind(1)
    nc, nr = nc.clamp(min=1), nr.clamp(min=1)
    margin = dpo_margin(pc, pr, rc, rr, beta)
    return {"reward_accuracy": _accuracy(margin), "margin": float(margin.mean()),
            "length_normalised_margin": float((beta * ((pc - rc) / nc - (pr - rr) / nr)).mean()),
            "loglik_accuracy": _accuracy(pc / nc - pr / nr), "pairs": int(policy.shape[0])}


def reference_tensor(records):
    return torch.tensor([r["ref"] for r in records], dtype=torch.float64)


def evaluate_base(records, beta=0.1):
    """The untrained base model is the reference itself: margins are exactly 0."""
    ref = reference_tensor(records)
    lengths = torch.tensor([[len(r["ids"]["chosen"]), len(r["ids"]["rejected"])] for r in records],
                           dtype=torch.float64)
    return preference_scores(torch.cat([ref, lengths], dim=1), ref, beta)


def evaluate_policy(model, records, pad_id, beta=0.1, batch_size=16, precision="fp32", progress=False, desc=None,
                    share_prompt=True):
    policy = score_pairs(model, records, pad_id, batch_size, precision, use_adapter=True, desc=desc,
                         progress=progress, share_prompt=share_prompt)
    return preference_scores(policy, reference_tensor(records), beta)


class RowEvaluator:
    """One evaluation row of a run: every task's test pairs scored by the policy (or the untrained base
    model), and, when enabled, BLEU-4 / ROUGE-L of generated responses and the LLM judge.

    `row(model, base, generations)` is the one call. Saved generations with the same decoding are
    reused instead of generating again. The base model's row (scores and generations, without the
    judge) is the same for every run of a profile: it is cached on disk at `base_row_path()`, keyed by
    the model fingerprint, precision, test pairs, tokenisation and decoding.
    """

    def __init__(self, cfg, tasks, tokenizer, precision, fingerprint, share_prompt=True, is_main=True,
                 stage=lambda name: None):
        self.cfg, self.tasks, self.tokenizer = cfg, tasks, tokenizer
        self.precision, self.fingerprint, self.share_prompt = precision, fingerprint, share_prompt
        self.is_main, self.stage = is_main, stage
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else cache_root()
        self.base_row_cache = None  # "hit" or "miss" once the base row was asked for
        self._judge = None

    def decoding(self):
        ev = self.cfg.eval
        return decoding_description(ev.sampling, ev.temperature, ev.top_p, ev.max_new_tokens)

    def generation_records(self):
        """The test records whose prompts are generated from: the first `eval.gen_prompts` of each task."""
        n = self.cfg.eval.gen_prompts
        return {name: task.test[:n] if n else task.test for name, task in self.tasks.items()}

    def base_row_path(self):
        cfg, ev = self.cfg, self.cfg.eval
        key = {"fingerprint": self.fingerprint, "precision": self.precision, "beta": cfg.method.beta,
               "max_length": cfg.model.max_length, "max_prompt_length": cfg.model.max_prompt_length,
               "pairs": {name: [pair_key(r) for r in task.test] for name, task in self.tasks.items()}}
        if ev.generation:
            key["generation"] = {"decoding": self.decoding(), "batch_size": ev.gen_batch_size,
                                 "seed": cfg.seed if ev.sampling else None,
                                 "prompts": {name: [r["ids"]["prompt"] for r in records]
                                             for name, records in self.generation_records().items()}}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / "base-eval" / f"{self.fingerprint}-{self.precision}-{digest}.json"

    def row(self, model, base=False, generations=None):
        """(evals, generations): per task, the scores of `model` (or the base model) and its responses."""
        cached = self.base_row_path() if base and not generations else None
        if cached is not None and cached.exists():
            row = read_json(cached)
            evals, generations = row["evals"], row["generations"]
            self.base_row_cache = "hit"
        else:
            evals, generations = self._scores(model, base, generations)
            if cached is not None:
                self.base_row_cache = "miss"
                if self.is_main:
                    write_json(cached, {"evals": evals, "generations": generations})
        if self.cfg.eval.generation and self.cfg.eval.judge:
            self._judge_row(evals, generations)
        return evals, generations

    def _scores(self, model, base, generations):
        cfg, ev = self.cfg, self.cfg.eval
        progress = cfg.progress and self.is_main
        if ev.generation and ev.judge:
            self.judge()  # a wrong key or an absent server stops before generating
        evals = {}
        for name, task in self.tasks.items():
            evals[name] = evaluate_base(task.test, cfg.method.beta) if base else evaluate_policy(
                model, task.test, self.tokenizer.pad_token_id, cfg.method.beta, ev.batch_size, self.precision,
                progress=progress, desc=f"eval {name}", share_prompt=self.share_prompt)
        generations = dict(generations or {})
        if ev.generation:
            self.stage("generation")
            records = self.generation_records()
            self._generate(model, base, records, generations)
            for name, task_records in records.items():
                references = [clean_response(r["chosen"]) for r in task_records]
                evals[name].update(generation_scores(generations[name]["responses"], references))
        return evals, generations

    def _generate(self, model, base, records, generations):
        """Fill `generations` for every task without responses of the current decoding: one call for
        every such task's prompts, so batches hold prompts of similar length across tasks."""
        cfg, ev, decoding = self.cfg, self.cfg.eval, self.decoding()
        todo = [name for name in records
                if generations.get(name) is None or generations[name].get("decoding") != decoding]
        if not todo:
            return
        prompts = [r["prompt"] for name in todo for r in records[name]]
        with model.disable_adapter() if base else contextlib.nullcontext():
            responses = generate_responses(model, self.tokenizer, prompts, ev.max_new_tokens, ev.gen_batch_size,
                                           ev.sampling, ev.temperature, ev.top_p, cfg.seed,
                                           cfg.model.max_prompt_length, self.precision,
                                           progress=cfg.progress and self.is_main)
        rest = iter(responses)
        for name in todo:
            generations[name] = {"decoding": decoding, "responses": list(itertools.islice(rest, len(records[name])))}

    def judge(self):
        """The run's judge client, checked once against its server (`Judge.preflight`)."""
        if self._judge is None:
            ev = self.cfg.eval
            config = JudgeConfig.from_env(ev.judge_base_url, ev.judge_model, api_key_env=ev.judge_api_key_env)
            if config is None:
                raise ConfigError("eval.judge is on but no judge is configured: set eval.judge_base_url and "
                                  "eval.judge_model (or LIFEALIGN_JUDGE_BASE_URL / LIFEALIGN_JUDGE_MODEL)")
            judge = Judge(config, self.cache_dir / "judge.sqlite")
            judge.preflight()
            self._judge = judge
        return self._judge

    def _judge_row(self, evals, generations):
        judge = self.judge()
        for name, task in self.tasks.items():
            responses = generations[name]["responses"]
            items = [{"prompt": r["prompt"], "response": resp, "reference": clean_response(r["chosen"]),
                      **({"false_answers": r["rejected"]} if name == "TruthfulQA" else {})}
                     for r, resp in zip(task.test, responses)]
            scored = judge.score_many(name, items, progress=self.cfg.progress and self.is_main)
            evals[name].update(judge=scored["score"], judge_failures=scored["failures"],
                               judge_failure_reasons=scored["failure_reasons"])
