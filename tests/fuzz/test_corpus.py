"""The stored fuzz corpus (data files, TOML configs, command lines; see README.md): every bad input is one `error:`
line naming what is wrong, exit code 2, no traceback, no run directory, no model load, existing runs untouched.

The finished run that must stay intact is built once per session (`finished_run`); each command runs in a fresh
sandbox directory (`sandbox`, also its working directory) that must be byte for byte the same afterwards."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedit.config import Config
from fedit.data.sources import load_records
from fedit.errors import ConfigError, DataError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FUZZ = Path(__file__).resolve().parent


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (hidden ones too), by relative path; directories listed as "dir"."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _good_rows(n: int = 120) -> str:
    import json

    cats = ("open_qa", "classification", "brainstorming")
    return "".join(json.dumps({"instruction": f"Question {i}?", "response": f"Answer {i}", "category": cats[i % 3]})
                   + "\n" for i in range(n))


@pytest.fixture(scope="session")
def finished_run(micro_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small finished run (micro model, 2 clients, 2 rounds), built once per session."""
    from fedit.cli import app

    root = tmp_path_factory.mktemp("fuzz-run")
    data = root / "train.jsonl"
    data.write_text(_good_rows(), encoding="utf-8")
    out = root / "run"
    r = CliRunner().invoke(app, ["run", "--model", str(micro_model_dir), "--data", str(data), "--clients", "2",
                                 "--test-size", "2", "--rounds", "2", "--fraction", "1", "--local-steps", "1",
                                 "--batch-size", "4", "--micro-batch-size", "4", "--eval-limit", "2",
                                 "--no-train-on-inputs", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "final").is_dir() and (out / "round_0002").is_dir()
    return out


@dataclass
class Sandbox:
    """The working directory of one bad command: what must exist before and be unchanged after."""

    tmp: Path
    run: Path
    model: Path
    values: dict[str, str] = field(default_factory=dict)

    @property
    def new(self) -> Path:
        return self.tmp / "new-output"

    def expand(self, text: str) -> str:
        return text.format(**self.values)

    def argv(self, line: str) -> list[str]:
        return [self.expand(a) for a in shlex.split(line)]

    def snapshot(self) -> tuple[dict[str, str], dict[str, str]]:
        return tree_digest(self.tmp), tree_digest(self.run)


@pytest.fixture
def sandbox(tmp_path: Path, finished_run: Path, micro_model_dir: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Sandbox]:
    tmp = tmp_path / "sandbox"
    tmp.mkdir()
    run = shutil.copytree(finished_run, tmp_path / "run")  # each case gets its own copy: a bug cannot leak on
    (tmp / "good.jsonl").write_text(_good_rows(), encoding="utf-8")
    notrun = tmp / "notrun"
    notrun.mkdir()
    (notrun / "notes.txt").write_text("someone's files, not a fedit run\n", encoding="utf-8")
    (notrun / "config.json").write_text("{}\n", encoding="utf-8")
    box = Sandbox(tmp, run, micro_model_dir)
    box.values = {"good": str(tmp / "good.jsonl"), "run": str(run), "notrun": str(notrun),
                  "new": str(box.new), "nomodel": str(tmp / "no-such-model"), "model": str(micro_model_dir),
                  "fuzz": str(FUZZ), "tmp": str(tmp)}
    monkeypatch.chdir(tmp)  # a default run directory (runs/...) would land here, and be seen
    yield box


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    seconds: float


def invoke(argv: list[str]) -> Outcome:
    """The CLI in-process (typer's CliRunner): same app, same error handling, no interpreter start-up."""
    from fedit.cli import app

    t0 = time.perf_counter()
    r = CliRunner().invoke(app, argv)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception  # a traceback: show it whole
    return Outcome(r.exit_code, r.stdout, r.stderr, time.perf_counter() - t0)


def invoke_process(argv: list[str], timeout: float) -> Outcome:
    """A real `fedit` process, stdout/stderr on pipes; a timeout counts as a failure (exit code 124)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "fedit.cli", *argv], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return Outcome(124, "", out, time.perf_counter() - t0)
    return Outcome(p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)


def assert_refused(box: Sandbox, run: Callable[[], Outcome], expected: list[str]) -> Outcome:
    """`run()` must exit 2 with exactly one stderr line `error: ...` holding every `expected` text, no traceback,
    and leave the sandbox and the finished run exactly as they were (nothing created, nothing deleted)."""
    before = box.snapshot()
    res = run()
    lines = res.stderr.splitlines()
    assert res.exit_code == 2, f"exit {res.exit_code}\nstdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-2000:]}"
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line:\n{res.stderr}"
    for text in expected:
        assert box.expand(text) in lines[0], f"{box.expand(text)!r} not in {lines[0]!r}"
    assert not box.new.exists() and not Path(f"{box.new}.json").exists()
    after = box.snapshot()
    assert after[0] == before[0], "the sandbox changed: " + str(set(after[0]) ^ set(before[0]))
    assert after[1] == before[1], "the finished run changed: " + str(
        {k for k in set(after[1]) | set(before[1]) if after[1].get(k) != before[1].get(k)})
    return res


EXPECT = tomllib.loads((FUZZ / "expect.toml").read_text(encoding="utf-8"))
DATA = FUZZ / "data"
TOML = FUZZ / "toml"
SERVE_TIMEOUT = 60.0  # a correct `fedit serve` refuses these before it listens; one that listens is killed here


def _cases(kind: str) -> list:
    out = []
    for name, spec in sorted(EXPECT[kind].items()):
        marks = [pytest.mark.xfail(strict=True, reason=spec["xfail"])] if "xfail" in spec else []
        out.append(pytest.param(name, spec, id=name, marks=marks))
    return out


def _cli_cases() -> list:
    out = []
    for raw in (FUZZ / "cli" / "cases.txt").read_text(encoding="utf-8").splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        argv, expected, *rest = (part.strip() for part in raw.split(" ## "))
        marks = [pytest.mark.xfail(strict=True, reason=r.removeprefix("xfail:").strip()) for r in rest]
        out.append(pytest.param(argv, [e.strip() for e in expected.split(" | ")], id=argv[:90], marks=marks))
    return out


def test_manifest_covers_the_corpus() -> None:
    assert sorted(p.name for p in DATA.iterdir()) == sorted(EXPECT["data"])
    assert sorted(p.name for p in TOML.iterdir()) == sorted(EXPECT["toml"])
    count = len(EXPECT["data"]) + len(EXPECT["toml"]) + len(_cli_cases())
    assert count >= 45, count


# ---------------------------------------------------------------- data files


@pytest.mark.parametrize(("name", "spec"), _cases("data"))
def test_data_file_is_a_named_error(name: str, spec: dict) -> None:
    with pytest.raises(DataError) as e:
        load_records(DATA / name)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 1000, msg[:2000]  # one line; the offending text is never echoed whole
    for text in spec["expect"]:
        assert text in msg, f"{text!r} not in {msg!r}"


@pytest.mark.parametrize(("name", "spec"), _cases("data"))
def test_data_file_with_on_invalid_skip(name: str, spec: dict) -> None:
    if spec["skip"] == "error":
        with pytest.raises(DataError) as e:
            load_records(DATA / name, on_invalid="skip")
        for text in spec.get("skip_expect", spec["expect"]):
            assert text in str(e.value), f"{text!r} not in {e.value}"
    else:
        assert len(load_records(DATA / name, on_invalid="skip")) == spec["skip"]


@pytest.mark.parametrize(("name", "spec"), _cases("data"))
def test_data_file_through_the_cli(name: str, spec: dict, sandbox: Sandbox) -> None:
    """`fedit data inspect` and `fedit run` (with a model path that does not exist: the data error must come first)."""
    path = str(DATA / name)
    assert_refused(sandbox, lambda: invoke(["data", "inspect", path]), spec["expect"])
    assert_refused(sandbox, lambda: invoke(["run", "--data", path, "--model", "{nomodel}".format(**sandbox.values),
                                            "--out", str(sandbox.new)]), spec["expect"])


# ---------------------------------------------------------------- TOML configs


@pytest.mark.parametrize(("name", "spec"), _cases("toml"))
def test_toml_config_is_refused(name: str, spec: dict, sandbox: Sandbox) -> None:
    path = TOML / name
    if spec.get("level", "config") == "config":
        with pytest.raises(ConfigError):
            Config.from_file(path)
    args = spec.get("args", ["--data", "{good}"])
    argv = ["run", "--config", str(path), *map(sandbox.expand, args), "--model", sandbox.expand("{nomodel}"),
            "--out", str(sandbox.new)]
    assert_refused(sandbox, lambda: invoke(argv), spec["expect"])


# ---------------------------------------------------------------- command lines


@pytest.mark.parametrize(("line", "expected"), _cli_cases())
def test_command_line_is_refused(line: str, expected: list[str], sandbox: Sandbox) -> None:
    argv = sandbox.argv(line)
    if argv[0] == "serve":
        assert_refused(sandbox, lambda: invoke_process(argv, SERVE_TIMEOUT), expected)
    else:
        assert_refused(sandbox, lambda: invoke(argv), expected)


# ---------------------------------------------------------------- real processes


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "--config", str(TOML / "tau-zero.toml"), "--out", "{new}"], ["strategy.fedadam.tau: got 0.0"]),
        (["run", "--data", str(DATA / "huge-integer.jsonl"), "--model", "{nomodel}", "--out", "{new}"],
         ["huge-integer.jsonl line 2", "more than 4300 digits"]),
        (["partition", "--data", str(DATA / "deep-nesting.json"), "--clients", "2", "--out", "{new}"],
         ["deep-nesting.json", "nested too deeply"]),
    ],
)
def test_real_process_stderr_is_one_line(argv: list[str], expected: list[str], sandbox: Sandbox) -> None:
    res = assert_refused(sandbox, lambda: invoke_process([sandbox.expand(a) for a in argv], 120), expected)
    assert res.stderr.endswith("\n") and res.stderr.count("\n") == 1
