"""The methods (LifeAlign, its ablations and the baselines) that need no plugin beyond replay and SLMC.

- seqft: SFT -> DPO per task, no protection.
- er: SeqFT + replay.
- lifealign: FPO + SLMC + replay; its ablations dpo+slmc and fpo (both with replay).
"""
from . import register
from .base import Strategy
from .slmc import SLMCPlugin


def slmc_plugin(cfg):
    m = cfg.method
    return SLMCPlugin(m.slmc_threshold, m.slmc_lambda, m.slmc_stages)


@register("seqft", replay=False)
def seqft(cfg):
    return Strategy("seqft", "dpo")


@register("er", replay=True)
def er(cfg):
    return Strategy("er", "dpo")


@register("lifealign", replay=True)
def lifealign(cfg):
    return Strategy("lifealign", "fpo", [slmc_plugin(cfg)])


@register("dpo+slmc", replay=True)
def dpo_slmc(cfg):
    return Strategy("dpo+slmc", "dpo", [slmc_plugin(cfg)])


@register("fpo", replay=True)
def fpo(cfg):
    return Strategy("fpo", "fpo")
