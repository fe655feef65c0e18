"""Target 4: peak RSS with 10/100/1,000 clients, aggregation time vs sampled clients, partitioning 1,000 clients.

Thin entry point: the logic lives in fedit.bench.scale (also run by `fedit bench`); see --help, docs/benchmarks.md.
"""

import sys
from pathlib import Path

try:
    import fedit  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fedit.bench.scale import main

if __name__ == "__main__":
    main()
