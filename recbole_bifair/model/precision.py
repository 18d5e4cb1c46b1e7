"""``precision: fp32 | bf16``: bfloat16 autocast for the projector and the dense scores.

The LLM models' cost is the projector's GEMMs (AlphaRec's 384 x 3072 x 64 MLP over every item,
every step; ALGORITHMS.md section 3) and the dense score GEMM. With ``bf16`` these run under
``torch.autocast(dtype=torch.bfloat16)`` where the hardware has bfloat16 arithmetic: CUDA
devices that report it, and CPUs with the AVX512-BF16 or AMX-BF16 instructions (the flags
``avx512_bf16`` / ``amx_bf16`` of /proc/cpuinfo). AlphaRec's user mean of the hidden rows runs
in bf16 too (``embedding_bag``, half the bytes); parameters, optimiser state, the propagation,
the sampled scores and the loss stay float32. Elsewhere ``bf16`` logs one warning line and runs
float32.
"""

from __future__ import annotations

import contextlib
import logging
from functools import cache
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

logger = logging.getLogger(__name__)


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (Linux /proc/cpuinfo flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def bf16_unsupported_reason(device: torch.device) -> str | None:
    """Why bf16 autocast would not be fast on ``device``, or None when it is."""
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else f"{torch.cuda.get_device_name(device)} has no bfloat16"
    if device.type == "cpu":
        return None if cpu_has_bf16() else f"this CPU has none of the {'/'.join(CPU_BF16_FLAGS)} instructions"
    return f"bf16 autocast is not set up for {device.type} devices"


def autocast_context(precision: str, device: torch.device):
    """A factory of context managers: bf16 autocast on ``device``, or no-op contexts (fp32)."""
    if precision == "bf16":
        reason = bf16_unsupported_reason(device)
        if reason is None:
            return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
        logger.warning(f"precision bf16 requested but {reason}: running fp32")
    return contextlib.nullcontext
