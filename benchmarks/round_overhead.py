"""Targets 2 and 5: round wall time / sum of client training time (10 clients per round); bytes per round.

Thin entry point: the logic lives in fedit.bench.rounds (also run by `fedit bench`); see --help, docs/benchmarks.md.
"""

import sys
from pathlib import Path

try:
    import fedit  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fedit.bench.rounds import main

if __name__ == "__main__":
    main()
