"""SLMC as a plugin: snapshot the LoRA matrices when a stage starts, consolidate when it ends."""
from typing import Literal

from pydantic import Field

from ..consolidation import SLMC, summarize_report
from ..options import Float, Options
from .base import Plugin


class SLMCOptions(Options):
    slmc_threshold: Float = Field(0.9, ge=0, le=1)  # energy share kept by the denoising (theta)
    slmc_lambda: Float = Field(0.5, ge=0, le=1)     # weight of the update's part inside the history's span
    slmc_stages: list[Literal["sft", "pref"]] = ["sft", "pref"]  # the stages consolidated


DEFAULTS = SLMCOptions()


class SLMCPlugin(Plugin):
    name = "slmc"
    options = SLMCOptions

    def __init__(self, threshold=DEFAULTS.slmc_threshold, lam=DEFAULTS.slmc_lambda, stages=DEFAULTS.slmc_stages):
        self.slmc = SLMC(threshold, lam)
        self.stages = tuple(stages)

    def on_stage_start(self, loop, stage):
        if stage.name in self.stages:
            self.slmc.begin_stage(loop.model)

    def on_stage_end(self, loop, stage):
        if stage.name not in self.stages:
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
