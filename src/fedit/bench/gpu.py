"""Target 6 / issue 14 item 7: LoRA training tokens/s, MFU and peak memory on one GPU, through fedit's own client loop.

Models are built from configs with random weights (nothing is downloaded): a 0.5B-class shape (Qwen2.5-0.5B's:
hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151936, tied embeddings) and a 7B-class shape
(Llama-2-7B's: hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab 32000), LoRA r=16 on q,v, SDPA
attention. Each case is one (shape, base precision, gradient checkpointing, data) combination:
  - base: "bf16" (the base stored in bf16) or "nf4" (QLoRA: the decoder's linear layers replaced by bitsandbytes
    NF4 with double quantization, bf16 compute, then peft's k-bit preparation as `fedit run --quantization 4bit`);
  - data "full": every sequence `seq_len` tokens (no padding: the MFU figure), "varied": lengths uniform in
    [seq_len/16, seq_len], length-grouped micro-batches, and "packed": the same varied data with data.packing.
    On "varied" the 0.5B bf16 case also runs the hand-written loop (plain padded batches) for fedit / hand loop.
Every case warms up (one step, halving the micro-batch on out-of-memory), then repeats `steps`-step measurements
until its time budget or `repeats` is reached; a global deadline skips what is left (recorded), so the whole
script stays under `--deadline-s` (default 450 s). A case that fails is recorded with its error; the rest go on.

Training FLOPs per real token (LoRA: frozen base, so no weight gradients for it):
    4 * N_base  (forward 2N + backward activation gradients 2N; N = matmul weights incl. the LM head, no input
                 embedding lookup)
  + 6 * N_lora  (forward 2, backward activation + weight gradients 4)
  + 6 * layers * ctx * hidden  (causal attention scores and values: forward 2*ctx*d, backward twice that; ctx = the
    example's length, the average causal context being ctx / 2)
These are model FLOPs: checkpointing's recomputation, NF4 dequantization and masked-out attention of packed rows
are not counted, so they show as lower MFU. MFU = FLOPs/s / peak dense bf16 (H100/H200 SXM: 989 TFLOP/s; pass
--peak-tflops for other cards). The target: >= 35% MFU for the 0.5B shape in bf16 on full-length sequences.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

from fedit.bench.common import Row, print_table, ratio, write_json

PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4, "A100": 312.0,
               "L40S": 362.0, "B200": 2250.0}

SHAPES: dict[str, dict[str, Any]] = {
    "0.5b": {"arch": "qwen2", "hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2, "intermediate": 4864,
             "vocab": 151936, "tied": True},  # Qwen2.5-0.5B
    "7b": {"arch": "llama", "hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 32, "intermediate": 11008,
           "vocab": 32000, "tied": False},  # Llama-2-7B
    "smoke": {"arch": "llama", "hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128,
              "vocab": 512, "tied": False},
}
MFU_TARGET = 0.35


@dataclass(frozen=True)
class Case:
    shape: str
    base: str  # bf16 | nf4
    checkpointing: bool
    data: str  # full | varied | packed
    micro: int
    steps: int
    hand_loop: bool = False

    @property
    def name(self) -> str:
        return f"{self.shape}/{self.base}{'/ckpt' if self.checkpointing else ''}/{self.data}"


def default_cases(smoke: bool, micro: int | None, steps: int | None) -> list[Case]:
    if smoke:
        m, s = micro or 2, steps or 2
        return [Case("smoke", "bf16", False, "full", m, s), Case("smoke", "bf16", True, "full", m, s),
                Case("smoke", "bf16", False, "varied", m, s, hand_loop=True),
                Case("smoke", "bf16", False, "packed", m, s), Case("smoke", "nf4", False, "full", m, s)]
    out = []
    for shape, m, s in (("0.5b", micro or 8, steps or 10), ("7b", micro or 4, steps or 3)):
        out += [Case(shape, "bf16", False, "full", m, s), Case(shape, "bf16", True, "full", m, s),
                Case(shape, "bf16", False, "varied", m, s, hand_loop=shape == "0.5b"),
                Case(shape, "bf16", False, "packed", m, s),
                Case(shape, "nf4", False, "full", m, s), Case(shape, "nf4", True, "full", m, s)]
    return out


def peak_tflops(name: str) -> float | None:
    for key, v in PEAK_TFLOPS.items():  # the more specific names come first
        if key in name:
            return v
    return None


def build_model(shape: str, device: Any, dtype: Any, max_len: int, attn: str = "sdpa") -> Any:
    """A random-weight causal LM of `shape` (SHAPES) on `device`, frozen, KV cache off."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    s = SHAPES[shape]
    cls_cfg, cls_model = (Qwen2Config, Qwen2ForCausalLM) if s["arch"] == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = cls_cfg(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                     num_key_value_heads=s["kv_heads"], intermediate_size=s["intermediate"], vocab_size=s["vocab"],
                     max_position_embeddings=max(max_len, 128), tie_word_embeddings=s["tied"],
                     attn_implementation=attn, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = cls_model(config).to(dtype)
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def quantize_nf4(model: Any, compute_dtype: Any) -> Any:
    """Replace every linear layer of the decoder (not the LM head) by a bitsandbytes NF4 Linear4bit with double
    quantization, as `from_pretrained(quantization_config=bnb_config("4bit", ...))` would; marks the model 4-bit."""
    import bitsandbytes as bnb
    import torch

    device = next(model.parameters()).device
    decoder = model.get_decoder()
    for mod in list(decoder.modules()):
        for cname, child in list(mod.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                                  quant_storage=torch.uint8, device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                         quant_type="nf4", quant_storage=torch.uint8).to(device)
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(mod, cname, q)
    model.is_loaded_in_4bit = True
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return model


def set_checkpointing(model: Any, on: bool) -> None:
    """Gradient checkpointing on or off on a LoRA'd model, as `client.gradient_checkpointing` would set it."""
    from fedit.model.lora import enable_gradient_checkpointing

    base = model.get_base_model()
    if on and not base.is_gradient_checkpointing:
        enable_gradient_checkpointing(base)
    elif not on and base.is_gradient_checkpointing:
        base.gradient_checkpointing_disable()
        base.disable_input_require_grads()


def count_flops_per_token(model: Any, ctx: float) -> dict[str, float]:
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    lora = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    n_base = 0
    for mod in model.modules():  # NF4 weights are packed: count the layer's logical in x out
        if hasattr(mod, "base_layer") or not (hasattr(mod, "in_features") and hasattr(mod, "out_features")):
            continue  # peft's LoRA wrapper: its base_layer is counted itself
        w = getattr(mod, "weight", None)
        if w is not None and id(w) not in lora and w is not emb and w is not head:
            n_base += mod.in_features * mod.out_features
    n_base += head.shape[0] * head.shape[1]  # the LM head runs even when it is the (tied) input embedding
    cfg = model.config
    attn = 6 * cfg.num_hidden_layers * ctx * cfg.hidden_size
    return {"n_base_matmul": float(n_base), "n_lora": float(n_lora),
            "flops_per_token": 4 * n_base + 6 * n_lora + attn, "attention_flops_per_token": attn}


def random_data(lengths: list[int], vocab: int, seed: int) -> Any:
    import numpy as np

    from fedit.data.tokenize import TokenizedData

    rng = np.random.default_rng(seed)
    ids = [rng.integers(3, vocab, size=int(length)).tolist() for length in lengths]
    return TokenizedData(ids, [list(x) for x in ids], [None] * len(ids))


def _oom_types() -> tuple[type[BaseException], ...]:
    import torch

    return (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


def run_case(case: Case, ctx: dict[str, Any], budget_s: float, repeats: int) -> dict[str, Any]:
    """Build (or reuse) the case's model, warm up, measure; returns the case's record."""
    import numpy as np
    import torch

    from fedit.bench.handloop import hand_loop
    from fedit.client.train import LocalTrainer, train_client
    from fedit.config import ClientConfig, LoraConfig
    from fedit.model.lora import AdapterSlots, attach_lora

    device, dtype, cuda, seq_len = ctx["device"], ctx["dtype"], ctx["cuda"], ctx["seq_len"]
    t_case = time.perf_counter()
    key = (case.shape, case.base)  # one model per shape and base; checkpointing is switched on it per case
    if ctx.get("model_key") != key:
        ctx["model"] = ctx["trainer"] = None
        if cuda:
            torch.cuda.empty_cache()
        base = build_model(case.shape, device, dtype, seq_len)
        if case.base == "nf4":
            quantize_nf4(base, dtype)
        model = attach_lora(base, LoraConfig(r=16, alpha=32, dropout=0.05, targets=["q_proj", "v_proj"]), seed=0)
        ctx["model"], ctx["trainer"], ctx["model_key"] = model, LocalTrainer(model, AdapterSlots(model), 0), key
    model, trainer = ctx["model"], ctx["trainer"]
    set_checkpointing(model, case.checkpointing)
    build_s = time.perf_counter() - t_case
    init = trainer.slots.get()
    vocab = model.config.vocab_size
    n_items = 256
    if case.data == "full":
        lengths = [seq_len] * n_items
    else:
        lengths = np.random.default_rng(2).integers(max(8, seq_len // 16), seq_len + 1, size=n_items).tolist()
    data = random_data(lengths, vocab, 1)
    trainer.pack_len = seq_len if case.data == "packed" else None

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def fedit_once(mb: int, n_steps: int, seed: int) -> dict[str, float]:
        trainer.slots.set(init)
        cfg = ClientConfig(local_steps=n_steps, local_epochs=None, batch_size=2 * mb, micro_batch_size=mb,
                           lr=1e-4, group_by_length=True)
        sync()
        t0 = time.perf_counter()
        u = train_client(trainer, init, data, cfg, client_id=0, round_idx=seed, seed=0)
        sync()
        sec = time.perf_counter() - t0
        return {"seconds": sec, "tokens": u.metrics["tokens"], "tokens_per_s": u.metrics["tokens"] / sec}

    def hand_once(mb: int, n_steps: int, seed: int) -> dict[str, float]:
        trainer.slots.set(init)
        return hand_loop(model, data, 0, batch_size=2 * mb, micro_batch_size=mb, steps=n_steps, lr=1e-4,
                         seed=seed, device=device)

    micro = case.micro
    while True:  # warm-up step; the largest micro-batch that fits
        try:
            fedit_once(micro, 1, 0)
            if case.hand_loop:
                hand_once(micro, 1, 0)
            break
        except _oom_types():
            if micro == 1:
                raise
            micro //= 2
            if cuda:
                torch.cuda.empty_cache()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runs: list[dict[str, float]] = []
    hand: list[dict[str, float]] = []
    t_measure = time.perf_counter()
    while len(runs) < repeats and (not runs or time.perf_counter() - t_measure < budget_s):
        i = len(runs)
        pair = [(runs, fedit_once), (hand, hand_once)] if case.hand_loop else [(runs, fedit_once)]
        for sink, fn in (pair if i % 2 == 0 else pair[::-1]):  # alternate the order
            sink.append(fn(micro, case.steps, 10 + i))
    tps = float(np.median([r["tokens_per_s"] for r in runs]))
    mean_ctx = float(np.sum(np.square(lengths)) / np.sum(lengths))  # attention context weighted by tokens
    fl = count_flops_per_token(model, mean_ctx)
    peak = ctx["peak"]
    rec: dict[str, Any] = {
        "case": case.name, "shape": case.shape, "base": case.base, "gradient_checkpointing": case.checkpointing,
        "data": case.data, "packing": case.data == "packed", "seq_len": seq_len, "micro_batch_size": micro,
        "batch_size": 2 * micro, "steps": case.steps, "repeats": len(runs), **fl,
        "tokens_per_s": tps, "achieved_tflops": tps * fl["flops_per_token"] / 1e12,
        "mfu": tps * fl["flops_per_token"] / (peak * 1e12) if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "build_seconds": build_s, "seconds": time.perf_counter() - t_case, "runs": runs,
    }
    if case.hand_loop:
        h = float(np.median([r["tokens_per_s"] for r in hand]))
        rec.update({"hand_loop_tokens_per_s": h, "fedit_vs_hand_loop": ratio(tps, h),
                    "hand_loop_padding_fraction": float(np.median([r["padding_fraction"] for r in hand])),
                    "hand_loop_runs": hand})
    trainer.pack_len = None
    set_checkpointing(model, False)
    return rec


def run(smoke: bool = False, seq_len: int | None = None, micro: int | None = None, steps: int | None = None,
        repeats: int | None = None, peak: float | None = None, deadline_s: float = 450.0,
        case_budget_s: float | None = None, only: list[str] | None = None) -> dict[str, Any]:
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not smoke:
        raise SystemExit("no CUDA GPU: this benchmark needs one (use --smoke to check the script on CPU)")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name(0)
        peak = peak or peak_tflops(name)
    else:
        name = "cpu"
    ctx: dict[str, Any] = {"device": device, "dtype": dtype, "cuda": cuda, "peak": peak,
                           "seq_len": seq_len or (64 if smoke else 2048)}
    repeats = repeats or (1 if smoke else 3)
    budget = case_budget_s if case_budget_s is not None else (30.0 if not smoke else 5.0)
    has_bnb = cuda and importlib.util.find_spec("bitsandbytes") is not None
    t_start = time.perf_counter()
    cases: list[dict[str, Any]] = []
    for case in default_cases(smoke, micro, steps):
        if only and not any(case.name.startswith(o) for o in only):
            continue
        left = deadline_s - (time.perf_counter() - t_start)
        if case.base == "nf4" and not has_bnb:
            cases.append({"case": case.name, "skipped": "needs CUDA and bitsandbytes"})
            continue
        if left < 20 and not smoke:
            cases.append({"case": case.name, "skipped": f"global deadline ({deadline_s:.0f} s) reached"})
            continue
        try:
            cases.append(run_case(case, ctx, min(budget, max(1.0, left - 15)), repeats))
        except Exception as e:  # one failing case (OOM at micro 1, a bitsandbytes problem) must not cost the rest
            cases.append({"case": case.name, "error": f"{type(e).__name__}: {e}"[:500]})
            ctx["model"] = ctx["trainer"] = ctx["model_key"] = None
        if cuda:
            torch.cuda.empty_cache()
    ctx["model"] = ctx["trainer"] = None

    def get(name: str) -> dict[str, Any]:
        return next((c for c in cases if c["case"] == name and "tokens_per_s" in c), {})

    head = "smoke" if smoke else "0.5b"
    full, varied, packed = get(f"{head}/bf16/full"), get(f"{head}/bf16/varied"), get(f"{head}/bf16/packed")
    res: dict[str, Any] = {
        "benchmark": "gpu_throughput", "device": name, "dtype": str(dtype).replace("torch.", ""),
        "attention": "sdpa", "seq_len": ctx["seq_len"], "lora_r": 16, "lora_targets": ["q_proj", "v_proj"],
        "shapes": {k: v for k, v in SHAPES.items() if smoke == (k == "smoke")},
        "flops_formula": "4*N_base + 6*N_lora + 6*layers*ctx*hidden per real token (model FLOPs)",
        "peak_tflops_bf16_dense": peak, "mfu_target": f">= {MFU_TARGET:.2f} (0.5b, bf16, full-length)",
        "flops_per_token": full.get("flops_per_token"), "n_base_matmul": full.get("n_base_matmul"),
        "fedit_full_length_tokens_per_s": full.get("tokens_per_s"), "mfu": full.get("mfu"),
        "gpu_throughput_ratio": varied.get("fedit_vs_hand_loop"),
        "packing_speedup": ratio(packed["tokens_per_s"], varied["tokens_per_s"]) if packed and varied else None,
        "cases": cases, "total_seconds": time.perf_counter() - t_start,
    }
    res["mfu_target_met"] = res["mfu"] >= MFU_TARGET if res["mfu"] is not None else None
    return res


def rows(res: dict[str, Any]) -> list[Row]:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    out = [Row("device", res["device"])]
    for c in res["cases"]:
        if "tokens_per_s" not in c:
            out.append(Row(c["case"], c.get("skipped") or c.get("error", "")))
            continue
        mem = f", {c['peak_memory_gib']:.1f} GiB" if c["peak_memory_gib"] is not None else ""
        out.append(Row(c["case"], f"{c['tokens_per_s']:,.0f} tok/s, MFU {pct(c['mfu'])}, "
                                  f"mb {c['micro_batch_size']}{mem}"))
    out += [Row("MFU 0.5b bf16 full-length", pct(res["mfu"]), f">= {100 * MFU_TARGET:.0f}%", res["mfu_target_met"]),
            Row("fedit / hand loop (varied lengths)", res["gpu_throughput_ratio"] or "n/a"),
            Row("packed / length-grouped (varied lengths)", res["packing_speedup"] or "n/a"),
            Row("total seconds", res["total_seconds"])]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script, measures nothing")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 2048)")
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="start value; halved on out-of-memory (default 8 for 0.5b, 4 for 7b)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per measurement (default 10 / 3)")
    ap.add_argument("--repeats", type=int, default=None, help="measurements per case, at most (default 3)")
    ap.add_argument("--case-budget-s", type=float, default=None, help="seconds of measurement per case (30)")
    ap.add_argument("--deadline-s", type=float, default=450.0, help="skip the cases left after this many seconds")
    ap.add_argument("--only", action="append", default=None, help="run cases whose name starts with this (repeat)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of the card")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from fedit.bench.common import quiet

    quiet()
    res = run(a.smoke, a.seq_len, a.micro_batch, a.steps, a.repeats, a.peak_tflops, a.deadline_s, a.case_budget_s,
              a.only)
    res["command"] = " ".join(["python benchmarks/gpu_throughput.py", *(argv if argv is not None else sys.argv[1:])])
    print_table(f"LoRA training on {res['device']} (random weights, SDPA, LoRA r16 q,v)", rows(res))
    write_json(a.json, res)
    return res


if __name__ == "__main__":
    main()
