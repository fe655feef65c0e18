"""Fixtures for serving tests: a fake run directory whose adapters have random non-zero LoRA B weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from live_server import Server, free_port  # noqa: E402, F401 - shared with the HTTP fuzz corpus


def make_run(model_dir: Path, run_dir: Path, rounds: int = 2, template: str = "alpaca-short",
             scale: float = 0.5) -> Path:
    """A run dir (config.toml, round_NNNN/adapter, final/) with distinct random adapters on `model_dir`."""
    from transformers import AutoModelForCausalLM

    from fedit.config import Config, LoraConfig
    from fedit.model.lora import AdapterSlots, attach_lora, peft_lora_config, save_adapter, target_modules
    from fedit.server.checkpoint import atomic_write_json, atomic_write_text, round_dir_name

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, alpha=8, dropout=0.0)
    model = attach_lora(base, lora, seed=0)
    slots = AdapterSlots(model)
    peft_config = peft_lora_config(lora, target_modules(base, None), str(model_dir))
    cfg = Config().override({"model.name": str(model_dir), "data.template": template, "run.rounds": rounds})
    run_dir.mkdir(parents=True)
    atomic_write_text(run_dir / "config.toml", cfg.to_toml())
    gen = torch.Generator().manual_seed(1)
    params = {}
    for r in range(1, rounds + 1):
        # B = 0 at init would make the adapter a no-op; random B makes every round a different model
        params = {k: (torch.randn(v.shape, generator=gen) * scale if ".lora_B." in k else v)
                  for k, v in slots.get().items()}
        save_adapter(params, run_dir / round_dir_name(r) / "adapter", peft_config)
        atomic_write_json(run_dir / round_dir_name(r) / "metrics.json", {"round": r})
    save_adapter(params, run_dir / "final", peft_config)
    return run_dir


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models generate fastest on one thread, and the shared 2-core CI machine is oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = Path(__file__).resolve().parents[2] / "src" / "fedit" / "model" / "assets" / "tiny"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The shipped tiny pretrained base (the issue asks for its tests on it)."""
    if not (TINY / "config.json").is_file():
        pytest.skip(f"the shipped tiny model is not built yet ({TINY / 'config.json'} is absent)")
    return TINY


@pytest.fixture(scope="session")
def tiny_run(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tiny_dir, tmp_path_factory.mktemp("serve-tiny") / "run", template="auto", scale=0.2)


@pytest.fixture(scope="session")
def micro_run(micro_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(micro_model_dir, tmp_path_factory.mktemp("serve") / "run")


API_KEY = "test-key-123"


@pytest.fixture(scope="session")
def server(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """`fedit serve` on the tiny base with two adapters (final = round 2, and round 1), an API key and tight limits."""
    srv = Server(["--adapter", str(tiny_run), "--adapter", f"r1={tiny_run / 'round_0001'}", "--api-key", API_KEY,
                  "--max-tokens", "64", "--max-prompt-tokens", "200", "--max-body", "20000"],
                 tmp_path_factory.mktemp("server") / "serve.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def micro_server(micro_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """`fedit serve` on the micro model with one adapter ("run") and the default limits (the load test's server)."""
    srv = Server(["--adapter", str(micro_run)], tmp_path_factory.mktemp("micro-server") / "serve.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
