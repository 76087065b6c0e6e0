"""STL baseline: single-task learning, one fresh model per task.

The LifeAlign paper reports STL (one model trained per task, no sequence) as a reference row, Last
only. Here one run trains every task of the order from the same start: when a task starts (every task
but the first), each trainable LoRA matrix is reset to its values at the first task's start (the LoRA
initialisation: B = 0, A as seeded) and the optimizer state is dropped (`loop.reset_optimizers()`), so
the model trained on task i never saw tasks 1..i-1. The snapshot of the initial matrices is plugin
state (saved after every task), so a resumed run resets to the same values. The runner seeds each
stage with `training.stage_seed` (seed, position, stage): the model of task B at position i is the
one of any other STL run with B at position i.

Reading the results: row i of each matrix is "model i" (trained on task i alone) evaluated on all
tasks; the STL per-task score is the diagonal m[i][i], the paper's STL "Last" its mean. The runner's
sequence summaries (Last = mean of the last row, BWT, ...) are computed as for every method but mean
nothing for STL.

Per task as SeqFT (SFT -> DPO, `method.loss` may switch to FPO). No replay by default: replaying
earlier tasks would break "one model per task" (`method.replay=true` still adds it).

Difference from the authors' setup: they trained separate models; one reset run is equivalent (same
initialisation, fresh optimizer, restarted schedule) and cheaper to manage.
"""
from ..lora import copy_into, lora_parameters, tensor_nbytes
from . import register
from .base import Plugin, Strategy


class STLReset(Plugin):
    name = "stl"
    state_keys = ("initial",)

    def __init__(self):
        self.initial = None  # name -> cpu tensor of every trainable LoRA matrix at the first task start

    def on_task_start(self, loop, task):
        params = lora_parameters(loop.model, trainable=True)
        if self.initial is None:
            if loop.task_index != 0:
                raise RuntimeError("STL: no snapshot of the initial LoRA matrices (state missing on resume)")
            self.initial = {n: p.detach().cpu().clone() for n, p in params.items()}
            return
        copy_into(params, self.initial)
        loop.reset_optimizers()

    def state_nbytes(self):
        return tensor_nbytes((self.initial or {}).values())


@register("stl", replay=False)
def stl(cfg):
    return Strategy("stl", "dpo", [STLReset()])
