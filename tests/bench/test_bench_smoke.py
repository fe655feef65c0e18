"""Smoke runs of every benchmark (micro model, synthetic data): they finish and produce well-formed results.

No timing assertions: the numbers of a smoke run mean nothing; the structure, the byte accounting and the
payload arithmetic are checked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedit.bench import dtype, gpu, payload, rounds, scale, shepherd, throughput


def _positive(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_throughput_smoke() -> None:
    res = throughput.run(smoke=True)
    assert res["data"] == "synthetic"
    for k in ("fedit_tokens_per_s", "hand_loop_tokens_per_s", "throughput_ratio", "throughput_ratio_cpu_time"):
        assert _positive(res[k]), k
    assert 0 <= res["fedit_padding_fraction"] < 1 and 0 <= res["hand_loop_padding_fraction"] < 1
    # length grouping never pads more than random batches of the same data
    assert res["fedit_padding_fraction"] <= res["hand_loop_padding_fraction"]
    assert len(res["throughput_ratio_per_repeat"]) == res["repeats"]
    assert isinstance(res["throughput_target_met"], bool)
    json.dumps(res)


def test_dtype_smoke_and_profile() -> None:
    res = dtype.run(smoke=True)
    names = ("float32", "bf16", "fast_dropout", "cpu_lora", "auto")
    assert tuple(res["contenders"]) == names
    for k in ("dtype_speedup", "dtype_speedup_bf16_only", "dtype_speedup_dropout_only", "dtype_speedup_cpu_lora_only",
              *(f"{d}_{m}" for d in names for m in ("seconds", "loss"))):
        assert _positive(res[k]), k
    assert res["auto_dtype"] in ("float32", "bfloat16")
    # the reference is float32 with SDPA; bf16 at the default's cutoff (256) takes eager attention
    assert res["attention"]["float32"] == "sdpa" and res["attention"]["bf16"] == "eager"
    assert res["attention"]["auto"] == ("eager" if res["auto_dtype"] == "bfloat16" else "sdpa")
    for d in names[1:]:
        assert abs(res["float32_loss"] - res[f"{d}_loss"]) < 0.05 * res["float32_loss"], d
    for d in names:
        shares = {k: v for k, v in res["profile"][d].items() if k != "ops_seconds_over_wall"}
        assert abs(sum(shares.values()) - 1) < 1e-6 and shares.get("matmul", 0) > 0
        assert set(shares) <= {c for c, _ in dtype._CLASSES} | {"other"}
    json.dumps(res)


def test_cli_choices_are_the_suites_benchmarks() -> None:
    from fedit.bench.suite import BENCHMARKS
    from fedit.cli.bench import CHOICES

    assert set(CHOICES) == set(BENCHMARKS)


def test_round_overhead_smoke_and_bytes() -> None:
    res = rounds.run(smoke=True)
    assert len(res["per_round"]) == res["rounds"]
    assert _positive(res["round_overhead"]) and _positive(res["eval_seconds"])
    assert res["bytes_match_payload_x_clients"] is True
    assert res["bytes_per_round_up"] == res["payload_bytes"] * res["clients_per_round"]
    lines = (Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == res["rounds"] + 1  # round 0 (the initial adapter) + every trained round


def test_shepherd_baseline_smoke() -> None:
    res = shepherd.run(smoke=True, hand_loop=True)
    for k in ("fedit_round_seconds", "shepherd_round_seconds", "hand_loop_round_seconds", "shepherd_speedup",
              "shepherd_speedup_cpu_time", "shepherd_speedup_train_on_inputs",
              "shepherd_speedup_train_on_inputs_cpu_time", "shepherd_speedup_bf16"):
        assert _positive(res[k]), k
    assert {len(v) for v in res["per_round"].values()} == {res["rounds"]}
    assert res["train_on_inputs"] is False and res["settings"]["train_on_inputs"]["train_on_inputs"] is True
    for setting in res["settings"].values():  # both contenders trained the same number of examples
        assert setting["shepherd_examples_per_round"] == setting["fedit_examples_per_round"] > 0
    json.dumps(res)


def test_shepherd_gets_the_examples_fedit_trains(tmp_path: Path, micro_model_dir: Path) -> None:
    """With the loss on responses only, a record whose prompt fills the cutoff has no label token: fedit drops it,
    and so the baseline's client file leaves it out; the baseline's dataset is then exactly fedit's examples."""
    from fedit.bench.common import bench_config, synthetic_records
    from fedit.data.records import Record
    from fedit.data.tokenize import tokenize_records
    from fedit.pipeline import build_model

    cutoff = 256
    bundle = build_model(bench_config(str(micro_model_dir)))
    long_prompt = Record(instruction="Summarize this.", context=" ".join(["river"] * 400), response="A river.")
    recs = [*synthetic_records(12, seed=3), long_prompt]
    for toi in (False, True):
        kept = shepherd.trainable_records(recs, bundle.template, bundle.tokenizer, cutoff, toi)
        fedit_data = tokenize_records(recs, bundle.template, bundle.tokenizer, cutoff, toi, True)
        assert 0 < len(kept) == len(fedit_data)
        assert (long_prompt in kept) is toi  # dropped only when the prompt's tokens carry no loss
        files = shepherd.write_client_files([kept], tmp_path / f"data-{toi}")
        sh = shepherd.ShepherdRounds(bundle.model, bundle.tokenizer, files, tmp_path / f"work-{toi}", batch_size=4,
                                     micro_batch_size=2, epochs=1.0, lr=1e-3, cutoff_len=cutoff,
                                     train_on_inputs=toi)
        ds = sh.local_dataset(0)
        assert sorted(zip(ds["instruction"], ds["context"], strict=True)) == sorted(
            (r.instruction, r.context) for r in kept)
        assert all(any(t != -100 for t in labels) for labels in ds["labels"])  # every example carries a loss


def test_shepherd_round_writes_and_reads_adapters(tmp_path: Path, micro_model_dir: Path) -> None:
    """The baseline really does the disk round-trip it is charged for, and averages into the live model."""
    from fedit.bench.common import bench_config, synthetic_records
    from fedit.pipeline import build_model

    cfg = bench_config(str(micro_model_dir))
    bundle = build_model(cfg)
    files = []
    for cid in range(2):
        f = tmp_path / f"local_training_{cid}.json"
        f.write_text(json.dumps([r.to_dict() for r in synthetic_records(8, seed=cid)]))
        files.append(f)
    before = bundle.trainer.slots.get()
    sh = shepherd.ShepherdRounds(bundle.model, bundle.tokenizer, files, tmp_path / "work", batch_size=4,
                                 micro_batch_size=2, epochs=1.0, lr=1e-3, cutoff_len=64, train_on_inputs=True)
    sh.round(1, [0, 1])
    for cid in range(2):
        assert (tmp_path / "work" / "1" / f"local_output_{cid}" / "pytorch_model.bin").is_file()
    assert (tmp_path / "work" / "1" / "adapter_model.bin").is_file()
    after = bundle.trainer.slots.get()
    assert any(not (after[k] == before[k]).all() for k in before)  # the average was loaded


def test_scale_smoke() -> None:
    res = scale.run(smoke=True)
    assert set(res["peak_rss_mb"]) == {"10", "20"}
    assert all(_positive(v) for v in res["peak_rss_mb"].values())
    assert [r["sampled"] for r in res["sampled_runs"]] == [2, 8] and _positive(res["memory_ratio_8_vs_2_sampled"])
    assert res["sampled_adapter_bytes"] == res["sampled_runs"][1]["adapter_bytes"] > 0
    agg = res["aggregation"]
    assert len(agg["seconds"]) == len(agg["sampled_clients"]) and agg["seconds_per_client"] > 0
    p = res["partition"]
    assert p["clients"] == 100 and all(p[f"{s}_seconds"] >= 0 for s in ("iid", "shards", "dirichlet", "quantity"))


def test_payload_from_config_matches_lora_arithmetic() -> None:
    res = payload.run()
    by = {(s["model"], s["r"], s["targets"]): s for s in res["setups"]}
    s = by[("llama-2-7b", 16, "q_proj,v_proj")]
    layers, hidden = 32, 4096
    assert s["lora_params"] == layers * 2 * 16 * (hidden + hidden)  # A: r x in, B: out x r, for q and v
    assert s["payload_bytes"] == 4 * s["lora_params"]
    gqa = by[("llama-3.1-8b", 16, "q_proj,v_proj")]  # v_proj out = 8 kv heads x 128 = 1024
    assert gqa["lora_params"] == layers * 16 * ((hidden + hidden) + (hidden + 1024))


def test_gpu_script_smoke_on_cpu() -> None:
    res = gpu.run(smoke=True)
    assert res["device"] == "cpu" and res["mfu"] is None
    assert _positive(res["fedit_full_length_tokens_per_s"]) and _positive(res["gpu_throughput_ratio"])
    assert res["flops_per_token"] > 4 * res["n_base_matmul"]


def test_cli_bench_writes_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedit.cli import app

    out = tmp_path / "bench.json"
    r = CliRunner().invoke(app, ["bench", "--smoke", "--only", "payload", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"payload"} and res["mode"] == "smoke"
    assert res["results"]["payload"]["setups"][0]["payload_bytes"] > 0 and "machine" in res


def test_cli_bench_rejects_unknown_benchmark() -> None:
    from typer.testing import CliRunner

    from fedit.cli import app

    r = CliRunner().invoke(app, ["bench", "--smoke", "--only", "nope"])
    assert r.exit_code == 2


@pytest.mark.gpu
def test_gpu_benchmark_on_gpu() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    res = gpu.run(steps=2, repeats=1)
    assert res["mfu"] is None or 0 < res["mfu"] < 1
