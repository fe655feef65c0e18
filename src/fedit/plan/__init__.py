"""The dry-run planner (`fedit run --dry-run`): what a run will do and need, before it starts.

`make_plan(cfg)` checks everything a run checks before its first round, loads the data, the model config and the
tokenizer (never the weights, except to time a few steps when they are on this machine), and returns a `Plan`;
`fedit.plan.render` prints it as tables or JSON. How the memory estimate is computed: `fedit.plan.memory`.
"""

from fedit.plan.build import ClientLoad, Plan, make_plan

__all__ = ["ClientLoad", "Plan", "make_plan"]
