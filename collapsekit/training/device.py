"""Which torch device to run on: the accelerator when there is one, else the CPU."""
from __future__ import annotations

import torch

from collapsekit.errors import CollapsekitError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch.device for `spec`: "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:1", "mps"."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise CollapsekitError(f"unknown device {spec!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CollapsekitError(f"device {spec!r} requested but CUDA is not available (use --device auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CollapsekitError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA devices exist")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CollapsekitError(f"device {spec!r} requested but MPS is not available (use --device auto or cpu)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise CollapsekitError(f"unsupported device {spec!r} (use auto, cpu, cuda, cuda:N or mps)")
    return device


__all__ = ["resolve_device"]
