"""Held-out records are tokenized once per run: the run's Evaluator keeps them, and the results are the same as
tokenizing them at every evaluation."""

from __future__ import annotations

from pathlib import Path

import fedit.pipeline as pipeline
from fedit.config import Config
from fedit.data.records import Record
from fedit.eval.evaluate import encode_held_out, evaluate


def test_evaluator_tokenizes_once_and_gives_the_uncached_results(micro_model_dir: Path, monkeypatch) -> None:
    cfg = Config().override({"model.name": str(micro_model_dir), "model.device": "cpu", "data.template": "alpaca",
                             "lora.r": 4, "run.eval_generate": False})
    bundle = pipeline.build_model(cfg)
    records = [Record(instruction=f"Name a fruit {i}", response=w, category=c)
               for i, (w, c) in enumerate([("apple", "a"), ("pear", "b"), ("plum", "a"), ("fig", "b")])]
    calls: list[int] = []

    def counting(recs, template, tok, cutoff):
        calls.append(len(recs))
        return encode_held_out(recs, template, tok, cutoff)

    monkeypatch.setattr(pipeline, "encode_held_out", counting)
    ev = pipeline.Evaluator(cfg, bundle, records, bundle.trainer.slots)
    params = bundle.trainer.slots.get()
    first, second = ev(params), ev(params)
    assert calls == [4]  # once, for the 4 records, however many evaluations follow
    uncached = evaluate(bundle.model, bundle.tokenizer, bundle.template, records, cutoff_len=cfg.data.cutoff_len,
                        generate=False).to_dict()
    assert first == second == uncached
    assert set(first["per_category"]) == {"a", "b"}
