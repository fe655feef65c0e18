"""Target 5: adapter payload bytes for common setups, computed from the model config alone (no weights loaded).

The model is instantiated on PyTorch's `meta` device (shapes only, no memory, no download); every Linear layer whose
name ends with a LoRA target contributes r * (in_features + out_features) parameters (A: r x in, B: out x r).
Bytes per round: down = payload x sampled clients, up = payload x clients that replied.
"""

from __future__ import annotations

import argparse
from typing import Any

from fedit.bench.common import Row, print_table, write_json

# Architectures by their published configs (written out here, so nothing is downloaded).
SETUPS: dict[str, dict[str, Any]] = {
    "llama-2-7b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000},
    "llama-3.1-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},
    "llama-2-13b": {"model_type": "llama", "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                    "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000},
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936},
}
CASES = [("llama-2-7b", 16, ["q_proj", "v_proj"]), ("llama-2-7b", 8, ["q_proj", "v_proj"]),
         ("llama-2-7b", 16, ["all-linear"]), ("llama-3.1-8b", 16, ["q_proj", "v_proj"]),
         ("llama-2-13b", 16, ["q_proj", "v_proj"]), ("qwen2.5-0.5b", 16, ["q_proj", "v_proj"])]


def lora_params_from_config(config: Any, r: int, targets: list[str]) -> int:
    """LoRA parameter count for `config` with rank r on `targets` (module name suffixes, or ["all-linear"])."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    out_layer = model.get_output_embeddings()
    total = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or mod is out_layer:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if targets == ["all-linear"] or leaf in targets:
            total += r * (mod.in_features + mod.out_features)
    return total


def payload_table(cases: list[tuple[str, int, list[str]]] | None = None, clients: int = 10,
                  bytes_per_param: int = 4) -> list[dict[str, Any]]:
    """Payload per setup; fp32 adapters (peft keeps LoRA weights in float32 by default, also over a bf16 base)."""
    from transformers import AutoConfig

    out = []
    for name, r, targets in cases or CASES:
        spec = dict(SETUPS[name])
        config = AutoConfig.for_model(spec.pop("model_type"), **spec)
        n = lora_params_from_config(config, r, targets)
        out.append({"model": name, "r": r, "targets": ",".join(targets), "lora_params": n,
                    "payload_bytes": n * bytes_per_param, "payload_mib": n * bytes_per_param / 2**20,
                    f"bytes_per_round_{clients}_clients_each_way": n * bytes_per_param * clients})
    return out


def run(quick: bool = True, smoke: bool = False) -> dict[str, Any]:
    cases = CASES[:1] if smoke else CASES
    return {"benchmark": "payload", "bytes_per_param": 4, "clients_per_round": 10, "setups": payload_table(cases)}


def rows(res: dict[str, Any]) -> list[Row]:
    return [Row(f"{s['model']} r={s['r']} {s['targets']}",
                f"{s['lora_params']:,} params = {s['payload_mib']:.2f} MiB/client, "
                f"{s['payload_mib'] * res['clients_per_round']:.1f} MiB per round each way")
            for s in res["setups"]]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    res = run(smoke=a.smoke)
    print_table("Adapter payload (fp32) for common setups, from the config on the meta device", rows(res))
    write_json(a.json, res)
    return res


if __name__ == "__main__":
    main()
