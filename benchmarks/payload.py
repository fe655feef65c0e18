"""Target 5: adapter payload bytes for common setups (7B Llama r=16 q,v, ...) from configs, no weights.

Thin entry point: the logic lives in fedit.bench.payload (also run by `fedit bench`); see --help, docs/benchmarks.md.
"""

import sys
from pathlib import Path

try:
    import fedit  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fedit.bench.payload import main

if __name__ == "__main__":
    main()
