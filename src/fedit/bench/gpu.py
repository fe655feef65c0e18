"""Target 6: LoRA training tokens/s and MFU on one GPU, fedit's client loop vs the hand-written loop.

A ~0.5B Llama-architecture model is built from its config with random weights (nothing is downloaded), bf16, SDPA
attention, LoRA r=16 on q,v. Two measurements:
  1. MFU: fedit's `train_client` on full-length sequences (no padding at all);
  2. fedit vs the hand-written loop on variable-length data (lengths uniform in [seq/16, seq]), same micro-batch,
     steps and GPU: fedit's length grouping against plain padded batches. Real tokens only in every tokens/s.
Training FLOPs per real token (LoRA: frozen base, so no weight gradients for it):
    4 * N_base  (forward 2N + backward activation gradients 2N; N = matmul weights incl. lm_head, no input embedding)
  + 6 * N_lora  (forward 2, backward activation + weight gradients 4)
  + 6 * layers * ctx * hidden  (causal attention scores and values: forward 2*ctx*d, backward twice that; ctx = the
    sequence length, the average causal context being ctx / 2)
MFU = FLOPs/s / peak dense bf16 (H100/H200 SXM: 989 TFLOP/s; pass --peak-tflops for other cards).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from fedit.bench.common import Row, print_table, ratio, write_json

PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4, "A100": 312.0,
               "L40S": 362.0, "B200": 2250.0}

SHAPES = {  # hidden, layers, heads, kv_heads, intermediate, vocab
    "0.5b": (1024, 24, 16, 16, 4096, 32000),
    "smoke": (64, 2, 4, 4, 128, 512),
}


def peak_tflops(name: str) -> float | None:
    for key, v in PEAK_TFLOPS.items():  # the more specific names come first
        if key in name:
            return v
    return None


def build_model(shape: str, device: Any, dtype: Any, max_len: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, inter, vocab = SHAPES[shape]
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                         max_position_embeddings=max(max_len, 128), tie_word_embeddings=False,
                         attn_implementation="sdpa", pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def count_flops_per_token(model: Any, ctx: float) -> dict[str, float]:
    emb = model.get_input_embeddings().weight
    n_base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and p.dim() == 2
                 and p is not emb)
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    cfg = model.config
    attn = 6 * cfg.num_hidden_layers * ctx * cfg.hidden_size
    return {"n_base_matmul": float(n_base), "n_lora": float(n_lora),
            "flops_per_token": 4 * n_base + 6 * n_lora + attn, "attention_flops_per_token": attn}


def random_data(n: int, lengths: list[int], vocab: int, seed: int) -> Any:
    import numpy as np

    from fedit.data.tokenize import TokenizedData

    rng = np.random.default_rng(seed)
    ids = [rng.integers(3, vocab, size=int(length)).tolist() for length in lengths[:n]]
    return TokenizedData(ids, [list(x) for x in ids], [None] * len(ids))


def run(smoke: bool = False, seq_len: int | None = None, micro: int | None = None, steps: int | None = None,
        repeats: int | None = None, peak: float | None = None, lora_r: int = 16,
        compile_layers: bool = False) -> dict[str, Any]:
    import numpy as np
    import torch

    from fedit.bench.handloop import hand_loop
    from fedit.client.train import LocalTrainer, train_client
    from fedit.config import ClientConfig, LoraConfig
    from fedit.model.lora import AdapterSlots, attach_lora

    cuda = torch.cuda.is_available()
    if not cuda and not smoke:
        raise SystemExit("no CUDA GPU: this benchmark needs one (use --smoke to check the script on CPU)")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = "smoke" if smoke else "0.5b"
    seq_len = seq_len or (64 if smoke else 2048)
    micro = micro or (2 if smoke else 8)
    steps = steps or (2 if smoke else 12)
    repeats = repeats or (1 if smoke else 3)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name(0)
        peak = peak or peak_tflops(name)
    else:
        name = "cpu"
    t_start = time.perf_counter()
    base = build_model(shape, device, dtype, seq_len)
    model = attach_lora(base, LoraConfig(r=lora_r, alpha=2 * lora_r, dropout=0.05, targets=["q_proj", "v_proj"]),
                        seed=0)
    if compile_layers:  # opt-in: fuses the elementwise ops of each decoder layer (first steps pay compilation)
        for layer in model.get_base_model().model.layers:
            layer.compile()
    trainer = LocalTrainer(model, AdapterSlots(model), 0)
    init = trainer.slots.get()
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    n_items = 512
    full = random_data(n_items, [seq_len] * n_items, vocab, 1)
    var_lengths = rng.integers(max(8, seq_len // 16), seq_len + 1, size=n_items).tolist()
    varied = random_data(n_items, var_lengths, vocab, 2)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def fedit_once(data: Any, mb: int, n_steps: int, seed: int) -> dict[str, float]:
        cfg = ClientConfig(local_steps=n_steps, local_epochs=None, batch_size=2 * mb, micro_batch_size=mb,
                           lr=1e-4, group_by_length=True)
        sync()
        t0 = time.perf_counter()
        u = train_client(trainer, init, data, cfg, client_id=0, round_idx=seed, seed=0)
        sync()
        sec = time.perf_counter() - t0
        return {"seconds": sec, "tokens": u.metrics["tokens"], "tokens_per_s": u.metrics["tokens"] / sec}

    def hand_once(data: Any, mb: int, n_steps: int, seed: int) -> dict[str, float]:
        trainer.slots.set(init)
        return hand_loop(model, data, 0, batch_size=2 * mb, micro_batch_size=mb, steps=n_steps, lr=1e-4,
                         seed=seed, device=device)

    # the largest micro-batch that fits (both loops hold about the same activations)
    while True:
        try:
            fedit_once(full, micro, 1, 0)
            hand_once(full, micro, 1, 0)
            break
        except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError):
            if micro == 1:
                raise
            micro //= 2
            torch.cuda.empty_cache()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    mfu_runs = [fedit_once(full, micro, steps, 10 + i) for i in range(repeats)]
    cmp: dict[str, list[dict[str, float]]] = {"fedit": [], "hand_loop": []}
    for i in range(repeats):  # alternate the order
        pair = [("fedit", fedit_once), ("hand_loop", hand_once)]
        for k, fn in (pair if i % 2 == 0 else pair[::-1]):
            cmp[k].append(fn(varied, micro, steps, 20 + i))

    def med(runs: list[dict[str, float]], key: str = "tokens_per_s") -> float:
        return float(np.median([r[key] for r in runs]))

    fl_full = count_flops_per_token(model, seq_len)
    # variable lengths: attention context per token is the item's own length; weight by tokens
    mean_ctx = float(np.sum(np.square(var_lengths)) / np.sum(var_lengths))
    fl_var = count_flops_per_token(model, mean_ctx)
    tps = med(mfu_runs)
    achieved = tps * fl_full["flops_per_token"]
    res: dict[str, Any] = {
        "benchmark": "gpu_throughput", "device": name, "dtype": str(dtype).replace("torch.", ""),
        "attention": "sdpa", "torch_compile_layers": compile_layers,
        "model_shape": dict(zip(("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab"), SHAPES[shape],
                                strict=True)),
        "params_total": sum(p.numel() for p in model.parameters()), "lora_r": lora_r,
        "lora_targets": ["q_proj", "v_proj"], "seq_len": seq_len, "micro_batch_size": micro,
        "batch_size": 2 * micro, "steps": steps, "repeats": repeats,
        "flops_formula": "4*N_base + 6*N_lora + 6*layers*ctx*hidden per real token",
        **fl_full,
        "fedit_full_length_tokens_per_s": tps, "achieved_tflops": achieved / 1e12,
        "peak_tflops_bf16_dense": peak, "mfu": achieved / (peak * 1e12) if peak else None,
        "mfu_target": ">= 0.40",
        "varied_lengths": f"uniform in [{max(8, seq_len // 16)}, {seq_len}]",
        "fedit_varied_tokens_per_s": med(cmp["fedit"]), "hand_loop_varied_tokens_per_s": med(cmp["hand_loop"]),
        "hand_loop_padding_fraction": med(cmp["hand_loop"], "padding_fraction"),
        "gpu_throughput_ratio": ratio(med(cmp["fedit"]), med(cmp["hand_loop"])),
        "fedit_varied_mfu": (med(cmp["fedit"]) * fl_var["flops_per_token"] / (peak * 1e12)) if peak else None,
        "hand_loop_varied_mfu": (med(cmp["hand_loop"]) * fl_var["flops_per_token"] / (peak * 1e12)) if peak else None,
        "runs": {"mfu": mfu_runs, **cmp},
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "total_seconds": time.perf_counter() - t_start,
    }
    res["mfu_target_met"] = res["mfu"] >= 0.40 if res["mfu"] is not None else None
    return res


def rows(res: dict[str, Any]) -> list[Row]:
    def pct(x: float | None) -> str:
        return "n/a (unknown peak)" if x is None else f"{100 * x:.1f}%"

    return [
        Row("device", res["device"]),
        Row("params (total) / LoRA", f"{res['params_total']:,} / {int(res['n_lora']):,}"),
        Row("micro-batch x seq", f"{res['micro_batch_size']} x {res['seq_len']}"),
        Row("fedit, full-length seqs, tokens/s", res["fedit_full_length_tokens_per_s"]),
        Row("achieved TFLOP/s", res["achieved_tflops"]),
        Row("MFU", pct(res["mfu"]), ">= 40%", res["mfu_target_met"]),
        Row("varied lengths: fedit tokens/s", res["fedit_varied_tokens_per_s"]),
        Row("varied lengths: hand loop tokens/s", res["hand_loop_varied_tokens_per_s"]),
        Row("varied lengths: hand loop padding", res["hand_loop_padding_fraction"]),
        Row("fedit / hand loop", res["gpu_throughput_ratio"], ">= 1.0", res["gpu_throughput_ratio"] >= 1.0),
        Row("MFU varied: fedit / hand loop", f"{pct(res['fedit_varied_mfu'])} / {pct(res['hand_loop_varied_mfu'])}"),
        Row("peak GPU memory (GiB)", res["peak_memory_gib"] if res["peak_memory_gib"] is not None else "n/a"),
        Row("total seconds", res["total_seconds"]),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script, measures nothing")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 2048)")
    ap.add_argument("--micro-batch", type=int, default=None, help="start value; halved on out-of-memory (default 8)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per measurement (default 12)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of the card")
    ap.add_argument("--compile", action="store_true", help="torch.compile each decoder layer (off by default)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from fedit.bench.common import quiet

    quiet()
    res = run(a.smoke, a.seq_len, a.micro_batch, a.steps, a.repeats, a.peak_tflops, compile_layers=a.compile)
    res["command"] = " ".join(["python benchmarks/gpu_throughput.py", *(argv if argv is not None else sys.argv[1:])])
    print_table(f"LoRA training on {res['device']} (random ~0.5B Llama, bf16, SDPA)", rows(res))
    write_json(a.json, res)
    return res


if __name__ == "__main__":
    main()
