"""One generation module: evaluation (`fedit eval`/`generate`) and serving stop on, and cut at, the same EOS ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedit.data.records import Record
from fedit.eval.generate import generate_answers, generate_ids
from fedit.generation import GenerationSettings, cut_at_eos, eos_ids
from fedit.serve.generation import generate_stream
from fedit.serve.session import ModelSession, parse_adapter_args

PROMPT = Record(instruction="What is the capital of France?", response="")


@pytest.fixture
def session(micro_run: Path) -> Iterator[ModelSession]:
    """A fresh session per test: the tests below change the model's generation_config."""
    yield ModelSession.load(parse_adapter_args([str(micro_run)]))


def test_eos_ids_merge_tokenizer_and_generation_config(session: ModelSession) -> None:
    gen_cfg = session.model.get_base_model().generation_config
    eos = session.tokenizer.eos_token_id
    assert eos_ids(session.tokenizer, session.model) == {eos}
    gen_cfg.eos_token_id = [eos, 7, 9]
    assert eos_ids(session.tokenizer, session.model) == {eos, 7, 9}
    gen_cfg.eos_token_id = 11
    assert eos_ids(session.tokenizer, session.model) == {eos, 11}
    assert cut_at_eos([5, 6, 11, 7, 9], {7, 11}) == [5, 6] and cut_at_eos([5, 6], {7}) == [5, 6]


@pytest.mark.parametrize("position", ["first", "later"])
def test_eval_stops_at_any_eos_like_serving(session: ModelSession, position: str) -> None:
    """Gemma-style: generation_config lists a second EOS id (end of turn). Eval must cut there, as serving does."""
    name = session.names[0]
    tok, model = session.tokenizer, session.model
    template = session.templates[name]
    settings = GenerationSettings(max_new_tokens=16)
    ids = session.text_ids(name, template.prompt(PROMPT))
    with session.use(name):
        greedy = generate_ids(model, tok, [ids], settings)[0]
    # the second EOS id: the first generated token, or the first token that differs from it (so some text is kept)
    k = 0 if position == "first" else next((i for i, t in enumerate(greedy) if t != greedy[0]), None)
    assert k is not None and len(greedy) == 16 and tok.eos_token_id not in greedy, greedy
    end_of_turn = greedy[k]
    model.get_base_model().generation_config.eos_token_id = [tok.eos_token_id, end_of_turn]

    with session.use(name):
        cut = generate_ids(model, tok, [ids], settings)[0]
        answer = generate_answers(model, tok, template, [PROMPT], settings)[0]
    pieces: list[str] = []
    reason, usage = generate_stream(session, name, ids, settings, pieces.append)
    served = "".join(pieces)

    assert cut == greedy[:k]
    assert served == tok.decode(greedy[:k], skip_special_tokens=True) and reason == "stop"
    assert usage["completion_tokens"] == k + 1  # generation really stopped at the end-of-turn token
    assert answer == served.strip()
