"""LoRA training tokens/s, MFU and peak memory on one GPU: random 0.5B (Qwen2.5 shape) and 7B (Llama-2 shape) models,
bf16 vs NF4 (QLoRA), with and without gradient checkpointing and packing; fedit's loop vs a hand-written loop.

    python benchmarks/gpu_throughput.py --json gpu.json      # H100/H200: under 8 minutes (--deadline-s 450)
    python benchmarks/gpu_throughput.py --smoke              # CPU check of the script, tiny shapes

Needs torch (CUDA), transformers, peft and numpy (bitsandbytes for the NF4 cases: skipped without it); works from a
checkout without `pip install` (it adds src/ to the path, and stands in for the TOML writer when tomli_w is absent:
this benchmark never writes TOML).
"""

import sys
import types
from pathlib import Path

try:
    import fedit  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))



def _missing(*args, **kwargs):
    raise RuntimeError("TOML support is not installed")


for _name in ("tomli_w", "tomllib"):  # fedit.config imports both; not used here
    try:
        __import__(_name)
    except ImportError:
        _stub = types.ModuleType(_name)
        _stub.dumps = _stub.loads = _missing
        _stub.TOMLDecodeError = ValueError
        sys.modules[_name] = _stub

from fedit.bench.gpu import main  # noqa: E402

if __name__ == "__main__":
    main()
