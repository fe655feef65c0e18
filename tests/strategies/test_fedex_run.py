"""fedex through the real pipeline on the micro model: the base delta saved with every round, bit-identical resume,
and the loaders (fedit export, eval, serve) applying the delta saved beside an adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedit import pipeline
from fedit.config import Config
from fedit.errors import ConfigError
from fedit.model.base_delta import BASE_DELTA_FILE, load_base_delta
from fedit.model.lora import load_adapter_params


def fedex_config(model_dir: Path, data: Path, out: Path, rounds: int) -> Config:
    return Config().override({
        "model.name": str(model_dir), "model.device": "cpu", "data.source": str(data), "partition.clients": 4,
        "partition.test_size": 2, "run.clients_per_round": 3, "run.rounds": rounds, "run.out": str(out),
        "client.local_steps": 3, "client.batch_size": 4, "client.micro_batch_size": 2, "client.lr": 0.05,
        "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0, "run.eval_limit": 3, "run.max_new_tokens": 2,
        "strategy.name": "fedex",
    })


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fedex_resume_is_bit_identical_and_every_round_saves_its_delta(micro_model_dir: Path, small_data_file: Path,
                                                                       tmp_path: Path) -> None:
    full = pipeline.run(fedex_config(micro_model_dir, small_data_file, tmp_path / "full", 3))
    pipeline.run(fedex_config(micro_model_dir, small_data_file, tmp_path / "part", 2))
    resumed = pipeline.run(fedex_config(micro_model_dir, small_data_file, tmp_path / "part", 3),
                           resume=tmp_path / "part")
    assert same(full.final_params, resumed.final_params)
    for r in (1, 2, 3):
        a, b = (load_base_delta(tmp_path / run / f"round_{r:04d}" / "adapter") for run in ("full", "part"))
        assert a and same(a, b), r  # resumed on the saved float32 delta: the same bits
    assert not (tmp_path / "full" / "round_0000" / "adapter" / BASE_DELTA_FILE).exists()
    final = load_file(str(tmp_path / "full" / "final" / BASE_DELTA_FILE))
    assert same(final, load_base_delta(tmp_path / "full" / "round_0003" / "adapter"))
    assert all(v.dtype == torch.float32 for v in final.values())
    # cumulative: round 3's delta is not round 2's (each round folds in a new residual)
    d2 = load_base_delta(tmp_path / "full" / "round_0002" / "adapter")
    assert any(not torch.equal(final[k], d2[k]) for k in final)
    rows = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    for r in rows[1:]:
        assert r["aggregation_error"] > 0 and r["strategy"]["residual_norm"] > 0
    ev = [json.loads((tmp_path / run / "eval.json").read_text()) for run in ("full", "part")]
    assert ev[0]["mean"] == ev[1]["mean"]  # the resumed run evaluates on the same W0 + delta and adapter


@pytest.fixture(scope="module")
def fedex_run(micro_model_dir: Path, small_data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fedex") / "run"
    pipeline.run(fedex_config(micro_model_dir, small_data_file, out, 2))
    return out


def _ids() -> torch.Tensor:
    return torch.tensor([[1, 17, 40, 83, 120, 9, 250, 33]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=_ids()).logits.double()


def test_export_merges_the_base_delta_and_equals_serve_and_eval(fedex_run: Path, micro_model_dir: Path,
                                                                tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedit.eval.answers import load_target
    from fedit.serve.export import export_merged
    from fedit.serve.session import ModelSession, resolve_adapter

    final = fedex_run / "final"
    src = resolve_adapter(fedex_run)
    out = export_merged(src, tmp_path / "merged")
    assert json.loads((out / "fedit_export.json").read_text())["base_delta"] is True
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)

    # the merged weights by hand: W0 + delta + (alpha / r) B A, for every adapted nn.Linear (no fan_in_fan_out)
    w0 = AutoModelForCausalLM.from_pretrained(str(micro_model_dir), dtype=torch.float32).state_dict()
    ad = load_adapter_params(final)
    delta = load_base_delta(final)
    cfg = json.loads((final / "adapter_config.json").read_text())
    s = cfg["lora_alpha"] / cfg["r"]
    got = merged.state_dict()
    assert len(delta) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    for name, d in delta.items():
        prefix = "base_model.model." + name.removesuffix(".weight")
        want = w0[name].double() + d.double() + s * (ad[f"{prefix}.lora_B.weight"].double()
                                                     @ ad[f"{prefix}.lora_A.weight"].double())
        assert torch.allclose(got[name].double(), want, atol=1e-5), name
    assert torch.equal(got["model.embed_tokens.weight"], w0["model.embed_tokens.weight"])

    ref = _logits(merged)
    session = ModelSession.load([src], device="cpu", dtype="float32")
    with session.use(src.name):
        served = _logits(session.model)
    evaluated = _logits(load_target(fedex_run, device="cpu", dtype="float32").model)
    assert torch.allclose(served, ref, atol=1e-4) and torch.allclose(evaluated, ref, atol=1e-4)
    # the adapter alone, on W0, is another model: the checks above can fail
    bare = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(micro_model_dir),
                                                                          dtype=torch.float32), str(final))
    assert (_logits(bare.eval()) - ref).abs().max() > 1e-2


def test_serve_switches_the_base_with_the_adapter(fedex_run: Path, micro_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from fedit.serve.session import AdapterSource, ModelSession, resolve_adapter

    src = resolve_adapter(fedex_run)
    base = AdapterSource("base", None, src.base, src.template)
    session = ModelSession.load([base, src], device="cpu", dtype="float32")
    plain = _logits(AutoModelForCausalLM.from_pretrained(str(micro_model_dir), dtype=torch.float32))
    with session.use(src.name):
        first = _logits(session.model)
    with session.use("base"):
        assert torch.equal(_logits(session.model), plain)  # W0 restored exactly, adapters off
    with session.use(src.name):
        assert torch.equal(_logits(session.model), first)


def test_a_delta_cannot_go_on_a_quantized_base_or_a_foreign_model(fedex_run: Path, micro_model_dir: Path,
                                                                  tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from fedit.model.base_delta import apply_saved_base_delta

    model = AutoModelForCausalLM.from_pretrained(str(micro_model_dir), dtype=torch.float32)
    model.is_loaded_in_4bit = True  # what transformers sets on a bitsandbytes 4-bit load
    with pytest.raises(ConfigError, match="quantized"):
        apply_saved_base_delta(model, fedex_run / "final")
    assert apply_saved_base_delta(model, fedex_run / "round_0000" / "adapter") is None  # no delta: nothing to do
    from fedit.tools.micro_model import build_micro_model

    other = AutoModelForCausalLM.from_pretrained(str(build_micro_model(tmp_path / "wide", hidden=48)),
                                                 dtype=torch.float32)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ConfigError, match="has shape"):
        apply_saved_base_delta(other, fedex_run / "final")
    assert same(before, other.state_dict())  # refused before any weight changed
