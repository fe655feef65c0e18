"""`fedit export`: the merged model loads with AutoModelForCausalLM and generates exactly what base + adapter does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedit.cli import app
from fedit.eval.generate import generate_ids
from fedit.generation import GenerationSettings

PROMPTS = ["What is the capital of France?", "List three colours.", "Once upon a time", "Count to five."]


def test_export_merged_matches_adapter(tiny_dir: Path, tiny_run: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    res = CliRunner().invoke(app, ["export", "--adapter", str(tiny_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / "fedit_export.json").read_text())["merged_from"]["round"] == 2

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32),
                                        str(tiny_run / "final")).eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
               for p in PROMPTS]
    ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    greedy = GenerationSettings(max_new_tokens=20)
    merged_out = generate_ids(merged, tok, ids, greedy)
    adapter_out = generate_ids(adapted, tok, ids, greedy)
    assert merged_out == adapter_out
    with adapted.disable_adapter():
        base_out = generate_ids(adapted, tok, ids, greedy)
    assert base_out != adapter_out  # the adapter matters, so the equality above is not vacuous
    x = torch.tensor([ids[0]])
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, adapted(x).logits, atol=1e-4, rtol=1e-4)


def test_export_refuses_non_empty_out(tiny_run: Path, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    res = CliRunner().invoke(app, ["export", "--adapter", str(tiny_run / "round_0001"), "--out", str(tmp_path)])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output  # one line however long the temp path is
    assert lines[0].startswith("error: --out ") and str(tmp_path) in lines[0] and "not empty" in lines[0]
    assert (tmp_path / "keep.txt").exists()


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_export_casts_dtype(micro_run: Path, tmp_path: Path, dtype: str) -> None:
    from transformers import AutoModelForCausalLM

    res = CliRunner().invoke(app, ["export", "-a", str(micro_run), "-o", str(tmp_path / "m"), "--dtype", dtype])
    assert res.exit_code == 0, res.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16
