"""L2P baseline: a pool of learnable prompts, chosen per input by key-query matching.

Method. Wang et al. 2022, "Learning to Prompt for Continual Learning" (CVPR 2022). A prompt pool
{(k_i, P_i)}, i = 1..M, holds M prompts P_i (L_p learnable token embeddings each) and one learnable
key k_i per prompt. For an input x a frozen feature q(x) (the query) picks the N prompts whose keys
have the highest cosine similarity with q(x); their N * L_p embeddings are prepended to the input's
token embeddings, and the frozen backbone runs on the extended sequence. The training loss is

    L_total = L_stage + lambda * mean_x sum_{i in top-N(x)} (1 - cos(q(x), k_i))

(the paper's surrogate loss, gamma = cosine distance, summed over the selected keys); the selection
itself is not differentiable, so the second term trains the keys, and L_stage trains the prompts
through the frozen network. Only prompts and keys are trained.

Our choices.
- M = 10, L_p = 5, N = 3 (`method.l2p_pool_size`, `l2p_prompt_length`, `l2p_top_k`), the LifeAlign
  paper's setting: 15 prompt embeddings per input.
- The query: a decoder LLM has no [CLS] feature (nor a [CLS]-like one without a forward pass of its
  own), so q(x) is the mean of the frozen base model's input token embeddings over the non-padded
  PROMPT tokens of the sequence: free, exactly frozen and response-independent, so the chosen and the
  rejected sequence of a pair, and the generation from that prompt, all select the same prompts. A
  sequence's prompt tokens are found by matching its leading tokens against the token ids of every
  prompt of the run's tasks (train and test; the longest match wins); a sequence with no known prompt
  (not produced by this pipeline) falls back to the mean over all its non-padded tokens, and the
  stage report counts such fallbacks.
- Selection is per input (the paper's instance-wise top-N), by cosine similarity.
- lambda = 0.5 (`method.l2p_key_lambda`); the per-input sum over the N selected keys is averaged over
  the batch's sequences.
- Initialisation: keys uniform in [-1, 1) (cosine ignores their scale); prompts uniform with the
  standard deviation of the model's token-embedding table, so they enter at the scale of real tokens.
  Seeded by the run's seed (a generator of its own; the global RNG is untouched).
- LoRA is frozen (the run's adapter stays at its initialisation, a no-op since B = 0): the trainable
  parameters are exactly the prompts and the keys.
- Optimizer: AdamW without weight decay, the prompts and keys in a parameter group of their own at
  `method.l2p_lr` (0.03, the L2P paper's and its configs' Adam learning rate): free vectors at the
  scale of token embeddings, trained through a frozen network, need a learning rate far above LoRA's.
  Any other trainable parameter (none with LoRA frozen) keeps the stage learning rate. The stage's
  schedule (warm-up, cosine) scales it, and one optimizer per stage kind carries its state over
  between tasks like every method here.
- Mechanics: the pool is a submodule (`l2p_pool`) of the base causal LM, so its parameters are model
  parameters (optimizer, DDP, `.to(device)`). A forward pre-hook on that causal LM turns input_ids
  into inputs_embeds with the selected prompts in front and extends the attention mask (and position
  ids when the caller gives them); a forward hook cuts the prompt positions off the logits, so every
  caller (training.sequence_logps, evaluation, generation) sees logits of its own sequence length.
  Under generation with a KV cache the prefill pass is prompted, and each decoding step extends the
  caller's attention mask and position ids by the prompt length.
- The reference model never sees the prompts (else DPO's margin would compare the prompted policy
  with a prompted reference and degenerate): the hooks do nothing while PEFT's own switches disable
  the adapter, `PeftModel._adapters_disabled` (set by `model.disable_adapter()`, which the runner uses
  for reference log-probs) and the LoRA layers' `disable_adapters` flag (set by
  `base_model.disable_adapter_layers()`).
- No replay by default (`method.replay=true` adds it); DPO unless `method.loss` says otherwise.

State (state.pt after each task): the prompts and keys (fp32, CPU) and the prompt-usage counts. They
are not LoRA matrices, so the runner does not save them as weights; `on_restore` reinstalls the pool
with these values. `state_nbytes` reports prompts + keys.

Differences from the authors' released version (github.com/google-research/l2p, JAX, ViT image
classification): its configs select prompts "batchwise" (batchwise_prompt = True: the N prompts
chosen most often in the batch, for every input of the batch), take the query from the frozen ViT's
[CLS] feature of the un-prompted input, train a classifier head on the prompt tokens' outputs, and
set pull_constraint_coeff (our lambda) = 1.0 (its CIFAR-100 config: M = 10, L_p = 10, N = 4). The
paper also describes an optional frequency-based diversification of the selection when task
boundaries are known during training. We keep the paper's instance-wise selection without that
option, and the causal-LM losses (SFT NLL, DPO) in place of the classifier; there is no head. Its
optimizer runs at a constant learning rate (batch 128) and is re-initialised at every task
(reinit_optimizer = True); here the stage's schedule scales `method.l2p_lr` and the optimizer state
carries over between tasks.

The LifeAlign authors' L2P (github.com/real-ljs/LifeAlign, CL_methods/L2P.py) has no separate keys
(a prompt's key is the mean of its embeddings), takes the query from the mean embedding of the whole
padded sequence, trains the pool with the trainer's own learning rate (the stage's: 5e-6 for DPO at
paper scale), and runs the reference pass with the prompts in place.
"""
import inspect
import math
import weakref

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..lora import lora_parameters, tensor_nbytes
from ..options import Float, Options
from . import register
from .base import Plugin, Strategy

POOL_NAME = "l2p_pool"


class L2POptions(Options):  # described above
    l2p_pool_size: int = Field(10, ge=1)      # M prompts in the pool
    l2p_prompt_length: int = Field(5, ge=1)   # L_p tokens per prompt
    l2p_top_k: int = Field(3, ge=1)           # N prompts selected per input
    l2p_key_lambda: Float = Field(0.5, ge=0)  # key-loss weight
    l2p_lr: Float = Field(0.03, gt=0)         # prompts and keys (L2P paper and configs: Adam, lr 0.03)


DEFAULTS = L2POptions()


class PromptPool(nn.Module):
    """M prompts of L token embeddings and one key per prompt."""

    def __init__(self, prompts, keys):
        super().__init__()
        self.prompts = nn.Parameter(prompts.detach().clone().float())   # (M, L, D)
        self.keys = nn.Parameter(keys.detach().clone().float())         # (M, D)

    @classmethod
    def initial(cls, pool_size, length, dim, prompt_std, seed=0):
        g = torch.Generator().manual_seed(int(seed))
        half_width = math.sqrt(3.0) * float(prompt_std)  # uniform(-a, a) has std a / sqrt(3)
        prompts = (torch.rand(pool_size, length, dim, generator=g) * 2 - 1) * half_width
        keys = torch.rand(pool_size, dim, generator=g) * 2 - 1
        return cls(prompts, keys)

    def select(self, query, top_k):
        """Indices (B, k) of the keys with the highest cosine similarity to each query, most similar
        first, and those similarities (B, k), differentiable w.r.t. the keys."""
        with torch.autocast(device_type=self.keys.device.type, enabled=False):  # fp32 similarities
            sim = F.normalize(query.float(), dim=-1) @ F.normalize(self.keys.float(), dim=-1).T
        idx = sim.detach().topk(top_k, dim=-1).indices
        return idx, sim.gather(1, idx)

    def prompt_embeddings(self, idx):
        """(B, k * L, D): the selected prompts one after the other."""
        return self.prompts[idx].reshape(idx.shape[0], -1, self.prompts.shape[-1])


class PromptIndex:
    """Token ids of every known prompt, to find where the prompt of a sequence ends."""

    def __init__(self):
        self.by_length = {}  # prompt length -> the prompts of that length, as tuples

    def add(self, ids):
        self.by_length.setdefault(len(ids), set()).add(tuple(ids))

    def __len__(self):
        return sum(len(v) for v in self.by_length.values())

    def prompt_length(self, tokens):
        """Length of the longest known prompt that `tokens` starts with, or None."""
        for length in sorted(self.by_length, reverse=True):
            if 0 < length <= len(tokens) and tuple(tokens[:length]) in self.by_length[length]:
                return length
        return None


class L2P(Plugin):
    name = "l2p"
    rewrites_inputs = True  # its hooks extend 2D attention masks: one row per sequence
    options = L2POptions

    def __init__(self, pool_size=DEFAULTS.l2p_pool_size, prompt_length=DEFAULTS.l2p_prompt_length,
                 top_k=DEFAULTS.l2p_top_k, key_lambda=DEFAULTS.l2p_key_lambda, seed=0, lr=DEFAULTS.l2p_lr):
        if top_k > pool_size:
            raise ValueError(f"l2p_top_k ({top_k}) must not exceed l2p_pool_size ({pool_size})")
        self.pool_size, self.prompt_length, self.top_k = pool_size, prompt_length, top_k
        self.key_lambda = key_lambda
        self.lr = float(lr)
        self.seed = seed
        self.pool = None
        self.index = PromptIndex()
        self._loaded = None
        self._pending = None         # original sequence length while a prompted forward runs
        self._prompted_cache = None
        self._sims = []              # selected-key similarities of the forwards since the last loss
        self.usage = torch.zeros(pool_size, dtype=torch.long)
        self.stage_usage = torch.zeros(pool_size, dtype=torch.long)
        self.fallbacks = 0
        self._handles = []

    @property
    def n_prompt_tokens(self):
        return self.top_k * self.prompt_length

    def install(self, model, prompts=None, keys=None):
        """Put the pool into `model` (a PeftModel) and register the hooks; LoRA frozen, pool trainable."""
        lm = model.get_base_model()
        emb = lm.get_input_embeddings()
        if self.pool is None or getattr(lm, POOL_NAME, None) is not self.pool:
            if prompts is None:
                pool = PromptPool.initial(self.pool_size, self.prompt_length, emb.weight.shape[1],
                                          emb.weight.detach().float().std(), self.seed)
            else:
                pool = PromptPool(prompts, keys)
            self.pool = pool.to(emb.weight.device)
            lm.add_module(POOL_NAME, self.pool)
            for h in self._handles:
                h.remove()
            self._signature = inspect.signature(lm.forward)
            self._var_kw = next((n for n, prm in self._signature.parameters.items()
                                 if prm.kind is inspect.Parameter.VAR_KEYWORD), None)
            self._handles = [lm.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
                             lm.register_forward_hook(self._post_hook, with_kwargs=True)]
            self._peft = weakref.ref(model)
            self._lora_layer = next((m for m in lm.modules() if hasattr(m, "disable_adapters")
                                     and hasattr(m, "lora_A")), None)
            self._embed = emb
        elif prompts is not None:
            with torch.no_grad():
                self.pool.prompts.copy_(prompts)
                self.pool.keys.copy_(keys)
        self.freeze(model)

    def freeze(self, model):
        """Only the pool trains. Needed again at every stage start: leaving `model.disable_adapter()`
        (the runner's reference pass before each preference stage) makes the active LoRA adapter
        trainable again (peft's BaseTunerLayer.enable_adapters calls set_adapter)."""
        for p in lora_parameters(model).values():
            p.requires_grad_(False)
        for p in self.pool.parameters():
            p.requires_grad_(True)

    def index_prompts(self, tasks):
        for task in tasks.values():
            for rec in list(task.train) + list(task.test):
                if "ids" in rec:
                    self.index.add(rec["ids"]["prompt"])

    def active(self):
        """Whether the hooks act: a pool is installed and neither of PEFT's adapter switches is off."""
        if self.pool is None:
            return False
        peft_model = self._peft()
        return not ((peft_model is not None and getattr(peft_model, "_adapters_disabled", False))
                    or (self._lora_layer is not None and self._lora_layer.disable_adapters))

    def query_mask(self, input_ids, valid):
        """(B, T) bool: the prompt tokens of each sequence (all valid tokens where none is known)."""
        mask = valid.clone()
        if not len(self.index):
            self.fallbacks += input_ids.shape[0]
            return mask
        rows, vrows = input_ids.tolist(), valid.tolist()
        for b, (row, vrow) in enumerate(zip(rows, vrows)):
            positions = [i for i, v in enumerate(vrow) if v]
            length = self.index.prompt_length([row[i] for i in positions])
            if length is None:
                self.fallbacks += 1
                continue
            mask[b] = False
            mask[b, positions[:length]] = True
        return mask

    def query(self, token_embeds, input_ids, attention_mask):
        """Mean of the frozen input embeddings over each sequence's prompt tokens: (B, D)."""
        valid = attention_mask.bool() if attention_mask is not None else \
            torch.ones(token_embeds.shape[:2], dtype=torch.bool, device=token_embeds.device)
        mask = self.query_mask(input_ids, valid) if input_ids is not None else valid
        mask = mask.to(token_embeds.device, torch.float32).unsqueeze(-1)
        return (token_embeds.detach().float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def _pre_hook(self, module, args, kwargs):
        self._pending = None
        if not self.active():
            return None
        kw = dict(self._signature.bind_partial(*args, **kwargs).arguments)  # positional -> by name
        if self._var_kw is not None:
            kw.update(kw.pop(self._var_kw, None) or {})
        input_ids, embeds = kw.get("input_ids"), kw.get("inputs_embeds")
        mask, positions = kw.get("attention_mask"), kw.get("position_ids")
        if mask is not None and mask.dim() != 2:
            raise ValueError("L2P prepends prompts to each sequence and needs 2D attention masks: batch pairs "
                             "with collate_pairs(..., share_prompt=False)")
        cache = kw.get("cache", kw.get("past_key_values"))
        n_prompt = self.n_prompt_tokens
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        if past > 0:
            # A decoding step: the cache starts with the prompts if its prefill was prompted.
            if self._prompted_cache is not None and self._prompted_cache() is cache:
                if mask is not None:
                    kw["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], n_prompt), mask], 1)
                if positions is not None:
                    kw["position_ids"] = positions + n_prompt
            return (), kw
        if embeds is None:
            embeds = self._embed(input_ids)
        batch, length = embeds.shape[:2]
        query = self.query(embeds, input_ids, mask)
        idx, sim = self.pool.select(query, self.top_k)
        prompt = self.pool.prompt_embeddings(idx).to(embeds.dtype)
        kw["input_ids"] = None
        kw["inputs_embeds"] = torch.cat([prompt, embeds], 1)
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
        kw["attention_mask"] = torch.cat([mask.new_ones(batch, n_prompt), mask], 1)
        if positions is not None:
            positions = positions.expand(batch, -1)
            head = torch.arange(n_prompt, device=positions.device, dtype=positions.dtype).expand(batch, -1)
            kw["position_ids"] = torch.cat([head, positions + n_prompt], 1)
        labels = kw.get("labels")
        if labels is not None:
            kw["labels"] = torch.cat([labels.new_full((batch, n_prompt), -100), labels], 1)
        if torch.is_grad_enabled() and module.training:
            self._sims.append(sim)
            self.stage_usage += torch.bincount(idx.flatten().cpu(), minlength=self.pool_size)
        self._remember_cache(cache)
        self._pending = length
        return (), kw

    def _remember_cache(self, cache):
        try:
            self._prompted_cache = None if cache is None else weakref.ref(cache)
        except TypeError:  # a cache type without weak references: decoding steps get no extension
            self._prompted_cache = None

    def _post_hook(self, module, args, kwargs, output):
        length, self._pending = self._pending, None
        if length is None:
            return None
        n_prompt = self.n_prompt_tokens
        cache = getattr(output, "cache", None)
        if cache is None:
            cache = getattr(output, "past_key_values", None)
        if cache is not None:  # also a cache the model made itself: it starts with the prompts
            self._remember_cache(cache)
        logits = output[0] if isinstance(output, tuple) else getattr(output, "logits", None)
        if logits is None or logits.shape[1] != length + n_prompt:
            return None  # e.g. generation keeps only the last position's logits
        if isinstance(output, tuple):
            return (logits[:, n_prompt:],) + tuple(output[1:])
        output.logits = logits[:, n_prompt:]
        return output

    def on_task_start(self, loop, task):
        self.install(loop.model)
        self.index_prompts(loop.tasks)

    def on_stage_start(self, loop, stage):
        self.freeze(loop.model)  # before the runner builds the stage's optimizer from requires_grad
        self._sims = []
        self.stage_usage = torch.zeros(self.pool_size, dtype=torch.long)
        self.fallbacks = 0

    def make_optimizer(self, loop, kind, params, stage_cfg):
        """AdamW with the pool in a group of its own at the L2P learning rate."""
        pool_ids = {id(p) for p in self.pool.parameters()} if self.pool is not None else set()
        pool = [p for p in params if id(p) in pool_ids]
        rest = [p for p in params if id(p) not in pool_ids]
        groups = [{"params": pool, "lr": self.lr}] + ([{"params": rest, "lr": stage_cfg.lr}] if rest else [])
        return torch.optim.AdamW(groups, lr=stage_cfg.lr, weight_decay=0.0)

    def extra_loss(self, loop, stage, model, batch, outputs):
        sims, self._sims = self._sims, []
        if not sims or not self.key_lambda:
            return None
        return self.key_lambda * (1.0 - torch.cat(sims, 0)).sum(-1).mean()

    def on_stage_end(self, loop, stage):
        self._sims = []
        self.usage += self.stage_usage
        return {"prompt_usage": self.stage_usage.tolist(), "query_fallbacks": self.fallbacks}

    def state_dict(self):
        if self.pool is None:
            return {}
        return {"prompts": self.pool.prompts.detach().cpu().clone(), "keys": self.pool.keys.detach().cpu().clone(),
                "usage": self.usage.clone()}

    def load_state_dict(self, state):
        if state:
            self._loaded = state

    def on_restore(self, loop):
        if self._loaded is None:
            return
        self.install(loop.model, self._loaded["prompts"], self._loaded["keys"])
        self.usage = self._loaded["usage"].clone()
        self.index_prompts(loop.tasks)

    def state_nbytes(self):
        if self.pool is None:
            return 0
        return tensor_nbytes(self.pool.parameters())


@register("l2p", replay=False)
def l2p(cfg):
    m = cfg.method
    return Strategy("l2p", "dpo", [L2P(m.l2p_pool_size, m.l2p_prompt_length, m.l2p_top_k, m.l2p_key_lambda,
                                       seed=cfg.seed, lr=m.l2p_lr)])
