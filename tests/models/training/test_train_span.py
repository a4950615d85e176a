"""A ``span`` entity head, trained end to end on a tiny model: it reads every entity a headline names from the
headline's own pass, and inference (``Scorer.score_documents``) reads it the way training's validation did."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.evaluation.calibration import entity_logits
from models.scorer import Scorer
from tests.models.training.test_train_heads import issue10_data, train_tiny


@pytest.fixture(scope="module")
def data():
    return issue10_data()


@pytest.fixture(scope="module")
def span_model(tmp_path_factory, data):
    return train_tiny(tmp_path_factory.mktemp("span-model"), data, with_comments=False, with_entity=True,
                      entity_mark=False, entity_pooling="span")


@pytest.fixture(scope="module")
def scorer(span_model):
    return Scorer.load(span_model.out, device="cpu", precision="fp32")


def test_the_folder_records_a_span_head(span_model, scorer):
    config = json.loads((span_model.out / "config.json").read_text())
    assert config["entity_input"] == {"mark": False, "pooling": "span"}
    assert scorer.network.reads_spans


def test_score_documents_reads_each_headline_once_for_all_its_entities(data, scorer):
    val = data[2].val
    titles = list(dict.fromkeys(val["title"]))
    names = {t: list(dict.fromkeys(val.loc[val["title"] == t, "entity"])) for t in titles}
    before = scorer.passes
    documents, entities = scorer.score_documents(titles, [[[n] for n in names[t]] for t in titles], max_chunks=1)
    assert scorer.passes - before == len(titles)  # one encoder pass per headline, whatever its entities
    assert len(entities) == sum(len(v) for v in names.values()) > len(titles)
    assert documents.status.tolist() == ["ok"] * len(titles)
    # What training's validation reads (calibration.entity_logits) and inference agree row by row.
    rows = val.drop_duplicates(["title", "entity"]).set_index(["title", "entity"])
    order = [(t, n) for t in titles for n in names[t]]
    logits = entity_logits(scorer, rows.loc[order].reset_index())
    found = entities.status == "ok"
    assert found.sum() >= 0.9 * len(order)
    expected = np.array(scorer.labels["entity"])[logits.argmax(1).numpy()]
    assert entities.sentiment[found].tolist() == expected[found].tolist()
    # The head reads the entity's own mention: two entities of one headline get different probabilities.
    two = [t for t in titles if len(names[t]) >= 2]
    first = order.index((two[0], names[two[0]][0]))
    assert entities.p_positive[first] != entities.p_positive[first + 1]


def test_validation_accuracy_is_what_inference_gives(span_model, data, scorer):
    val = data[2].val
    logits = entity_logits(scorer, val)
    accuracy = float(np.mean(np.array(scorer.labels["entity"])[logits.argmax(1).numpy()] == val["label"].to_numpy()))
    assert accuracy == pytest.approx(span_model.metrics["entity"]["accuracy"], abs=1.5 / len(val))

