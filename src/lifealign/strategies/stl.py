"""STL baseline: single-task learning, one fresh model per task.

The LifeAlign paper lists STL (one model trained per task, no sequence) as a reference row and
reports it as Last only. Here one run trains every task of the order from the same starting point:
when a task starts (every task but the first), each trainable LoRA matrix is reset to the exact
values it had when the first task started (the LoRA initialisation: B = 0, A as seeded), and the
optimizer state is dropped (`loop.reset_optimizers()`), so the model trained on task i never saw
tasks 1..i-1. The snapshot of the initial matrices is part of the plugin state (saved after every
task), so a resumed run resets to the same values.

Reading the results: row i of each matrix is "model i" (trained on task i alone) evaluated on all
tasks. The STL per-task score is the diagonal m[i][i]; the paper's STL "Last" is the mean of that
diagonal, mean_i m[i][i]. The runner's sequence summaries (Last = mean of the last row, BWT, ...)
are computed as for every method but mean nothing for STL; nothing is added to the runner for it.

Pipeline per task as for SeqFT (SFT -> DPO, method.loss may switch to FPO). Replay is off: the
registered default is no replay, since replaying earlier tasks would break "one model per task";
method.replay=true still adds it if a user asks (their call).

Same seeds: the runner seeds each stage with `training.stage_seed` (seed, position, stage), so the
model of task B at position i is identical to the one of any other STL run with B at position i.

Difference from the authors' setup: they trained separate models; one reset run is equivalent
(same initialisation, fresh optimizer, restarted schedule) and cheaper to manage.
"""
from ..lora import copy_into, lora_parameters, tensor_nbytes
from . import register
from .base import Plugin, Strategy


class STLReset(Plugin):
    name = "stl"

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

    def state_dict(self):
        return {"initial": self.initial}

    def load_state_dict(self, state):
        if state:
            self.initial = state["initial"]

    def state_nbytes(self):
        return tensor_nbytes((self.initial or {}).values())


@register("stl", replay=False)
def stl(cfg):
    return Strategy("stl", "dpo", [STLReset()])
