"""The methods (LifeAlign, its ablations and the baselines) that need no plugin beyond replay and SLMC.

- seqft: SFT -> DPO per task, no protection.
- er: SeqFT + replay.
- lifealign: FPO + SLMC + replay; its ablations dpo+slmc and fpo (both with replay).
"""
from . import register
from .base import Strategy
from .slmc import SLMCPlugin


def register_method(name, loss, slmc=False, replay=True):
    """Register `name`: the preference loss `loss`, SLMC when `slmc`, replay by default when `replay`."""
    def build(cfg):
        m = cfg.method
        return Strategy(name, loss, [SLMCPlugin(m.slmc_threshold, m.slmc_lambda, m.slmc_stages)] if slmc else [])

    register(name, replay)(build)


register_method("seqft", "dpo", replay=False)
register_method("er", "dpo")
register_method("lifealign", "fpo", slmc=True)
register_method("dpo+slmc", "dpo", slmc=True)
register_method("fpo", "fpo")
