"""Pretrain the shipped tiny Llama base (tokenizer + weights + model card) from the offline corpus in tiny_corpus.

Rebuild: ``python -m fedit.tools.pretrain_tiny --out src/fedit/model/assets/tiny --seed 0`` (see the model card
for the exact options used). Deterministic on CPU for a given seed, Python stdlib and library versions.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fedit.tools import tiny_corpus

ASSETS = Path(__file__).resolve().parents[1] / "model" / "assets" / "tiny"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3, in this order
MAX_BYTES = 10 * 1024 * 1024
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>\n{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
PROBES = ["The capital of France is", "A banana is", "The dog says", "The opposite of hot is", "Seven plus five is",
          "7 + 5 =", "The first letter of apple is", "Anna is a baker who lives in Rome. She", "def ", "Return the"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=ASSETS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--vocab-size", type=int, default=3072)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=688)
    p.add_argument("--max-positions", type=int, default=512)
    p.add_argument("--corpus-scale", type=float, default=1.0, help="multiplies the generated part of the corpus")
    p.add_argument("--max-files", type=int, default=None, help="limit stdlib files (smoke runs)")
    p.add_argument("--max-minutes", type=float, default=None, help="safety stop: save what is there after this")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="after 30 timed steps, lower --steps so training fits this many minutes (card records it)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--machine", default=None, help="machine description for the model card")
    return p.parse_args(argv)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_tokenizer(docs: list[str], vocab_size: int, max_len: int):
    """Byte-level BPE on the corpus, wrapped as a transformers fast tokenizer that prepends <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=max_len, chat_template=CHAT_TEMPLATE,
                                   clean_up_tokenization_spaces=False)


def pack(tokenizer, docs: list[str], seq_len: int) -> torch.Tensor:
    """Concatenate <s> doc </s> streams and cut into [n, seq_len] rows (remainder dropped)."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for enc in tokenizer.backend_tokenizer.encode_batch(docs):
        ids.extend(enc.ids)  # post-processor already put <s> first
        ids.append(eos)
    arr = torch.tensor(ids, dtype=torch.long)
    n = len(arr) // seq_len
    return arr[: n * seq_len].view(n, seq_len)


def build_model(args: argparse.Namespace, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
                      max_position_embeddings=args.max_positions, tie_word_embeddings=True, rms_norm_eps=1e-5,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, initializer_range=0.02)
    return LlamaForCausalLM(cfg)


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(model, args: argparse.Namespace) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))


@torch.no_grad()
def eval_loss(model, rows: torch.Tensor, device: str, batch: int = 32) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(rows), batch):
        x = rows[i: i + batch].to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            total += model(input_ids=x, labels=x).loss.item() * len(x)
    model.train()
    return total / max(1, len(rows))


def train(model, rows: torch.Tensor, args: argparse.Namespace, device: str) -> dict:
    """AdamW loop over shuffled packed rows; returns stats for the model card."""
    opt = make_optimizer(model, args)
    gen = torch.Generator().manual_seed(args.seed)
    order, pos, epoch = torch.randperm(len(rows), generator=gen), 0, 0
    t0 = t10 = time.time()
    losses, last = [], float("nan")
    step = 0
    for step in range(args.steps):
        if pos + args.batch_size > len(order):
            order, pos, epoch = torch.randperm(len(rows), generator=gen), 0, epoch + 1
        x = rows[order[pos: pos + args.batch_size]].to(device)
        pos += args.batch_size
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if args.budget_minutes and step == 39:
            if device == "cuda":
                torch.cuda.synchronize()
            rate = 30 / (time.time() - t10)
            args.steps = min(args.steps, 40 + int(rate * (args.budget_minutes * 60 - (time.time() - t0))))
            print(f"{rate:.1f} steps/s: steps set to {args.steps}", flush=True)
        if step == 9:
            t10 = time.time()
        losses.append(loss.item() if (step + 1) % args.log_every == 0 or step + 1 == args.steps else math.nan)
        if (step + 1) % args.log_every == 0:
            last = losses[-1]
            el = time.time() - t0
            tps = (step + 1) * args.batch_size * args.seq_len / el
            print(f"step {step + 1}/{args.steps} loss {last:.4f} lr {lr_at(step, args):.2e} "
                  f"epoch {epoch} {tps:,.0f} tok/s {el / 60:.1f} min", flush=True)
        if args.max_minutes and time.time() - t0 > args.max_minutes * 60:
            print(f"max-minutes reached at step {step + 1}", flush=True)
            break
    steps_done = step + 1
    return {"steps": steps_done, "tokens_seen": steps_done * args.batch_size * args.seq_len,
            "final_train_loss": loss.item(), "wall_s": time.time() - t0, "epochs": epoch + pos / len(rows)}


@torch.no_grad()
def probe(model, tokenizer, device: str) -> list[tuple[str, str]]:
    model.eval()
    out = []
    for p in PROBES:
        enc = tokenizer(p, return_tensors="pt").to(device)
        g = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out.append((p, tokenizer.decode(g[0, enc["input_ids"].shape[1]:], skip_special_tokens=False)))
    return out


def save(model, tokenizer, out: Path) -> str:
    """save_pretrained (safetensors); bfloat16 when fp32 weights would exceed MAX_BYTES."""
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").float()
    n = sum(p.numel() for p in model.parameters())
    dtype = "float32" if n * 4 <= MAX_BYTES * 0.95 else "bfloat16"
    model = model.to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, max_new_tokens=64,
                                               do_sample=False)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Keep the chat template inside tokenizer_config.json and name the classic fast class, so transformers 4.x
    # loads the same files.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(chat_template=CHAT_TEMPLATE, tokenizer_class="PreTrainedTokenizerFast")
    cfg.pop("backend", None)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return dtype


def write_card(out: Path, args: argparse.Namespace, info: dict) -> None:
    # argv as typed, so the card states the exact rebuild command
    argv, skip = [], 0
    for i, a in enumerate(sys.argv[1:]):
        if skip or a == "--budget-minutes":
            skip = not skip
            continue
        argv.append(str(info["steps"]) if i and sys.argv[i] == "--steps" else a)
    if "--steps" not in argv:
        argv += ["--steps", str(info["steps"])]
    if args.out.resolve() == ASSETS and "--out" in argv:  # the card is read in the repo: show the default path
        argv[argv.index("--out") + 1] = "src/fedit/model/assets/tiny"
    cmd = "python -m fedit.tools.pretrain_tiny " + shlex.join(argv)
    samples = "\n".join(f"| `{p!r}` | `{c!r}` |" for p, c in info["samples"])
    text = f"""# fedit tiny base (Llama, {info['params'] / 1e6:.2f}M parameters)

The embedded default base model of `fedit run`: a tiny causal LM pretrained from scratch by
`python -m fedit.tools.pretrain_tiny` on an offline, shippable corpus. It is meant for fast CPU demos and tests of
federated LoRA instruction tuning, not for real use. It has **not** been instruction-tuned: instruction following
comes from federated tuning.

## Architecture
- `LlamaForCausalLM`: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, intermediate {args.intermediate},
  max positions {args.max_positions}, RoPE, RMSNorm, tied input/output embeddings, vocab {info['vocab']}.
- Parameters: {info['params']:,} ({info['params'] / 1e6:.2f}M). Stored as {info['dtype']} in `model.safetensors`
  ({info['mb']:.2f} MB); fedit casts to fp32 on CPU when loading.

## Tokenizer
Byte-level BPE (`tokenizers`), trained on this corpus, vocab {info['vocab']}. Special tokens: `<pad>`=0, `<s>`=1
(prepended by the tokenizer), `</s>`=2 (end of document / end of assistant turn), `<unk>`=3 (unused by byte-level BPE).
Chat template (plain-text role markers, tokenized as ordinary text):
`<s><|user|>\\n...\\n<|assistant|>\\n...</s>` (also `<|system|>`).

## Corpus
Built by `fedit.tools.tiny_corpus.build_corpus(seed={args.seed}, scale={args.corpus_scale})`, offline:
1. Docstrings of the Python {info['python']} standard library, parsed with `ast` (modules are never imported);
   tests, idlelib, tkinter and similar folders skipped; non-ASCII and duplicate docstrings dropped. PSF licence.
2. Generated skill text (written by this project, Apache-2.0): copying sequences, counting, comparing
   numbers, small arithmetic in digits and words, spelling / first and last letters / word length, lists.
3. Plain-prose statements of the facts in `fedit.data.lexicon` (colours, kinds, animal sounds and homes, opposites,
   capitals) with varied phrasings, and short narratives using its names, cities, jobs and past tenses.

No instruction/response or question/answer formatting and no chat markers (documents with such markers are dropped).
Documents: {info['docs']:,} ({info['stdlib_docs']:,} docstrings), {info['train_tokens']:,} training tokens,
{info['heldout_tokens']:,} held-out tokens (last 1% of the shuffled documents).

## Training
AdamW (betas 0.9/0.95, weight decay {args.weight_decay}), lr {args.lr} with {args.warmup} warmup steps and cosine decay
to {args.min_lr_ratio}x, gradient clipping 1.0, packed sequences of {args.seq_len} tokens, batch {args.batch_size},
{info['steps']:,} steps, {info['tokens_seen']:,} tokens seen ({info['epochs']:.1f} epochs), seed {args.seed}.

| metric | value |
| --- | --- |
| final train loss (last batch) | {info['final_train_loss']:.3f} |
| held-out corpus loss | {info['heldout_loss']:.3f} (perplexity {math.exp(info['heldout_loss']):.1f}) |
| wall time | {info['wall_s'] / 60:.1f} min of training ({info['total_s'] / 60:.1f} min in all) |
| machine | {info['machine']} |
| software | torch {torch.__version__}, transformers {info['transformers']}, tokenizers {info['tokenizers']} |

Rebuild (the corpus and tokenizer are deterministic for the same seed and Python stdlib; training is bitwise
deterministic on CPU for the same library versions, GPU runs match closely but not bitwise):

```
{cmd}
```

## Greedy continuations

| prompt | continuation |
| --- | --- |
{samples}

## Licence
Weights and tokenizer: Apache-2.0, like fedit. Corpus: PSF-licensed docstrings plus text generated by fedit.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t_start = time.time()
    seed_all(args.seed)
    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    docs = tiny_corpus.build_corpus(args.seed, args.corpus_scale, max_files=args.max_files)
    n_std = len(tiny_corpus.stdlib_docstrings(max_files=args.max_files))
    n_held = max(20, len(docs) // 100)
    train_docs, held_docs = docs[:-n_held], docs[-n_held:]
    tokenizer = train_tokenizer(train_docs, args.vocab_size, args.max_positions)
    rows, held = pack(tokenizer, train_docs, args.seq_len), pack(tokenizer, held_docs, args.seq_len)
    print(f"corpus: {len(docs)} docs, {rows.numel():,} train tokens, {held.numel():,} held-out; "
          f"vocab {len(tokenizer)}; device {device}", flush=True)
    model = build_model(args, tokenizer).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params:,}", flush=True)
    stats = train(model, rows, args, device)
    heldout = eval_loss(model, held, device)
    print(f"held-out loss {heldout:.4f}", flush=True)
    samples = probe(model, tokenizer, device)
    for p, c in samples:
        print(f"{p!r} -> {c!r}", flush=True)
    dtype = save(model, tokenizer, args.out)
    import tokenizers
    import transformers

    machine = args.machine or f"{platform.processor() or platform.machine()}, {args.threads} threads, {device}"
    if device == "cuda":
        machine = args.machine or f"{torch.cuda.get_device_name()}"
    info = {**stats, "params": n_params, "dtype": dtype, "mb": (args.out / "model.safetensors").stat().st_size / 1e6,
            "vocab": len(tokenizer), "python": platform.python_version(), "docs": len(docs), "stdlib_docs": n_std,
            "train_tokens": rows.numel(), "heldout_tokens": held.numel(), "heldout_loss": heldout,
            "samples": samples, "total_s": time.time() - t_start, "machine": machine,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}
    write_card(args.out, args, info)
    (args.out / "training_stats.json").write_text(json.dumps({k: v for k, v in info.items() if k != "samples"},
                                                             indent=1) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "samples"}), flush=True)


if __name__ == "__main__":
    main()
