"""Golden numbers of the run code: deterministic tiny-model computations whose results are stored in
tests/goldens/*.json and checked by tests/test_goldens.py with tolerances (they pass through matmuls,
whose last bits differ between CPUs and thread counts).

What is held: a three-task run of every method (its metric matrices, the per-stage training means,
each strategy's extra loss among them, and a fingerprint of every LoRA matrix after every task), the
pair scorer with and without a shared prompt, and SLMC's consolidation of fixed matrices.

    python tests/goldens.py                 # recompute and compare (what the test does), print moves
    python tests/goldens.py --regenerate    # rewrite the goldens: only after bumping RUN_CODE_VERSION
    make goldens                            # the same as --regenerate

`--regenerate` refuses to rewrite a golden that moved while lifealign.run_code.RUN_CODE_VERSION is
still the one the golden was made with: a change of numbers must bump the version, which makes every
committed run stale (see lifealign.run_code).
"""
import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

GOLDEN_DIR = Path(__file__).with_name("goldens")
# Each method's three-task run; variants are (method, overrides) pairs beyond the methods' defaults.
VARIANTS = {"ewc-stage": ("ewc", {"method.ewc_scope": "stage"}), "gem-adamw": ("gem", {"method.projection_optimizer": "adamw"})}
CONFIG = {
    "model": {"name": "tiny-random-llama", "precision": "fp32", "max_length": 64, "max_prompt_length": 40},
    "data": {"order": ["hh-rlhf-harmless-base", "hh-rlhf-helpful-base", "safe-rlhf"], "n_train": 8, "n_test": 6},
    "sft": {"epochs": 1, "lr": 3e-3, "batch_size": 4},
    "pref": {"epochs": 1, "lr": 3e-3, "batch_size": 4},
    "progress": False,
}
METRICS = ("reward_accuracy", "margin", "length_normalised_margin", "loglik_accuracy")
RTOL, ATOL = 2e-3, 2e-4
# An accuracy is a share of 6 test pairs: a margin within rounding of zero may flip one pair.
ACCURACY_ATOL = 100 / 6 + 1e-9


def _release(root):
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_release

    return make_release(Path(root))


def _fingerprint(tensor):
    t = tensor.detach().double()
    return [float(t.sum()), float(t.norm()), float(t.abs().max())]


def run_golden(name, method, overrides, workdir):
    from lifealign.config import config_from_dict, set_path
    from safetensors.torch import load_file

    from lifealign.runner import run

    values = json.loads(json.dumps(CONFIG))
    values.update(name=f"golden-{name}", out=str(Path(workdir) / name), cache_dir=str(Path(workdir) / "cache"))
    values["data"]["dir"] = str(Path(workdir) / "release")
    values["method"] = {"name": method}
    for key, value in overrides.items():
        set_path(values, key, value)
    results = run(config_from_dict(values))
    adapters = {}
    for task_dir in sorted((Path(workdir) / name / "tasks").iterdir()):
        weights = load_file(task_dir / "lora.safetensors")
        adapters[task_dir.name] = {name: _fingerprint(w) for name, w in sorted(weights.items())}
    return {
        "metrics": {m: {"base": results["metrics"][m]["base"], "matrix": results["metrics"][m]["matrix"]}
                    for m in METRICS},
        "training": [{stage: dict(sorted(v["train_means"].items())) for stage, v in t["stages"].items()}
                     for t in results["training"]],
        "adapters": adapters,
    }


def scorer_golden(workdir):
    from lifealign import data as data_mod
    from lifealign.lora import add_lora
    from lifealign.models import load_model
    from lifealign.reference import score_pairs
    from lifealign.training import encode_records

    torch.manual_seed(0)
    model, tokenizer = load_model("tiny-random-llama")
    model = add_lora(model, 8, 16, 0.0, ["q_proj", "v_proj"])
    with torch.no_grad():  # a LoRA that is not a no-op, so the adapter path is scored too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    task = data_mod.load_task("safe-rlhf", Path(workdir) / "release", 8, 6, 0, "filter")
    encode_records(tokenizer, task.test, 64, 40)
    return {f"share_prompt={share}": score_pairs(model, task.test, tokenizer.pad_token_id, 4, "fp32",
                                                 share_prompt=share).tolist()
            for share in (True, False)}


def slmc_golden():
    from lifealign.consolidation import consolidate_with_stats

    g = torch.Generator().manual_seed(0)
    history = [torch.randn(16, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    update = torch.randn(16, 8, generator=g, dtype=torch.float64) + history[0]
    out = {}
    for threshold, lam in ((0.9, 0.5), (0.7, 0.0), (0.99, 1.0)):
        refined, stats = consolidate_with_stats(update, history, threshold, lam)
        out[f"theta={threshold},lambda={lam}"] = {"refined": _fingerprint(refined),
                                                  "stats": {k: float(v) for k, v in stats.items()}}
    return out


def compute_all(names=None):
    """{golden name: numbers} for every golden (or the names given)."""
    from lifealign.strategies import METHODS

    torch.use_deterministic_algorithms(True, warn_only=True)
    runs = {name: (name, {}) for name in sorted(METHODS)} | VARIANTS
    out = {}
    with tempfile.TemporaryDirectory() as workdir:
        _release(Path(workdir) / "release")
        for name, (method, overrides) in runs.items():
            if names is None or f"run-{name}" in names:
                out[f"run-{name}"] = run_golden(name, method, overrides, workdir)
        if names is None or "scorer" in names:
            out["scorer"] = scorer_golden(workdir)
    if names is None or "slmc" in names:
        out["slmc"] = slmc_golden()
    return out


def golden_names():
    from lifealign.strategies import METHODS

    return [f"run-{m}" for m in sorted(METHODS)] + [f"run-{v}" for v in VARIANTS] + ["scorer", "slmc"]


def differences(expected, actual, path=""):
    """Where two golden trees differ beyond the tolerances, as 'path: expected -> actual' lines."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        lines = [f"{path}/{k}: missing" for k in expected if k not in actual]
        lines += [f"{path}/{k}: new" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                lines += differences(expected[k], actual[k], f"{path}/{k}")
        return lines
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: length {len(expected)} -> {len(actual)}"]
        return [line for i, (e, a) in enumerate(zip(expected, actual)) for line in differences(e, a, f"{path}[{i}]")]
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        atol = ACCURACY_ATOL if "accuracy" in path and "/metrics/" in path else ATOL
        if math.isclose(expected, actual, rel_tol=RTOL, abs_tol=atol) or (expected != expected and actual != actual):
            return []
        return [f"{path}: {expected!r} -> {actual!r}"]
    return [] if expected == actual else [f"{path}: {expected!r} -> {actual!r}"]


def load(name):
    return json.loads((GOLDEN_DIR / f"{name}.json").read_text())


def write(name, numbers, version):
    GOLDEN_DIR.mkdir(exist_ok=True)
    text = json.dumps({"run_code_version": version, "numbers": numbers}, indent=1, sort_keys=True)
    (GOLDEN_DIR / f"{name}.json").write_text(text + "\n")


def main(argv=None):
    from lifealign.run_code import RUN_CODE_VERSION

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--regenerate", action="store_true", help="rewrite the goldens (after a version bump)")
    p.add_argument("names", nargs="*", help=f"only these goldens (default: all): {', '.join(golden_names())}")
    args = p.parse_args(argv)
    actual = compute_all(set(args.names) if args.names else None)
    refused = []
    for name, numbers in actual.items():
        path = GOLDEN_DIR / f"{name}.json"
        stored = load(name) if path.exists() else None
        moved = differences(stored["numbers"], numbers) if stored else ["new golden"]
        print(f"{name}: {'unchanged' if not moved else f'{len(moved)} moved'}")
        for line in moved[:10]:
            print(f"  {line}")
        if args.regenerate and moved:
            if stored and stored["run_code_version"] == RUN_CODE_VERSION:
                refused.append(name)
            else:
                write(name, numbers, RUN_CODE_VERSION)
        elif args.regenerate and stored and stored["run_code_version"] != RUN_CODE_VERSION:
            write(name, numbers, RUN_CODE_VERSION)  # unchanged numbers, re-stamped with the version
    if refused:
        sys.exit(f"refused to rewrite {', '.join(refused)}: their numbers moved but RUN_CODE_VERSION is still "
                 f"{RUN_CODE_VERSION}; bump it in src/lifealign/run_code.py (every committed run becomes stale)")


if __name__ == "__main__":
    main()
