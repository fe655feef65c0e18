"""LLM-as-judge against a real OpenAI-compatible HTTP server started by the test (no patched client)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedit.eval.answers import Answer, read_answers, write_answers
from fedit.eval.judge import JudgeClient, JudgeError, judge_answers, load_prompt, parse_pair, parse_single

from .judge_server import API_KEY, JudgeServer


@pytest.fixture
def server():
    with JudgeServer() as s:
        yield s


def client(server: JudgeServer, tmp_path: Path, **kw) -> JudgeClient:
    kw = {"retries": 2, "timeout": 0.5, "backoff": 0.01, "concurrency": 3, "cache_dir": tmp_path / "cache"} | kw
    return JudgeClient("judge", server.url, API_KEY, **kw)


def ans(i: int, text: str, cat: str) -> Answer:
    return Answer(id=str(i), instruction=f"Request {i}", answer=text, category=cat)


CANDS = [ans(0, "GOOD one", "qa"), ans(1, "BAD one", "qa"), ans(2, "GOOD RATE429", "qa"),
         ans(3, "GOOD SLOW", "writing"), ans(4, "GARBLE", "writing"), ans(5, "FAIL500", "writing")]


def test_parsing_is_robust() -> None:
    assert parse_single("fine.\nRating: [[7]]") == 7.0
    assert parse_single("Rating: [[3]] ... on reflection Rating: [[6.5]]") == 6.5
    assert parse_single("Score: 4") == 4.0
    assert parse_single("I'd give it 9/10") == 9.0
    for bad in (None, "", "no number here", "Rating: [[11]]", "Rating: [[0]]"):
        assert parse_single(bad) is None
    assert parse_pair("x\nScores: [[7, 4]]") == (7.0, 4.0)
    assert parse_pair("8 3\nbecause...") == (8.0, 3.0)
    assert parse_pair("Scores: [[7]]") is None
    assert parse_pair("[[12, 3]]") is None
    assert "{question}" in load_prompt("single_user") and "{answer_2}" in load_prompt("pair_user")


def test_single_grading_retries_timeouts_failures_and_cache(server: JudgeServer, tmp_path: Path) -> None:
    c = client(server, tmp_path)
    doc = judge_answers(c, CANDS, "single")
    c.close()
    items = {it["id"]: it for it in doc["items"]}
    assert items["0"]["score"] == 8 and items["1"]["score"] == 2
    assert items["2"]["score"] == 8 and items["2"]["status"] == "ok"  # 429, then success
    assert items["3"]["score"] == 8 and items["3"]["status"] == "ok"  # timed out, then success
    assert items["4"]["status"] == "unparseable" and items["4"]["score"] is None
    assert items["5"]["status"] == "failed" and "HTTP 500" in items["5"]["rationale"]
    assert doc["unparseable"] == 1 and doc["failed"] == 1
    assert doc["per_category"]["qa"]["mean"] == pytest.approx(6.0) and doc["per_category"]["qa"]["scored"] == 3
    assert doc["per_category"]["writing"] == {"n": 3, "scored": 1, "unparseable": 1, "failed": 1, "mean": 8.0}
    assert doc["requests"]["retries"] >= 4  # one for 429, one for the timeout, two for the 500
    assert server.seen[next(k for k in server.seen if "FAIL500" in k)] == 3  # 1 try + 2 retries
    assert 1 < server.max_in_flight <= 3
    assert items["0"]["rationale"].startswith("The answer is good")

    # A rerun answers from the cache: only the request that failed is sent again.
    before = server.requests
    c2 = client(server, tmp_path)
    doc2 = judge_answers(c2, CANDS, "single")
    c2.close()
    assert server.requests - before == 3 and doc2["requests"]["cached"] == 5
    assert doc2["per_category"] == doc["per_category"]


def test_relative_and_pairwise_cancel_position_bias(server: JudgeServer, tmp_path: Path) -> None:
    cands = [ans(0, "GOOD a", "qa"), ans(1, "GOOD b", "qa"), ans(2, "BAD c", "qa")]
    refs = [ans(0, "BAD x", "qa"), ans(1, "GOOD y", "qa"), ans(2, "GOOD z", "qa")]
    c = client(server, tmp_path)
    rel = judge_answers(c, cands, "relative", refs)
    q = rel["per_category"]["qa"]
    assert q["mean"] == pytest.approx(6.0) and q["reference_mean"] == pytest.approx(6.0) and q["relative"] == 1.0

    pw = judge_answers(c, cands, "pairwise", refs)
    c.close()
    items = {it["id"]: it for it in pw["items"]}
    # true 8 vs 2; the server adds +1 to whoever is shown first; averaging both orders leaves a 6-point gap
    assert items["0"]["score"] == 8.5 and items["0"]["reference_score"] == 2.5 and items["0"]["orders_agree"]
    assert items["1"]["score"] == items["1"]["reference_score"] and not items["1"]["orders_agree"]
    q = pw["per_category"]["qa"]
    assert (q["wins"], q["ties"], q["losses"], q["orders_disagree"]) == (1, 1, 1, 1)
    assert q["relative"] == pytest.approx((8.5 + 8.5 + 2.5) / (2.5 + 8.5 + 8.5))


def test_unfixable_errors_stop_with_a_clear_message(server: JudgeServer, tmp_path: Path) -> None:
    c = JudgeClient("judge", server.url, "wrong-key", retries=3, backoff=0.01, cache_dir=None)
    with pytest.raises(JudgeError, match="HTTP 401"):
        judge_answers(c, CANDS[:2], "single")
    c.close()
    assert server.requests <= 2  # no retries on 401


def test_cli_judge_roundtrip(server: JudgeServer, tmp_path: Path, monkeypatch) -> None:
    from fedit.cli import app

    a, r = tmp_path / "a.jsonl", tmp_path / "r.jsonl"
    write_answers(a, CANDS[:3])
    write_answers(r, [ans(0, "BAD", "qa"), ans(1, "BAD", "qa"), ans(2, "GOOD", "qa")])
    assert read_answers(a)[2].answer == "GOOD RATE429"
    monkeypatch.setenv("JUDGE_KEY", API_KEY)
    out = tmp_path / "j.json"
    args = ["judge", "--answers", str(a), "--reference", str(r), "--judge-model", "judge", "--base-url", server.url,
            "--out", str(out), "--api-key-env", "JUDGE_KEY", "--timeout", "5"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["mode"] == "relative" and doc["per_category"]["qa"]["relative"] == pytest.approx(18 / 12)
    assert (tmp_path / ".judge-cache").is_dir()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x"}\n')
    res = CliRunner().invoke(app, ["judge", "--answers", str(bad), "--judge-model", "j", "--base-url", server.url,
                                   "--out", str(out)])
    assert res.exit_code == 2 and "line 1" in res.output
