"""Target 6: LoRA training tokens/s and MFU of a random ~0.5B Llama on one GPU; fedit's loop vs a hand-written loop.

    python benchmarks/gpu_throughput.py --json gpu.json      # H100/H200: about 2-4 minutes, downloads nothing
    python benchmarks/gpu_throughput.py --smoke              # CPU check of the script, tiny shapes

Needs torch (CUDA), transformers, peft and numpy; works from a checkout without `pip install` (it adds src/ to the
path, and stands in for the TOML writer when tomli_w is absent: this benchmark never writes TOML).
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
