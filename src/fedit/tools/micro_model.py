"""Build a randomly initialised Llama-architecture model and a small byte-level BPE tokenizer, saved locally.

Used by tests (fast, no download) and by benchmarks that need a model of a given shape without its weights.
`python -m fedit.tools.micro_model OUT_DIR [--hidden 32 --layers 2]`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>\n{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n"
    "{% else %}<|assistant|>\n{{ m['content'] }}</s>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_TEXT = (
    "The quick brown fox jumps over the lazy dog. Anna lives in Rome and works as a baker. "
    "What is the capital of France? Paris. List three fruits: apple, pear, plum. "
    "### Instruction:\n### Input:\n### Response:\n0 1 2 3 4 5 6 7 8 9 10 plus minus equals. "
)


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_TEXT] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_micro_model(out: str | Path, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                      intermediate: int | None = None, vocab_size: int = 400, seed: int = 0,
                      max_positions: int = 512) -> Path:
    """Save a random Llama model + tokenizer to `out` (loadable with the Auto classes); returns the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    tok = build_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(build_micro_model(a.out, hidden=a.hidden, layers=a.layers, heads=a.heads, seed=a.seed))


if __name__ == "__main__":
    main()
