"""MTL baseline: multi-task learning, the paper's upper-bound reference.

One joint run on every task of the order: the strategy sets `joint = True`, and the runner trains ONE
unit, "joint", holding all tasks' training pairs (shuffled together by the trainer), with the same
stages (SFT -> preference) and epochs as a sequential method, so the pairs seen equal SeqFT's. Plain
DPO (`method.loss=fpo` switches it), no consolidation, no replay (there is no sequence to replay into;
`method.replay=true` would only add a buffer nothing reads). The model is then evaluated on every
task: the results have one row ("joint") and the summary reports Last (that row's mean) only, as the
paper does for MTL.

Difference from the authors' setup: none in intent; the steps per epoch follow from the joint set's
size and the batch size, and the LR schedule covers the joint run once.
"""
from . import register
from .base import Strategy


@register("mtl", replay=False)
def mtl(cfg):
    strategy = Strategy("mtl", "dpo")
    strategy.joint = True
    return strategy
