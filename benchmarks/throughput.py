"""Target 1: local-training throughput, fedit client vs a hand-written PEFT loop.

Thin entry point: the logic lives in fedit.bench.throughput (also run by `fedit bench`); see --help, docs/benchmarks.md.
"""

import sys
from pathlib import Path

try:
    import fedit  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fedit.bench.throughput import main

if __name__ == "__main__":
    main()
