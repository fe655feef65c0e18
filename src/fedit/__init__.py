"""fedit: federated instruction tuning of LLMs with LoRA adapters.

The public API is small: `Config` (every setting), `run(cfg)` (a whole simulated run, or `resume=DIR`),
`load_adapter(dir)` (an adapter's payload), and the `Record` type. Importing fedit has no side effects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Config", "Record", "load_adapter", "run", "__version__"]

if TYPE_CHECKING:
    from fedit.config import Config
    from fedit.data.records import Record


def __getattr__(name: str) -> Any:  # lazy: `import fedit` must not pull in torch
    if name == "Config":
        from fedit.config import Config

        return Config
    if name == "Record":
        from fedit.data.records import Record

        return Record
    if name == "run":
        from fedit.pipeline import run

        return run
    if name == "load_adapter":
        from fedit.model.lora import load_adapter_params

        return load_adapter_params
    raise AttributeError(name)
