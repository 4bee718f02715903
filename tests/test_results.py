"""RetrievalResults: the one results object behind retrieval_metrics, eval_results.json, the printed table,
the model card and the objectives comparison."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from modeling_ccr.results import (
    RetrievalResults,
    dataset_name,
    flatten_metrics,
    render_table,
    retrieval_metrics,
)
from modeling_ccr.retrieval import ranks_from_scores
from tests._push_helpers import eval_results

ROOT = Path(__file__).resolve().parents[1]


def _results() -> RetrievalResults:
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(6), 2)
    return RetrievalResults.from_json(retrieval_metrics(ranks_from_scores(rng.normal(size=(6, 12)), ids, ["en", "de"] * 6)))


def test_json_round_trip_keeps_every_key_and_run_fields(tmp_path):
    results = _results()
    results.dataset, results.split, results.seed = dataset_name("emoji"), "test", 3
    results.extra["demo_red_apple_rank"] = {"gallery_size": 10, "red apple": 2}
    again = RetrievalResults.from_json(results.save(tmp_path / "eval_results.json"))
    assert again == results
    data = json.loads((tmp_path / "eval_results.json").read_text())
    assert data["dataset"] == "EmojiCCR" and data["seed"] == 3 and data["demo_red_apple_rank"]["red apple"] == 2
    assert "loss_type" not in data and "model" not in data  # unrecorded run fields are left out


def test_retrieval_metrics_dict_is_the_objects_json():
    results = _results()
    assert set(results.to_json()) == {"languages", "num_images", "num_texts", "recall", "recall_avg", "mean_recall",
                                      "mrv", "mrv_variant", "mrv_num_instances", "chance"}
    assert flatten_metrics(results) == flatten_metrics(results.to_json())


def test_an_older_file_without_averages_or_chance_still_loads():
    old = eval_results()
    for key in ("recall_avg", "mean_recall", "chance", "mrv_variant"):
        old.pop(key)
    results = RetrievalResults.from_json(old)
    assert results.recall_avg["TR"]["R@1"] == pytest.approx(11.0)  # mean of 10, 11, 12
    assert results.mean_recall == pytest.approx((11 + 41 + 61) / 3)
    assert results.chance is None and results.mrv_variant == "variance"
    assert "chance" not in results.recall_table()


@pytest.mark.parametrize("payload, message", [
    ({"languages": []}, "languages"),
    ({"languages": ["en"], "recall": {"TR": {"en": {"R@1": 1.0}}}}, "recall.IR"),
    ([1, 2], "JSON object"),
])
def test_malformed_results_are_a_clear_error(payload, message):
    with pytest.raises(ValueError, match=message):
        RetrievalResults.from_json(payload)


def test_one_renderer_draws_text_and_markdown_tables():
    results = RetrievalResults.from_json(eval_results())
    text = results.recall_table()
    lines = text.splitlines()
    assert lines[0].split() == ["lang", "TR", "R@1", "TR", "R@5", "TR", "R@10", "IR", "R@1", "IR", "R@5", "IR", "R@10"]
    assert set(lines[1].replace(" ", "")) == {"-"} and set(lines[5].replace(" ", "")) == {"-"}  # rule before avg
    assert lines[6].split()[0] == "avg" and lines[7].split()[0] == "chance"
    markdown = results.recall_table(markdown=True)
    assert "| de | 11.00 | 41.00 | 61.00 | 11.00 | 41.00 | 61.00 |" in markdown
    assert "| **average** | 11.00 |" in markdown
    assert render_table(["a", "b"], [["1", "2"]], markdown=True) == "| a | b |\n|---|---|\n| 1 | 2 |"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "hub_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_comparison_table_reads_results_files(tmp_path):
    compare = _script("compare_objectives")
    runs = {}
    for objective, shift in (("one_to_k", 0.0), ("pivot", -5.0)):
        data = eval_results()
        data["recall"]["TR"]["en"]["R@1"] += shift
        folder = tmp_path / f"{objective}-seed0" / "model"
        folder.mkdir(parents=True)
        (folder / "eval_results.json").write_text(json.dumps(data))
        runs[objective] = [compare.run(objective, 0, tmp_path, 1.0, [])]  # already there: read, not trained
    table, summary = compare.summarise(runs)
    assert table.splitlines()[0].startswith("| objective | TR R@1 en | TR R@1 de |")
    assert "| pivot | 5.0 ± 0.0 |" in table and "Chance level: R@1 TR 3.30%" in table
    assert summary["one_to_k"]["MRV_IR"] == [2.5, 0.0]


def test_evaluate_model_records_the_embedded_dataset_as_train_does(tmp_path, monkeypatch):
    """evaluate_model.py --dataset emoji writes "EmojiCCR", the name train.py writes (test_train_cli checks
    train.py's file has the same keys)."""
    from tests._retrieval_helpers import FakeModel, FakeProcessor, _tiny_dataset

    script = _script("evaluate_model")
    monkeypatch.setattr(script, "load_model", lambda model_dir, device: (FakeModel(), FakeProcessor()))
    monkeypatch.setattr(script, "load_dataset_arg", lambda *args: _tiny_dataset())
    assert script.main(["m", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    results = RetrievalResults.from_json(tmp_path / "eval_results.json")
    assert (results.dataset, results.split, results.model, results.rerank_top_k) == ("EmojiCCR", "test", "m", 0)
    assert dataset_name("emoji") == "EmojiCCR" and dataset_name("/data/xFlickrCO") == "/data/xFlickrCO"
