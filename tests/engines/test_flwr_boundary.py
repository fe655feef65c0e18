"""Only fedit.engines.flower may import flwr: the rest of fedit must work without the `flower` extra."""

from __future__ import annotations

import ast
from pathlib import Path

import fedit

SRC = Path(fedit.__file__).parent
ALLOWED = SRC / "engines" / "flower"


def _is_flwr(name: str | None) -> bool:
    return bool(name) and (name == "flwr" or name.startswith("flwr."))  # type: ignore[union-attr]


def _imports_flwr(path: Path) -> list[int]:
    """Lines that import flwr: `import flwr...`, `from flwr... import`, importlib.import_module("flwr...")."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            hit = any(_is_flwr(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            hit = _is_flwr(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = getattr(node.func, "attr", getattr(node.func, "id", ""))
            hit = fn in ("import_module", "__import__") and _is_flwr(str(node.args[0].value))
        else:
            hit = False
        if hit:
            lines.append(node.lineno)
    return lines


def test_only_the_flower_engine_imports_flwr() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if ALLOWED in path.parents:
            continue
        offenders += [f"{path.relative_to(SRC.parent)}:{n}" for n in _imports_flwr(path)]
    assert not offenders, f"flwr imported outside fedit/engines/flower: {offenders}"


def test_the_check_sees_flwr_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom flwr.app import Message\nimport flwr\nimportlib.import_module('flwr.serverapp')\n")
    assert _imports_flwr(f) == [2, 3, 4]
    assert _imports_flwr(ALLOWED / "server_app.py")  # the flower engine itself does import it
