"""LLM-as-judge over any OpenAI-compatible endpoint: single-answer grading, relative score, pairwise (both orders).

Requests go through httpx with bounded concurrency, retries with exponential backoff on 429/5xx, timeouts and
connection errors (honouring Retry-After), and an on-disk cache keyed by (judge model, prompt, sampling settings), so
a rerun sends nothing. A reply that cannot be parsed, or a request that still fails after its retries, is counted and
reported, never raised; only errors no retry can fix (401, 404: wrong key, URL or model) stop the run.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fedit.errors import ConfigError, FeditError
from fedit.eval.answers import Answer, pair_answers

MODES = ("single", "relative", "pairwise")
_NUM = r"(\d+(?:\.\d+)?)"
_SINGLE = [re.compile(rf"\[\[\s*{_NUM}\s*\]\]"), re.compile(rf"(?:rating|score)\s*[:=]?\s*\**\s*{_NUM}", re.I),
           re.compile(rf"{_NUM}\s*/\s*10\b")]
_PAIR = [re.compile(rf"\[\[\s*{_NUM}\s*[,;\s]\s*{_NUM}\s*\]\]"),
         re.compile(rf"scores?\s*[:=]?\s*\[?\s*{_NUM}\s*[,;/ ]\s*{_NUM}", re.I),
         re.compile(rf"^\s*{_NUM}\s*[, ]\s*{_NUM}\s*$", re.M)]


class JudgeError(FeditError):
    """The judge endpoint rejects the requests in a way no retry can fix (bad key, URL or model)."""


def load_prompt(name: str) -> str:
    return resources.files("fedit.eval").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8").strip()


def _in_range(x: float) -> bool:
    return 1.0 <= x <= 10.0


def parse_single(text: str | None) -> float | None:
    """The 1-10 rating in a judgement ("Rating: [[7]]", or looser forms); None when there is none in range."""
    if not text:
        return None
    for pat in _SINGLE:
        hits = [float(m) for m in pat.findall(text)]
        if hits:
            return hits[-1] if _in_range(hits[-1]) else None  # the verdict comes last
    return None


def parse_pair(text: str | None) -> tuple[float, float] | None:
    """(score of answer 1, score of answer 2) in a pairwise judgement ("Scores: [[7, 4]]"); None when unparseable."""
    if not text:
        return None
    for pat in _PAIR:
        hits = pat.findall(text)
        if hits:
            a, b = float(hits[-1][0]), float(hits[-1][1])
            return (a, b) if _in_range(a) and _in_range(b) else None
    return None


def rationale(text: str | None, limit: int = 400) -> str:
    """The explanation before the verdict line, shortened."""
    body = (text or "").strip()
    lines = [ln for ln in body.splitlines() if ln.strip()]
    if len(lines) > 1 and ("[[" in lines[-1] or re.search(r"rating|score", lines[-1], re.I)):
        lines = lines[:-1]
    return " ".join(" ".join(lines).split())[:limit]


@dataclass
class Failed:
    """A request that failed after all its retries (counted as `failed`, not raised)."""

    reason: str


@dataclass
class JudgeClient:
    """Chat completions against an OpenAI-compatible server, with retries, bounded concurrency and a disk cache."""

    model: str
    base_url: str
    api_key: str | None = None
    concurrency: int = 4
    retries: int = 4
    timeout: float = 60.0
    backoff: float = 1.0
    max_backoff: float = 30.0
    cache_dir: Path | None = None
    temperature: float = 0.0
    max_tokens: int = 512
    stats: dict[str, int] = field(default_factory=lambda: {"sent": 0, "cached": 0, "retries": 0, "failed": 0})

    def __post_init__(self) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(headers=headers, timeout=self.timeout,
                                  limits=httpx.Limits(max_connections=max(1, self.concurrency)))
        self._url = self.base_url.rstrip("/") + "/chat/completions"
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _body(self, system: str, user: str) -> dict[str, Any]:
        return {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}

    def _cache_path(self, body: dict[str, Any]) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def chat(self, system: str, user: str) -> str | Failed:
        """The judge's reply text (from the cache when there), or Failed after the retries are spent."""
        body = self._body(system, user)
        path = self._cache_path(body)
        if path is not None and path.is_file():
            try:
                reply = json.loads(path.read_text(encoding="utf-8"))["reply"]
                self._count("cached")
                return reply
            except (json.JSONDecodeError, KeyError):
                pass  # a damaged cache entry is asked again
        out = self._post(body)
        if isinstance(out, Failed):
            self._count("failed")
        elif path is not None:
            from fedit.atomic import write_json as atomic_write_json

            atomic_write_json(path, {"judge": self.model, "messages": body["messages"], "reply": out})
        return out

    def _post(self, body: dict[str, Any]) -> str | Failed:
        import httpx

        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._count("retries")
            self._count("sent")
            wait: float | None = None
            try:
                r = self._http.post(self._url, json=body)
            except httpx.TimeoutException:
                reason = f"timed out after {self.timeout}s"
            except httpx.TransportError as e:
                reason = f"connection error: {e}"
            else:
                if r.status_code == 200:
                    try:
                        content = r.json()["choices"][0]["message"]["content"]
                    except (ValueError, KeyError, IndexError, TypeError):
                        return Failed(f"malformed response body: {r.text[:120]!r}")
                    return content if isinstance(content, str) else ""
                if r.status_code != 429 and r.status_code < 500:
                    raise JudgeError(f"judge {self.model!r} at {self._url}: HTTP {r.status_code} "
                                     f"({r.text[:200].strip()!r}); check --base-url, --judge-model and the API key")
                reason = f"HTTP {r.status_code}"
                wait = _retry_after(r.headers.get("retry-after"))
            if attempt < self.retries:
                delay = min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)
                time.sleep(min(self.max_backoff, wait) if wait is not None else delay)
        return Failed(f"{reason} (after {self.retries + 1} attempts)")

    def chat_many(self, prompts: Sequence[tuple[str, str]]) -> list[str | Failed]:
        """Replies in input order, at most `concurrency` requests in flight."""
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            futures = [pool.submit(self.chat, s, u) for s, u in prompts]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------- grading


def _single_prompts(answers: Sequence[Answer]) -> list[tuple[str, str]]:
    system, user = load_prompt("single_system"), load_prompt("single_user")
    return [(system, user.format(question=a.question(), answer=a.answer)) for a in answers]


def _pair_prompts(pairs: Sequence[tuple[Answer, Answer]]) -> list[tuple[str, str]]:
    """Two prompts per pair: candidate first, then reference first (to cancel position bias)."""
    system, user = load_prompt("pair_system"), load_prompt("pair_user")
    out = []
    for a, r in pairs:
        out.append((system, user.format(question=a.question(), answer_1=a.answer, answer_2=r.answer)))
        out.append((system, user.format(question=a.question(), answer_1=r.answer, answer_2=a.answer)))
    return out


def _status(reply: str | Failed, parsed: Any) -> str:
    return "failed" if isinstance(reply, Failed) else "ok" if parsed is not None else "unparseable"


def _text(reply: str | Failed) -> str | None:
    return None if isinstance(reply, Failed) else reply


def judge_answers(client: JudgeClient, answers: Sequence[Answer], mode: str = "single",
                  reference: Sequence[Answer] | None = None) -> dict[str, Any]:
    """Grade `answers` (and `reference` for relative/pairwise); returns the J.json object."""
    if mode not in MODES:
        raise ConfigError(f"--mode: got {mode!r}, expected one of {', '.join(MODES)}")
    if mode != "single" and reference is None:
        raise ConfigError(f"--mode {mode} compares against a reference model's answers: pass --reference R.jsonl")
    items: list[dict[str, Any]] = []
    if mode == "single":
        replies = client.chat_many(_single_prompts(answers))
        for a, rep in zip(answers, replies, strict=True):
            s = parse_single(_text(rep))
            items.append({"id": a.id, "category": a.category, "score": s, "status": _status(rep, s),
                          "rationale": rationale(_text(rep)) if s is not None else _why(rep)})
    elif mode == "relative":
        pairs = pair_answers(answers, reference or [], "--reference")
        replies = client.chat_many(_single_prompts([a for a, _ in pairs] + [r for _, r in pairs]))
        n = len(pairs)
        for i, (a, _r) in enumerate(pairs):
            ca, cr = replies[i], replies[n + i]
            sa, sr = parse_single(_text(ca)), parse_single(_text(cr))
            st = _worst(_status(ca, sa), _status(cr, sr))
            items.append({"id": a.id, "category": a.category, "score": sa, "reference_score": sr, "status": st,
                          "rationale": rationale(_text(ca)) if sa is not None else _why(ca)})
    else:
        pairs = pair_answers(answers, reference or [], "--reference")
        replies = client.chat_many(_pair_prompts(pairs))
        for i, (a, _r) in enumerate(pairs):
            fwd, rev = replies[2 * i], replies[2 * i + 1]
            pf, pr = parse_pair(_text(fwd)), parse_pair(_text(rev))
            st = _worst(_status(fwd, pf), _status(rev, pr))
            item: dict[str, Any] = {"id": a.id, "category": a.category, "status": st, "score": None,
                                    "reference_score": None}
            if pf is not None and pr is not None:
                item["score"] = (pf[0] + pr[1]) / 2  # candidate was first, then second
                item["reference_score"] = (pf[1] + pr[0]) / 2
                item["orders_agree"] = _sign(pf[0] - pf[1]) == _sign(pr[1] - pr[0])
                item["rationale"] = rationale(_text(fwd))
            else:
                item["rationale"] = _why(fwd if pf is None else rev)
            items.append(item)
    return {"judge": client.model, "base_url": client.base_url, "mode": mode, **aggregate(items, mode),
            "requests": dict(client.stats), "items": items}


def _why(reply: str | Failed) -> str:
    return reply.reason if isinstance(reply, Failed) else f"unparseable judgement: {(reply or '')[:200]!r}"


def _worst(a: str, b: str) -> str:
    order = ("ok", "unparseable", "failed")
    return max(a, b, key=order.index)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def aggregate(items: Sequence[dict[str, Any]], mode: str) -> dict[str, Any]:
    """Per-category and overall means and counts; unparseable and failed judgements are counted, not scored."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        groups.setdefault(it["category"] or "(none)", []).append(it)
    per = {cat: _summary(groups[cat], mode) for cat in sorted(groups)}
    overall = _summary(list(items), mode)
    scored = [v for v in per.values() if v["mean"] is not None]
    overall["mean_of_categories"] = sum(v["mean"] for v in scored) / len(scored) if scored else None
    return {"per_category": per, "overall": overall, "unparseable": overall["unparseable"],
            "failed": overall["failed"]}


def _summary(items: Sequence[dict[str, Any]], mode: str) -> dict[str, Any]:
    ok = [it for it in items if it["status"] == "ok"]
    out: dict[str, Any] = {
        "n": len(items), "scored": len(ok),
        "unparseable": sum(it["status"] == "unparseable" for it in items),
        "failed": sum(it["status"] == "failed" for it in items),
        "mean": sum(it["score"] for it in ok) / len(ok) if ok else None,
    }
    if mode != "single":
        ref = sum(it["reference_score"] for it in ok) / len(ok) if ok else None
        out["reference_mean"] = ref
        out["relative"] = out["mean"] / ref if ok and ref else None
    if mode == "pairwise":
        out["wins"] = sum(it["score"] > it["reference_score"] for it in ok)
        out["ties"] = sum(it["score"] == it["reference_score"] for it in ok)
        out["losses"] = sum(it["score"] < it["reference_score"] for it in ok)
        out["orders_disagree"] = sum(not it["orders_agree"] for it in ok)
    return out
