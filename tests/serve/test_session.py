"""Adapter resolution (run dir, round dir, final/, NAME=DIR) and one base carrying several adapters correctly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedit.errors import ConfigError
from fedit.eval.generate import generate_ids
from fedit.generation import GenerationSettings
from fedit.serve.generation import generate_stream
from fedit.serve.session import ModelSession, parse_adapter_args, resolve_adapter


def test_resolve_run_round_and_adapter_dirs(micro_run: Path, micro_model_dir: Path) -> None:
    run = resolve_adapter(micro_run)
    assert run.path == (micro_run / "final").resolve() and run.round == 2 and run.name == "run"
    assert run.template == "alpaca-short" and Path(run.base) == micro_model_dir
    r1 = resolve_adapter(micro_run / "round_0001")
    assert r1.path == (micro_run / "round_0001" / "adapter").resolve() and r1.round == 1 and r1.name == "run-round1"
    same = resolve_adapter(micro_run / "round_0001" / "adapter")
    assert (same.path, same.round, same.template) == (r1.path, 1, "alpaca-short")
    assert resolve_adapter(micro_run, model="other", template="chat").base == "other"


def test_loose_adapter_and_moved_base(micro_run: Path, tmp_path: Path, micro_model_dir: Path) -> None:
    loose = tmp_path / "my-adapter"
    shutil.copytree(micro_run / "final", loose)
    src = resolve_adapter(loose)
    assert (src.name, src.round, src.run_dir, src.template) == ("my-adapter", None, None, "auto")
    cfg = loose / "adapter_config.json"
    cfg.write_text(cfg.read_text().replace(str(micro_model_dir), "/nowhere/model"))
    with pytest.raises(ConfigError, match="does not exist here"):
        resolve_adapter(loose)
    assert resolve_adapter(loose, model=str(micro_model_dir)).base == str(micro_model_dir)


def test_bad_adapter_args(micro_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_adapter(tmp_path / "missing")
    with pytest.raises(ConfigError, match="not a PEFT adapter"):
        resolve_adapter(tmp_path)
    with pytest.raises(ConfigError, match="duplicate"):
        parse_adapter_args([str(micro_run), str(micro_run / "final")])
    names = [s.name for s in parse_adapter_args([f"a={micro_run}", f"b={micro_run / 'round_0001'}"],
                                                include_base=True)]
    assert names == ["a", "b", "base"]
    every = parse_adapter_args([str(micro_run)], all_rounds=True)
    assert [(s.name, s.round) for s in every] == [("run", 2), ("run-round1", 1), ("run-round2", 2)]


def test_one_base_many_adapters_match_separate_models(micro_run: Path, micro_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sources = parse_adapter_args([f"r1={micro_run / 'round_0001'}", f"r2={micro_run / 'round_0002'}"],
                                 include_base=True)
    session = ModelSession.load(sources)
    settings = GenerationSettings(max_new_tokens=12)
    outs = {}
    for name in ["r1", "r2", "base", "r1"]:  # switch back and forth
        ids = session.chat_ids(name, [{"role": "user", "content": "What is the capital of France?"}])
        pieces: list[str] = []
        reason, usage = generate_stream(session, name, ids, settings, pieces.append)
        outs[name] = "".join(pieces)
        assert usage["prompt_tokens"] == len(ids) and reason in ("stop", "length")
        ref_model = AutoModelForCausalLM.from_pretrained(micro_model_dir, dtype="float32")
        if name != "base":
            ref_model = PeftModel.from_pretrained(ref_model, str(micro_run / f"round_000{name[1]}" / "adapter"))
        ref = generate_ids(ref_model.eval(), session.tokenizer, [ids], settings)[0]
        assert outs[name] == session.tokenizer.decode(ref, skip_special_tokens=True)
        assert usage["completion_tokens"] >= len(ref)
    assert len({outs["r1"], outs["r2"], outs["base"]}) == 3


def test_bases_must_agree(micro_run: Path, tmp_path: Path) -> None:
    from fedit.tools.micro_model import build_micro_model

    other = build_micro_model(tmp_path / "other", seed=1)
    with pytest.raises(ConfigError, match="one base model"):
        ModelSession.load([resolve_adapter(micro_run), resolve_adapter(micro_run / "round_0001", model=str(other))])
