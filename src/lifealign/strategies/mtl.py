"""MTL baseline: multi-task learning, the paper's upper-bound reference.

One joint run on every task of the order: the strategy sets `joint = True`, and the runner then
trains ONE unit named "joint" that holds all tasks' training pairs, shuffled together by the
trainer, with the same stages (SFT -> preference) and the same epochs as a sequential method, so
the pairs seen equal SeqFT's. The preference loss is plain DPO (method.loss=fpo switches it); no
replay (there is no sequence to replay into; method.replay=true would only add a buffer that
nothing reads), no consolidation. After the single unit the model is evaluated on every task; the
results have one row ("joint") and the summary reports Last (the mean of that row) only, as the
paper does for MTL.

Difference from the authors' setup: none in intent; the step count per epoch follows from the
joint set's size and the configured batch size, and the LR schedule covers the joint run once.
"""
from . import register
from .base import Strategy


@register("mtl", replay=False)
def mtl(cfg):
    strategy = Strategy("mtl", "dpo")
    strategy.joint = True
    return strategy
