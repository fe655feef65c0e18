"""The default run's local training against the same in float32 with no other speed option (issue 14 item 1), each
factor alone, and where the time goes.

Work: one round of the embedded default (its config, model and built-in data; the 3 clients a round samples, 20
local steps of 16 examples each), trained as the run trains it. Contenders, interleaved and repeated:
  float32   `--dtype float32 --set lora.dropout_impl=torch --set lora.kernel=peft`: no speed option (the
            reference; SDPA attention, peft's LoRA forward and nn.Dropout);
  bf16      `--dtype bfloat16 --set lora.dropout_impl=torch --set lora.kernel=peft`: precision alone: the frozen
            base stored in bf16, forward and backward under CPU bf16 autocast with the attention it picks (eager for
            rows <= 256 tokens, fedit.model.precision.pick_attention), LoRA weights, gradients and AdamW state in
            float32;
  fast_dropout  `--dtype float32 --set lora.kernel=peft`: the cheaper CPU dropout masks alone (fedit.model.dropout);
  cpu_lora  `--dtype float32`: the masks and the fused LoRA linear layer (fedit.model.fused_lora) without bf16;
  auto      the default (`model.dtype = "auto"`, `lora.dropout_impl = "auto"`, `lora.kernel = "auto"`): bf16 on a
            CPU with bf16 matrix units, float32 on one without; the cheaper masks and the fused layer on any CPU.
`dtype_speedup` = float32 / auto (every speed option the default has counts), `dtype_speedup_bf16_only` = float32 /
bf16, `dtype_speedup_dropout_only` = float32 / fast_dropout, `dtype_speedup_cpu_lora_only` = float32 / cpu_lora.
`dtype_speedup_dolly256` repeats float32 vs auto at Dolly's shape (cutoff 256, loss on prompts too: longer rows),
where bf16 matmuls pay more. A profile of one client's training by each contender (torch.profiler, self CPU time by
operator class) shows where the remaining time goes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch

from fedit.bench.common import (
    Row,
    client_data,
    interleave,
    medians,
    model_name,
    quiet,
    ratio,
    script_main,
)

# operator classes of the profile: aten op name prefix/substring -> class
_CLASSES = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn", "onednn")),
    ("attention", ("scaled_dot_product",)),
    # peft's nn.Dropout draws with bernoulli; fedit's CPU masks with random_ (their compare and select: elementwise)
    ("dropout (RNG)", ("aten::bernoulli", "aten::uniform", "aten::native_dropout", "aten::random_")),
    ("optimizer", ("Optimizer.", "aten::_foreach", "aten::lerp", "aten::addcmul", "aten::addcdiv")),
    ("casts and copies", ("aten::copy_", "aten::_to_copy", "aten::to")),
    ("elementwise", ("aten::mul", "aten::add", "aten::div", "aten::sub", "aten::sqrt", "aten::rsqrt", "aten::pow",
                     "aten::neg", "aten::silu", "aten::exp", "aten::mean", "aten::sum", "aten::cat",
                     "aten::fill_", "aten::where", "aten::_log_softmax", "aten::nll_loss", "aten::embedding",
                     "aten::index", "aten::clamp", "aten::zero_", "aten::ge", "aten::lt")),
)


# contender -> its settings over the default config (module docstring)
CONTENDERS: dict[str, dict[str, str]] = {
    "float32": {"model.dtype": "float32", "lora.dropout_impl": "torch", "lora.kernel": "peft"},
    "bf16": {"model.dtype": "bfloat16", "lora.dropout_impl": "torch", "lora.kernel": "peft"},
    "fast_dropout": {"model.dtype": "float32", "lora.kernel": "peft"},
    "cpu_lora": {"model.dtype": "float32"},
    "auto": {},
}


def _class_of(name: str) -> str:
    for cls, keys in _CLASSES:
        if any(name.startswith(k) or k in name for k in keys):
            return cls
    return "other"


def profile_shares(train: Any) -> dict[str, float]:
    """Share of self CPU time per operator class over one call of `train` (the rest: Python and framework)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        train()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    out = class_shares(events)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    out["ops_seconds_over_wall"] = total / wall  # > 1: ops overlap on threads; < 1: time outside the ops
    return out


def class_shares(events: Any) -> dict[str, float]:
    """Share of self CPU time per operator class of torch.profiler's `key_averages()`, largest first."""
    by: dict[str, float] = defaultdict(float)
    for e in events:
        by[_class_of(e.key)] += e.self_cpu_time_total
    total = sum(by.values())
    return {k: v / total for k, v in sorted(by.items(), key=lambda kv: -kv[1])}


def _setup(cfg: Any) -> tuple[Any, Any]:
    from fedit.pipeline import build_model

    bundle = build_model(cfg)
    return bundle, bundle.trainer.slots.get()


def run(quick: bool = True, smoke: bool = False, model: str = "auto", data: str | None = None,
        repeats: int | None = None) -> dict[str, Any]:
    from fedit.client.train import train_client
    from fedit.config import Config
    from fedit.data.tokenize import tokenize_records
    from fedit.model.load import pick_dtype
    from fedit.pipeline import prepare_data

    quiet()
    repeats = repeats or (1 if smoke else (3 if quick else 5))
    name, desc = model_name(model, smoke)
    default = Config()
    steps = 2 if smoke else default.client.local_steps
    cfg = default.override({"model.name": name, "model.device": "cpu", "client.local_steps": steps})
    auto = str(pick_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    clients = list(range(default.run.clients_per_round or max(1, round(default.run.fraction
                                                                       * default.partition.clients))))
    prepared = prepare_data(cfg)
    models = {d: _setup(cfg.override(over)) for d, over in CONTENDERS.items()}
    tokenized = {d: [tokenize_records(prepared.client_records[c], b.template, b.tokenizer, cfg.data.cutoff_len,
                                      cfg.data.train_on_inputs, cfg.data.add_eos) for c in clients]
                 for d, (b, _) in models.items()}
    # each contender's k-th call trains round k: the same batches for every contender in a repeat (rounds sample
    # different examples, and with length grouping their rows differ in length, so unequal rounds are unequal work)
    counter = {d: 0 for d in models}

    def one_round(dtype: str, ccfg: Any = cfg.client, data: dict[str, list[Any]] = tokenized,
                  ids: list[int] = clients) -> dict[str, float]:
        bundle, init = models[dtype]
        counter[dtype] += 1
        t0 = time.perf_counter()
        losses, tokens = [], 0
        for c, td in zip(ids, data[dtype], strict=True):
            u = train_client(bundle.trainer, init, td, ccfg, client_id=c, round_idx=counter[dtype], seed=0)
            losses.append(u.metrics["loss"])
            tokens += int(u.metrics["tokens"])
        sec = time.perf_counter() - t0
        return {"seconds": sec, "tokens_per_s": tokens / sec, "loss": sum(losses) / len(losses)}

    interleave({d: (lambda d=d: one_round(d)) for d in models}, 1)  # warm-up, not counted
    runs = interleave({d: (lambda d=d: one_round(d)) for d in models}, repeats)
    med = {d: medians(r) for d, r in runs.items()}
    sec = {d: m["seconds"] for d, m in med.items()}
    res: dict[str, Any] = {
        "benchmark": "dtype", "model": desc, "data": "built-in suite (the embedded default)", "clients": clients,
        "local_steps": steps, "batch_size": cfg.client.batch_size, "micro_batch_size": cfg.client.micro_batch_size,
        "repeats": repeats, "auto_dtype": auto, "torch_threads": torch.get_num_threads(),
        "contenders": {d: " ".join(f"{k}={v}" for k, v in over.items()) or "the default" for d, over in
                       CONTENDERS.items()},
        "attention": {d: b.model.get_base_model().config._attn_implementation for d, (b, _) in models.items()},
        **{f"{d}_seconds": sec[d] for d in models}, **{f"{d}_tokens_per_s": med[d]["tokens_per_s"] for d in models},
        **{f"{d}_loss": med[d]["loss"] for d in models},
        "dtype_speedup_bf16_only": ratio(sec["float32"], sec["bf16"]),
        "dtype_speedup_dropout_only": ratio(sec["float32"], sec["fast_dropout"]),
        "dtype_speedup_cpu_lora_only": ratio(sec["float32"], sec["cpu_lora"]),
        "dtype_speedup": ratio(sec["float32"], sec["auto"]),
        "runs": runs,
    }
    c0 = clients[0]
    res["profile"] = {d: profile_shares(lambda d=d: train_client(models[d][0].trainer, models[d][1],
                                                                 tokenized[d][0], cfg.client, client_id=c0,
                                                                 round_idx=0, seed=0))
                      for d in models}
    if not smoke:  # Dolly's longer rows: where bf16 matmuls pay (the models' cutoff is the default's, 256)
        [dolly], source = client_data(1, 64 if quick else 128, data, smoke, mixed=True)
        pair = ("float32", "auto")
        long = {d: [tokenize_records(dolly, models[d][0].template, models[d][0].tokenizer, 256, True, True)]
                for d in pair}
        lc = cfg.client.__class__(**{**cfg.client.__dict__, "local_steps": 4 if quick else 8})
        lruns = interleave({d: (lambda d=d: one_round(d, lc, long, [0])) for d in pair}, repeats)
        lmed = {d: medians(r) for d, r in lruns.items()}
        res |= {"dolly256_data": source, "dolly256_float32_seconds": lmed["float32"]["seconds"],
                "dolly256_auto_seconds": lmed["auto"]["seconds"],
                "dtype_speedup_dolly256": ratio(lmed["float32"]["seconds"], lmed["auto"]["seconds"])}
    res["dtype_speedup_target"] = ">= 2.0 (>= 1.5 from bf16 alone)"
    return res


def rows(res: dict[str, Any]) -> list[Row]:
    names = list(CONTENDERS)
    out = [
        Row("dtype model.dtype=auto picks", res["auto_dtype"]),
        Row(f"round seconds {' / '.join(names)}", " / ".join(f"{res[f'{d}_seconds']:.2f}" for d in names)),
        Row("mean loss", " / ".join(f"{res[f'{d}_loss']:.4f}" for d in names)),
        Row("dtype_speedup (default vs float32)", res["dtype_speedup"], ">= 2.0", res["dtype_speedup"] >= 2.0),
        Row("dtype_speedup_bf16_only", res["dtype_speedup_bf16_only"], ">= 1.5", res["dtype_speedup_bf16_only"] >= 1.5),
        Row("dtype_speedup_dropout_only", res["dtype_speedup_dropout_only"]),
        Row("dtype_speedup_cpu_lora_only (masks + fused LoRA)", res["dtype_speedup_cpu_lora_only"]),
    ]
    if "dtype_speedup_dolly256" in res:
        out.append(Row("default vs float32 at Dolly, cutoff 256", res["dtype_speedup_dolly256"]))
    for d, shares in res["profile"].items():
        top = ", ".join(f"{k} {v:.0%}" for k, v in shares.items() if k != "ops_seconds_over_wall" and v >= 0.02)
        out.append(Row(f"profile {d} (self CPU time)", top))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return script_main(__doc__, run, rows, lambda res: f"float32 vs bf16 autocast, the default's round "
                       f"({res['model']}, medians of {res['repeats']})", argv)


if __name__ == "__main__":
    main()
