"""`fedit env`: CPU flag detection from /proc/cpuinfo text, versions and extras as installed, the CLI output."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from fedit.env import as_text, bf16_matrix_units, collect, cpu_flags

SAPPHIRE = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
EPYC_ZEN3 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_cpu_flags_from_cpuinfo_text() -> None:
    amx = cpu_flags(SAPPHIRE)
    assert amx["amx_bf16"] and amx["avx512_bf16"] and amx["amx_tile"] and not amx["amx_int8"]
    assert bf16_matrix_units(amx)
    zen = cpu_flags(EPYC_ZEN3)
    assert zen["avx2"] and not any(v for k, v in zen.items() if k != "avx2")
    assert not bf16_matrix_units(zen)
    assert not bf16_matrix_units(cpu_flags(GRAVITON))  # arm's bf16 is not in the x86 list: reported as absent
    assert not any(cpu_flags("").values())
    assert bf16_matrix_units({"avx512_bf16": True})  # AVX512-BF16 alone counts


def test_collect_reports_installed_versions_and_extras() -> None:
    info = collect()
    assert info["packages"]["torch"] == importlib.metadata.version("torch")
    assert info["packages"]["peft"] == importlib.metadata.version("peft")
    assert info["extras"]["flower"] == (info["packages"]["flwr"] is not None)
    assert info["cpu"]["cores"] >= 1 and info["cpu"]["bf16_matrix_units"] == bf16_matrix_units(info["cpu"]["flags"])
    assert info["device"] in ("cpu", "cuda", "mps")
    text = as_text(info)
    assert f"torch {info['packages']['torch']}" in text and "bf16 matrix units: " in text
    assert ("cuda: not available" in text) != info["cuda"]["available"]


def test_env_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedit.cli import app

    out = tmp_path / "env.json"
    r = CliRunner().invoke(app, ["env", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("fedit ") and "packages: torch" in r.output
    assert json.loads(out.read_text())["packages"]["transformers"] == importlib.metadata.version("transformers")
