"""LoRA adapters: adding one to a model, and finding its matrices by layer, adapter or name.

Every adapter here is a PEFT ``LoraConfig(task_type="CAUSAL_LM", bias="none")`` whose matrices
are kept in fp32, even when the base model is bf16.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def lora_config(r: int = 8, alpha: int = 16, dropout: float = 0.0, targets: Sequence[str] = ("q_proj", "v_proj")):
    """The `peft.LoraConfig` of one adapter on the modules named in `targets`."""
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=list(targets), bias="none")


def keep_fp32(params) -> None:
    """Store LoRA matrices in fp32 (a no-op for those already in fp32)."""
    for param in params:
        if param.dtype != torch.float32:
            param.data = param.data.float()


def add_lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.0, targets: Sequence[str] = ("q_proj", "v_proj"),
             adapter_name: str = "default"):
    """Wrap `model` with a LoRA adapter (`lora_config` on the modules named in `targets`) and return
    the `peft.PeftModel`.

    Only the LoRA matrices are trainable and they are kept in fp32 even when the base model is bf16.
    The adapter starts as a no-op (`lora_B` is zero). If `model` already is a `PeftModel`, a new
    adapter `adapter_name` is added to it and made the active one.
    """
    from peft import PeftModel, get_peft_model

    config = lora_config(r, alpha, dropout, targets)
    if isinstance(model, PeftModel):
        model.add_adapter(adapter_name, config)
        model.set_adapter(adapter_name)
        peft_model = model
    else:
        peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    keep_fp32(p for name, p in peft_model.named_parameters() if "lora_" in name)
    return peft_model


def lora_parameters(model, trainable=False):
    """Every LoRA A and B matrix of the model by name (all adapters), or with `trainable` only
    those that train (requires_grad)."""
    return {n: p for n, p in model.named_parameters()
            if ("lora_A" in n or "lora_B" in n) and (p.requires_grad or not trainable)}


def adapter_parameters(model, name):
    """The parameters (A and B of every layer) of one adapter, by full parameter name."""
    return {n: p for n, p in lora_parameters(model).items()
            if (".lora_A." in n or ".lora_B." in n) and n.split(".")[-2] == name}


@torch.no_grad()
def copy_into(params, values):
    """Set each parameter of `params` (name -> parameter) to `values[name]`, in its own dtype and
    device: a snapshot or a saved state put back into the model."""
    for name, param in params.items():
        param.copy_(values[name])


def tensor_nbytes(tensors):
    """Bytes the tensors hold in their stored dtype: what a method's state (adapters, snapshots,
    statistics over LoRA matrices) adds to a run."""
    return sum(t.numel() * t.element_size() for t in tensors)


def lora_layers(model):
    """Every LoRA-wrapped module (a PEFT LoraLayer holds `lora_A` / `lora_B` ModuleDicts by adapter)."""
    return [m for m in model.modules() if hasattr(m, "lora_A") and isinstance(m.lora_A, torch.nn.ModuleDict)]


def base_model(model):
    """The model under its PEFT wrapper (the model itself when it has none)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model
