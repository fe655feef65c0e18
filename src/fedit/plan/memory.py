"""Peak memory of one training process, estimated from the model config, the adapter and the longest micro-batch.

Components (bytes): the process itself (CPU: this process's resident memory now, with torch, transformers, peft,
the tokenizer and the data loaded, which a run's process holds too; CUDA: a stated CUDA-context constant), the base
weights by dtype or 4/8-bit packing, the adapter and the copies of it the run keeps, its gradients, AdamW's two
moments and its step temporaries, and the activations autograd saves for one micro-batch of the longest examples.

Activations follow what PyTorch saves in a Llama-style decoder layer with a frozen base (measured tensor by tensor
with `saved_tensors_hooks` on the tiny and micro models): the two RMSNorm inputs (float32), attention's q, k, v and
output (SDPA/flash: no s x s scores; eager attention adds them), the gated MLP's gate, activation and up outputs,
and per LoRA module the dropout mask and output at its input width (float32, peft casts to the adapter dtype), plus
one attention mask, the head's label-token logits and log-softmax, and one layer's gradients in flight in backward.
With gradient checkpointing only each layer's input is kept, and one layer is recomputed at a time.

On CPU with glibc, memory freed between steps stays with the process (the dynamic mmap threshold moves large
blocks onto the heap), so peak RSS was measured at about twice the live activation peak; `MALLOC_MMAP_THRESHOLD_`
set in the environment fixes the threshold and removes that (the factor is then 1).
"""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass, field
from typing import Any

import torch

from fedit.config import Config
from fedit.plan.model import ModelShape

GATED_MLP = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3",
                       "olmo", "olmo2", "smollm3", "granite", "cohere"})
CPU_ALLOCATOR_FACTOR = 2.0  # glibc RSS / live activation peak when freed blocks are kept: the upper of two modes (docs)
CUDA_CONTEXT_BYTES = 512 * 2**20  # CUDA context + cuBLAS workspace: a stated constant, not measured here
PAYLOAD_COPIES = 4  # the server's global adapter, the task sent down, the trained upload, the client's LoRA init


@dataclass
class PeakBatch:
    """The micro-batch that needs the most memory: `rows` examples padded to `width` tokens, `labels` of them
    label tokens (the head's logits are computed for those only on plain-head architectures)."""

    rows: int
    width: int
    labels: int


@dataclass
class MemoryEstimate:
    device: str  # "cpu" or "cuda": the memory the total is of (process RSS, or GPU memory)
    components: dict[str, int]  # name -> bytes (without gradient checkpointing)
    activations_checkpointing: int  # the activation component with gradient checkpointing
    allocator_factor: float
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.components.values())

    @property
    def total_checkpointing(self) -> int:
        act = self.components.get("activations", 0) + self.components.get("allocator retention", 0)
        return self.total - act + int(self.activations_checkpointing * self.allocator_factor)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "components": dict(self.components), "total": self.total,
                "total_checkpointing": self.total_checkpointing, "allocator_factor": self.allocator_factor,
                "activations_checkpointing": self.activations_checkpointing, "notes": list(self.notes)}


def current_rss() -> int:
    """This process's resident memory now (bytes): /proc on Linux, psutil elsewhere, else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if platform.system() == "Darwin" else peak * 1024)


def allocator_factor(device: str) -> float:
    """RSS per byte of live activations: glibc without a fixed mmap threshold keeps freed blocks (measured ~2)."""
    if device != "cpu" or platform.libc_ver()[0] != "glibc":
        return 1.0
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return 1.0
    return CPU_ALLOCATOR_FACTOR


def weight_bytes(shape: ModelShape, quantization: str | None) -> int:
    """The frozen base as loaded: every parameter in the compute dtype, or the blocks' linear layers packed by
    bitsandbytes (4-bit: half a byte per weight plus a float32 absmax per 64; 8-bit: a byte plus a float32 scale
    per row) and the rest in the compute dtype."""
    size = torch.empty((), dtype=shape.dtype).element_size()
    if not quantization:
        return shape.params * size
    rest = (shape.params - shape.linear_params) * size
    if quantization == "4bit":
        return rest + shape.linear_params // 2 + shape.linear_params // 64 * 4
    return rest + shape.linear_params + shape.linear_rows * 4


def activation_bytes(shape: ModelShape, cfg: Config, batch: PeakBatch, checkpointing: bool = False,
                     device: str = "cpu") -> int:
    """Live activation peak of one training micro-batch (forward saved tensors + backward in flight) on `device`."""
    d = shape.dims
    h, i, layers, vocab = d["hidden"], d["intermediate"], d["layers"], d["vocab"]
    q_width, kv_width = d["heads"] * d["head_dim"], d["kv_heads"] * d["head_dim"]
    act = torch.empty((), dtype=shape.dtype).element_size()
    tokens = batch.rows * batch.width
    gated = shape.model_type in GATED_MLP
    from fedit.model.precision import pick_attention

    eager = pick_attention(cfg.model.attn_implementation, torch.device(device), shape.dtype,
                           cfg.data.cutoff_len) == "eager"
    # per token, per layer, in bytes
    norms = 2 * 4 * h  # RMSNorm upcasts to float32 and keeps its input
    attention = act * (2 * q_width + 2 * kv_width) + 4 * d["heads"]  # q, k, v, output, log-sum-exp
    mlp = act * (3 if gated else 2) * i
    per_module = 2 * 4 if cfg.lora.dropout > 0 else 4  # dropout mask + output, or lora_A's input
    lora = sum(per_module * m.d_in + 4 * cfg.lora.r for m in shape.lora) // max(1, layers)
    per_layer = tokens * (norms + attention + mlp + lora)
    if eager:
        per_layer += 2 * batch.rows * d["heads"] * batch.width ** 2 * act
    mask = batch.rows * batch.width ** 2 * act  # the 4-D padding mask, shared by the layers
    from fedit.model.loss import PLAIN_HEAD_MODEL_TYPES

    logits_rows = batch.labels + 64 if shape.model_type in PLAIN_HEAD_MODEL_TYPES else tokens
    head = tokens * 4 * h + 2 * logits_rows * vocab * 4  # final norm; logits + log-softmax (float32)
    backward = tokens * (act * 3 * i + 4 * 2 * h)  # one layer's gradients in flight
    if checkpointing:
        return layers * tokens * h * act + per_layer + mask + head + backward
    return layers * per_layer + mask + head + backward


def estimate_memory(shape: ModelShape, cfg: Config, batch: PeakBatch, trainable: int, device: str,
                    process_bytes: int) -> MemoryEstimate:
    """The peak of a training process (CPU: resident memory; CUDA: GPU memory) for the run's longest micro-batch;
    `trainable` adapter parameters get gradients and AdamW state, `process_bytes` is the process overhead (CPU)."""
    adapter_elem = next(iter(shape.payload.values())).element_size() if shape.payload else 4
    adapter = shape.adapter_params * adapter_elem
    factor = allocator_factor(device)
    act = activation_bytes(shape, cfg, batch, device=device)
    components = {
        "process" if device == "cpu" else "CUDA context": process_bytes if device == "cpu" else CUDA_CONTEXT_BYTES,
        "base weights": weight_bytes(shape, cfg.model.quantization),
        "adapter": adapter + PAYLOAD_COPIES * adapter * (device == "cpu"),
        "gradients": trainable * adapter_elem,
        "optimizer": 3 * trainable * 4,  # AdamW's two float32 moments + the foreach step's temporaries
        "activations": act,
    }
    notes = [f"longest micro-batch: {batch.rows} x {batch.width} tokens ({batch.labels} label tokens)"]
    if factor != 1.0:
        components["allocator retention"] = int(act * (factor - 1.0))
        notes.append(f"glibc keeps freed blocks: RSS measured at ~{factor:g}x the live activations "
                     "(MALLOC_MMAP_THRESHOLD_=131072 in the environment avoids it)")
    if device != "cpu":
        notes.append("GPU memory; the process's host memory (torch, the data) is not included; not measured on a GPU")
    if shape.model_type not in GATED_MLP:
        notes.append(f"activations use the Llama-family layout; {shape.model_type!r} may differ")
    return MemoryEstimate(device, components, activation_bytes(shape, cfg, batch, checkpointing=True, device=device),
                          factor, notes)
