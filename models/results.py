"""What the scorer returns: column arrays aligned with the input (no per-row objects on the hot path).

``ScoreArrays`` holds a text's sentiment and topic, ``EntityArrays`` the sentiment towards each entity
asked about; both share ``ColumnArrays`` (length check, row slices, the JSON form the model server
sends). A row that could not be read has a status other than ``ok`` and no label: an unread text or
entity is never reported as neutral.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

STATUS_OK = "ok"
STATUS_EMPTY = "empty"  # no text left to read (None, blank, or nothing after the model's clean-up)
STATUS_NOT_FOUND = "not_found"  # an entity not mentioned in the part of the text the model read


PROBABILITY_FIELDS = ("p_negative", "p_neutral", "p_positive", "topic_confidence")


class ColumnArrays:
    """Equal-length column arrays plus a ``model_version``: what ``ScoreArrays`` and
    ``EntityArrays`` share (length check, slicing, the JSON form the model server sends).

    A subclass is a frozen dataclass with the ``model_version`` field and one field per name in
    ``ARRAY_FIELDS``; ``DTYPES`` gives the numpy dtype of the columns that are not object
    columns (probabilities are float32, NaN where there is none).
    """

    ARRAY_FIELDS: tuple[str, ...] = ()
    DTYPES: dict[str, type] = {}

    def __post_init__(self) -> None:
        lengths = {name: len(getattr(self, name)) for name in self.ARRAY_FIELDS}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{type(self).__name__} columns differ in length: {lengths}")

    def __len__(self) -> int:
        return len(getattr(self, self.ARRAY_FIELDS[0]))

    def rows(self, start: int, stop: int):
        """Rows ``start:stop`` as a new instance (the model server splits a merged batch back)."""
        return type(self)(model_version=self.model_version,
                          **{name: getattr(self, name)[start:stop] for name in self.ARRAY_FIELDS})

    def to_dict(self) -> dict:
        """JSON-able: lists, NaN as None."""
        out: dict = {"model_version": self.model_version}
        for name in self.ARRAY_FIELDS:
            values = getattr(self, name).tolist()
            if self.DTYPES.get(name) is np.float32:
                values = [None if math.isnan(v) else float(v) for v in values]
            out[name] = values
        return out

    @classmethod
    def from_dict(cls, d: dict):
        """Inverse of ``to_dict`` (None -> NaN for probabilities); a missing field is a KeyError, columns of
        unequal length a ValueError."""
        columns = {}
        for name in cls.ARRAY_FIELDS:
            values, dtype = d[name], cls.DTYPES.get(name, object)
            if dtype is np.float32:
                values = [np.nan if v is None else v for v in values]
            if dtype is object:
                # one object per row, even when every row holds a list of the same length (evidence)
                column = np.empty(len(values), dtype=object)
                column[:] = list(values)
                columns[name] = column
            else:
                columns[name] = np.array(values, dtype=dtype)
        return cls(model_version=str(d["model_version"]), **columns)


@dataclass(frozen=True)
class ScoreArrays(ColumnArrays):
    """Scores of n texts as column arrays aligned with the input (no per-row objects).

    ``status`` is ``ok`` or ``empty`` (None, blank, or nothing left after ``model_text``). Where
    not ok: sentiment and topic None, probabilities NaN, ``n_chunks`` 0 — an unread text is
    never reported as neutral. ``truncated``: text beyond ``max_chunks`` chunks was left unread.
    """

    model_version: str
    status: np.ndarray
    sentiment: np.ndarray
    p_negative: np.ndarray
    p_neutral: np.ndarray
    p_positive: np.ndarray
    topic: np.ndarray
    topic_confidence: np.ndarray
    n_chunks: np.ndarray
    truncated: np.ndarray
    # the words that pushed the text toward its sentiment, [[word, share], ...] strongest first (None where
    # not asked for or not ok): ``models.scorer`` ``evidence=True``
    evidence: np.ndarray

    ARRAY_FIELDS = ("status", "sentiment", "p_negative", "p_neutral", "p_positive", "topic", "topic_confidence",
                    "n_chunks", "truncated", "evidence")
    DTYPES = {**{name: np.float32 for name in PROBABILITY_FIELDS}, "n_chunks": np.int32, "truncated": bool}

    @classmethod
    def empty(cls, n: int, *, model_version: str) -> ScoreArrays:
        """n rows of status ``empty``."""
        nan = np.full(n, np.nan, dtype=np.float32)
        none = np.full(n, None, dtype=object)
        return cls(model_version=model_version, status=np.full(n, STATUS_EMPTY, dtype=object), sentiment=none.copy(),
                   p_negative=nan.copy(), p_neutral=nan.copy(), p_positive=nan.copy(), topic=none.copy(),
                   topic_confidence=nan.copy(), n_chunks=np.zeros(n, dtype=np.int32), truncated=np.zeros(n, dtype=bool),
                   evidence=none.copy())

    def to_frame(self) -> pd.DataFrame:
        """The arrays as a DataFrame with ``PREDICTION_COLUMNS``, index 0..n-1."""
        frame = pd.DataFrame({name: getattr(self, name) for name in self.ARRAY_FIELDS})
        frame["model_version"] = self.model_version
        return frame[PREDICTION_COLUMNS]


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """One scored text (``Scorer.score``; the stream uses ``ScoreArrays``). Fields as in ``ScoreArrays``."""

    sentiment: str | None
    p_negative: float
    p_neutral: float
    p_positive: float
    topic: str | None
    topic_confidence: float
    model_version: str
    status: str
    truncated: bool = False
    n_chunks: int = 0


PREDICTION_COLUMNS = [
    "sentiment", "p_negative", "p_neutral", "p_positive", "topic", "topic_confidence", "model_version",
    "status", "truncated", "n_chunks",
]


@dataclass(frozen=True)
class EntityArrays(ColumnArrays):
    """Entity-level scores aligned with the entities asked about; ``status`` ``empty`` where text or entity is
    blank, ``not_found`` where the entity is not mentioned in what the model read (probabilities NaN,
    sentiment None either way)."""

    model_version: str
    status: np.ndarray
    sentiment: np.ndarray
    p_negative: np.ndarray
    p_neutral: np.ndarray
    p_positive: np.ndarray
    truncated: np.ndarray

    ARRAY_FIELDS = ("status", "sentiment", "p_negative", "p_neutral", "p_positive", "truncated")
    DTYPES = {"p_negative": np.float32, "p_neutral": np.float32, "p_positive": np.float32, "truncated": bool}

    @property
    def confidence(self) -> np.ndarray:
        """The probability of the predicted class (NaN where empty)."""
        return np.stack([self.p_negative, self.p_neutral, self.p_positive], 1).max(1)

    def to_frame(self, prefix: str = "entity_") -> pd.DataFrame:
        return pd.DataFrame({f"{prefix}{name}": getattr(self, name) for name in self.ARRAY_FIELDS})

    @classmethod
    def empty(cls, n: int, *, model_version: str, status: str = STATUS_EMPTY) -> EntityArrays:
        """n rows without a score (status ``empty`` or ``not_found``)."""
        nan = np.full(n, np.nan, dtype=np.float32)
        return cls(model_version=model_version, status=np.full(n, status, dtype=object),
                   sentiment=np.full(n, None, dtype=object), p_negative=nan.copy(), p_neutral=nan.copy(),
                   p_positive=nan.copy(), truncated=np.zeros(n, dtype=bool))
