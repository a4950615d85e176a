"""A CheckList-style behavioural test of the sentiment head (``finpulse model checklist``).

The cases live in ``models/evaluation/data/checklist.yaml`` (format documented at its top): minimum
functionality (``mft``: a text must get a label, or lean one way), directional (``dir``: an edit
must move the polarity ``p_positive - p_negative`` one way by more than a margin) and invariance
(``inv``: two phrasings of one event must get the same label). Pass rates are per capability.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from models.training.corpus import SENTIMENT_LABELS

DATA_DIR = Path(__file__).resolve().parent / "data"  # the checklists: written for this project

CHECKLIST_FILE = DATA_DIR / "checklist.yaml"
TYPES = ("mft", "dir", "inv")
MFT_EXPECT = (*SENTIMENT_LABELS, "leans_negative", "leans_positive")
DIR_EXPECT = ("more_positive", "more_negative")


@dataclass(frozen=True)
class Case:
    capability: str
    type: str
    text: str
    expect: str
    perturbed: str | None = None


def load_cases(path: str | Path = CHECKLIST_FILE) -> tuple[list[Case], float]:
    """The cases and the directional margin; a malformed case raises, naming its position."""
    document = yaml.safe_load(Path(path).read_text())
    margin = float(document.get("margin", 0.05))
    cases = []
    for i, raw in enumerate(document["cases"]):
        case = Case(capability=str(raw["capability"]), type=str(raw["type"]), text=str(raw["text"]),
                    expect=str(raw["expect"]), perturbed=None if raw.get("perturbed") is None else str(raw["perturbed"]))
        allowed = {"mft": MFT_EXPECT, "dir": DIR_EXPECT, "inv": ("same",)}.get(case.type)
        if allowed is None:
            raise ValueError(f"{path}: case {i}: type {case.type!r} is not one of {TYPES}")
        if case.expect not in allowed:
            raise ValueError(f"{path}: case {i}: expect {case.expect!r} for a {case.type} case; allowed {allowed}")
        if (case.type == "mft") == (case.perturbed is not None):
            raise ValueError(f"{path}: case {i}: {case.type} cases {'need' if case.type != 'mft' else 'take no'} `perturbed`")
        cases.append(case)
    return cases, margin


def _passes(case: Case, first: dict, second: dict | None, *, margin: float) -> bool:
    if case.type == "mft":
        if case.expect == "leans_negative":
            return first["p_negative"] > first["p_positive"]
        if case.expect == "leans_positive":
            return first["p_positive"] > first["p_negative"]
        return first["sentiment"] == case.expect
    if case.type == "inv":
        return first["sentiment"] == second["sentiment"]
    shift = second["polarity"] - first["polarity"]
    return shift > margin if case.expect == "more_positive" else shift < -margin


def _tally(passed: list[bool]) -> dict:
    """``n``, ``passed`` and ``pass_rate`` of a list of case outcomes (rate 0 when empty)."""
    return {"n": len(passed), "passed": int(sum(passed)), "pass_rate": float(np.mean(passed)) if passed else 0.0}


def _rates(groups: dict[str, list[bool]]) -> dict:
    return {name: _tally(passed) for name, passed in groups.items()}


def run_checklist(scorer, cases: list[Case], *, margin: float) -> dict:
    """Score every text once (one batch) and report each case and the pass rate per capability.

    ``scorer`` needs only ``score_arrays(texts)`` (sentiment, p_negative, p_positive, status).
    """
    texts = [c.text for c in cases] + [c.perturbed for c in cases if c.perturbed is not None]
    arrays = scorer.score_arrays(texts)
    if not (arrays.status == "ok").all():
        raise ValueError("the scorer could not read some checklist texts: "
                         f"{[t for t, s in zip(texts, arrays.status, strict=True) if s != 'ok']}")

    def row(i: int) -> dict:
        return {"sentiment": arrays.sentiment[i], "p_negative": float(arrays.p_negative[i]),
                "p_neutral": float(arrays.p_neutral[i]), "p_positive": float(arrays.p_positive[i]),
                "polarity": float(arrays.p_positive[i] - arrays.p_negative[i])}

    results, next_perturbed = [], len(cases)
    for i, case in enumerate(cases):
        first, second = row(i), None
        if case.perturbed is not None:
            second, next_perturbed = row(next_perturbed), next_perturbed + 1
        results.append({"capability": case.capability, "type": case.type, "text": case.text,
                        "perturbed": case.perturbed, "expect": case.expect,
                        "passed": bool(_passes(case, first, second, margin=margin)),
                        "scores": first, "perturbed_scores": second})
    by_capability: dict[str, list[bool]] = defaultdict(list)
    by_type: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        by_capability[r["capability"]].append(r["passed"])
        by_type[r["type"]].append(r["passed"])

    return {**_tally([r["passed"] for r in results]), "margin": margin, "by_capability": _rates(by_capability),
            "by_type": _rates(by_type), "cases": results}


# --- the entity head ------------------------------------------------------------------------

ENTITY_CHECKLIST_FILE = DATA_DIR / "entity_checklist.yaml"


@dataclass(frozen=True)
class EntityCase:
    capability: str
    text: str
    entity: str
    expect: str


def load_entity_cases(path: str | Path = ENTITY_CHECKLIST_FILE) -> list[EntityCase]:
    """The entity head's cases (format at the top of ``models/evaluation/data/entity_checklist.yaml``); a malformed one raises."""
    document = yaml.safe_load(Path(path).read_text())
    cases = []
    for i, raw in enumerate(document["cases"]):
        case = EntityCase(capability=str(raw["capability"]), text=str(raw["text"]), entity=str(raw["entity"]),
                          expect=str(raw["expect"]))
        if case.expect not in SENTIMENT_LABELS:
            raise ValueError(f"{path}: case {i}: expect {case.expect!r}; allowed {SENTIMENT_LABELS}")
        cases.append(case)
    return cases


def run_entity_checklist(scorer, cases: list[EntityCase]) -> dict:
    """Score every (text, entity) pair in one ``score_pairs`` call; pass rate per capability.

    ``contrast_texts_both_right`` counts the texts whose every entity case passed: a head that
    copies one label to all entities of a text gets none of the contrast texts.
    """
    arrays = scorer.score_pairs([c.text for c in cases], [c.entity for c in cases])
    results = [{"capability": c.capability, "text": c.text, "entity": c.entity, "expect": c.expect,
                "sentiment": arrays.sentiment[i], "p_negative": float(arrays.p_negative[i]),
                "p_neutral": float(arrays.p_neutral[i]), "p_positive": float(arrays.p_positive[i]),
                "passed": bool(arrays.sentiment[i] == c.expect)} for i, c in enumerate(cases)]
    by_capability: dict[str, list[bool]] = defaultdict(list)
    by_text: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        by_capability[r["capability"]].append(r["passed"])
        if r["capability"] == "contrast":
            by_text[r["text"]].append(r["passed"])
    return {**_tally([r["passed"] for r in results]), "by_capability": _rates(by_capability),
            "contrast_texts": len(by_text), "contrast_texts_both_right": int(sum(all(v) for v in by_text.values())),
            "cases": results}
