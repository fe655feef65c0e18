"""Use a tuned model: terminal chat, OpenAI-compatible HTTP API, web chat page, and merged-model export."""

from fedit.serve.session import AdapterSource, ModelSession, parse_adapter_args, resolve_adapter

__all__ = ["AdapterSource", "ModelSession", "parse_adapter_args", "resolve_adapter"]
