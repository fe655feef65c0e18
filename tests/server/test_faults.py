"""Per-update validation and fault injection in the simulator: bad clients are dropped, the round goes on."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedit import pipeline
from fedit.config import Config
from fedit.engines.base import RoundOutcome
from fedit.errors import ClientError, ConfigError
from fedit.faults import FaultPlan, parse_fault
from fedit.server.collect import RoundCollector
from fedit.types import ClientUpdate


def cfg_for(model_dir: Path, data: Path, out: Path, faults: list[str], **extra) -> Config:
    return Config().override({
        "model.name": str(model_dir), "data.source": str(data), "partition.test_size": 2, "model.device": "cpu",
        "partition.clients": 4, "run.clients_per_round": 4, "run.rounds": 3, "run.out": str(out),
        "client.local_steps": 2, "client.batch_size": 4, "client.micro_batch_size": 2, "client.lr": 1e-2,
        "strategy.name": "fedadam", "run.eval_limit": 4, "run.eval_generate": False, "lora.r": 4,
        "run.faults": faults, **extra,
    })


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_faulty_clients_are_dropped_and_the_result_equals_plain_failures(micro_model_dir: Path,
                                                                         small_data_file: Path,
                                                                         tmp_path: Path) -> None:
    """The issue's acceptance run: nan@2:1, crash@1:0, lie@2:2 finishes, names each dropped client and why, and
    gives the adapter of a run where those clients simply crashed."""
    faulty = pipeline.run(cfg_for(micro_model_dir, small_data_file, tmp_path / "faulty",
                                  ["nan@2:1", "crash@1:0", "lie@2:2"]))
    plain = pipeline.run(cfg_for(micro_model_dir, small_data_file, tmp_path / "plain",
                                 ["crash@2:1", "crash@1:0", "crash@2:2"]))
    clean = pipeline.run(cfg_for(micro_model_dir, small_data_file, tmp_path / "clean", []))
    for k, v in plain.final_params.items():
        assert torch.equal(faulty.final_params[k], v), k
        assert bool(torch.isfinite(faulty.final_params[k]).all()), k
    assert any(not torch.equal(clean.final_params[k], v) for k, v in plain.final_params.items())
    r = rows(tmp_path / "faulty")
    assert r[1]["replied"] == [1, 2, 3] and set(r[1]["failed"]) == {"0"}
    assert "InjectedFault" in r[1]["failed"]["0"] and "crashed" in r[1]["failed"]["0"]
    assert r[2]["replied"] == [0, 3] and set(r[2]["failed"]) == {"1", "2"}
    assert r[2]["failed"]["1"].startswith("update rejected:") and "non-finite" in r[2]["failed"]["1"]
    assert "claims 1000000000 examples, but at most" in r[2]["failed"]["2"]
    assert r[3]["replied"] == [0, 1, 2, 3] and r[3]["failed"] == {}
    # the rejected updates crossed the wire: they count in bytes_up, not in the examples or the loss
    payload = sum(v.numel() * v.element_size() for v in clean.final_params.values())
    assert r[2]["bytes_up"] == 4 * payload and r[2]["examples"] == sum(r[2]["clients"][c]["examples"]
                                                                         for c in ("0", "3"))


def test_every_kind_of_bad_update_is_rejected_with_its_reason(micro_model_dir: Path, small_data_file: Path,
                                                              tmp_path: Path) -> None:
    res = pipeline.run(cfg_for(micro_model_dir, small_data_file, tmp_path / "run",
                               ["inf@1:0", "shape@1:1", "keys@1:2", "hang@2:0", "slow@2:3=1"],
                               **{"run.rounds": 2, "run.min_clients": 1}))
    r = rows(Path(res.run_dir))
    assert r[1]["replied"] == [3]
    failed = r[1]["failed"]
    assert "non-finite" in failed["0"]
    assert "has shape" in failed["1"] and "expected" in failed["1"]
    assert "adapter keys differ" in failed["2"] and "missing 1 tensor" in failed["2"]
    assert r[2]["replied"] == [1, 2, 3] and r[2]["failed"] == {"0": "did not reply (injected fault: hang)"}
    assert r[2]["train_seconds"] - r[2]["client_train_seconds"] >= 1.0  # slow: 1 s before client 3 trained


def test_min_clients_stops_the_run_with_the_last_round_saved(micro_model_dir: Path, small_data_file: Path,
                                                             tmp_path: Path) -> None:
    cfg = cfg_for(micro_model_dir, small_data_file, tmp_path / "run", ["hang@2:*"],
                  **{"run.rounds": 2, "run.min_clients": 2})
    with pytest.raises(ClientError, match=r"round 2: only 0 of 4 sampled clients sent a usable update, min_clients "
                                          r"is 2; the run stopped after round 1"):
        pipeline.run(cfg)
    assert (tmp_path / "run" / "round_0001" / "metrics.json").is_file()
    assert not (tmp_path / "run" / "round_0002").exists()


def test_a_client_never_sends_a_non_finite_adapter(micro_model_dir: Path, small_data_file: Path,
                                                   tmp_path: Path) -> None:
    """The loss of the only step is finite, but AdamW's decoupled decay (1 - lr * wd = -1e300) overflows the
    parameters: the client's own check after training catches what the summed loss cannot."""
    cfg = cfg_for(micro_model_dir, small_data_file, tmp_path / "run", [],
                  **{"run.rounds": 1, "client.local_steps": 1, "client.lr": 1.0, "client.weight_decay": 1e300,
                     "client.max_grad_norm": 0.0})
    with pytest.raises(ClientError, match="only 0 of 4"):
        pipeline.run(cfg)
    failed = rows(tmp_path / "run")  # round 0 only: round 1 never completed
    assert len(failed) == 1
    from fedit.client.train import train_client
    from fedit.data.tokenize import tokenize_records

    bundle = pipeline.build_model(cfg)
    data = pipeline.prepare_data(cfg)
    tok = tokenize_records(data.client_records[0], bundle.template, bundle.tokenizer, 64, False, True)
    with pytest.raises(ClientError, match=r"client 0: after training in round 1, .* non-finite value"):
        train_client(bundle.trainer, bundle.trainer.slots.get(), tok, cfg.client, client_id=0, round_idx=1, seed=0)


def screen_updates(round_idx, sampled, outcome, expected, bounds, max_examples, expected_extras=None):
    """The round loop's collector fed an outcome's updates in id order: (the updates it folded in, failures)."""
    folded: list[ClientUpdate] = []
    c = RoundCollector(round_idx, sampled, expected, expected_extras, bounds, max_examples,
                       [SimpleNamespace(add=folded.append)])
    c.add_all(outcome.updates)
    return folded, c.failures(outcome.failures), c


def test_collector_rules_by_hand() -> None:
    g = {"a": torch.zeros(2), "b": torch.zeros(1, 2)}

    def u(cid: int, n: int = 3, **over) -> ClientUpdate:
        params = {"a": torch.ones(2), "b": torch.ones(1, 2)} | over.pop("params", {})
        return ClientUpdate(cid, params, n, over.pop("metrics", {"loss": 1.0}))

    outcome = RoundOutcome(updates=[u(0), u(1, n=0), u(2, n=4), u(3, params={"a": torch.ones(2, dtype=torch.float64)}),
                                    u(4, metrics={"loss": float("nan")}), u(5, metrics={}), u(6), u(6), u(9),
                                    u(7, n=True)], failures={8: "node 1 did not reply"})
    ok, failed, c = screen_updates(1, [0, 1, 2, 3, 4, 5, 6, 7, 8], outcome, g, {2: 3}, max_examples=10)
    # a client's first update of a round is folded in (a streaming sum cannot take it back out); a repeat is
    # dropped and reported, never aggregated
    assert [x.client_id for x in ok] == [0, 6] and c.repeats() == {6: 2} and 6 not in failed
    assert failed[1] == "update rejected: num_examples must be >= 1, got 0"
    assert failed[2] == "update rejected: claims 4 examples, but at most 3 were assigned to it"
    assert failed[3] == "update rejected: a has dtype torch.float64, expected torch.float32"
    assert "metric 'loss' is nan" in failed[4] and "lack the training loss" in failed[5]
    assert failed[9] == "update rejected: client 9 was not sampled in round 1"
    assert failed[7] == "update rejected: num_examples must be an integer, got True"
    assert failed[8] == "node 1 did not reply"
    ok, failed, _ = screen_updates(1, [2], RoundOutcome(updates=[u(2, n=11)]), g, {}, max_examples=10)
    assert ok == [] and "at most 10" in failed[2]


def test_fault_specs_parse_and_apply() -> None:
    f = parse_fault("slow@1:3=5")
    assert (f.kind, f.round, f.client, f.value) == ("slow", 1, 3, 5.0)
    assert parse_fault("hang@*:2").matches(7, 2) and not parse_fault("hang@*:2").matches(7, 3)
    for bad, match in [("nan", "expected KIND@ROUND:CLIENT"), ("boom@1:1", "unknown fault kind 'boom'"),
                       ("slow@1:1", "needs the seconds"), ("nan@1:1=3", "takes no value"),
                       ("lie@1:1=2.5", "whole number"), ("nan@0:1", "rounds count from 1")]:
        with pytest.raises(ConfigError, match=match):
            parse_fault(bad)
    plan = FaultPlan(["nan@2:1", "lie@2:1=7", "shape@3:*"])
    up = ClientUpdate(1, {"x": torch.zeros(2, 2), "y": torch.zeros(1)}, 5, {"loss": 1.0})
    assert plan.after_training(up, 1) is up
    bad = plan.after_training(up, 2)
    assert torch.isnan(bad.params["x"]).sum() == 1 and bad.num_examples == 7 and torch.equal(up.params["x"],
                                                                                             torch.zeros(2, 2))
    assert plan.after_training(up, 3).params["x"].shape == (3, 2)
    with pytest.raises(ConfigError, match="run.faults"):
        Config().override({"run.faults": ["hang@x:1"]})
