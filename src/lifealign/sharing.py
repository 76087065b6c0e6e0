"""Trained adapters for a fresh clone: the run folders through a DVC remote.

The experiment stages' run folders (runs/<profile>/<group>/<run>/: adapters, optimizer and
strategy state) live in the DVC cache, not in git. `push` copies them to a DVC remote, `pull`
brings them into another clone, where `lifealign eval RUN_DIR` re-evaluates them.

    python -m lifealign.sharing push [TARGET ...] [--remote URL]    # make push-runs [RUNS_REMOTE=URL]
    python -m lifealign.sharing pull [TARGET ...] [--remote URL]    # make pull-runs [RUNS_REMOTE=URL]

TARGETs are DVC targets: by default the experiment stages of the active profile (as dvc.lock
records them), or .dvc files. `--remote` records the remote "runs" as the default in
.dvc/config.local (each clone has its own, never committed); without it the configured remote is
used. Any DVC URL works: a local directory, s3://, gs://, ssh:// (these need `pip install
"dvc[s3]"`, `dvc[gs]` or `dvc[ssh]`, and credentials as DVC reads them). A remote made here verifies
every object it downloads, so a corrupt file fails the pull instead of landing in runs/. Errors
are one line naming what to fix; DVC does not overwrite files that differ from what it would
check out, so nothing already in runs/ is lost.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from safetensors import safe_open

REMOTE = "runs"
DEFAULT_TARGETS = ("matrix", "ablation", "orders", "sensitivity")


class SharingError(RuntimeError):
    pass


def _dvc(root, *args, check=True):
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if "No module named dvc" in done.stderr:
        raise SharingError("DVC is not installed: `make install` (or pip install -e \".[pipeline]\")")
    if check and done.returncode != 0:
        raise SharingError(_last_error(done.stdout + done.stderr) or f"dvc {' '.join(args)} failed")
    return done


def _last_error(text):
    errors = [line.strip() for line in text.splitlines() if line.strip().startswith("ERROR")]
    return errors[-1].removeprefix("ERROR:").strip() if errors else ""


def _last_line(text):
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def _is_local(url):
    return urlsplit(url).scheme in ("", "file") or (len(url) > 1 and url[1] == ":")  # also C:\...


def configured_remote(root):
    """The URL of the default DVC remote of the clone at root, or None."""
    name = _dvc(root, "remote", "default", check=False).stdout.strip()
    if not name or "No default remote" in name:
        return None
    remotes = [line.split() for line in _dvc(root, "remote", "list").stdout.splitlines()]
    return next((parts[1] for parts in remotes if parts and parts[0] == name), None)


def set_remote(root, url):
    """Record url as the default remote "runs" in .dvc/config.local, verifying downloads."""
    if _is_local(url):
        url = str(Path(url).expanduser().resolve())
    _dvc(root, "remote", "add", "--local", "--force", "--default", REMOTE, url)
    _dvc(root, "remote", "modify", "--local", REMOTE, "verify", "true")
    return url


def _remote(root, url, creating):
    url = set_remote(root, url) if url else configured_remote(root)
    if url is None:
        raise SharingError("no DVC remote for the run folders: give one once with `make push-runs RUNS_REMOTE=DIR` "
                           "(or s3://..., gs://..., ssh://...); it is kept in .dvc/config.local")
    if _is_local(url):
        path = Path(url)
        if creating:
            path.mkdir(parents=True, exist_ok=True)
        elif not path.is_dir():
            raise SharingError(f"the DVC remote {path} does not exist: mount or copy it there, or name another "
                               "with RUNS_REMOTE=DIR")
    return url


def push(root=".", targets=DEFAULT_TARGETS, remote=None):
    url = _remote(root, remote, creating=True)
    return url, _last_line(_dvc(root, "push", *targets).stdout)


def pull(root=".", targets=DEFAULT_TARGETS, remote=None):
    url = _remote(root, remote, creating=False)
    done = _dvc(root, "pull", *targets, check=False)
    if done.returncode != 0:
        text = done.stdout + done.stderr
        if "without confirmation" in text:
            hint = ("runs/ holds files that differ from the pushed ones (a re-evaluation, a run of your own), and DVC "
                    "keeps them: record them with `dvc commit`, or move them away, then pull again")
        elif "Checkout failed" in text or "missing" in text.lower():
            hint = ("a file in the remote does not match its hash (corrupt or incomplete): push it again from the "
                    "clone that trained it")
        else:
            hint = _last_error(text)
        raise SharingError(f"pulling {' '.join(targets)} from {url} failed: {hint}")
    check_run_files(Path(root) / "runs")
    return url, _last_line(done.stdout)


def check_run_files(folder):
    """Every saved LoRA file under folder opens; SharingError naming the first that does not."""
    for path in sorted(Path(folder).rglob("lora.safetensors")):
        try:
            with safe_open(str(path), "pt") as f:
                f.keys()
        except Exception as err:  # safetensors raises several types for a damaged file
            raise SharingError(f"{path} is damaged ({type(err).__name__}: {str(err)[:80]}); delete it and run "
                               "`make pull-runs` again") from None


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lifealign.sharing", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["push", "pull"])
    p.add_argument("targets", nargs="*", help=f"DVC targets (default: {' '.join(DEFAULT_TARGETS)})")
    p.add_argument("--remote", default=os.environ.get("RUNS_REMOTE") or None,
                   help="the remote's URL, recorded in .dvc/config.local (default: the one configured)")
    p.add_argument("--root", default=".", help="the clone (default: the current directory)")
    args = p.parse_args(argv)
    try:
        url, summary = (push if args.command == "push" else pull)(args.root, args.targets or DEFAULT_TARGETS,
                                                                  args.remote)
    except SharingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.command}: {summary or 'done'} ({url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
