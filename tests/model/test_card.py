"""Model cards built by fedit.model.card: the YAML header huggingface_hub parses back, the body's facts and tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from fedit.config import Config
from fedit.model.card import CardFacts, build_card, hub_base_model, hub_dataset, write_run_card

ADAPTER_CFG = {"r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "q_proj"], "base_model_name_or_path": "tiny"}
INFO = {"fedit_version": "0.1.0", "data_fingerprint": "f" * 64, "num_clients": 4}


def facts(privacy: dict | None = None, **overrides) -> CardFacts:
    cfg = Config().override({"run.out": "/home/someone/runs/exp7", "partition.clients": 4, **overrides})
    return CardFacts(cfg, dict(INFO), privacy or {})


def load(card, tmp_path: Path) -> ModelCard:
    path = tmp_path / "README.md"
    card.save(path)
    return ModelCard.load(path)  # a local file: no network


def eval_table(text: str) -> dict[str, dict[str, str]]:
    """The markdown table under '## Evaluation' as {category: {column: cell}}."""
    section = text.split("## Evaluation", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    header, body = rows[0], rows[1:]
    return {r[0]: dict(zip(header, r, strict=True)) for r in body}


def test_tiny_base_is_named_as_adapter_config_records_it(tmp_path: Path) -> None:
    card = load(build_card("round", "tiny", facts(), ADAPTER_CFG, "exp7/round_0001/adapter", round_idx=1,
                           metrics={"round": 1, "sampled": [0, 2], "replied": [0, 2], "train_loss": 2.5}), tmp_path)
    assert card.data.base_model == "tiny" and card.data.library_name == "peft"
    assert card.data.pipeline_tag == "text-generation"
    assert "base_model_relation" not in card.data  # not a Hub model: no relation to one
    assert {"fedit", "federated-learning", "lora", "peft", "instruction-tuning", "fedavg"} <= set(card.data.tags)
    assert card.data.license is None  # the tiny base's README names no license
    assert "fedit's shipped" in card.text and 'resolve_model_path("tiny")' in card.text
    assert "/home/someone" not in str(card)  # the run's absolute path never reaches the card
    assert "1 done of 16 planned" in card.text and "f" * 64 in card.text and "clients [0, 2] sampled" in card.text


def test_hub_base_and_dataset_go_into_the_header(tmp_path: Path) -> None:
    f = facts(**{"model.name": "meta-llama/Llama-3.2-1B", "data.source": "databricks/databricks-dolly-15k",
                 "data.test_source": "hf:org/held-out"})
    card = load(build_card("final", "meta-llama/Llama-3.2-1B", f, ADAPTER_CFG, "exp7/final", round_idx=16),
                tmp_path)
    assert card.data.base_model == "meta-llama/Llama-3.2-1B" and card.data["base_model_relation"] == "adapter"
    assert card.data.datasets == ["databricks/databricks-dolly-15k", "org/held-out"]
    assert "final LoRA adapter" in card.text and "16 done of 16 planned" in card.text


def test_local_paths_never_leak(tmp_path: Path) -> None:
    base = tmp_path / "secret" / "mymodel"
    base.mkdir(parents=True)
    data = tmp_path / "secret" / "train.jsonl"
    data.write_text("")
    assert hub_base_model(str(base)) is None and hub_dataset(str(data)) is None
    assert hub_base_model("./models/x") is None and hub_dataset("data/*.json") is None
    f = facts(**{"model.name": str(base), "data.source": str(data)})
    card = load(build_card("round", str(base), f, ADAPTER_CFG, "exp7/round_0001/adapter", round_idx=1), tmp_path)
    assert card.data.base_model is None and card.data.datasets is None
    assert str(tmp_path) not in str(card)
    assert "`mymodel`" in card.text and "`train.jsonl`" in card.text


def test_license_comes_from_a_local_base_card(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\n---\n# a base\n")
    card = load(build_card("round", str(base), facts(), ADAPTER_CFG, "x", round_idx=0), tmp_path)
    assert card.data.license == "mit"


def test_strategy_settings_are_shown(tmp_path: Path) -> None:
    f = facts(**{"strategy.name": "fedadam", "strategy.fedadam.server_lr": 0.05, "strategy.fedadam.tau": 0.002})
    card = load(build_card("round", "tiny", f, ADAPTER_CFG, "x", round_idx=2), tmp_path)
    assert "fedadam" in card.data.tags and "FedAdam (Reddi et al." in card.text
    assert "`server_lr` = 0.05" in card.text and "`tau` = 0.002" in card.text and "`beta1` = 0.9" in card.text
    assert "targets q_proj, v_proj" in card.text and "r 4, alpha 8" in card.text


def test_privacy_section_only_with_privacy_settings(tmp_path: Path) -> None:
    plain = load(build_card("round", "tiny", facts(), ADAPTER_CFG, "x", round_idx=1), tmp_path)
    assert "## Privacy" not in plain.text
    dp = load(build_card("round", "tiny", facts({"noise_multiplier": 1.1, "clip": 0.5}), ADAPTER_CFG, "x",
                         round_idx=1), tmp_path)
    assert "## Privacy" in dp.text and "`noise_multiplier`: 1.1" in dp.text and "`clip`: 0.5" in dp.text


def test_round_eval_table_and_eval_results_parse_back(tmp_path: Path) -> None:
    ev = {"per_category": {"open_qa": {"n": 3, "loss": 2.123456, "perplexity": 8.36, "score": 0.25},
                           "summarization": {"n": 2, "loss": 3.5, "perplexity": 33.1, "score": 0.5}},
          "mean": {"loss": 2.811728, "perplexity": 20.73, "score": 0.375}}
    card = load(build_card("round", "tiny", facts(), ADAPTER_CFG, "x", round_idx=3,
                           metrics={"round": 3, "sampled": [1], "replied": [1], "eval": ev}), tmp_path)
    table = eval_table(card.text)
    for cat, row in ev["per_category"].items():
        assert int(table[cat]["n"]) == row["n"]
        for k in ("loss", "perplexity", "score"):
            assert float(table[cat][k]) == pytest.approx(row[k], abs=5e-5)
    assert float(table["mean"]["loss"]) == pytest.approx(ev["mean"]["loss"], abs=5e-5)
    got = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert got == ev["mean"]  # the model-index holds the means exactly
    assert card.data.model_name == "exp7-round3"


def test_merged_card_and_unknown_kind(tmp_path: Path) -> None:
    card = load(build_card("merged", "meta-llama/Llama-3.2-1B", None, ADAPTER_CFG, "merged-x",
                           merged={"adapter": "run/final", "dtype": "bfloat16", "base_delta": True}), tmp_path)
    assert card.data.library_name == "transformers" and card.data["base_model_relation"] == "finetune"
    assert "merged" in card.data.tags and "bfloat16" in card.text and "base delta" in card.text
    assert "not known here" in card.text  # no run directory: no training facts are made up
    with pytest.raises(ValueError, match="kind"):
        build_card("personal-typo", "tiny", None, ADAPTER_CFG, "x")


def test_write_run_card_warns_instead_of_raising(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with pytest.warns(RuntimeWarning, match="could not write the model card"):
        assert write_run_card(adapter, tmp_path / "no-run", "round", 1) is False
    assert not (adapter / "README.md").exists()


def test_facts_of_a_run_directory_without_run_json(tmp_path: Path) -> None:
    """A run directory made by hand (config.toml only) still gives a card: the facts run.json holds are unknown."""
    from fedit.config import Config
    from fedit.model.card import CardFacts

    Config().override({"lora.r": 4}).save(tmp_path / "config.toml")
    facts = CardFacts.from_run_dir(tmp_path)
    assert facts.config.lora.r == 4 and facts.info == {}
