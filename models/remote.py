"""``RemoteScorer``: the Scorer's ``score_arrays`` and ``score_pairs`` over HTTP, against ``finpulse model serve``.

A server that stays unreachable or failing raises ``ScorerUnavailable``: the caller (a Spark
batch) fails and is retried; no default score is ever made up here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from models.results import EntityArrays, ScoreArrays

log = logging.getLogger(__name__)

SCORE_PATH = "/score"
INFO_PATH = "/info"
# Transient answers: worth another try after a pause. Anything else 4xx is our own bad request.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class ScorerUnavailable(RuntimeError):
    """The model server stayed unreachable or failing after retries (or gave an unusable answer)."""


class ScorerRejected(ScorerUnavailable):
    """The server refused the request itself (4xx other than 408/425/429): retrying cannot help."""


class RemoteScorer:
    """Same ``score_arrays`` signature and ``.version`` as ``models.scorer.Scorer``, over HTTP.

    ``timeout`` bounds each attempt (connect, send, the server's work, read); ``retries`` is the
    number of further attempts after the first, with exponential backoff and full jitter
    (``backoff`` s, doubling, at most ``max_backoff`` s) on connection errors, timeouts, 5xx,
    408/425/429 and malformed or misaligned answers.
    """

    def __init__(self, url: str, *, timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 max_backoff: float = 8.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)))
        self._version: str | None = None
        self._info: dict | None = None

    def __repr__(self) -> str:
        return f"RemoteScorer({self.url!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _model_info(self, key: str, parse):
        """``parse(/info's model[key])``; ``/info`` is asked once for every such property."""
        if self._info is None:
            self._info = self._call("GET", INFO_PATH, None)
        try:
            return parse(self._info["model"][key])
        except (KeyError, TypeError, AttributeError) as exc:
            info, self._info = self._info, None  # asked again next time
            raise ScorerUnavailable(f"{self.url}{INFO_PATH} names no {key}: {info!r:.200}") from exc

    @property
    def version(self) -> str:
        """The served model version (from ``/info``; every response carries it too)."""
        if self._version is None:
            self._version = self._model_info("model_version", str)
        return self._version

    @property
    def labels(self) -> dict[str, list[str]]:
        """The served model's heads and their labels (from ``/info``)."""
        return self._model_info("labels", lambda labels: {str(k): list(v) for k, v in labels.items()})

    def score_pairs(self, texts: Sequence[str | None], entities: Sequence[str | None]) -> EntityArrays:
        """Sentiment towards ``entities[i]`` in ``texts[i]`` (the served model's entity head), as ``Scorer.score_pairs``.

        Raises ``ScorerRejected`` when the served model has no entity head, ``ScorerUnavailable`` when
        the server stays unreachable; never returns default scores.
        """
        payload = {"texts": [t if isinstance(t, str) else None for t in texts],
                   "entities": [e if isinstance(e, str) else None for e in entities]}
        if len(payload["texts"]) != len(payload["entities"]):
            raise ValueError(f"{len(payload['texts'])} texts but {len(payload['entities'])} entities")
        if not payload["texts"]:
            return EntityArrays.from_dict({"model_version": self.version, **{f: [] for f in EntityArrays.ARRAY_FIELDS}})

        def parse(body):
            if isinstance(body, dict) and "error" in body:
                return body
            arrays = EntityArrays.from_dict(body)
            if len(arrays) != len(payload["texts"]):
                raise ValueError(f"{len(arrays)} scores for {len(payload['texts'])} pairs")
            return arrays

        arrays = self._call("POST", SCORE_PATH, payload, parse=parse)
        if isinstance(arrays, dict):
            raise ScorerRejected(f"POST {self.url}{SCORE_PATH}: {arrays['error']}")
        return arrays

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages the served model reads (from ``/info``)."""
        return self._model_info("languages", lambda languages: tuple(str(x) for x in languages))

    def score_documents(self, texts: Sequence[str | None], entities: Sequence[Sequence[Sequence[str]]], *,
                        max_chunks: int | None = None, evidence: bool = False) -> tuple[ScoreArrays, EntityArrays]:
        """Each text's scores and the sentiment towards each entity it names, as ``Scorer.score_documents``
        (one request; the server reads each chunk once for every entity in it)."""
        payload = {"texts": [t if isinstance(t, str) else None for t in texts], "max_chunks": max_chunks,
                   "entity_names": [[[str(n) for n in names] for names in entity] for entity in entities],
                   "evidence": evidence}
        if len(payload["texts"]) != len(payload["entity_names"]):
            raise ValueError(f"{len(payload['texts'])} texts but {len(payload['entity_names'])} entity lists")
        n_entities = sum(len(e) for e in payload["entity_names"])
        if not payload["texts"]:
            return ScoreArrays.empty(0, model_version=self.version), EntityArrays.empty(0, model_version=self.version)

        def parse(body):
            if isinstance(body, dict) and "error" in body:
                return body
            documents, arrays = ScoreArrays.from_dict(body["documents"]), EntityArrays.from_dict(body["entities"])
            if len(documents) != len(payload["texts"]) or len(arrays) != n_entities:
                raise ValueError(f"{len(documents)} scores for {len(payload['texts'])} texts, "
                                 f"{len(arrays)} for {n_entities} entities")
            return documents, arrays

        answer = self._call("POST", SCORE_PATH, payload, parse=parse)
        if isinstance(answer, dict):
            raise ScorerRejected(f"POST {self.url}{SCORE_PATH}: {answer['error']}")
        self._version = answer[0].model_version
        return answer

    def score_arrays(self, texts: Sequence[str | None], *, max_chunks: int | None = None,
                     evidence: bool = False) -> ScoreArrays:
        """Scores aligned with ``texts``; raises ``ScorerUnavailable``, never returns default scores."""
        payload = {"texts": [t if isinstance(t, str) else None for t in texts], "max_chunks": max_chunks,
                   "evidence": evidence}
        if not payload["texts"]:
            return ScoreArrays.empty(0, model_version=self.version)

        def parse(body) -> ScoreArrays:
            arrays = ScoreArrays.from_dict(body)
            if len(arrays) != len(payload["texts"]):
                raise ValueError(f"{len(arrays)} scores for {len(payload['texts'])} texts")
            return arrays

        arrays = self._call("POST", SCORE_PATH, payload, parse=parse)
        self._version = arrays.model_version
        return arrays

    def _call(self, method: str, path: str, payload: dict | None, *, parse=None):
        """One request with retries (tenacity: full-jitter exponential backoff); returns ``parse(json)`` (or the json)."""
        url = f"{self.url}{path}"

        def attempt():
            try:
                response = self._client.request(method, url, json=payload)
            except httpx.HTTPError as exc:  # connect/read/write errors and timeouts
                raise _Transient(f"{type(exc).__name__}: {exc}") from exc
            if response.status_code in RETRY_STATUS:
                raise _Transient(f"HTTP {response.status_code}: {response.text[:200]}")
            if response.status_code >= 400:
                raise ScorerRejected(f"{method} {url}: HTTP {response.status_code}: {response.text[:500]}")
            try:
                body = response.json()
                return parse(body) if parse else body
            except (ValueError, KeyError, TypeError) as exc:
                raise _Transient(f"unusable answer: {type(exc).__name__}: {exc}") from exc

        def before_sleep(state: RetryCallState) -> None:
            log.warning("model server %s: %s; retry %d/%d in %.2fs", url, state.outcome.exception(),
                        state.attempt_number, self.retries, state.next_action.sleep if state.next_action else 0.0)

        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_random_exponential(multiplier=self.backoff, max=self.max_backoff),
            retry=retry_if_exception_type(_Transient),  # ScorerRejected: retrying cannot help
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Transient as last:  # reraise=True: the last attempt's failure, never a RetryError
            raise ScorerUnavailable(f"{method} {url} failed {self.retries + 1} times; last: {last}") from None


class _Transient(Exception):
    """An attempt that is worth repeating after a pause (connection error, timeout, 5xx, unusable answer)."""
