"""fedit declares Python >= 3.10: no module may import `tomllib` (3.11+) except config.py, which falls back to tomli.

The scan runs everywhere; where a Python 3.10 interpreter is available (pyenv often has one), the sources are also
byte-compiled with it, which proves they parse on 3.10 (no 3.11+ syntax).
"""

from __future__ import annotations

import ast
import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import fedit

SRC = Path(fedit.__file__).parent
COMPAT = SRC / "config.py"  # the one place that may name tomllib, with the tomli fallback


def _imports_tomllib(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    def hit(node: ast.AST) -> bool:
        if isinstance(node, ast.Import):
            return any(a.name == "tomllib" for a in node.names)
        return isinstance(node, ast.ImportFrom) and node.module == "tomllib"

    return [node.lineno for node in ast.walk(tree) if hit(node)]  # type: ignore[attr-defined]


def test_no_bare_tomllib_import_outside_config() -> None:
    offenders = [f"{p.relative_to(SRC.parent)}:{n}" for p in sorted(SRC.rglob("*.py")) if p != COMPAT
                 for n in _imports_tomllib(p)]
    assert not offenders, f"`import tomllib` breaks Python 3.10; use Config.from_toml or fedit.config: {offenders}"


def test_the_scan_sees_tomllib_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("import os\nimport tomllib\nfrom tomllib import loads\ndef f():\n    import tomllib as t\n")
    assert _imports_tomllib(f) == [2, 3, 5]
    assert _imports_tomllib(COMPAT)  # config.py does (inside its try/except ImportError)


def _python310() -> str | None:
    """A working Python 3.10 interpreter: python3.10 on PATH, else one under pyenv's versions."""
    root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = [shutil.which("python3.10"), *sorted(glob.glob(f"{root}/versions/3.10*/bin/python3.10"))]
    for exe in filter(None, candidates):
        try:
            ok = subprocess.run([exe, "-c", "import sys; assert sys.version_info[:2] == (3, 10)"],
                                capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return exe
    return None


def test_the_sources_parse_on_python310(tmp_path: Path) -> None:
    exe = _python310()
    if exe is None:
        pytest.skip("no Python 3.10 interpreter available")
    # compile a copy, so no __pycache__ of another interpreter lands in the source tree
    shutil.copytree(SRC, tmp_path / "fedit", ignore=shutil.ignore_patterns("__pycache__"))
    # not this interpreter's PYTHONPATH (a user's, or one a library left set): 3.10 would import 3.11's standard
    # library from it
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    res = subprocess.run([exe, "-m", "compileall", "-q", str(tmp_path / "fedit")], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
