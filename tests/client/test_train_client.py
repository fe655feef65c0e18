"""Local training: lowers loss, deterministic per (seed, round, client), steps/epochs accounting, proximal term."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedit.client.train import LocalTrainer, client_seed, num_local_steps, train_client, train_task
from fedit.config import ClientConfig, LoraConfig, ModelConfig
from fedit.data.records import Record
from fedit.data.templates import get_template
from fedit.data.tokenize import tokenize_records
from fedit.errors import ClientError
from fedit.model.load import load_base
from fedit.model.lora import attach_lora
from fedit.strategies.base import ClientPlan, ClientSession
from fedit.strategies.fedprox import ProximalPlan
from fedit.types import ClientTask


@pytest.fixture(scope="module")
def setup(micro_model_dir: Path):
    base, tok = load_base(ModelConfig(name=str(micro_model_dir), device="cpu"))
    model = attach_lora(base, LoraConfig(r=4, alpha=8, dropout=0.05), seed=0)
    trainer = LocalTrainer.for_model(model, tok)
    recs = [Record(instruction=f"Repeat {w}", response=f"{w} {w}") for w in ["apple", "pear", "plum", "fig"] * 4]
    data = tokenize_records(recs, get_template("alpaca-short", tok), tok)
    return trainer, data


def test_training_lowers_loss_and_reports_metrics(setup) -> None:
    trainer, data = setup
    init = trainer.slots.get()
    cfg = ClientConfig(local_steps=30, batch_size=8, micro_batch_size=4, lr=5e-2)
    u = train_client(trainer, init, data, cfg, client_id=0, round_idx=1, seed=0)
    u2 = train_client(trainer, u.params, data, ClientConfig(local_steps=1, batch_size=16, micro_batch_size=16, lr=1e-9),
                      client_id=0, round_idx=2, seed=0)
    first = train_client(trainer, init, data, ClientConfig(local_steps=1, batch_size=16, micro_batch_size=16, lr=1e-9),
                         client_id=0, round_idx=2, seed=0)
    assert u2.metrics["loss"] < first.metrics["loss"] - 0.1  # measured with lr~0: a real drop
    assert u.num_examples == 16 and u.metrics["steps"] == 30
    assert u.metrics["tokens"] > 0 and u.metrics["tokens_per_s"] > 0
    assert not all(torch.equal(u.params[k], init[k]) for k in init)


def test_deterministic_given_seed_round_client(setup) -> None:
    trainer, data = setup
    init = trainer.slots.get()
    cfg = ClientConfig(local_steps=3, batch_size=4, micro_batch_size=2, lr=1e-3)
    a = train_client(trainer, init, data, cfg, client_id=2, round_idx=5, seed=7).params
    b = train_client(trainer, init, data, cfg, client_id=2, round_idx=5, seed=7).params
    c = train_client(trainer, init, data, cfg, client_id=3, round_idx=5, seed=7).params
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert client_seed(7, 5, 2) != client_seed(7, 5, 3) != client_seed(7, 6, 2)


def test_local_epochs_to_steps() -> None:
    assert num_local_steps(ClientConfig(local_epochs=1.0, local_steps=None, batch_size=16), 100) == 7
    assert num_local_steps(ClientConfig(local_epochs=0.5, local_steps=None, batch_size=16), 100) == 4
    assert num_local_steps(ClientConfig(local_steps=3, batch_size=16), 100) == 3


def test_proximal_term_pulls_towards_global(setup) -> None:
    trainer, data = setup
    init = trainer.slots.get()
    cfg = ClientConfig(local_steps=10, batch_size=8, micro_batch_size=8, lr=5e-3)
    free = train_client(trainer, init, data, cfg, client_id=0, round_idx=1, seed=0).params
    prox = train_task(trainer, ClientTask(init), data, cfg, client_id=0, round_idx=1, seed=0,
                      plan=ProximalPlan(50.0))[0].params
    dist = lambda p: sum(float(((p[k] - init[k]) ** 2).sum()) for k in p)  # noqa: E731
    assert dist(prox) < dist(free)


class Recorder(ClientSession):
    """Records the hooks it sees; uploads B only with an extra tensor, and keeps a counter as local state."""

    def __init__(self, local):
        self.calls, self.lrs, self.local = [], [], local

    def start(self, slots):
        self.calls.append("start")

    def after_step(self, slots, lr):
        self.lrs.append(lr)

    def finish(self, start, trained):
        self.calls.append("finish")
        assert start.keys() == trained.keys()
        n = self.local.get("n", torch.zeros(())) + 1
        return trained, {"steps": torch.tensor(float(len(self.lrs)))}, {"n": n}


class OnlyB(ClientPlan):
    def __init__(self):
        self.sessions = []

    def trainable(self, key):
        return ".lora_B." in key

    def shared(self, key):
        return ".lora_B." in key

    def session(self, task, local):
        self.sessions.append(Recorder(local))
        return self.sessions[-1]


def test_plan_decides_what_trains_travels_and_what_the_client_keeps(setup) -> None:
    trainer, data = setup
    init = trainer.init  # what every process holds for a tensor the server does not send
    b_keys = [k for k in init if ".lora_B." in k]
    assert b_keys and len(b_keys) < len(init)
    plan = OnlyB()
    cfg = ClientConfig(local_steps=4, batch_size=4, micro_batch_size=2, lr=1e-2, lr_schedule="linear")
    task = ClientTask({k: init[k] for k in b_keys})  # the server sends B only
    update, local = train_task(trainer, task, data, cfg, client_id=1, round_idx=1, seed=0, plan=plan,
                               local={"n": torch.tensor(2.0)})
    assert sorted(update.params) == sorted(b_keys) and float(update.extras["steps"]) == 4.0
    assert float(local["n"]) == 3.0  # the session's state came in and went out
    rec = plan.sessions[0]
    assert rec.calls == ["start", "finish"]
    assert rec.lrs == pytest.approx([1e-2 * (1 - s / 4) for s in range(4)])  # each step's scheduled lr
    after = trainer.slots.get()
    for k in init:  # A was frozen at its init (whatever an earlier client left in the slots), B trained
        assert torch.equal(after[k], init[k]) == (".lora_A." in k), k
    assert all(p.requires_grad for p in trainer.slots.params.values())  # frozen tensors are restored after


def test_empty_client_is_a_client_error(setup) -> None:
    trainer, data = setup
    empty = type(data)([], [], [])
    with pytest.raises(ClientError, match="client 4 has no trainable examples"):
        train_client(trainer, trainer.slots.get(), empty, ClientConfig(), client_id=4, round_idx=1, seed=0)


def test_proximal_gradient_counted_once_per_step_whatever_the_micro_batches(setup, monkeypatch) -> None:
    """The lean loop adds the strategy's term once per optimizer step: with 2 micro-batches per step, the FedProx
    gradient at step 2 is mu * (w_1 - w_0) by hand (w_0 the task's tensors, w_1 after step 1), not twice that."""
    import fedit.client.train as train_mod

    trainer, data = setup
    init = trainer.slots.get()
    seen: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **kw):  # called right before each opt.step: the step's full gradient
        params = list(params)
        seen.append(([p.grad.detach().clone() for p in params], [p.detach().clone() for p in params]))
        return real_clip(params, max_norm, *a, **kw)

    monkeypatch.setattr(train_mod.torch.nn.utils, "clip_grad_norm_", spy)
    cfg = ClientConfig(local_steps=2, batch_size=4, micro_batch_size=2, lr=1e-2, max_grad_norm=1e9)
    mu = 0.5
    train_task(trainer, ClientTask(init), data, cfg, client_id=1, round_idx=1, seed=3, plan=ClientPlan())
    plain = seen[:]
    seen.clear()
    train_task(trainer, ClientTask(init), data, cfg, client_id=1, round_idx=1, seed=3, plan=ProximalPlan(mu))
    prox = seen[:]
    assert len(plain) == len(prox) == 2
    keys = list(trainer.slots.params)
    (g0, w1), (gp, w1p) = plain[1], prox[1]
    for k, a, b, w, wp in zip(keys, g0, gp, w1, w1p, strict=True):
        assert torch.equal(w, wp)  # step 1 is the same: the proximal gradient at w_0 is 0
        want = mu * (w - init[k])
        assert torch.allclose(b - a, want, atol=1e-6, rtol=1e-4), k


def test_one_host_sync_per_step_counts_tokens_on_cpu(setup) -> None:
    """Token counts come from the CPU batch (equal to counting the data by hand) and the loss is read once a step."""
    trainer, data = setup
    steps: list[float] = []
    cfg = ClientConfig(local_steps=2, batch_size=16, micro_batch_size=4, lr=1e-3)
    u = train_client(trainer, trainer.slots.get(), data, cfg, client_id=0, round_idx=1, seed=0,
                     on_step=lambda s, t, loss: steps.append(loss))
    # 16 examples per step, 2 steps = two passes over the 16 examples: every token counted twice
    assert u.metrics["tokens"] == 2 * sum(len(x) for x in data.input_ids)
    assert len(steps) == 2 and all(x > 0 for x in steps)
