"""run.report_to and run.tracking_uri are checked before any work; a missing library names the extra to install."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fedit import pipeline
from fedit.config import RESUMABLE, Config
from fedit.errors import ConfigError
from fedit.tracking import check_installed, parse_report_to
from fedit.tracking.backends import tensorboard_dir


def test_report_to_names_and_lists() -> None:
    assert parse_report_to("none") == ()
    assert parse_report_to("tensorboard") == ("tensorboard",)
    assert parse_report_to("tensorboard, mlflow,tensorboard") == ("tensorboard", "mlflow")
    assert Config().override({"run.report_to": "mlflow,tensorboard"}).run.report_to == "mlflow,tensorboard"
    assert {"run.report_to", "run.tracking_uri"} <= RESUMABLE


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"run.report_to": "tensorbord"}, "run.report_to: got 'tensorbord' ('tensorbord' is not a backend), expected "
                                      "none, tensorboard, mlflow, or a comma list"),
    ({"run.report_to": "none,mlflow"}, "'none' is not a backend"),
    ({"run.report_to": ""}, "run.report_to: got ''"),
    ({"run.report_to": "tensorboard", "run.tracking_uri": "http://example.org:5000"},
     "run.tracking_uri: got 'http://example.org:5000', expected a local directory for TensorBoard"),
    ({"run.tracking_uri": " "}, "run.tracking_uri: got an empty string"),
])
def test_bad_settings_are_one_line_errors(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config().override(overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_tracking_uri_is_mlflows_unless_tensorboard_is_alone(tmp_path: Path) -> None:
    run = tmp_path / "run"
    both = Config().override({"run.report_to": "tensorboard,mlflow", "run.tracking_uri": "http://example.org:5000"})
    assert tensorboard_dir(both.run, run) == run.resolve() / "tensorboard"
    alone = Config().override({"run.report_to": "tensorboard", "run.tracking_uri": (tmp_path / "tb").as_uri()})
    assert tensorboard_dir(alone.run, run) == (tmp_path / "tb").resolve()


def hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make `module` look uninstalled to importlib.util.find_spec (what check_installed asks)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))


@pytest.mark.parametrize(("backend", "module"), [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_missing_library_names_the_extra(backend: str, module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    check_installed(backend)  # both are installed here (the test extra)
    hide(monkeypatch, module)
    with pytest.raises(ConfigError) as e:
        check_installed("tensorboard,mlflow")
    assert str(e.value) == (f"run.report_to: {backend} needs the {module!r} package, which is not installed; "
                            f'install it with: pip install "fedit[{backend}]"')
    check_installed("none")


def test_missing_library_fails_before_the_run_directory_exists(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    hide(monkeypatch, "mlflow")
    cfg = Config().override({"run.report_to": "mlflow", "run.out": str(tmp_path / "run"), "run.rounds": 1})
    with pytest.raises(ConfigError, match=r'pip install "fedit\[mlflow\]"'):
        pipeline.run(cfg)
    assert not (tmp_path / "run").exists()


def test_cli_flag_and_its_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedit.cli import app

    r = CliRunner().invoke(app, ["run", "--report-to", "wandb", "--out", str(tmp_path / "run")],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 2 and "run.report_to: got 'wandb'" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr and not (tmp_path / "run").exists()


def test_report_to_may_change_on_resume(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedit.cli import app

    r = CliRunner().invoke(app, ["run", "--resume", str(tmp_path), "--lr", "0.1"], env={"COLUMNS": "200"})
    assert r.exit_code == 2 and "--report-to" in r.stdout + r.stderr  # among the options a resume may change
