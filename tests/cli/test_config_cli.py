"""`--set SECTION.KEY=VALUE` for every setting, and `fedit config init | show | validate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest

from fedit.config import UNSET, Config, parse_assignment, setting_types, tomllib
from fedit.errors import ConfigError


def cli(*args: str) -> subprocess.CompletedProcess:
    from typer.testing import CliRunner

    from fedit.cli import app

    r = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def user_error(p: subprocess.CompletedProcess, *needles: str) -> str:
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    assert "Traceback" not in out
    for n in needles:
        assert n in out, f"{n!r} not in {out!r}"
    return out


def _sample_text(tp: Any, default: Any) -> tuple[str, Any]:
    """A command-line text for a setting of type `tp` that differs from `default`, and the value it must parse to."""
    if type(None) in get_args(tp):
        tp = next(a for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is list:
        return "a,b c", ["a", "b c"]
    if get_origin(tp) is dict:
        return "instruction=q, response=a", {"instruction": "q", "response": "a"}
    if tp is bool:
        return ("false", False) if default else ("true", True)
    if tp is int:
        return "7", 7
    if tp is float:
        return "0.25", 0.25
    return "some text", "some text"


def test_every_setting_parses_by_its_declared_type() -> None:
    cfg = Config()
    defaults = {}
    for section, values in cfg.to_dict(keep_none=True).items():
        for k, v in values.items():
            if isinstance(v, dict) and section == "strategy":
                continue
            defaults[f"{section}.{k}"] = v
    types = setting_types()
    assert set(defaults) <= set(types)  # every key of the config is in the schema
    assert {"strategy.fedadam.tau", "strategy.fedprox.mu", "strategy.fedavgm.nesterov"} <= set(types)
    for key, tp in types.items():
        text, want = _sample_text(tp, defaults.get(key))
        assert parse_assignment(f"{key}={text}") == (key, want), key


def test_set_applies_typed_values_and_unsets_optionals() -> None:
    from fedit.cli.run import run_overrides

    over = run_overrides({"set_": ["client.lr=0.001", "lora.r=4", "run.eval_limit=none", "data.add_eos=false",
                                   "strategy.name=fedadam", "strategy.tau=0.5", "strategy.fedadam.beta1=0.5",
                                   "lora.targets=q_proj,v_proj", "model.quantization=none"]})
    cfg = Config().override({"run.eval_limit": 5}).override(over)
    assert (cfg.client.lr, cfg.lora.r, cfg.run.eval_limit, cfg.data.add_eos) == (0.001, 4, None, False)
    assert cfg.strategy.name == "fedadam"
    assert (cfg.strategy.settings().tau, cfg.strategy.settings().beta1) == (0.5, 0.5)
    assert cfg.lora.targets == ["q_proj", "v_proj"]
    assert parse_assignment("run.eval_limit=NONE")[1] is UNSET


@pytest.mark.parametrize(("text", "needles"), [
    ("lora.rank=4", ["unknown setting 'lora.rank'", "lora.r"]),
    ("client.lrr=0.1", ["client.lr"]),
    ("lr=0.1", ["client.lr"]),
    ("strategy.fedadam.tua=1", ["strategy.fedadam.tau"]),
    ("strategy.nosuch.x=1", ["unknown setting 'strategy.nosuch.x'"]),
    ("bogus.key=1", ["sections: model, lora, data"]),
    ("client.lr=fast", ["client.lr", "expected a number"]),
    ("lora.r=2.5", ["lora.r", "expected an integer"]),
    ("run.eval_generate=maybe", ["run.eval_generate", "true or false"]),
    ("data.fields=instruction", ["KEY=VALUE"]),
    ("client.lr", ["expected SECTION.KEY=VALUE"]),
    ("lora.r=none", ["lora.r", "must be set"]),
])
def test_bad_set_is_a_clear_error(text: str, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        parse_assignment(text)
    for n in needles:
        assert n in str(e.value), str(e.value)


def test_set_unknown_strategy_setting_of_selected_strategy() -> None:
    from fedit.cli.run import run_overrides

    with pytest.raises(ConfigError, match="strategy 'fedprox' has no setting 'tau'.*mu"):
        Config().override(run_overrides({"strategy": "fedprox", "set_": ["strategy.tau=1"]}))


def test_set_and_flag_for_one_key_conflict() -> None:
    user_error(cli("config", "show", "--lr", "0.1", "--set", "client.lr=0.2"), "client.lr", "--lr", "give it once")
    assert cli("config", "show", "--lr", "0.1", "--set", "client.lr=0.1").returncode == 0  # the same value is fine


def test_config_show_resolves_defaults_file_flags_and_set(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[client]\nlr = 0.01\nbatch_size = 8\nmicro_batch_size = 8\n[lora]\nr = 8\n')
    p = cli("config", "show", "--config", str(f), "--lora-r", "4", "--set", "client.batch_size=4",
            "--set", "client.micro_batch_size=2")
    assert p.returncode == 0, p.stdout + p.stderr
    shown = tomllib.loads(p.stdout)
    assert shown["client"]["lr"] == 0.01  # from the file
    assert shown["lora"]["r"] == 4  # a flag over the file
    assert (shown["client"]["batch_size"], shown["client"]["micro_batch_size"]) == (4, 2)  # --set over the file
    assert shown["run"]["rounds"] == Config().run.rounds  # a default
    assert Config.from_dict(shown).client.lr == 0.01  # what it prints is a config a run reads back
    assert not list(tmp_path.glob("runs*")) and not Path("runs").joinpath("x").exists()


def test_config_init_writes_every_setting_and_reads_back(tmp_path: Path) -> None:
    out = tmp_path / "all.toml"
    p = cli("config", "init", "--out", str(out), "--strategy", "fedadam")
    assert p.returncode == 0, p.stdout + p.stderr
    text = out.read_text()
    cfg = Config.from_file(out)
    want = Config.from_dict({"strategy": {"name": "fedadam"}})
    assert cfg.differences(want) == []
    # every key of the schema appears (live, or commented out where unset / another strategy's), with comments
    for key in setting_types():
        section, _, name = key.rpartition(".")
        assert f"{name} = " in text, key
    assert "lr = 0.003  # right for the tiny default" in text
    assert "# quantization = ...  # unset" in text
    assert "[strategy.fedadam]\nserver_lr = 0.01" in text and "# [strategy.fedyogi]" in text
    user_error(cli("config", "init", "--out", str(out)), "exists", "--overwrite")
    user_error(cli("config", "init", "--strategy", "fedadamm"), "strategy.name", "fedadam")


def test_config_validate(tmp_path: Path) -> None:
    good, bad, typo = tmp_path / "good.toml", tmp_path / "bad.toml", tmp_path / "typo.toml"
    good.write_text('[client]\nlr = 0.01\n[strategy]\nname = "fedprox"\n[strategy.fedprox]\nmu = 0.1\n')
    bad.write_text("[lora]\nr = 0\n")
    typo.write_text("[client]\nlearning_rate = 0.1\n")
    p = cli("config", "validate", str(good))
    assert p.returncode == 0 and "ok:" in p.stdout and "client.lr" in p.stdout, p.stdout
    user_error(cli("config", "validate", str(bad)), str(bad), "lora.r", ">= 1")
    user_error(cli("config", "validate", str(typo)), str(typo), "learning_rate")
    user_error(cli("config", "validate", str(good), "--set", "client.lr=-1"), "client.lr")
    user_error(cli("config", "validate", str(tmp_path / "none.toml")), "not found")


def test_run_with_set_trains_with_those_values(micro_model_dir: Path, small_data_file: Path, tmp_path: Path) -> None:
    """The acceptance check: `fedit run --set client.lr=0.001 --set lora.r=4` (config.toml and the adapter show
    them); a typo fails before anything is created."""
    out = tmp_path / "run"
    args = ["run", "--model", str(micro_model_dir), "--data", str(small_data_file), "--clients", "2",
            "--test-size", "1", "--rounds", "1", "--local-steps", "1", "--batch-size", "2", "--micro-batch-size",
            "2", "--eval-limit", "2", "--out", str(out)]
    user_error(cli(*args, "--set", "lora.rnk=4"), "lora.r")
    assert not out.exists()
    p = subprocess.run([sys.executable, "-m", "fedit.cli", *args, "--set", "client.lr=0.001", "--set", "lora.r=4",
                        "--set", "run.eval_generate=false"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    saved = tomllib.loads((out / "config.toml").read_text())
    assert (saved["client"]["lr"], saved["lora"]["r"], saved["run"]["eval_generate"]) == (0.001, 4, False)
    adapter = json.loads((out / "final" / "adapter_config.json").read_text())
    assert adapter["r"] == 4
    from safetensors import safe_open

    with safe_open(str(out / "final" / "adapter_model.safetensors"), "pt") as f:
        a = next(k for k in f.keys() if k.endswith("lora_A.weight"))  # noqa: SIM118
        assert f.get_tensor(a).shape[0] == 4
