"""Tag names: every numeric field of a metrics.jsonl row under a stable name, whatever the strategy or data adds."""

from __future__ import annotations

from fedit.tracking.tags import config_params, final_scalars, round_scalars, tag_part


def test_a_round_row_flattens_to_the_documented_tags() -> None:
    row = {"round": 3, "sampled": [0, 1, 2], "replied": [0, 2], "failed": {"1": "update rejected: nan"},
           "train_loss": 1.5, "examples": 12, "tokens": 340, "bytes_up": 2048, "bytes_down": 3072,
           "client_train_seconds": 2.0, "train_seconds": 2.5, "aggregate_seconds": 0.1, "round_seconds": 3.0,
           "checkpoint_seconds": 0.2, "eval_seconds": 0.4, "aggregation_error": 0.03,
           "strategy": {"residual_norm": 0.7, "note": "text is skipped"}, "epsilon": 2.5,
           "clients": {"0": {"loss": 1.0, "examples": 6}}, "eval_records": "abc", "flag": True,
           "eval": {"mean": {"score": 0.25, "loss": 2.0}, "per_category": {"open qa/x": {"n": 2, "score": 0.5}}}}
    assert round_scalars(row) == {
        "clients/sampled": 3.0, "clients/replied": 2.0, "clients/failed": 1.0,
        "train/loss": 1.5, "train/examples": 12.0, "train/tokens": 340.0,
        "comm/bytes_up": 2048.0, "comm/bytes_down": 3072.0,
        "time/client_train_seconds": 2.0, "time/train_seconds": 2.5, "time/aggregate_seconds": 0.1,
        "time/round_seconds": 3.0, "time/checkpoint_seconds": 0.2, "time/eval_seconds": 0.4,
        "strategy/aggregation_error": 0.03, "strategy/residual_norm": 0.7, "privacy/epsilon": 2.5,
        "eval/mean_score": 0.25, "eval/mean_loss": 2.0, "eval/open_qa_x/n": 2.0, "eval/open_qa_x/score": 0.5,
    }


def test_unknown_numbers_keep_their_names_and_parts_are_safe() -> None:
    assert round_scalars({"round": 1, "privacy": {"delta": 1e-5, "sigma": 0.8}, "new_figure": 4}) == {
        "privacy/delta": 1e-5, "privacy/sigma": 0.8, "new_figure": 4.0}
    assert [tag_part(x) for x in ("..", "", "a b", "é", "x-y.z")] == ["_", "_", "a_b", "_", "x-y.z"]


def test_final_evaluation_uses_the_in_loop_names() -> None:
    ev = {"rounds": 5, "mean": {"base_score": 0.1, "final_score": 0.4, "base_loss": 3.0, "final_loss": 2.0},
          "per_category": {"qa": {"n": 3, "base_loss": 3.1, "final_loss": 2.1}}}
    assert final_scalars(ev) == {"eval/mean_score": 0.4, "eval/mean_loss": 2.0, "eval/qa/n": 3.0,
                                 "eval/qa/loss": 2.1}


def test_config_params_are_dotted() -> None:
    assert config_params({"client": {"lr": 0.001}, "lora": {"targets": ["q_proj"]}, "data": {"fields": {}},
                          "strategy": {"name": "fedadam", "fedadam": {"tau": 0.001}}}) == {
        "client.lr": 0.001, "lora.targets": '["q_proj"]', "data.fields": "{}", "strategy.name": "fedadam",
        "strategy.fedadam.tau": 0.001}
