"""Live progress of a run: where it is (task k/T, stage, steps), how fast and how long it has left.

`RunProgress` is what the continual loop calls at stage boundaries and, through `callback()`, after
every training step. It writes `<out>/run.log` (timestamped lines, flushed one by one: `tail -f`
follows a run) and `<out>/progress.json` (the same state, replaced atomically, which `python -m
lifealign.pipeline status` and the pipeline's group line read from another process), and, if asked,
to the console: "bar" (a terminal: the log's boundary lines and a tqdm bar per training stage),
"lines" (the log's lines on stderr) or "notebook" (one bar for the whole run). The pipeline's
executed notebooks get none: their outputs hold no timings.

Estimated time left: a run's work is its tasks. The current task's share done is its finished stages
plus the current stage's share of steps, each stage weighted by how long the same stage took in
the previous task (in the first task, by FIRST_TASK_WEIGHTS). The rate is this process's time per
unit of work, so a resumed run is not credited with the tasks it found finished.
"""
import importlib.util
import json
import os
import socket
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from .io import write_text

LOG_EVERY_S = 10.0    # at most one step line per this many seconds in run.log
STATE_EVERY_S = 1.0   # at most one progress.json write per this many seconds between boundaries
# Relative durations assumed for the stages of the first task, before any task has been timed.
FIRST_TASK_WEIGHTS = {"SFT": 2.0, "preference": 2.0}  # every other stage: 1
STAGE_LABELS = {"sft": "SFT", "pref": "preference"}


def duration(seconds):
    """1h02m, 4m05s, 12s; '?' when unknown."""
    if seconds is None:
        return "?"
    minutes, seconds = divmod(int(round(seconds)), 60)
    if minutes >= 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def where(state):
    """Where a run is, from its progress.json state: task k/T name: stage s/S steps, tok/s."""
    if state.get("task"):
        task = f"task {state['task']}/{state['tasks']} {state.get('task_name') or ''}".rstrip()
    else:  # before the first task: loading and reference log-probs, then the base model's row
        task = "base model" if state.get("tasks") else "setup"
    stage = state.get("stage") or ""
    if state.get("steps"):
        stage += f" {state.get('step', 0)}/{state['steps']} steps"
    if state.get("tokens_per_s"):
        stage += f", {state['tokens_per_s']:.0f} tok/s"
    return ": ".join(p for p in (task, stage) if p)


def describe(state):
    """One line from a progress.json state: where the run is, elapsed and (running) ETA."""
    eta = state.get("eta_s") if state.get("state") == "running" else None
    text = f"{where(state)} | elapsed {duration(state.get('elapsed_s'))}"
    return text + (f", ETA {duration(eta)}" if eta is not None else "")


class RunProgress:
    """Progress of one run. `out`: the run folder; `console`: None, "lines", "bar" (tqdm on stderr)
    or "notebook" (a bar in the notebook's output); `enabled=False` (non-main ranks) does nothing."""

    def __init__(self, out, name="", console=None, enabled=True):
        self.enabled, self.out = enabled, Path(out)
        self.console = console if enabled else None
        self.state = {"run": name, "state": "running", "pid": os.getpid(), "host": socket.gethostname(),
                      "started": _now(), "task": None, "tasks": None, "task_name": None, "stage": None,
                      "step": 0, "steps": None, "tokens_per_s": None, "elapsed_s": 0.0, "eta_s": None}
        self.t0 = time.time()
        self.tasks_done = 0           # tasks finished, including those found finished on a resume
        self.work_start = None        # (time, tasks_done) when this process began its first task
        self.stage_t0 = None
        self.task_stages = []         # seconds of each finished stage of the current task, in order
        self.stage_weights = []       # the same for the previous task
        self.planned = []             # assumed weights of a task's stages, until one has been timed
        self.last_log = self.last_state = 0.0
        self.bar = None               # the terminal's bar of the current training stage
        self.run_bar = None           # the notebook's bar of the whole run
        self.log_file = None
        if enabled:
            self.out.mkdir(parents=True, exist_ok=True)
            self.log_file = open(self.out / "run.log", "a", buffering=1)
            self._line(f"run {name} started (pid {os.getpid()} on {self.state['host']})")
            self._save()

    def plan(self, tasks, done=0, stages=()):
        """The run trains `tasks` tasks, each through `stages` (task_stages()); `done` of them are
        already finished (a resumed run)."""
        self.state["tasks"], self.tasks_done = tasks, done
        self.planned = [FIRST_TASK_WEIGHTS.get(STAGE_LABELS.get(s, s), 1.0) for s in stages]
        if done:
            self._line(f"resuming: {done}/{tasks} tasks finished")
        if self.console == "notebook" and self.run_bar is None:
            self.run_bar = _notebook_bar()
        self._save()

    def task(self, index, name):
        """Task `index` (0-based) begins."""
        self._end_stage()
        if self.work_start is None:
            self.work_start = (time.time(), self.tasks_done)
        self.state.update(task=index + 1, task_name=name)
        self.task_stages = []

    def stage(self, stage, steps=None):
        """A stage begins: model, reference, SFT, preference, a plugin's (slmc...), evaluation, generation."""
        self._end_stage()
        self.state.update(stage=STAGE_LABELS.get(stage, stage), step=0, steps=steps, tokens_per_s=None)
        self.stage_t0 = self.last_log = time.time()
        self._update_eta()
        self._line(describe(self.state))
        self._save()

    def steps(self, done, total, tokens=None):
        """After a training step: `done` of `total` steps, `tokens` seen in this stage so far."""
        now = time.time()
        self.state.update(step=done, steps=total)
        if tokens is not None and now > self.stage_t0:
            self.state["tokens_per_s"] = tokens / (now - self.stage_t0)
        self._update_eta()
        if self.console == "bar":
            if self.bar is None:
                title = where(dict(self.state, steps=None, tokens_per_s=None))
                self.bar = tqdm(total=total, desc=title, unit="step", leave=False, dynamic_ncols=True,
                                file=sys.stderr)
            self.bar.total = total
            self.bar.set_postfix_str(self._bar_postfix(), refresh=False)
            self.bar.update(done - self.bar.n)
        if now - self.last_log >= LOG_EVERY_S or done == total:
            self._line(describe(self.state), console=self.bar is None)
            self.last_log = now
        if now - self.last_state >= STATE_EVERY_S or done == total:
            self._save()

    def task_done(self):
        self._end_stage()
        self.stage_weights = list(self.task_stages)
        self.tasks_done += 1
        self.state.update(stage="task finished", step=0, steps=None, tokens_per_s=None)
        self._update_eta()
        self._line(f"task {self.state['task']}/{self.state['tasks']} {self.state['task_name']}: finished "
                   f"in {duration(sum(self.task_stages))} | elapsed {duration(self.state['elapsed_s'])}, "
                   f"ETA {duration(self.state['eta_s'])}")
        self._save()

    def finish(self, error=None):
        """The run ended: finished, or failed with `error`."""
        if self.log_file is None:
            return
        self._end_stage()
        self.state.update(state="failed" if error else "finished", stage=None, step=0, steps=None, eta_s=0.0,
                          tokens_per_s=None, elapsed_s=time.time() - self.t0)
        if error:
            self.state["error"] = f"{type(error).__name__}: {error}"
        self._update_run_bar()
        if self.run_bar is not None:
            self.run_bar.close()
            self.run_bar = None
        self._line(f"run {self.state['state']}" + (f": {self.state['error']}" if error else "")
                   + f" after {duration(self.state['elapsed_s'])}")
        self._save()
        self.log_file.close()
        self.log_file = None

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        self.finish(error)
        return False

    def callback(self, tokens):
        """A TrainerCallback that reports the Trainer's steps; `tokens()` counts the stage's tokens."""
        from transformers import TrainerCallback

        progress = self

        class StepCallback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                progress.steps(state.global_step, state.max_steps, tokens())

        return StepCallback()

    def _end_stage(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.stage_t0 is not None and self.state["stage"]:
            self.task_stages.append(time.time() - self.stage_t0)
        self.stage_t0 = None

    def _update_eta(self):
        """Elapsed time and ETA in the state, and the notebook's bar to match."""
        now = time.time()
        self.state["elapsed_s"] = now - self.t0
        self.state["eta_s"] = None
        tasks = self.state["tasks"]
        if tasks and self.work_start is not None:
            started, done_before = self.work_start
            done = min(self.tasks_done + self._task_share(), tasks)
            if done - done_before > 0.01:
                self.state["eta_s"] = (now - started) / (done - done_before) * (tasks - done)
        self._update_run_bar()

    def _task_share(self):
        """The current task's share done: its finished stages plus the current stage's share of
        steps, each stage weighted by how long the same stage of the previous task took (in the
        first task, by the planned stages' FIRST_TASK_WEIGHTS)."""
        weights = self.stage_weights or self.planned
        if self.state["task"] is None or self.state["task"] <= self.tasks_done or not weights:
            return 0.0
        done = len(self.task_stages)
        frac = self.state["step"] / self.state["steps"] if self.state["steps"] else 0.0
        current = weights[done] if done < len(weights) else 0.0
        return min((sum(weights[:done]) + current * frac) / (sum(weights) or 1.0), 1.0)

    def _update_run_bar(self):
        if self.run_bar is None:
            return
        done = self.state["tasks"] if self.state["state"] == "finished" else self.tasks_done + self._task_share()
        self.run_bar.n = int(100 * done / self.state["tasks"])  # percent: widget bars take integers
        self.run_bar.set_description_str(where(self.state), refresh=False)
        self.run_bar.set_postfix_str(self._bar_postfix(speed=False), refresh=False)
        self.run_bar.refresh()

    def _bar_postfix(self, speed=True):
        s = self.state
        speed = f"{s['tokens_per_s']:.0f} tok/s, " if speed and s["tokens_per_s"] else ""
        return f"{speed}run {duration(s['elapsed_s'])}, ETA {duration(s['eta_s'])}"

    def _line(self, text, console=True):
        if self.log_file is None:
            return
        line = f"{datetime.now():%Y-%m-%d %H:%M:%S} {text}"
        self.log_file.write(line + "\n")
        if console and self.console in ("lines", "bar"):
            tqdm.write(line, file=sys.stderr)  # above the terminal's bar, if one is shown

    def _save(self):
        if self.enabled:
            self.state["updated"] = _now()
            write_text(self.out / "progress.json", json.dumps(self.state, indent=1) + "\n")
            self.last_state = time.time()


def _notebook_bar():
    """The run's bar (percent done) in a notebook's output: tqdm's widget, or without ipywidgets a
    text line updated in place."""
    if importlib.util.find_spec("ipywidgets") is None:
        return tqdm(total=100, file=_DisplayLine(), bar_format="{desc} {percentage:3.0f}% [{bar:20}]{postfix}",
                    ascii=".#")
    from tqdm.notebook import tqdm as widget_bar

    return widget_bar(total=100, disable=False, bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix}")


class _DisplayLine:
    """A file for a tqdm bar that shows the last line written as one line of a notebook's output,
    updated in place (IPython display)."""

    def __init__(self):
        from IPython.display import Pretty, display

        self.pretty = Pretty
        self.handle = display(Pretty(""), display_id=True)

    def write(self, text):
        if text.strip():
            self.handle.update(self.pretty(text.strip()))

    def flush(self):
        pass


def console_for(progress):
    """Where `lifealign run` shows progress: tqdm bars on a terminal when the config's `progress` is
    on, else plain lines on stderr."""
    return "bar" if progress and sys.stderr.isatty() else "lines"


def task_stages(cfg, strategy):
    """The stages of one task, in order: ["sft", "slmc", "pref", "slmc", "evaluation", "generation"]."""
    after = after_stage_label(strategy)
    training = ("sft", "pref") if cfg.method.sft else ("pref",)
    stages = [name for stage in training for name in (stage, after) if name]
    return stages + ["evaluation"] + (["generation"] if cfg.eval.generation else [])


def after_stage_label(strategy):
    """The stage after training that the strategy's plugins run (e.g. "slmc"), or None."""
    from .strategies.base import Plugin

    names = [p.name for p in strategy.plugins if type(p).on_stage_end is not Plugin.on_stage_end]
    return "+".join(names) or None


def read_state(run_dir):
    """A run folder's progress.json, or None."""
    try:
        return json.loads((Path(run_dir) / "progress.json").read_text())
    except (OSError, ValueError):
        return None


def is_live(state):
    """Whether a progress state belongs to a run that is still going: marked running and, on this
    machine, its process alive (a killed run leaves `running` behind)."""
    if not state or state.get("state") != "running":
        return False
    if state.get("host") == socket.gethostname():
        try:
            os.kill(int(state["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, TypeError, ValueError):
            pass  # another user's process, or no usable pid: taken as running
    return True


def _now():
    return datetime.now().astimezone().isoformat(timespec="seconds")


class GroupLine:
    """While a run's notebook executes (papermill streams none of its output), the run's progress
    from its progress.json with the group's place and ETA: one line updated in place on a
    terminal, else a line per stage (and at least one a minute) through `log`."""

    POLL_S = 1.0
    QUIET_S = 60.0

    def __init__(self, run_folder, label, later, durations, log):
        self.run_folder, self.label, self.later, self.durations, self.log = run_folder, label, later, durations, log
        self.started = time.time()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.bar = None

    def __enter__(self):
        # disable=None: a terminal gets the line, a log gets `log` lines
        self.bar = tqdm(bar_format="{desc}", file=sys.stderr, leave=False, dynamic_ncols=True, disable=None)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.bar.close()
        return False

    def elapsed(self):
        return time.time() - self.started

    def line(self, state):
        """"[matrix 2/3] er-order1-s0 | task 2/5 HC3: preference 12/32 steps, 812 tok/s | run 4m10s,
        ETA 3m02s | group ETA 12m40s"; the group's ETA adds, per run still to come, the mean time
        of the runs this call finished, else this run's elapsed time plus its ETA."""
        run_eta = state.get("eta_s")
        text = f"{self.label} | {where(state)} | run {duration(self.elapsed())}"
        if run_eta is None:
            return text
        per_run = sum(self.durations) / len(self.durations) if self.durations else self.elapsed() + run_eta
        return f"{text}, ETA {duration(run_eta)} | group ETA {duration(run_eta + self.later * per_run)}"

    def _watch(self):
        shown, last_log = None, 0.0
        while not self.stop.wait(self.POLL_S):
            state = read_state(self.run_folder)
            if not state or state.get("state") != "running":
                continue
            text, place = self.line(state), (state.get("task"), state.get("stage"))
            if not self.bar.disable:
                self.bar.set_description_str(text)
            elif place != shown or time.time() - last_log >= self.QUIET_S:
                self.log(text)
                shown, last_log = place, time.time()
