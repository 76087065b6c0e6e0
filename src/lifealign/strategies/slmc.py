"""SLMC as a plugin: snapshot the LoRA matrices when a stage starts, consolidate when it ends."""
from ..consolidation import SLMC, summarize_report
from .base import Plugin


class SLMCPlugin(Plugin):
    name = "slmc"

    def __init__(self, threshold=0.9, lam=0.5, stages=("sft", "pref")):
        self.slmc = SLMC(threshold, lam)
        self.stages = tuple(stages)

    def on_stage_start(self, loop, stage):
        if stage in self.stages:
            self.slmc.begin_stage(loop.model)

    def on_stage_end(self, loop, stage):
        if stage not in self.stages:
            return None
        per_matrix = self.slmc.end_stage(loop.model)
        return {**summarize_report(per_matrix), "per_matrix": per_matrix}

    def state_dict(self):
        return self.slmc.state_dict()

    def load_state_dict(self, state):
        if state:
            self.slmc.load_state_dict(state)

    def state_nbytes(self):
        return self.slmc.nbytes()
