"""`fedit export --check-vllm` / `serve.vllm.check_vllm` on real fedit adapters (micro-model runs and save_adapter on
the shipped tiny base), hand-edited copies of them, and, where vLLM is installed, vLLM's own loading code on the
same directories (PEFTHelper.from_local_dir + validate_legal, LoRAModel.from_local_checkpoint)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from fedit import pipeline
from fedit.cli import app
from fedit.config import Config, LoraConfig
from fedit.model.base_delta import BASE_DELTA_FILE
from fedit.model.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, attach_lora, peft_lora_config, save_adapter
from fedit.serve.vllm import ARCHITECTURES, Problem, check_vllm, errors


def run_config(model_dir: Path, data: Path, out: Path, strategy: str) -> Config:
    return Config().override({
        "model.name": str(model_dir), "model.device": "cpu", "data.source": str(data), "partition.clients": 3,
        "partition.test_size": 2, "run.clients_per_round": 2, "run.rounds": 1, "run.out": str(out),
        "client.local_steps": 2, "client.batch_size": 2, "client.micro_batch_size": 2, "client.lr": 0.05,
        "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0, "run.eval_limit": 2, "run.max_new_tokens": 1,
        "strategy.name": strategy,
    })


@pytest.fixture(scope="module")
def runs(micro_model_dir: Path, small_data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One-round micro-model runs (all-linear LoRA r4) of fedavg, ffa and fedex: real fedit adapters."""
    root = tmp_path_factory.mktemp("vllm-runs")
    out = {}
    for strategy in ("fedavg", "ffa", "fedex"):
        pipeline.run(run_config(micro_model_dir, small_data_file, root / strategy, strategy))
        out[strategy] = root / strategy
    return out


def copy_adapter(src: Path, dst: Path, **changes: Any) -> Path:
    """A copy of an adapter directory with adapter_config.json fields changed (a hand edit)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / ADAPTER_CONFIG).read_text())
    cfg.update(changes)
    (dst / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    return dst


def rename_tensors(adapter: Path, old: str, new: str) -> None:
    """Rename every tensor of one module (e.g. down_proj -> w_gate), as an adapter for another layout would have."""
    tensors = load_file(str(adapter / ADAPTER_WEIGHTS))
    save_file({k.replace(old, new): v for k, v in tensors.items()}, str(adapter / ADAPTER_WEIGHTS))


def saved_adapter(model_dir: Path, out: Path, r: int, targets: list[str]) -> Path:
    """save_adapter of a freshly attached LoRA (alpha 2r) with a random (non-zero) B, as fedit saves every round."""
    from transformers import AutoModelForCausalLM

    from fedit.model.lora import AdapterSlots, target_modules

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=r, alpha=2 * r, dropout=0.0, targets=targets)
    model = attach_lora(base, lora, seed=0)
    gen = torch.Generator().manual_seed(0)
    params = {k: torch.randn(v.shape, generator=gen) if ".lora_B." in k else v
              for k, v in AdapterSlots(model).get().items()}
    save_adapter(params, out, peft_lora_config(lora, target_modules(base, targets), str(model_dir)))
    return out


def with_head_lora(src: Path, dst: Path, model_dir: Path) -> Path:
    """A copy of an adapter plus a LoRA on lm_head in PEFT's layout (A (r, hidden), B (vocab, r)). fedit itself does
    not train the head (its all-linear leaves it out), so this one is built by hand."""
    cfg = json.loads((model_dir / "config.json").read_text())
    adapter = copy_adapter(src, dst)
    tensors = load_file(str(adapter / ADAPTER_WEIGHTS))
    r = json.loads((adapter / ADAPTER_CONFIG).read_text())["r"]
    gen = torch.Generator().manual_seed(3)
    tensors["base_model.model.lm_head.lora_A.weight"] = torch.randn(r, cfg["hidden_size"], generator=gen)
    tensors["base_model.model.lm_head.lora_B.weight"] = torch.randn(cfg["vocab_size"], r, generator=gen)
    save_file(tensors, str(adapter / ADAPTER_WEIGHTS))
    return adapter


def fields(problems: list[Problem], level: str = "error") -> set[tuple[str, str]]:
    return {(p.file, p.field) for p in problems if p.level == level}


def check_cli(*args: str) -> tuple[int, str, list[str]]:
    res = CliRunner().invoke(app, ["export", *args, "--check-vllm"])
    return res.exit_code, res.stdout, [line for line in res.stderr.splitlines() if line.strip()]


def test_fedavg_and_ffa_adapters_load_as_they_are(runs: dict[str, Path], micro_model_dir: Path) -> None:
    for strategy in ("fedavg", "ffa"):
        final = runs[strategy] / "final"
        assert check_vllm(final) == [], strategy  # all-linear on Llama: q/k/v/o/gate/up/down, all vLLM modules
        code, out, err = check_cli("--adapter", str(runs[strategy]))
        assert code == 0 and err == [], (out, err)
        # r4: the smallest --max-lora-rank choice that holds it is 8 (vLLM's default 16 would do, with larger buffers)
        assert out.strip() == (f"ok: serve with `vllm serve {micro_model_dir} --enable-lora --max-lora-rank 8 "
                               f"--lora-modules {strategy}={final.resolve()}`")


def test_fedex_base_delta_is_refused_with_the_merged_export_to_serve(runs: dict[str, Path]) -> None:
    final = runs["fedex"] / "final"
    assert (final / BASE_DELTA_FILE).is_file()
    problems = check_vllm(final)
    assert fields(problems) == {(BASE_DELTA_FILE, "-")}  # otherwise a plain LoRA: only the delta is in the way
    code, out, err = check_cli("--adapter", str(runs["fedex"]))
    assert code == 2 and out == "" and len(err) == 1, (out, err)
    assert err[0].startswith(f"error: {BASE_DELTA_FILE}: ") and "FedEx-LoRA base delta" in err[0]
    assert f"fedit export --adapter {final.resolve()} --out merged/" in err[0]


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"use_dora": True}, "use_dora", "DoRA"),
    ({"bias": "all"}, "bias", "'all'"),
    ({"lora_bias": True}, "lora_bias", "LoRA bias"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save", "['lm_head']"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights", "'pissa'"),
    ({"peft_type": "IA3"}, "peft_type", "'IA3'"),
    ({"r": 1024}, "r", "above vLLM's largest --max-lora-rank 512"),
])
def test_hand_edited_config_fails_naming_the_field(runs: dict[str, Path], tmp_path: Path, change: dict, field: str,
                                                   words: str) -> None:
    adapter = copy_adapter(runs["fedavg"] / "final", tmp_path / "a", **change)
    problems = check_vllm(adapter)
    assert (ADAPTER_CONFIG, field) in fields(problems), problems
    code, out, err = check_cli("--adapter", str(adapter))
    assert code == 2 and out == "", out
    line = next(x for x in err if x.startswith(f"error: {ADAPTER_CONFIG}: {field}: "))
    assert words in line, line


def test_unknown_target_module_fails_where_the_adapter_has_tensors_for_it(runs: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "w_gate"]
    named_only = copy_adapter(runs["fedavg"] / "final", tmp_path / "named", target_modules=targets)
    problems = check_vllm(named_only)
    # no tensor uses the name, and vLLM never matches target_modules (the tensors are the truth): a warning only
    assert errors(problems) == [] and fields(problems, "warning") == {(ADAPTER_CONFIG, "target_modules")}
    assert "'w_gate'" in problems[0].message and "ignores the name" in problems[0].message

    with_tensors = copy_adapter(runs["fedavg"] / "final", tmp_path / "tensors", target_modules=targets)
    rename_tensors(with_tensors, ".down_proj.", ".w_gate.")
    problems = check_vllm(with_tensors)
    assert (ADAPTER_CONFIG, "target_modules") in fields(problems)
    code, _, err = check_cli("--adapter", str(with_tensors))
    assert code == 2
    assert any(x.startswith(f"error: {ADAPTER_CONFIG}: target_modules: 'w_gate' is not a module") for x in err), err
    assert any(x.startswith(f"error: {ADAPTER_WEIGHTS}: base_model.model.model.layers.0.mlp.w_gate.lora_A.weight: ")
               for x in err), err


def test_rank_above_the_default_max_lora_rank_names_the_flag(micro_model_dir: Path, tmp_path: Path) -> None:
    adapter = saved_adapter(micro_model_dir, tmp_path / "r32", 32, ["q_proj", "v_proj"])
    problems = check_vllm(adapter)
    assert errors(problems) == [] and fields(problems, "warning") == {(ADAPTER_CONFIG, "r")}
    assert "pass --max-lora-rank 32" in problems[0].message
    code, out, err = check_cli("--adapter", str(adapter))
    assert code == 0 and len(err) == 1 and err[0].startswith(f"warning: {ADAPTER_CONFIG}: r: rank 32 "), err
    assert f"--enable-lora --max-lora-rank 32 --lora-modules r32={adapter.resolve()}`" in out
    # a rank vLLM has no slot size for is rounded up to the next --max-lora-rank choice
    r24 = saved_adapter(micro_model_dir, tmp_path / "r24", 24, ["q_proj"])
    assert "--max-lora-rank 32 " in check_cli("--adapter", str(r24))[1]
    r16 = saved_adapter(micro_model_dir, tmp_path / "r16", 16, ["q_proj"])
    code, out, err = check_cli("--adapter", str(r16))
    assert code == 0 and err == [] and "--max-lora-rank 16 " in out  # vLLM's default: no warning


def test_tiny_base_adapter_and_a_wrong_base(tiny_dir: Path, micro_model_dir: Path, tmp_path: Path) -> None:
    tiny = saved_adapter(tiny_dir, tmp_path / "tiny", 16, ["all-linear"])
    assert check_vllm(tiny) == []
    assert check_vllm(tiny, base="tiny") == []  # the shipped base by its name: config.json read from the package
    # the same adapter checked against the micro model: every tensor's width disagrees with that base
    problems = errors(check_vllm(tiny, base=str(micro_model_dir)))
    assert problems and all(p.file == ADAPTER_WEIGHTS and "an adapter for another base?" in p.message
                            for p in problems)


def test_embedding_and_head_loras_depend_on_the_architecture(runs: dict[str, Path], micro_model_dir: Path,
                                                             tmp_path: Path) -> None:
    adapter = with_head_lora(runs["fedavg"] / "final", tmp_path / "head", micro_model_dir)
    assert check_vllm(adapter) == []  # vLLM's LlamaForCausalLM lists lm_head in embedding_modules
    mistral = tmp_path / "mistral"
    mistral.mkdir()
    cfg = json.loads((micro_model_dir / "config.json").read_text())
    (mistral / "config.json").write_text(json.dumps({**cfg, "architectures": ["MistralForCausalLM"]}))
    problems = errors(check_vllm(adapter, base=str(mistral)))  # MistralForCausalLM: embedding_modules = {}
    assert {p.field for p in problems} == {"base_model.model.lm_head.lora_A.weight",
                                          "base_model.model.lm_head.lora_B.weight"}
    assert ARCHITECTURES["Qwen2ForCausalLM"].expected_modules() == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                    "gate_proj", "up_proj", "down_proj"}


def test_missing_files_and_unknown_bases_are_one_line_each(runs: dict[str, Path], tmp_path: Path) -> None:
    no_weights = copy_adapter(runs["fedavg"] / "final", tmp_path / "nw")
    (no_weights / ADAPTER_WEIGHTS).unlink()
    code, out, err = check_cli("--adapter", str(no_weights))
    assert code == 2 and err == [f"error: {no_weights}: {ADAPTER_WEIGHTS}: missing: vLLM reads {ADAPTER_WEIGHTS} "
                                 "or adapter_model.bin or adapter_model.pt"], err
    hub = copy_adapter(runs["fedavg"] / "final", tmp_path / "hub", base_model_name_or_path="nobody/not-cached-here")
    problems = check_vllm(hub)
    assert errors(problems) == [] and fields(problems, "warning") == {(ADAPTER_CONFIG, "base_model_name_or_path")}
    assert check_vllm(tmp_path / "nowhere") == [Problem("error", str(tmp_path / "nowhere"), ADAPTER_CONFIG,
                                                        "missing: not a PEFT adapter directory")]
    code, out, err = check_cli("--adapter", str(tmp_path / "nowhere"))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --adapter ") and "does not exist" in err[0]


def test_check_vllm_writes_nothing_and_out_is_needed_without_it(runs: dict[str, Path], tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["export", "--adapter", str(runs["fedavg"]), "--check-vllm", "--out",
                                   str(tmp_path / "m")])
    assert res.exit_code == 2 and res.stderr.startswith("error: --check-vllm checks the adapter and writes nothing")
    assert not (tmp_path / "m").exists()
    res = CliRunner().invoke(app, ["export", "--adapter", str(runs["fedavg"])])
    assert res.exit_code == 2 and res.stderr.strip() == ("error: --out: required, the directory for the merged model "
                                                         "(or pass --check-vllm)")


# -- vLLM's own loading code -----------------------------------------------------------------------------------

VLLM_SCRIPT = r"""
import importlib, json, sys, torch
from vllm.config.lora import LoRAConfig
from vllm.lora.lora_model import LoRAModel
from vllm.lora.peft_helper import PEFTHelper
import vllm.lora.lora_model

# vLLM pins its CPU copies of an adapter for a GPU; with no CUDA driver here pinning raises, so load unpinned
vllm.lora.lora_model.PIN_MEMORY = False
out = []
for case in json.load(sys.stdin):
    arch = case["arch"]
    cls = getattr(importlib.import_module("vllm.model_executor.models." + case["module"]), arch)
    expected = set(cls.embedding_modules)  # worker_manager._load_adapter's expansion of the supported modules
    for m in case["linear"]:
        expected.update(cls.packed_modules_mapping.get(m, [m]))
    row = {"name": case["name"], "packed": cls.packed_modules_mapping, "embeddings": sorted(cls.embedding_modules)}
    try:
        helper = PEFTHelper.from_local_dir(case["dir"], max_position_embeddings=512)
        helper.validate_legal(LoRAConfig(max_lora_rank=case["max_lora_rank"]))
        model = LoRAModel.from_local_checkpoint(case["dir"], expected, peft_helper=helper, lora_model_id=1,
                                                device="cpu", dtype=torch.float32, model_vocab_size=case["vocab"])
        row.update(ok=True, rank=model.rank, modules={k: [v.scaling, torch.cat([v.lora_a.flatten(),
                   v.lora_b.flatten()]).double().sum().item()] for k, v in model.loras.items()})
    except Exception as e:
        row.update(ok=False, error=f"{type(e).__name__}: {e}")
    out.append(row)
print("VLLM-RESULT " + json.dumps(out))
"""

VLLM_MODULES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
                "Qwen3ForCausalLM": "qwen3", "Phi3ForCausalLM": "phi3"}


def vllm_python() -> str | None:
    """FEDIT_VLLM_PYTHON (a venv with vllm, kept apart from fedit's torch), else this interpreter if vllm imports."""
    return os.environ.get("FEDIT_VLLM_PYTHON") or (sys.executable if importlib.util.find_spec("vllm") else None)


NO_VLLM = ("vllm is not importable here and FEDIT_VLLM_PYTHON is unset (it wants its own torch: install it in a "
           "separate venv and point FEDIT_VLLM_PYTHON at that venv's python)")


def run_vllm(cases: list[dict]) -> dict[str, dict]:
    python = vllm_python()
    assert python is not None
    # the venv's own packages only: a PYTHONPATH made for this interpreter would give it this torch
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env |= {"CUDA_VISIBLE_DEVICES": "", "VLLM_LOGGING_LEVEL": "ERROR", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([python, "-c", VLLM_SCRIPT], input=json.dumps(cases), capture_output=True, text=True,
                         env=env, timeout=300)
    lines = [x for x in res.stdout.splitlines() if x.startswith("VLLM-RESULT ")]
    assert res.returncode == 0 and lines, res.stderr[-3000:]
    return {row["name"]: row for row in json.loads(lines[-1].removeprefix("VLLM-RESULT "))}


def payload_sums(adapter: Path) -> dict[str, float]:
    """Per module: sum of A and B as vLLM's loader would return them (same tensors, another order of addition)."""
    sums: dict[str, float] = {}
    for k, v in load_file(str(adapter / ADAPTER_WEIGHTS)).items():
        module = k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        sums[module] = sums.get(module, 0.0) + v.double().sum().item()
    return sums


@pytest.mark.slow
@pytest.mark.skipif(vllm_python() is None, reason=NO_VLLM)
def test_vllm_loads_what_check_vllm_passes_and_refuses_what_it_fails(runs: dict[str, Path], micro_model_dir: Path,
                                                                      tmp_path: Path) -> None:
    final = runs["fedavg"] / "final"
    vocab = json.loads((micro_model_dir / "config.json").read_text())["vocab_size"]
    head = with_head_lora(final, tmp_path / "head", micro_model_dir)
    r32 = saved_adapter(micro_model_dir, tmp_path / "r32", 32, ["q_proj"])
    unknown = copy_adapter(final, tmp_path / "unknown")
    rename_tensors(unknown, ".down_proj.", ".w_gate.")
    mistral = tmp_path / "mistral-base"
    mistral.mkdir()
    cfg = json.loads((micro_model_dir / "config.json").read_text())
    (mistral / "config.json").write_text(json.dumps({**cfg, "architectures": ["MistralForCausalLM"]}))
    # name: (adapter dir, architecture, --max-lora-rank, fedit's base, vLLM loads it?)
    cases: dict[str, tuple[Path, str, int, str | None, bool]] = {
        "fedavg": (final, "LlamaForCausalLM", 16, None, True),
        "ffa": (runs["ffa"] / "final", "LlamaForCausalLM", 16, None, True),
        "fedex": (runs["fedex"] / "final", "LlamaForCausalLM", 16, None, True),  # loads: why fedit refuses it
        "rslora": (copy_adapter(final, tmp_path / "rs", use_rslora=True), "LlamaForCausalLM", 16, None, True),
        "dora": (copy_adapter(final, tmp_path / "dora", use_dora=True), "LlamaForCausalLM", 16, None, False),
        "bias": (copy_adapter(final, tmp_path / "bias", bias="all"), "LlamaForCausalLM", 16, None, False),
        "pissa": (copy_adapter(final, tmp_path / "pissa", init_lora_weights="pissa"), "LlamaForCausalLM", 16, None,
                  False),
        "unknown": (unknown, "LlamaForCausalLM", 16, None, False),
        "r32-default": (r32, "LlamaForCausalLM", 16, None, False),
        "r32-flag": (r32, "LlamaForCausalLM", 32, None, True),
        "head-llama": (head, "LlamaForCausalLM", 16, None, True),
        "head-mistral": (head, "MistralForCausalLM", 16, str(mistral), False),
    }
    got = run_vllm([{"name": name, "dir": str(d), "arch": arch, "module": VLLM_MODULES[arch], "vocab": vocab,
                     "linear": list(ARCHITECTURES[arch].linear), "max_lora_rank": rank}
                    for name, (d, arch, rank, _, _) in cases.items()])
    for name, (d, arch, rank, base, loads) in cases.items():
        row = got[name]
        assert row["ok"] == loads, (name, row)
        # fedit's table is vLLM's: the packed modules and embedding modules of the real model class
        assert {k: tuple(v) for k, v in row["packed"].items()} == ARCHITECTURES[arch].packed, name
        assert tuple(row["embeddings"]) == tuple(sorted(ARCHITECTURES[arch].embeddings)), name
        problems = check_vllm(d, base=base)
        fedit_only = {p for p in errors(problems) if p.file == BASE_DELTA_FILE}
        rank_warning = [p for p in problems if p.level == "warning" and p.field == "r"]
        if loads:
            assert set(errors(problems)) == fedit_only, (name, problems)
            if rank > 16:
                assert rank_warning and f"--max-lora-rank {rank}" in rank_warning[0].message
        else:
            assert errors(problems) or (rank_warning and rank == 16), (name, problems, row["error"])
    assert got["fedex"]["ok"] and errors(check_vllm(runs["fedex"] / "final"))  # vLLM would serve W0 + sBA silently
    # what vLLM loaded is the adapter: every module, under the model's module names, with peft's scaling
    for name, scaling in (("fedavg", 8 / 4), ("rslora", 8 / 2), ("head-llama", 8 / 4)):
        d = cases[name][0]
        sums = payload_sums(d)
        loaded = got[name]["modules"]
        assert loaded.keys() == sums.keys(), name
        for module, (s, total) in loaded.items():
            assert s == pytest.approx(scaling) and total == pytest.approx(sums[module], rel=1e-9, abs=1e-9), module
    assert "DoRA" in got["dora"]["error"] and "bias" in got["bias"]["error"]
    assert "max_lora_rank 16" in got["r32-default"]["error"] and "w_gate" in got["unknown"]["error"]
    assert "lm_head" in got["head-mistral"]["error"]
