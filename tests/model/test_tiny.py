"""The shipped tiny base model loads with Auto classes, generates, and its corpus builder is clean and deterministic."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedit.tools import tiny_corpus
from fedit.tools.pretrain_tiny import ASSETS, MAX_BYTES

REQUIRED = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "README.md"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ASSETS)


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(ASSETS, dtype=torch.float32).eval()


def test_asset_files_present_and_small() -> None:
    for name in REQUIRED:
        assert (ASSETS / name).is_file(), name
    assert (ASSETS / "model.safetensors").stat().st_size <= MAX_BYTES
    cfg = json.loads((ASSETS / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is True


def test_tokenizer_round_trip_and_specials(tokenizer) -> None:
    text = "The capital of France is Paris.\n    def f(x): return x + 1  # 7 + 5 = 12"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert len(specials) == 3 and None not in specials
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    assert tokenizer.is_fast and 2048 <= len(tokenizer) <= 4096


def test_chat_template_ends_assistant_turn_with_eos(tokenizer) -> None:
    msgs = [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A pear."}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    assert "<|user|>\nName a fruit." in text and text.rstrip().endswith("A pear." + tokenizer.eos_token)
    prompt = tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")


def test_generates_and_knows_a_fact(model, tokenizer) -> None:
    gen = json.loads((ASSETS / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    enc = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > enc["input_ids"].shape[1]
    assert "Paris" in tokenizer.decode(out[0, enc["input_ids"].shape[1]:])


def test_corpus_slice_is_deterministic_and_clean() -> None:
    a = tiny_corpus.build_corpus(seed=3, scale=0.01, max_files=25)
    b = tiny_corpus.build_corpus(seed=3, scale=0.01, max_files=25)
    assert a == b and len(a) > 300
    assert tiny_corpus.generated_documents(3, 50, 50) != tiny_corpus.generated_documents(4, 50, 50)
    assert not any(tiny_corpus.has_forbidden_marker(d) for d in a)
    text = "\n".join(a)
    for marker in ("### Instruction", "### Response", "Input:", "<|user|>", "<|assistant|>"):
        assert marker not in text
    assert any("The capital of" in d for d in a) and any(" + " in d for d in a)


def test_marker_filter_catches_instruction_text() -> None:
    assert tiny_corpus.has_forbidden_marker("### Instruction:\nSay hi\n### Response:\nhi")
    assert tiny_corpus.has_forbidden_marker("Q: why?\nA: because")
    assert not tiny_corpus.has_forbidden_marker("A banana is yellow. The dog says woof.")


def test_adapters_on_the_tiny_base_name_it_portably(tmp_path) -> None:
    """An adapter trained on the shipped base records "tiny", not this machine's site-packages path, and fedit's
    loaders resolve that name wherever fedit is installed."""
    from peft import PeftModel

    from fedit.config import Config
    from fedit.model.load import load_base
    from fedit.model.lora import read_adapter_config, save_adapter
    from fedit.pipeline import build_model
    from fedit.serve.session import resolve_adapter

    cfg = Config().override({"model.device": "cpu", "lora.r": 2})
    bundle = build_model(cfg)
    save_adapter(bundle.trainer.slots.get(), tmp_path / "adapter", bundle.peft_config)
    recorded = read_adapter_config(tmp_path / "adapter")["base_model_name_or_path"]
    assert recorded == "tiny" and "site-packages" not in json.dumps(read_adapter_config(tmp_path / "adapter"))
    assert resolve_adapter(tmp_path / "adapter").base == "tiny"  # a lone adapter dir: no run config to fall back on
    base, _ = load_base(cfg.model)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    assert loaded.peft_config["default"].r == 2
