"""What this machine runs fedit with (`fedit env`): versions, devices, CPU matrix units, CUDA, installed extras.

The first thing to paste into a bug report. Nothing here loads a model or touches the network.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path
from typing import Any

# the packages whose versions decide fedit's behaviour, in the order a reader looks for them
PACKAGES = ("torch", "transformers", "peft", "flwr", "safetensors", "tokenizers", "datasets", "huggingface_hub",
            "accelerate", "numpy")
# fedit's optional extras (pyproject.toml) -> the distributions each brings
EXTRAS = {"flower": ("flwr",), "serve": ("fastapi", "uvicorn"), "gpu": ("bitsandbytes",),
          "tensorboard": ("tensorboard",), "mlflow": ("mlflow-skinny", "mlflow"), "test": ("pytest", "ruff")}
# CPU flags (Linux /proc/cpuinfo names) that matter for bf16 speed
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx512_fp16")
ENV_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
            "FLWR_HOME")


def version(dist: str) -> str | None:
    """The installed version of distribution `dist`, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_flags(cpuinfo: str | None = None) -> dict[str, bool]:
    """Which of CPU_FLAGS this CPU reports (Linux: /proc/cpuinfo's first `flags` line; elsewhere all False)."""
    if cpuinfo is None:
        p = Path("/proc/cpuinfo")
        cpuinfo = p.read_text(errors="replace") if p.is_file() else ""
    line = next((ln for ln in cpuinfo.splitlines() if ln.startswith(("flags", "Features"))), "")
    have = set(line.partition(":")[2].split())
    return {f: f in have for f in CPU_FLAGS}


def bf16_matrix_units(flags: dict[str, bool] | None = None) -> bool:
    """Whether the CPU multiplies bf16 matrices in hardware (AMX-BF16 or AVX512-BF16), where bf16 autocast pays."""
    flags = cpu_flags() if flags is None else flags
    return flags.get("amx_bf16", False) or flags.get("avx512_bf16", False)


def _cpu_name() -> str:
    p = Path("/proc/cpuinfo")
    if p.is_file():
        for ln in p.read_text(errors="replace").splitlines():
            if ln.startswith("model name"):
                return ln.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    p = Path("/proc/meminfo")
    if p.is_file():
        for ln in p.read_text().splitlines():
            if ln.startswith("MemTotal:"):
                return int(ln.split()[1]) / 2**20
    return None


def collect() -> dict[str, Any]:
    """Everything `fedit env` prints, as a JSON-able dict."""
    from fedit import __version__

    info: dict[str, Any] = {
        "fedit": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: version(p) for p in PACKAGES},
        "extras": {e: any(version(d) for d in dists) for e, dists in EXTRAS.items()},
    }
    flags = cpu_flags()
    cpu: dict[str, Any] = {"name": _cpu_name(), "cores": os.cpu_count(), "memory_gib": _memory_gib(),
                           "flags": flags, "bf16_matrix_units": bf16_matrix_units(flags)}
    if hasattr(os, "sched_getaffinity"):
        cpu["usable_cores"] = len(os.sched_getaffinity(0))
    info["cpu"] = cpu
    info["env"] = {k: os.environ[k] for k in ENV_VARS if k in os.environ}
    if importlib.util.find_spec("torch") is not None:
        import torch

        cpu["torch_threads"] = torch.get_num_threads()
        cpu["torch_capability"] = torch.backends.cpu.get_cpu_capability()
        cuda: dict[str, Any] = {"available": torch.cuda.is_available(), "build": torch.version.cuda}
        if cuda["available"]:
            cuda["devices"] = [
                {"name": torch.cuda.get_device_name(i),
                 "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                 "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
                for i in range(torch.cuda.device_count())]
            cuda["bf16"] = torch.cuda.is_bf16_supported()
        info["cuda"] = cuda
        info["mps"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        from fedit.model.load import pick_device

        info["device"] = str(pick_device("auto"))
    return info


def as_text(info: dict[str, Any]) -> str:
    """A plain block to paste into an issue (no colours, one fact per line)."""
    lines = [f"fedit {info['fedit']}  python {info['python']}  {info['platform']}"]
    lines.append("packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v) + "; missing: "
                 + (", ".join(k for k, v in info["packages"].items() if not v) or "none"))
    lines.append("extras: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["extras"].items()))
    c = info["cpu"]
    mem = f"{c['memory_gib']:.1f} GiB" if c.get("memory_gib") else "? GiB"
    lines.append(f"cpu: {c['name']}; {c.get('usable_cores', c['cores'])} usable of {c['cores']} cores; {mem}; "
                 f"torch threads {c.get('torch_threads', '?')}; capability {c.get('torch_capability', '?')}")
    lines.append("cpu flags: " + " ".join(f"{k}{'+' if v else '-'}" for k, v in c["flags"].items())
                 + f"; bf16 matrix units: {'yes' if c['bf16_matrix_units'] else 'no'}")
    if "cuda" in info:
        cu = info["cuda"]
        if cu["available"]:
            devs = "; ".join(f"{d['name']} ({d['memory_gib']} GiB, sm {d['capability']})" for d in cu["devices"])
            lines.append(f"cuda: {cu['build']}; {devs}; bf16 {'yes' if cu['bf16'] else 'no'}")
        else:
            lines.append(f"cuda: not available (torch build: {cu['build'] or 'CPU only'})")
        lines.append(f"mps: {'yes' if info['mps'] else 'no'}; fedit's device for model.device=auto: {info['device']}")
    else:
        lines.append("torch: not installed")
    if info["env"]:
        lines.append("env: " + " ".join(f"{k}={v}" for k, v in info["env"].items()))
    return "\n".join(lines)
