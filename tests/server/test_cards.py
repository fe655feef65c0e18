"""Every saved adapter directory of a real run (rounds, final/) and a merged export carries a model card that
huggingface_hub parses; a card that cannot be written never costs a round, and is written inside the staged round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from fedit import pipeline
from fedit.config import Config
from fedit.model.lora import load_adapter_params
from fedit.server.checkpoint import RunStore


def small(model_dir: Path, data: Path, out: Path, **extra) -> Config:
    return Config().override({
        "model.name": str(model_dir), "data.source": str(data), "partition.test_size": 2, "model.device": "cpu",
        "partition.clients": 4, "run.fraction": 0.5, "run.rounds": 2, "run.out": str(out),
        "client.local_steps": 2, "client.batch_size": 4, "client.micro_batch_size": 2, "client.lr": 1e-2,
        "strategy.name": "fedadam", "strategy.fedadam.server_lr": 0.02, "run.eval_limit": 6,
        "run.eval_generate": False, "run.eval_every": 1, "lora.r": 4, **extra,
    })


def eval_table(text: str) -> dict[str, dict[str, str]]:
    """The markdown table under '## Evaluation' as {category: {column: cell}}."""
    section = text.split("## Evaluation", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    return {r[0]: dict(zip(rows[0], r, strict=True)) for r in rows[1:]}


@pytest.fixture(scope="module")
def run_dir(micro_model_dir: Path, small_data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cards") / "run"
    pipeline.run(small(micro_model_dir, small_data_file, out))
    return out


def test_every_adapter_directory_has_a_card(run_dir: Path, micro_model_dir: Path) -> None:
    fingerprint = json.loads((run_dir / "run.json").read_text())["data_fingerprint"]
    dirs = [run_dir / f"round_{r:04d}" / "adapter" for r in (0, 1, 2)] + [run_dir / "final"]
    for d in dirs:
        card = ModelCard.load(d / "README.md")
        assert card.data.library_name == "peft", d
        assert card.data.base_model is None  # a local base directory: no Hub id, and its path is not shown
        assert str(micro_model_dir) not in str(card) and str(run_dir.parent) not in str(card)
        assert "fedadam" in card.data.tags and "`fedadam`" in card.text and "`server_lr` = 0.02" in card.text
        assert fingerprint in card.text
    for r in (1, 2):
        text = ModelCard.load(dirs[r] / "README.md").text
        assert f"after round {r}" in text and f"{r} done of 2 planned" in text
    final = ModelCard.load(run_dir / "final" / "README.md")
    assert "final LoRA adapter" in final.text and "round 2, its last" in final.text


def test_round_cards_carry_that_rounds_eval(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "round_0001" / "metrics.json").read_text())
    card = ModelCard.load(run_dir / "round_0001" / "adapter" / "README.md")
    table = eval_table(card.text)
    for cat, row in metrics["eval"]["per_category"].items():
        assert float(table[cat]["loss"]) == pytest.approx(row["loss"], abs=5e-5)
        assert float(table[cat]["perplexity"]) == pytest.approx(row["perplexity"], abs=5e-5)
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == metrics["eval"]["mean"]


def test_final_card_has_the_eval_json_table(run_dir: Path) -> None:
    evals = json.loads((run_dir / "eval.json").read_text())
    card = ModelCard.load(run_dir / "final" / "README.md")
    table = eval_table(card.text)
    assert set(table) == set(evals["per_category"]) | {"mean"}
    for cat, row in [*evals["per_category"].items(), ("mean", evals["mean"])]:
        assert float(table[cat]["base loss"]) == pytest.approx(row["base_loss"], abs=5e-5)
        assert float(table[cat]["final loss"]) == pytest.approx(row["final_loss"], abs=5e-5)
    assert float(table["mean"]["base loss"]) != float(table["mean"]["final loss"])  # trained: the two differ
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"loss": evals["mean"]["final_loss"]}


def test_adapter_with_card_still_loads_with_peft(run_dir: Path, micro_model_dir: Path) -> None:
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(micro_model_dir)
    model = PeftModel.from_pretrained(base, str(run_dir / "final"))
    saved = load_adapter_params(run_dir / "final")
    loaded = get_peft_model_state_dict(model)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_export_gets_a_card(run_dir: Path, tmp_path: Path) -> None:
    from fedit.serve.export import export_merged
    from fedit.serve.session import resolve_adapter

    out = export_merged(resolve_adapter(run_dir), tmp_path / "merged")
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and "merged" in card.data.tags
    assert "fedit export" in card.text and "`run/final`" in card.text and "2 done of 2 planned" in card.text
    assert ".tmp-" not in card.text and str(tmp_path) not in str(card)
    evals = json.loads((run_dir / "eval.json").read_text())
    assert float(eval_table(card.text)["mean"]["final loss"]) == pytest.approx(evals["mean"]["final_loss"], abs=5e-5)


def test_card_is_written_inside_the_staged_round_and_a_failure_costs_nothing(
        micro_model_dir: Path, small_data_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fedit.model.card as card_mod
    import fedit.server.checkpoint as checkpoint

    out = tmp_path / "run"
    seen: list[tuple[str, bool]] = []
    real = checkpoint.write_run_card

    def spy(adapter_dir: Path, root: Path, kind: str, r: int, *a, **kw) -> bool:
        if kind == "round":  # the round directory must not exist yet: the card goes in before the rename
            seen.append((Path(adapter_dir).parent.name, (Path(root) / f"round_{r:04d}").exists()))
        return real(adapter_dir, root, kind, r, *a, **kw)

    def broken(*a, **kw):
        raise RuntimeError("card bug")

    monkeypatch.setattr(checkpoint, "write_run_card", spy)
    monkeypatch.setattr(card_mod, "build_card", broken)
    with pytest.warns(RuntimeWarning, match="could not write the model card .*card bug"):
        pipeline.run(small(micro_model_dir, small_data_file, out, **{"run.rounds": 1, "run.eval_every": 0}))
    assert seen == [(".tmp-round_0000", False), (".tmp-round_0001", False)]
    assert RunStore(out).rounds() == [0, 1] and (out / "final" / "adapter_model.safetensors").is_file()
    assert not (out / "round_0001" / "adapter" / "README.md").exists()
