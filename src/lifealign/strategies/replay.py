"""Experience replay: the ER baseline, and part of LifeAlign.

Separate buffers for the SFT and the preference stage. When task t's training set has been built,
the FIRST `fraction` of D_t's rows in file order join the buffer; the buffer keeps its oldest rows
when over the cap. The whole buffer is replayed with every later task (the trainer shuffles).
"""
from pydantic import Field

from ..options import Float, Options
from .base import Plugin, records_nbytes


def rows_joining(n_rows, fraction, cap, buffered):
    """How many of a task's `n_rows` (the first ones, in file order) join a buffer that holds
    `buffered` rows: `fraction` of them, as far as the cap leaves room."""
    return min(int(n_rows * fraction), max(cap - buffered, 0))


class ReplayOptions(Options):
    replay_fraction: Float = Field(0.2, ge=0, le=1)  # the share of each task's rows that joins the buffer
    replay_cap: int = Field(3000, ge=0)              # rows per buffer


DEFAULTS = ReplayOptions()


class Replay(Plugin):
    name = "replay"
    options = ReplayOptions
    state_keys = ("buffers",)

    def __init__(self, fraction=DEFAULTS.replay_fraction, cap=DEFAULTS.replay_cap):
        self.fraction = fraction
        self.cap = cap
        self.buffers = {"sft": [], "pref": []}

    def training_records(self, loop, kind, task, records):
        buffer = self.buffers.setdefault(kind, [])
        training_set = list(records) + list(buffer)
        buffer.extend(records[: rows_joining(len(records), self.fraction, self.cap, len(buffer))])
        return training_set

    def state_nbytes(self):
        return sum(records_nbytes(buffer) for buffer in self.buffers.values())
