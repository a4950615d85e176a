"""``finpulse model predict`` and ``eval`` on small files, through click."""

from __future__ import annotations

import json

import pandas as pd
from click.testing import CliRunner

from models.cli import cli
from models.training.corpus import DATA_DIR

OUTPUT_COLUMNS = ["sentiment", "p_negative", "p_neutral", "p_positive", "topic", "topic_confidence", "model_version"]


def test_predict_csv_writes_input_and_prediction_columns(tmp_path):
    source = tmp_path / "in.csv"
    pd.DataFrame({"id": [1, 2, 3], "text": ["Shares plunge after the company misses earnings and cuts guidance",
                                            "", "Profit jumps 40% on record sales; analysts upgrade the stock"],
                  "sentiment": ["x", "y", "z"]}).to_csv(source, index=False)
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(cli, ["predict", "--input", str(source), "--text-column", "text",
                                      "--output", str(out), "--explain"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert set(OUTPUT_COLUMNS + ["id", "text", "input_sentiment", "status", "evidence"]) <= set(frame.columns)
    assert frame["id"].tolist() == [1, 2, 3]
    assert frame["input_sentiment"].tolist() == ["x", "y", "z"]  # a clashing input column is kept, renamed
    assert frame["sentiment"][0] == "negative" and frame["status"].tolist() == ["ok", "empty", "ok"]
    assert frame["model_version"].nunique() == 1
    # Evidence words come from the text they explain.
    words = [w.split(":")[0] for w in frame["evidence"][0].split("; ")]
    assert words and all(w.lower() in frame["text"][0].lower() for w in words)


def test_predict_jsonl(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"body": "Gold hits a record high"}\n{"body": null}\n')
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(cli, ["predict", "--input", str(source), "--text-column", "body",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert frame["status"].tolist() == ["ok", "empty"] and set(OUTPUT_COLUMNS) <= set(frame.columns)


def test_eval_writes_metrics_json(tmp_path):
    source = tmp_path / "labelled.csv"
    pd.DataFrame({"headline": ["Shares plunge after the company misses earnings and cuts guidance",
                               "Profit jumps 40% on record sales; analysts upgrade the stock",
                               "The company will hold its annual general meeting on Tuesday"],
                  "y": ["0", "1", "2"]}).to_csv(source, index=False)
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(cli, ["eval", "--data", str(source), "--text-column", "headline",
                                      "--label-column", "y", "--label-map", "0=negative,1=positive,2=neutral",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["n"] == 3 and report["task"] == "sentiment"
    assert set(report["per_class"]) == {"negative", "neutral", "positive"}
    assert sum(map(sum, report["confusion_matrix"])) == 3
    # Three unambiguous sentences, the label map applied: every one right (a wrong or ignored map,
    # or a wrong column, shows up as an off-diagonal count).
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert report["macro_f1"] == 1.0 and report["accuracy"] == 1.0
    assert report["model_version"].startswith("finpulse-minilm-")
    assert "macro-F1" in result.output


def test_train_on_user_data_then_predict_with_it(tmp_path):
    headlines = pd.read_csv(DATA_DIR / "sentfin_headlines.csv.gz")
    headlines = headlines[headlines["headline_label"] != "mixed"].groupby("headline_label").sample(n=30, random_state=0)
    mine = tmp_path / "mine.csv"
    names = {"negative": "bear", "neutral": "flat", "positive": "bull"}
    pd.DataFrame({"body": headlines["title"], "y": headlines["headline_label"].map(names)}).to_csv(mine, index=False)
    out = tmp_path / "model"
    result = CliRunner().invoke(cli, [
        "train", "--sentiment-data", str(mine), "--text-column", "body", "--label-column", "y",
        "--label-map", "bear=negative,flat=neutral,bull=positive", "--out", str(out), "--limit", "90",
        "--max-steps", "4", "--max-length", "24", "--evals-per-epoch", "1", "--class-weight-power", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["sentiment_source"] == "user: mine.csv"
    assert config["train"]["class_weight_power"] == 1.0
    # 10% of 30 per label held out, carved per label; half of that is the test split training never reads
    assert config["train"]["val_rows"]["sentiment"] + config["train"]["test_rows"]["sentiment"] == 9
    assert config["train"]["test_rows"]["sentiment"] >= 3 and config["train"]["test_share"] == 0.5
    predicted = tmp_path / "pred.csv"
    result = CliRunner().invoke(cli, ["predict", "--input", str(mine), "--text-column", "body",
                                      "--output", str(predicted), "--model", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(predicted)
    assert len(frame) == 90 and set(frame["sentiment"]) <= {"negative", "neutral", "positive"}
    assert frame["model_version"].str.startswith("finpulse-minilm-lora-").all()


def test_eval_by_group_reports_each_group_apart(tmp_path):
    source = tmp_path / "labelled.csv"
    pd.DataFrame({"text": ["", "Shares plunge after the company misses earnings and cuts guidance",
                           "The company will hold its annual general meeting on Tuesday",
                           "Profit jumps 40% on record sales; analysts upgrade the stock"],
                  "label": ["positive", "negative", "positive", "positive"],  # the meeting is not positive
                  "source": ["chat", "news", "chat", "news"]}).to_csv(source, index=False)
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(cli, ["eval", "--data", str(source), "--by", "source", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["n"] == 3 and report["by"]["column"] == "source"
    # the empty text is dropped with its group value, so the groups stay aligned with their rows
    assert report["by"]["groups"]["news"] == {"n": 2, "accuracy": 1.0, "macro_f1": 1.0}
    assert report["by"]["groups"]["chat"]["n"] == 1 and report["by"]["groups"]["chat"]["accuracy"] == 0.0
    assert "source=chat: n=1 accuracy=0.0000" in result.output
    result = CliRunner().invoke(cli, ["eval", "--data", str(source), "--by", "venue"])
    assert result.exit_code != 0 and "missing columns ['venue']" in result.output
