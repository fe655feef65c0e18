"""Target 3: fedit's round vs a Shepherd-style round (the reference FedIT framework's per-round procedure).

The baseline re-implements Shepherd's main.py / GeneralClient / FedAvg step by step, on the same model object, data
and hyperparameters as fedit:
  per round, per sampled client: re-read the client's JSON file (`datasets.load_dataset("json")`), shuffle and
  re-tokenise it (`.map(generate_and_tokenize_prompt)`, Alpaca prompt, truncation at the cutoff, EOS appended; pad
  id 0, left padding), deep-copy the adapter, build a new `transformers.Trainer` (micro-batches padded to the
  longest item with `DataCollatorForSeq2Seq(pad_to_multiple_of=8)`, `logging_steps=1`, random sampling without
  length grouping, AdamW, save_strategy "steps" every 200 steps: today's Trainer also saves a full checkpoint at the
  last step), train, `torch.save` the client adapter to disk and restore the old one; then FedAvg reads every
  client adapter back from disk, averages them weighted by dataset size, loads the average and saves the global
  adapter. Its per-round time was checked against a CPU-patched run of the real code (docs/benchmarks.md §3).
Not reproduced (all of which would make the baseline slower): 8-bit loading and `prepare_model_for_int8_training`'s
gradient checkpointing (CUDA only; `--gradient-checkpointing` turns the latter on), the per-client val split.
Same examples: by default the baseline's client files hold only the records fedit trains (fedit drops those the
cutoff leaves without a label token); `--no-same-examples` gives it every record, as Shepherd would.
The model object is shared; the baseline (and the hand loop) run it as plain peft does (`plain_peft`: peft's
`nn.Dropout`, transformers' default attention), fedit with its own defaults (`lora.dropout_impl = "auto"`: cheaper
dropout masks on a CPU; eager attention under bf16 autocast at short rows).
Two settings, both contenders alike: the loss on response tokens only (fedit's default; `shepherd_speedup`) and on
prompt tokens too (Shepherd's default `train_on_inputs`; `shepherd_speedup_train_on_inputs`). LoRA r=8 on q,k,v,o.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fedit.bench.common import (
    Row,
    bench_config,
    bench_parser,
    client_data,
    median,
    model_name,
    quiet,
    ratio,
    report,
    set_threads,
)
from fedit.data.records import Record

PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                   "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def shepherd_tokenize_fn(tokenizer: Any, cutoff_len: int, train_on_inputs: bool) -> Any:
    """Shepherd's `generate_and_tokenize_prompt` for `datasets.map`: the Alpaca prompt with the response, truncated at
    the cutoff, EOS appended when there is room; without `train_on_inputs` the prompt's tokens get label -100."""

    def tokenize(prompt: str, add_eos_token: bool = True) -> dict[str, list[int]]:
        result = tokenizer(prompt, truncation=True, max_length=cutoff_len, padding=False, return_tensors=None)
        eos = tokenizer.eos_token_id
        if result["input_ids"][-1] != eos and len(result["input_ids"]) < cutoff_len and add_eos_token:
            result["input_ids"].append(eos)
            result["attention_mask"].append(1)
        result["labels"] = result["input_ids"].copy()
        return dict(result)

    def generate_and_tokenize_prompt(dp: dict[str, Any]) -> dict[str, list[int]]:
        tmpl = PROMPT_INPUT if dp["context"] else PROMPT_NO_INPUT
        user_prompt = tmpl.format(instruction=dp["instruction"], input=dp["context"])
        full = tokenize(user_prompt + dp["response"])
        if not train_on_inputs:
            n = len(tokenize(user_prompt, add_eos_token=False)["input_ids"])
            full["labels"] = [-100] * n + full["labels"][n:]
        return full

    return generate_and_tokenize_prompt


class ShepherdRounds:
    """Shepherd's round procedure on a live PeftModel; `round(r, client_ids)` returns nothing, writes to `workdir`."""

    def __init__(self, model: Any, tokenizer: Any, files: list[Path], workdir: Path, *, batch_size: int,
                 micro_batch_size: int, epochs: float, lr: float, cutoff_len: int, train_on_inputs: bool,
                 gradient_checkpointing: bool = False, use_cpu: bool = True, mixed_bf16: bool = False) -> None:
        self.model, self.files, self.workdir = model, files, workdir
        # Shepherd sets the pad id to 0 and pads on the left, on its own tokenizer: a copy, so fedit's is untouched
        self.tokenizer = copy.deepcopy(tokenizer)
        self.tokenizer.pad_token_id = 0
        self.tokenizer.padding_side = "left"
        self.batch_size, self.micro, self.epochs, self.lr = batch_size, micro_batch_size, epochs, lr
        self.cutoff_len, self.train_on_inputs = cutoff_len, train_on_inputs
        self.gradient_checkpointing, self.use_cpu, self.mixed_bf16 = gradient_checkpointing, use_cpu, mixed_bf16
        self.examples_trained = 0  # every example the Trainers ran, over all rounds and clients
        # A plain closure, as Shepherd's: `datasets.map` fingerprints the function it is given by pickling it, and a
        # bound method would drag this object, the whole model included, into that hash (0.3 s per client per round
        # on the tiny base: the old baseline's extra cost over the real code)
        self._generate_and_tokenize_prompt = shepherd_tokenize_fn(self.tokenizer, cutoff_len, train_on_inputs)

    def local_dataset(self, cid: int) -> Any:
        """Client `cid`'s training set as Shepherd builds it every round: its JSON file re-read, shuffled, tokenized."""
        import datasets

        local = datasets.load_dataset("json", data_files=str(self.files[cid]),
                                      cache_dir=str(self.workdir / "hf_cache"))
        return local["train"].shuffle().map(self._generate_and_tokenize_prompt)

    # -- one client (GeneralClient) -------------------------------------------------------------------------------
    def _client(self, round_idx: int, cid: int) -> int:
        import torch
        import transformers
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        train = self.local_dataset(cid)
        # Shepherd's TrainingArguments: save_strategy "steps" every 200 steps with save_total_limit 1; today's
        # Trainer also saves at the last step, so every client writes a full checkpoint (adapter, optimizer,
        # scheduler, RNG state, tokenizer) under trainer_saved/, as the real code does on today's transformers
        args = transformers.TrainingArguments(
            per_device_train_batch_size=self.micro, gradient_accumulation_steps=self.batch_size // self.micro,
            warmup_steps=0, num_train_epochs=self.epochs, learning_rate=self.lr, logging_steps=1,
            optim="adamw_torch", eval_strategy="no", save_strategy="steps", save_steps=200, save_total_limit=1,
            output_dir=str(self.workdir / "trainer_saved" / f"local_output_{cid}"), load_best_model_at_end=False,
            train_sampling_strategy="random", dataloader_drop_last=False, report_to="none", use_cpu=self.use_cpu,
            bf16=self.mixed_bf16 or not self.use_cpu, gradient_checkpointing=self.gradient_checkpointing,
        )
        trainer = transformers.Trainer(
            model=self.model, train_dataset=train, args=args,
            data_collator=transformers.DataCollatorForSeq2Seq(self.tokenizer, pad_to_multiple_of=8,
                                                              return_tensors="pt", padding=True),
        )
        self.model.config.use_cache = False
        old = copy.deepcopy({n: p.detach() for n, p in self.model.named_parameters() if "default" in n})
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            trainer.train()
        out_dir = self.workdir / str(round_idx) / f"local_output_{cid}"
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(get_peft_model_state_dict(self.model), out_dir / "pytorch_model.bin")
        # back to the global adapter for the next client, as Shepherd's terminate_local_training does
        set_peft_model_state_dict(self.model, get_peft_model_state_dict(self.model, old, "default"), "default")
        self.examples_trained += len(train)
        return len(train)

    def round(self, round_idx: int, client_ids: list[int]) -> None:
        import torch
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        sizes = {cid: self._client(round_idx, cid) for cid in client_ids}
        total = sum(sizes.values())
        avg: dict[str, torch.Tensor] = {}
        for k, cid in enumerate(client_ids):  # Shepherd's FedAvg: read each adapter back from disk
            w = torch.load(self.workdir / str(round_idx) / f"local_output_{cid}" / "pytorch_model.bin",
                           weights_only=True)
            for key, v in w.items():
                avg[key] = v * (sizes[cid] / total) if k == 0 else avg[key] + v * (sizes[cid] / total)
        set_peft_model_state_dict(self.model, avg, "default")
        torch.save(get_peft_model_state_dict(self.model), self.workdir / str(round_idx) / "adapter_model.bin")
        self.model.peft_config["default"].save_pretrained(str(self.workdir))


def trainable_records(records: list[Record], template: Any, tokenizer: Any, cutoff_len: int,
                      train_on_inputs: bool) -> list[Record]:
    """The records fedit trains: those with at least one label token left after the cutoff (`tokenize_records`
    drops the others, e.g. a prompt that alone fills the cutoff when the loss is on responses only). Given to the
    baseline too, both contenders train the same examples."""
    from fedit.data.tokenize import tokenize_records

    return [r for r in records if len(tokenize_records([r], template, tokenizer, cutoff_len, train_on_inputs, True))]


def write_client_files(records: list[list[Record]], root: Path) -> list[Path]:
    """Each client's records as Shepherd's `local_training_<id>.json` under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for cid, recs in enumerate(records):
        f = root / f"local_training_{cid}.json"
        f.write_text(json.dumps([{"instruction": r.instruction, "context": r.context, "response": r.response,
                                  "category": r.category} for r in recs]), encoding="utf-8")
        files.append(f)
    return files


QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]  # the LoRA targets of the run of the real code


@contextlib.contextmanager
def plain_peft(model: Any) -> Any:
    """`model` as plain peft + transformers run it while the block runs: peft's `nn.Dropout` masks, its LoRA
    forward and transformers' default attention (sdpa), whatever fedit chose for it (`lora.dropout_impl`,
    `lora.kernel`, `pick_attention`); then back."""
    from fedit.model.dropout import MaskDropout, set_lora_dropout
    from fedit.model.fused_lora import kernel_of, set_lora_kernel

    base = model.get_base_model()
    attn = base.config._attn_implementation
    fast = any(isinstance(m, MaskDropout) for m in model.modules())
    kernel = kernel_of(model)
    set_lora_dropout(model, "torch")
    set_lora_kernel(model, "peft")
    base.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        if fast:
            set_lora_dropout(model, "fast")
        set_lora_kernel(model, kernel)
        base.set_attn_implementation(attn)


def _pair(name: str, records: list[list[Record]], work: Path, *, rounds: int, train_on_inputs: bool,
          lora_targets: list[str], same_examples: bool, hand_loop: bool, gradient_checkpointing: bool,
          dtype: str = "float32") -> dict[str, Any]:
    """fedit vs the Shepherd procedure (and optionally a hand loop) on one setting, rounds interleaved."""

    from fedit.bench.handloop import hand_loop as plain_loop
    from fedit.data.tokenize import tokenize_records
    from fedit.engines.simulation import ClientDataCache, SimulationEngine
    from fedit.pipeline import build_model
    from fedit.server.checkpoint import RunStore
    from fedit.server.rounds import run_rounds
    from fedit.strategies import build_strategy
    from fedit.strategies._math import weighted_average
    from fedit.types import ClientUpdate

    clients = len(records)
    batch, micro, lr, cutoff = 16, 8, 3e-4, 256
    cfg = bench_config(name, **{"partition.clients": clients, "run.clients_per_round": clients,
                                "client.batch_size": batch, "client.micro_batch_size": micro,
                                "client.local_epochs": 1.0, "client.lr": lr, "data.cutoff_len": cutoff,
                                "run.out": str(work / "fedit_run"), "data.train_on_inputs": train_on_inputs,
                                "lora.targets": list(lora_targets), "model.dtype": dtype})
    bundle = build_model(cfg)
    if same_examples:  # the baseline gets exactly the examples fedit trains
        records = [trainable_records(r, bundle.template, bundle.tokenizer, cutoff, train_on_inputs) for r in records]
    files = write_client_files(records, work / "data")
    slots = bundle.trainer.slots
    init = slots.get()
    ids = list(range(clients))

    shepherd = ShepherdRounds(bundle.model, bundle.tokenizer, files, work / "shepherd", batch_size=batch,
                              micro_batch_size=micro, epochs=1.0, lr=lr, cutoff_len=cutoff,
                              train_on_inputs=train_on_inputs, gradient_checkpointing=gradient_checkpointing,
                              mixed_bf16=dtype == "bfloat16")
    strategy = build_strategy(cfg.strategy)
    store = RunStore(cfg.run.out)
    store.create(cfg.to_toml(), {"benchmark": "shepherd"}, overwrite=True)
    fed = {"params": init, "state": strategy.init_state(init, len(records))}
    store.save_round(0, init, fed["state"], {"round": 0}, bundle.peft_config)
    engine = SimulationEngine(bundle.trainer, ClientDataCache(records, bundle.template, bundle.tokenizer, cfg), cfg)
    hand_data = [tokenize_records(r, bundle.template, bundle.tokenizer, cutoff, train_on_inputs, True)
                 for r in records]  # what fedit trains (and a plain loop, which tokenizes once, before its rounds)
    hand_params = {"p": init}

    def fedit_round(r: int) -> None:
        rcfg = cfg.override({"run.rounds": r})
        fed["params"], fed["state"], _ = run_rounds(rcfg, engine, strategy, store, bundle.peft_config,
                                                    fed["params"], fed["state"], r - 1)

    def shepherd_round(r: int) -> None:
        slots.set(shepherd_params["p"])
        with plain_peft(bundle.model):  # Shepherd runs peft's own dropout and transformers' attention
            shepherd.round(r, ids)
        shepherd_params["p"] = slots.get()

    def hand_round(r: int) -> None:
        ups = []
        for cid in ids:
            slots.set(hand_params["p"])
            steps = math.ceil(len(hand_data[cid]) / batch)
            with plain_peft(bundle.model):
                plain_loop(bundle.model, hand_data[cid], bundle.tokenizer.pad_token_id, batch_size=batch,
                           micro_batch_size=micro, steps=steps, lr=lr, seed=r * 1000 + cid)
            ups.append(ClientUpdate(cid, slots.get(), len(hand_data[cid])))
        hand_params["p"] = {k: v.float() for k, v in weighted_average(ups).items()}

    shepherd_params = {"p": init}
    contenders = {"fedit": fedit_round, "shepherd": shepherd_round}
    if hand_loop:
        contenders["hand_loop"] = hand_round
    times: dict[str, list[dict[str, float]]] = {k: [] for k in contenders}
    for r in range(1, rounds + 1):  # interleaved round by round, alternating the order
        order = list(contenders) if r % 2 else list(contenders)[::-1]
        for k in order:
            t0, c0 = time.perf_counter(), time.process_time()
            contenders[k](r)
            times[k].append({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0})
    slots.set(init)

    # fedit tokenizes each client once, in the round that first samples it: its steady per-round cost is the median
    # of the later rounds (the first is reported too, and the all-rounds totals); the baselines repeat everything.
    steady = {k: (v[1:] if k == "fedit" and len(v) > 1 else v) for k, v in times.items()}
    med = {k: {m: median([t[m] for t in v]) for m in ("seconds", "cpu_seconds")} for k, v in steady.items()}
    total = {k: sum(t["seconds"] for t in v) for k, v in times.items()}
    res: dict[str, Any] = {
        "train_on_inputs": train_on_inputs, "dtype": dtype, "lora_targets": list(lora_targets),
        "same_examples": same_examples,
        "fedit_examples_per_round": sum(len(d) for d in hand_data),
        "shepherd_examples_per_round": shepherd.examples_trained / rounds,
        "fedit_label_tokens_per_round": sum(d.num_label_tokens for d in hand_data),
        "fedit_round_seconds": med["fedit"]["seconds"], "shepherd_round_seconds": med["shepherd"]["seconds"],
        "fedit_first_round_seconds": times["fedit"][0]["seconds"],
        "shepherd_speedup": ratio(med["shepherd"]["seconds"], med["fedit"]["seconds"]),
        "shepherd_speedup_cpu_time": ratio(med["shepherd"]["cpu_seconds"], med["fedit"]["cpu_seconds"]),
        "shepherd_speedup_all_rounds": ratio(total["shepherd"], total["fedit"]),
        "per_round": times,
    }
    if hand_loop:
        res["hand_loop_round_seconds"] = med["hand_loop"]["seconds"]
        res["shepherd_vs_hand_loop"] = ratio(med["shepherd"]["seconds"], med["hand_loop"]["seconds"])
        res["hand_loop_vs_fedit"] = ratio(med["hand_loop"]["seconds"], med["fedit"]["seconds"])
    return res


def run(quick: bool = True, smoke: bool = False, model: str = "auto", data: str | None = None,
        rounds: int | None = None, clients: int | None = None, per_client: int | None = None,
        hand_loop: bool | None = None, gradient_checkpointing: bool = False, train_on_inputs: bool | None = None,
        lora_targets: list[str] | None = None, same_examples: bool = True,
        bf16_pair: bool | None = None) -> dict[str, Any]:
    """Both settings by default: the loss on responses only (fedit's default; `shepherd_speedup`) and on prompts
    too (Shepherd's default; `shepherd_speedup_train_on_inputs`); `train_on_inputs` True/False runs only that one.
    All in float32. `bf16_pair` (default: on a CPU with bf16 matrix units, and in smoke runs) adds the mixed-precision
    pair at the first setting: fedit with `model.dtype = "bfloat16"` (bf16 base, CPU bf16 autocast) against the
    baseline's Trainer with `bf16=True` on the same bf16 base (Shepherd's own setting is fp16 mixed precision on a
    GPU); `shepherd_speedup_bf16`."""
    import torch

    from fedit.env import bf16_matrix_units

    quiet()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()
    per_client = per_client or (8 if smoke else 64)
    clients = clients or (2 if smoke else (4 if quick else 10))
    rounds = rounds or (1 if smoke else (2 if quick else 4))
    hand_loop = (not quick or smoke) if hand_loop is None else hand_loop
    targets = list(lora_targets or QKVO)
    name, desc = model_name(model, smoke)
    records, source = client_data(clients, per_client, data, smoke)
    work = Path(tempfile.mkdtemp(prefix="fedit-bench-shepherd-"))
    settings = [False, True] if train_on_inputs is None else [train_on_inputs]
    pairs = {toi: _pair(name, records, work / ("toi" if toi else "responses"), rounds=rounds, train_on_inputs=toi,
                        lora_targets=targets, same_examples=same_examples, hand_loop=hand_loop and toi == settings[0],
                        gradient_checkpointing=gradient_checkpointing) for toi in settings}
    bf16_pair = (smoke or bf16_matrix_units()) if bf16_pair is None else bf16_pair
    bf16 = _pair(name, records, work / "bf16", rounds=rounds, train_on_inputs=settings[0], lora_targets=targets,
                 same_examples=same_examples, hand_loop=False, gradient_checkpointing=gradient_checkpointing,
                 dtype="bfloat16") if bf16_pair else None
    main_pair = pairs[settings[0]]
    res: dict[str, Any] = {
        "benchmark": "shepherd", "model": desc, "data": source, "clients_per_round": clients,
        "examples_per_client": per_client, "rounds": rounds, "batch_size": 16, "micro_batch_size": 8,
        "cutoff_len": 256, "lr": 3e-4, "local_epochs": 1, "lora_r": 8, "lora_targets": targets,
        "same_examples": same_examples, "baseline_gradient_checkpointing": gradient_checkpointing,
        "torch_threads": torch.get_num_threads(),
        **{k: v for k, v in main_pair.items() if k != "per_round"}, "per_round": main_pair["per_round"],
    }
    if True in pairs:
        toi = pairs[True]
        res["shepherd_speedup_train_on_inputs"] = toi["shepherd_speedup"]
        res["shepherd_speedup_train_on_inputs_cpu_time"] = toi["shepherd_speedup_cpu_time"]
    res["settings"] = {("train_on_inputs" if toi else "responses"): p for toi, p in pairs.items()}
    if bf16 is not None:
        res["shepherd_speedup_bf16"] = bf16["shepherd_speedup"]
        res["shepherd_speedup_bf16_cpu_time"] = bf16["shepherd_speedup_cpu_time"]
        res["settings"]["bf16"] = bf16
    res["shepherd_speedup_target"] = ">= 2.0"
    res["shepherd_target_met"] = res["shepherd_speedup"] >= 2.0
    return res


def rows(res: dict[str, Any]) -> list[Row]:
    out = [
        Row("examples trained per round, fedit / Shepherd",
            f"{res['fedit_examples_per_round']} / {res['shepherd_examples_per_round']:g}"),
        Row("Shepherd-style round, median (s)", res["shepherd_round_seconds"]),
        Row("fedit round incl. checkpoint, median of rounds 2.. (s)", res["fedit_round_seconds"]),
        Row("fedit first round (tokenizes each client once) (s)", res["fedit_first_round_seconds"]),
        Row(f"shepherd_speedup (Shepherd / fedit, loss on {'prompts too' if res['train_on_inputs'] else 'responses'})",
            res["shepherd_speedup"], ">= 2.0", res["shepherd_target_met"]),
        Row("same, per process CPU second", res["shepherd_speedup_cpu_time"], ">= 2.0",
            res["shepherd_speedup_cpu_time"] >= 2.0),
        Row(f"same, total wall time of all {res['rounds']} rounds", res["shepherd_speedup_all_rounds"]),
    ]
    if "shepherd_speedup_train_on_inputs" in res and not res["train_on_inputs"]:
        toi = res["settings"]["train_on_inputs"]
        out += [Row("loss on prompts too: Shepherd / fedit round (s)",
                    f"{toi['shepherd_round_seconds']:.4g} / {toi['fedit_round_seconds']:.4g}"),
                Row("shepherd_speedup_train_on_inputs", res["shepherd_speedup_train_on_inputs"], "reported"),
                Row("same, per process CPU second", res["shepherd_speedup_train_on_inputs_cpu_time"], "reported")]
    if "shepherd_speedup_bf16" in res:
        b = res["settings"]["bf16"]
        out += [Row("bf16 (fedit autocast vs Trainer bf16=True): Shepherd / fedit round (s)",
                    f"{b['shepherd_round_seconds']:.4g} / {b['fedit_round_seconds']:.4g}"),
                Row("shepherd_speedup_bf16", res["shepherd_speedup_bf16"], "reported")]
    if "hand_loop_round_seconds" in res:
        out += [Row("hand-written loop round, median (s)", res["hand_loop_round_seconds"]),
                Row("Shepherd / hand loop (reference: 1.2-1.4)", res["shepherd_vs_hand_loop"]),
                Row("hand loop / fedit", res["hand_loop_vs_fedit"])]
    return out


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return v


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = bench_parser(__doc__)
    ap.add_argument("--rounds", type=_positive_int, default=None, help="default 4 (--quick: 2)")
    ap.add_argument("--clients", type=_positive_int, default=None, help="clients per round (default 10; --quick: 4)")
    ap.add_argument("--per-client", type=_positive_int, default=None, help="items per client (default 64)")
    ap.add_argument("--hand-loop", action=argparse.BooleanOptionalAction, default=None,
                    help="also time a plain hand-written loop per round (default: on except with --quick)")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="as Shepherd's int8 preparation does")
    ap.add_argument("--train-on-inputs", action=argparse.BooleanOptionalAction, default=None,
                    help="only the loss on prompt tokens too (--train-on-inputs, Shepherd's default) or only on "
                    "responses (--no-train-on-inputs, fedit's default); both settings when left out")
    ap.add_argument("--lora-targets", default=",".join(QKVO),
                    help="comma-separated LoRA target modules of both contenders (default: q,k,v,o projections)")
    ap.add_argument("--same-examples", action=argparse.BooleanOptionalAction, default=True,
                    help="give the baseline only the examples fedit trains (default); --no-same-examples gives it "
                    "every record, also those fedit drops because the cutoff left them without a label token")
    ap.add_argument("--bf16-pair", action=argparse.BooleanOptionalAction, default=None,
                    help="also time both contenders in bf16 mixed precision (default: on a CPU with bf16 units)")
    a = ap.parse_args(argv)
    targets = [t.strip() for t in a.lora_targets.split(",") if t.strip()]
    if not targets:
        ap.error(f"--lora-targets: expected module names such as q_proj,v_proj, got {a.lora_targets!r}")
    set_threads(a.threads)
    res = run(a.quick, a.smoke, a.model, a.data, a.rounds, a.clients, a.per_client, a.hand_loop,
              a.gradient_checkpointing, a.train_on_inputs, targets, a.same_examples, a.bf16_pair)
    return report(res, f"Shepherd-style rounds vs fedit ({res['model']}, {res['data']}, {res['clients_per_round']} "
                       f"clients x {res['examples_per_client']} items, {res['rounds']} rounds)", rows(res), a.json)


if __name__ == "__main__":
    main()
