"""Next-token loss on label positions only, used by local training and evaluation alike.

With `train_on_inputs` off most tokens of an instruction example are prompt; projecting them onto the vocabulary only
to ignore the result is waste (on the tiny base the LM head costs as much as one decoder layer, and Dolly prompts are
most of its tokens). For architectures whose logits are plainly `lm_head(decoder(x))`, the decoder's hidden states
are gathered at the positions whose next token is a label and only those rows go through the LM head. The numbers
are the model's own loss (tests/model/test_loss.py). Other architectures (some scale or cap their logits) take the
model's full forward.
"""

from __future__ import annotations

from typing import Any

import torch

from fedit.data.tokenize import IGNORE_INDEX

# model_type values whose CausalLM forward is `logits = lm_head(decoder(...).last_hidden_state)`, nothing else.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3"})


def _plain_head_parts(model: Any) -> tuple[Any, Any] | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    return base.get_decoder(), base.get_output_embeddings()


def attention_impl(model: Any) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return str(getattr(base.config, "_attn_implementation", None) or "eager")


def packed_attention(model: Any, position_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """The attention mask to pass with packed rows (several examples per row, `position_ids` restarting at 0 at each
    example's first token, trailing pad tokens included: they form a segment of their own).

    Flash/flex attention gets None: transformers then reads the example boundaries from `position_ids` (varlen
    kernels, no mask built). Every other implementation (sdpa, eager) gets a 4D block-diagonal causal mask,
    (batch, 1, L, L): token i sees token j only when j <= i and both lie in the same example; as booleans (True =
    attend) for sdpa, as an additive float mask (0 or the dtype's minimum) for eager and the rest."""
    impl = attention_impl(model)
    if "flash" in impl or "flex" in impl:
        return None
    seg = (position_ids == 0).cumsum(-1)  # example index per token (pads start one more)
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal
    allowed = allowed[:, None]
    if impl == "sdpa":
        return allowed
    if dtype is None:
        dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    zero = torch.zeros((), dtype=dtype, device=position_ids.device)
    return zero.masked_fill(~allowed, torch.finfo(dtype).min)


def label_token_nll(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                    position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL (float32) of every label token, and the batch row each one belongs to.

    Position t predicts token t+1, so the label positions are `labels[:, 1:] != IGNORE_INDEX`. With `position_ids`
    (packed rows from fedit.data.packing) attention stays inside each example (`packed_attention`); the labels of
    a packed row already never ask a token to predict the next example's first token.
    """
    target_mask = labels[:, 1:] != IGNORE_INDEX
    rows = target_mask.nonzero()[:, 0]
    targets = labels[:, 1:][target_mask]
    extra: dict[str, Any] = {}
    mask: torch.Tensor | None = attention_mask
    if position_ids is not None:
        mask = packed_attention(model, position_ids)
        extra["position_ids"] = position_ids
    parts = _plain_head_parts(model)
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=mask, **extra).logits[:, :-1]
        selected = logits[target_mask]
    else:
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False, **extra).last_hidden_state
        rows_in = hidden[:, :-1][target_mask]
        # A GEMM with only a handful of rows takes a kernel whose summation order depends on the thread count; padded
        # to a multiple of 64 rows, results stay bit-identical between the simulator and Flower nodes (fewer threads).
        pad = -rows_in.shape[0] % 64
        if pad:
            rows_in = torch.cat([rows_in, rows_in.new_zeros(pad, rows_in.shape[1])])
        selected = head(rows_in)[: targets.shape[0]]
    nll = torch.nn.functional.cross_entropy(selected.float(), targets, reduction="none")
    return nll, rows
