"""Where a run runs: the machine it records (`machine_description`, `versions`), the precision it
trains in (`pick_precision`) and where caches live (`cache_root`)."""

import importlib.metadata
import os
import platform
from pathlib import Path

import torch

PRECISIONS = ("bf16", "fp32")
#: The CPU features that decide whether bf16 is native and which matmul kernels run.
_KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
#: The CPU features that make bf16 native.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cache_root() -> Path:
    """Directory for LifeAlign's caches: `$LIFEALIGN_CACHE` or `~/.cache/lifealign`."""
    return Path(os.environ.get("LIFEALIGN_CACHE") or "~/.cache/lifealign").expanduser()


def _cpuinfo_field(prefix: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The value of the first `/proc/cpuinfo` line starting with `prefix` (None where unavailable)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(prefix) and ":" in line), None)


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags from `/proc/cpuinfo` (empty set where unavailable)."""
    return set((_cpuinfo_field("flags", cpuinfo) or "").split())


def machine_description(device: str = "cpu") -> dict:
    """What a run and the benchmarks record about where they ran: the CPU model, its kernel-relevant
    flags, torch's thread count and, on CUDA, the GPU. Runs compared with each other should share
    precision; these fields show when their speed may differ."""
    description = {"cpu": _cpuinfo_field("model name") or "",
                   "cpu_flags": sorted(_cpu_flags() & set(_KERNEL_FLAGS)),
                   "threads": torch.get_num_threads()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        description["gpu"] = torch.cuda.get_device_name()
    return description


def versions(packages=("lifealign", "torch", "transformers", "peft", "trl", "accelerate")) -> dict:
    """Python's version and each package's installed version (None where it is not installed)."""
    out = {"python": platform.python_version()}
    for package in packages:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def pick_precision(device: str = "cpu") -> str:
    """"bf16" or "fp32" for `device`: `$LIFEALIGN_PRECISION` when set (another value is a ValueError),
    else bf16 on CUDA devices that support it and on CPUs with native bf16 instructions (BF16_FLAGS
    in /proc/cpuinfo), else fp32."""
    override = os.environ.get("LIFEALIGN_PRECISION", "").strip().lower()
    if override and override not in PRECISIONS:
        raise ValueError(f"LIFEALIGN_PRECISION={os.environ['LIFEALIGN_PRECISION']!r} is not allowed; "
                         f"use one of {', '.join(PRECISIONS)}")
    if override:
        return override
    kind = str(device).split(":", 1)[0].lower()
    if kind == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if kind == "cpu" and _cpu_flags() & set(BF16_FLAGS) else "fp32"
