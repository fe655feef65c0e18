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


def label_token_nll(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL (float32) of every label token, and the batch row each one belongs to.

    Position t predicts token t+1, so the label positions are `labels[:, 1:] != IGNORE_INDEX`.
    """
    target_mask = labels[:, 1:] != IGNORE_INDEX
    rows = target_mask.nonzero()[:, 0]
    targets = labels[:, 1:][target_mask]
    parts = _plain_head_parts(model)
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        selected = logits[target_mask]
    else:
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        rows_in = hidden[:, :-1][target_mask]
        # A GEMM with only a handful of rows takes a kernel whose summation order depends on the thread count; padded
        # to a multiple of 64 rows, results stay bit-identical between the simulator and Flower nodes (fewer threads).
        pad = -rows_in.shape[0] % 64
        if pad:
            rows_in = torch.cat([rows_in, rows_in.new_zeros(pad, rows_in.shape[1])])
        selected = head(rows_in)[: targets.shape[0]]
    nll = torch.nn.functional.cross_entropy(selected.float(), targets, reduction="none")
    return nll, rows
