"""`fedit chat`, `fedit serve`, `fedit ui` and `fedit export`: use a tuned global model (any round)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from fedit.cli.common import console, err_console, user_errors
from fedit.serve.protocol import DEFAULT_MAX_PROMPT_TOKENS

ADAPTER_HELP = ("A run directory (uses final/), a round directory (round_NNNN), or a PEFT adapter directory; "
                "NAME=DIR names it. Repeat to serve several adapters (e.g. rounds) on one base.")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def check_template_name(template: str | None) -> None:
    """An unknown --template is a typo: say so before any model loads."""
    from fedit.data.templates import TEMPLATES
    from fedit.errors import ConfigError

    if template is not None and template != "auto" and template not in TEMPLATES:
        raise ConfigError(f"--template: got {template!r}, expected one of: auto, {', '.join(TEMPLATES.names())}")


def _sources(adapter: list[str], model: str | None, template: str | None, include_base: bool = False,
             all_rounds: bool = False) -> list[Any]:
    from fedit.serve.session import parse_adapter_args

    return parse_adapter_args(adapter, model=model, template=template, include_base=include_base,
                              all_rounds=all_rounds)


def _load(sources: list[Any], device: str) -> Any:
    from fedit.serve.session import ModelSession

    with console.status(f"loading {sources[0].base} with {len(sources)} adapter(s)…"):
        return ModelSession.load(sources, device=device)


def _settings(temperature: float, top_p: float, top_k: int, max_new_tokens: int, repetition_penalty: float,
              seed: int | None) -> Any:
    from fedit.errors import ConfigError
    from fedit.generation import GenerationSettings

    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or max_new_tokens < 1 or repetition_penalty <= 0:
        raise ConfigError("generation settings: expected temperature >= 0, 0 < top-p <= 1, top-k >= 0, "
                          "max-new-tokens >= 1, repetition-penalty > 0")
    return GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                              repetition_penalty=repetition_penalty, seed=seed)


@user_errors
def chat_command(
    adapter: list[str] = typer.Option(..., "--adapter", "-a", help=ADAPTER_HELP),
    model: str = typer.Option(None, help="Base model override (default: the one the adapter was trained on)."),
    template: str = typer.Option(None, help="Prompt template override (default: the run's data.template, or auto)."),
    prompt: str = typer.Option(None, "--prompt", "-p", help="Answer this one message and exit."),
    system: str = typer.Option(None, help="System prompt."),
    use: str = typer.Option(None, "--use", help="Which adapter to start with (default: the first)."),
    temperature: float = typer.Option(0.7, help="0 = greedy."),
    top_p: float = typer.Option(0.9, "--top-p"),
    top_k: int = typer.Option(40, "--top-k", help="0 = off."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    repetition_penalty: float = typer.Option(1.1, "--repetition-penalty"),
    seed: int = typer.Option(None, help="Sampling seed (same seed, same answer)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
) -> None:
    """Chat with a tuned model in the terminal (tokens stream as they are generated)."""
    from fedit.errors import ConfigError
    from fedit.model.load import quiet_transformers
    from fedit.serve.chat import answer, interactive

    quiet_transformers()
    settings = _settings(temperature, top_p, top_k, max_new_tokens, repetition_penalty, seed)
    check_template_name(template)
    session = _load(_sources(adapter, model, template), device)
    name = use or session.names[0]
    if name not in session.names:
        raise ConfigError(f"--use {name!r}: not one of {', '.join(session.names)}")
    if prompt is not None:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        try:
            answer(session, name, messages, settings, lambda s: (sys.stdout.write(s), sys.stdout.flush()))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        sys.stdout.write("\n")
        return
    interactive(session, name, settings, system=system)


def _serve(adapter: list[str], model: str | None, template: str | None, host: str, port: int, api_key: str | None,
           include_base: bool, all_rounds: bool, device: str, *, max_tokens: int = 512,
           max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, max_body: int = 1 << 20, max_queue: int = 32,
           body_timeout: float = 30.0, log_level: str = "warning", open_page: bool = False) -> None:
    from fedit.errors import ConfigError
    from fedit.model.load import quiet_transformers
    from fedit.serve.api import run_server
    from fedit.serve.protocol import Limits

    quiet_transformers()
    if max_tokens < 1 or max_body < 1024 or max_queue < 1 or max_prompt_tokens < 1 or not body_timeout > 0:
        raise ConfigError("limits: expected --max-tokens >= 1, --max-body >= 1024, --max-queue >= 1, "
                          "--max-prompt-tokens >= 1, --body-timeout > 0")
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port: got {port}, expected a TCP port in 1..65535")
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level: got {log_level!r}, expected one of: {', '.join(LOG_LEVELS)}")
    check_template_name(template)
    if host not in LOOPBACK and not api_key:
        err_console.print(f"[yellow]warning:[/] serving on {host} without --api-key: anyone who can reach this "
                          "machine can use the model")
    session = _load(_sources(adapter, model, template, include_base, all_rounds), device)
    limits = Limits(max_body_bytes=max_body, max_tokens=max_tokens, default_max_tokens=min(128, max_tokens),
                    max_prompt_tokens=max_prompt_tokens, max_queue=max_queue, body_timeout_s=body_timeout)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    console.print(f"serving {', '.join(session.names)} on {url}/v1 (chat page: {url}/)", highlight=False,
                  soft_wrap=True)
    if open_page:
        from fedit.serve.ui import open_when_up

        open_when_up(url + "/")
    run_server(session, host=host, port=port, api_key=api_key, limits=limits, log_level=log_level)



@user_errors
def serve_command(
    adapter: list[str] = typer.Option(..., "--adapter", "-a", help=ADAPTER_HELP),
    model: str = typer.Option(None, help="Base model override (default: the one the adapters were trained on)."),
    template: str = typer.Option(None, help="Prompt template override (default: each run's data.template)."),
    host: str = typer.Option("127.0.0.1", help="Bind address (loopback by default; use an API key beyond it)."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: str = typer.Option(None, "--api-key", envvar="FEDIT_API_KEY",
                                help="Require 'Authorization: Bearer KEY' on /v1/ (env FEDIT_API_KEY)."),
    include_base: bool = typer.Option(False, "--include-base", help="Also serve the bare base model as 'base'."),
    all_rounds: bool = typer.Option(False, "--all-rounds", help="Also serve every saved round of each run directory "
                                                                "(as NAME-roundN) to compare rounds."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Largest max_tokens a request may ask for."),
    max_prompt_tokens: int = typer.Option(DEFAULT_MAX_PROMPT_TOKENS, "--max-prompt-tokens",
                                          help="Longest prompt in tokens; longer ones get 400. Never more than the "
                                               "model's context - 1, whatever is asked."),
    max_body: int = typer.Option(1 << 20, "--max-body", help="Largest request body in bytes."),
    max_queue: int = typer.Option(32, "--max-queue", help="Requests that may wait; more get 503."),
    body_timeout: float = typer.Option(30.0, "--body-timeout",
                                       help="Seconds a client has to send its whole request body (then 408)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level (info shows each request)."),
) -> None:
    """Serve adapters over an OpenAI-compatible HTTP API (/v1/models, /v1/chat/completions, /v1/completions).

    One worker generates one request at a time; up to --max-queue more wait, beyond that requests get 503 at once.
    POSTs must be Content-Type: application/json (415 otherwise). A request is cancelled when its client
    disconnects. Errors are OpenAI-style JSON with a one-line message.
    """
    _serve(adapter, model, template, host, port, api_key, include_base, all_rounds, device, max_tokens=max_tokens,
           max_prompt_tokens=max_prompt_tokens, max_body=max_body, max_queue=max_queue, body_timeout=body_timeout,
           log_level=log_level)


@user_errors
def ui_command(
    adapter: list[str] = typer.Option(..., "--adapter", "-a", help=ADAPTER_HELP),
    model: str = typer.Option(None, help="Base model override."),
    template: str = typer.Option(None, help="Prompt template override."),
    host: str = typer.Option("127.0.0.1", help="Bind address."),
    port: int = typer.Option(7860, help="TCP port."),
    api_key: str = typer.Option(None, "--api-key", envvar="FEDIT_API_KEY", help="Require this API key."),
    include_base: bool = typer.Option(False, "--include-base", help="Also offer the bare base model as 'base'."),
    all_rounds: bool = typer.Option(False, "--all-rounds", help="Also offer every saved round of each run."),
    browser: bool = typer.Option(True, "--browser/--no-browser", help="Open the page in your browser."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
) -> None:
    """Open a web chat page for adapters (the same server as `fedit serve`, with the page at /)."""
    _serve(adapter, model, template, host, port, api_key, include_base, all_rounds, device, open_page=browser)


@user_errors
def export_command(
    adapter: str = typer.Option(..., "--adapter", "-a", help="A run directory, round directory or adapter directory."),
    out: Path = typer.Option(None, "--out", "-o", help="Directory for the merged model (not with --check-vllm)."),
    model: str = typer.Option(None, help="Base model override."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16 (weights are merged in float32)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
    check_vllm: bool = typer.Option(False, "--check-vllm", help="Merge nothing: check that vLLM's --enable-lora "
                                    "server loads the adapter as it is, and print the `vllm serve` command."),
) -> None:
    """Merge the LoRA adapter into its base and save a full model + tokenizer (AutoModelForCausalLM loads it).

    With --check-vllm, check the adapter against vLLM's LoRA loading rules instead (no model is loaded): print the
    `vllm serve` command, or each problem on one line and exit 2."""
    from fedit.errors import ConfigError
    from fedit.model.load import quiet_transformers
    from fedit.serve.export import export_merged
    from fedit.serve.session import resolve_adapter

    if check_vllm and out is not None:
        raise ConfigError("--check-vllm checks the adapter and writes nothing; run it without --out (and export "
                          "with --out separately)")
    if not check_vllm and out is None:
        raise ConfigError("--out: required, the directory for the merged model (or pass --check-vllm)")
    quiet_transformers()
    source = resolve_adapter(adapter, model=model)
    if check_vllm:
        _check_vllm(source)
        return
    with console.status(f"merging {source.path} into {source.base}…"):
        path = export_merged(source, out, dtype=dtype, overwrite=overwrite)
    console.print(f"merged model written to {path} (base {source.base}, round "
                  f"{source.round if source.round is not None else '?'})", highlight=False, soft_wrap=True)


def _check_vllm(source: Any) -> None:
    """`fedit export --check-vllm`: warnings and errors one per line on stderr; the command on stdout, or exit 2."""
    from rich.markup import escape

    from fedit.model.lora import read_adapter_config
    from fedit.serve.vllm import adapter_rank, check_vllm, errors, required_max_lora_rank, serve_command

    problems = check_vllm(source.path, base=source.base)
    for p in problems:
        colour = "red" if p.level == "error" else "yellow"
        err_console.print(f"[bold {colour}]{p.level}:[/] {escape(str(p).split(': ', 1)[1])}", highlight=False)
    if errors(problems):
        raise typer.Exit(2)
    rank = required_max_lora_rank(adapter_rank(read_adapter_config(source.path))) or 1
    console.print(f"ok: serve with `{serve_command(source.base, source.name, source.path, rank)}`",
                  highlight=False, markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_command)
    app.command("serve")(serve_command)
    app.command("ui")(ui_command)
    app.command("export")(export_command)
