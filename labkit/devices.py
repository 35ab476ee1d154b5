"""Which device runs the model, what it is called, and waiting for it: through `torch.accelerator`, so CUDA,
ROCm, Apple MPS and Intel XPU are treated alike, and the CPU when none is present."""
from __future__ import annotations

import os
import platform

import torch


def default_device() -> torch.device:
    """The machine's accelerator (CUDA, MPS, XPU, ...) when torch sees one, else the CPU."""
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on a CPU (exact comparisons, and the fast path's packed kernels), bfloat16 on an accelerator
    (float16 on MPS, where bfloat16 needs a recent macOS)."""
    if device.type == "cpu":
        return torch.float32
    return torch.float16 if device.type == "mps" else torch.bfloat16


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (timing an accelerator needs it; a no-op on the CPU)."""
    if device.type != "cpu" and device.type != "meta":
        torch.accelerator.synchronize(device)


def device_name(device: torch.device) -> str:
    """The accelerator's name (e.g. 'NVIDIA H200'), or the CPU's architecture and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "xpu":
        return torch.xpu.get_device_name(device)
    if device.type == "cpu":
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    return device.type
