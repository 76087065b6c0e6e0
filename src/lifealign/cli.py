"""Command line: `lifealign run CONFIG.yaml [--set key=value ...]`."""
import argparse
import os
import sys

from .config import ConfigError, load_config
from .data import DataError
from .judge import JudgeError


def main(argv=None):
    parser = argparse.ArgumentParser(prog="lifealign", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train a method over a task order and evaluate after every task")
    p_run.add_argument("config", help="YAML run config (see configs/)")
    p_run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set pref.lr=1e-4 (repeatable)")
    p_eval = sub.add_parser("eval", help="(re)evaluate a run's saved adapters without retraining")
    p_eval.add_argument("run_dir", help="a run folder (the `out` of `lifealign run`)")
    p_eval.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override eval.* keys, e.g. --set eval.generation=true --set eval.judge=true")
    p_prep = sub.add_parser("prepare-model", help="dequantise and cache a model (smollm2-135m-instruct)")
    p_prep.add_argument("name", nargs="?", default="smollm2-135m-instruct")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare-model":
            from .models import load_model

            load_model(args.name)
            print(f"{args.name}: ready")
            return 0
        from .metrics import format_summary
        from .progress import console_for
        from .runner import reevaluate, run

        if args.command == "run":
            cfg = load_config(args.config, args.overrides)
            results = run(cfg, console=console_for(cfg.progress))
        else:
            results = reevaluate(args.run_dir, args.overrides)
        if int(os.environ.get("RANK", 0)) == 0:
            print(format_summary(results))
            if args.command == "run":
                print(f"\nresults: {cfg.out}/results.json")
    except (ConfigError, DataError, JudgeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
