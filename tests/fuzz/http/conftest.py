"""A real `fedit serve` (uvicorn on 127.0.0.1, the micro model with a LoRA adapter) for the HTTP fuzz corpus."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from live_server import Server  # noqa: E402 - the serving tests' own `fedit serve` process

API_KEY = "fuzz-key"
MODEL = "run"


def _adapter(model_dir: Path, out: Path) -> Path:
    """A PEFT LoRA adapter on the micro model (its adapter_config.json names the base by path)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def fuzz_server(micro_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`fedit serve` with its default limits, an API key, and a short body timeout (the stalled-body cases)."""
    tmp = tmp_path_factory.mktemp("fuzz-http")
    adapter = _adapter(micro_model_dir, tmp / "adapter")
    srv = Server(["--adapter", f"{MODEL}={adapter}", "--api-key", API_KEY, "--body-timeout", "2"], tmp / "serve.log")
    srv.model = MODEL
    try:
        srv.wait_ready(timeout=120.0)
        yield srv
    finally:
        srv.stop()
