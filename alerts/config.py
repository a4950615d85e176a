"""Alert rules, routes, receivers and inhibitions from YAML, validated with file, line and field of every error.

The file is read by ``finpulse.yamlconf`` (nodes with their lines, ``${ENV:NAME}`` from the
environment, every problem at once) and validated by the pydantic models below (unknown
fields refused). ``RulesError`` carries every error as ``file:line: field: message``: an
operator fixes the file in one go.

Labels: every alert carries ``alertname`` (the rule), ``dimension``, ``key``, ``severity`` and
``width`` (seconds). Routes, inhibitions and grouping select alerts by these labels with
Alertmanager's matcher syntax: ``'severity="critical"'``, ``'key!="SPY"'``, ``'key=~"A.*"'``,
``'dimension!~"topic|source"'`` (regular expressions match the whole value; the quotes are
optional for a plain word).

Secrets never appear in the file: a webhook's signing secret is named by ``secret_env`` (the
built-in ``webhook`` receiver reads ``FINPULSE_ALERTS_WEBHOOK_SECRET``). A webhook without a
secret is refused unless it says ``allow_unsigned: true`` (built-in: the setting
``FINPULSE_ALERTS_WEBHOOK_ALLOW_UNSIGNED``): see :meth:`Config.check_signing`.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator,
                      model_validator)

from alerts import detectors
from finpulse import durations, yamlconf
from finpulse.settings import Settings

SHIPPED_RULES = Path(__file__).resolve().parent / "rules.yaml"
BUILTIN_RECEIVERS = ("log", "email", "webhook")
LABELS = ("alertname", "dimension", "key", "severity", "width")
ALL_LABELS = "..."  # Alertmanager's group_by: ['...'] groups by every label


class RulesError(ValueError):
    """The rules file is invalid; ``errors`` lists every problem as 'file:line: field: message'."""

    def __init__(self, path: Path, errors: list[str]):
        self.path = path
        self.errors = errors
        super().__init__(self._text())

    def _text(self) -> str:
        return f"invalid alert rules {self.path} ({len(self.errors)} error(s)):\n  " + "\n  ".join(self.errors)


class SigningError(RulesError):
    """A webhook receiver would send unsigned without saying it may: one line per receiver."""

    def _text(self) -> str:
        return "\n".join(self.errors)


def _seconds(what: str, *, positive: bool):
    """A pydantic before-validator: a duration of the finpulse grammar, whole seconds."""
    def parse(value: Any) -> int:
        return durations.parse_seconds(value, whole=True, positive=positive, what=what)
    return parse


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- matchers ---------------------------------------------------------------------------------

_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$", re.S)
_UNQUOTED = re.compile(r"^[^\s\"'{},=!~]*$")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _label_name(value: Any) -> str:
    if value not in LABELS:
        raise ValueError(f"unknown label {value!r} (labels: {', '.join(LABELS)})")
    return value


LabelName = Annotated[str, BeforeValidator(_label_name)]


class Matcher(_Model):
    """One Alertmanager matcher: ``name op value`` with op ``=``, ``!=``, ``=~`` or ``!~``."""

    name: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str

    @classmethod
    def parse(cls, text: Any) -> "Matcher":
        if isinstance(text, (Matcher, dict)):
            return text if isinstance(text, Matcher) else cls(**text)
        if not isinstance(text, str):
            raise ValueError(f"expected a matcher like 'severity=\"critical\"', got {text!r}")
        if text.strip().startswith("{"):
            raise ValueError(f"{text!r}: one matcher per list item, e.g. ['severity=\"critical\"', 'key=~\"A.*\"']")
        match = _MATCHER.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a matcher: label, one of = != =~ !~, value "
                             "(e.g. 'severity=\"critical\"', 'key=~\"A.*\"')")
        name, op, raw = match.groups()
        _label_name(name)
        value = _unquote(raw, text)
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{text!r}: bad regular expression: {exc}") from None
        return cls(name=name, op=op, value=value)

    @cached_property
    def _regex(self) -> re.Pattern:
        return re.compile(f"(?:{self.value})\\Z", re.S)  # anchored on both ends, as Alertmanager does

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.name, "")  # an absent label is the empty string
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = self._regex.match(actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        return f"{self.name}{self.op}{json.dumps(self.value)}"


def _unquote(raw: str, text: str) -> str:
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise ValueError(f"{text!r}: unterminated quoted value")
        out, body, i = [], raw[1:-1], 0
        while i < len(body):
            ch = body[i]
            if ch == "\\":
                if i + 1 >= len(body) or body[i + 1] not in _ESCAPES:
                    raise ValueError(f"{text!r}: bad escape in quoted value (use \\\\, \\\" or \\n)")
                out.append(_ESCAPES[body[i + 1]])
                i += 2
                continue
            if ch == '"':
                raise ValueError(f"{text!r}: a quote inside a quoted value must be escaped (\\\")")
            out.append(ch)
            i += 1
        return "".join(out)
    if not _UNQUOTED.match(raw):
        raise ValueError(f"{text!r}: quote a value with spaces or punctuation, e.g. key=\"BRK B\"")
    return raw


MatcherField = Annotated[Matcher, BeforeValidator(Matcher.parse)]


def matches_all(matchers: list[Matcher], labels: dict[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


# --- rules, routes, inhibitions, receivers ------------------------------------------------------

class Scope(_Model):
    dimension: Literal["all", "topic", "ticker", "source"]
    keys: list[str] = Field(default_factory=lambda: ["*"], min_length=1)

    @field_validator("keys", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def matches(self, key: str) -> bool:
        return self.keys == ["*"] or any(fnmatch.fnmatchcase(key, pattern) for pattern in self.keys)

    @property
    def exact_keys(self) -> list[str] | None:
        """The keys when none is a pattern (the query filters on them), else None."""
        if any(ch in k for k in self.keys for ch in "*?["):
            return None
        return list(self.keys)


def _group_label(value: Any) -> str:
    return value if value == ALL_LABELS else _label_name(value)


def _alone(value: list[str]) -> list[str]:
    if ALL_LABELS in value and value != [ALL_LABELS]:
        raise ValueError(f"'{ALL_LABELS}' (every label) stands alone: group_by: ['{ALL_LABELS}']")
    return value


GroupBy = Annotated[list[Annotated[str, BeforeValidator(_group_label)]], AfterValidator(_alone)]
GroupWait = Annotated[int, BeforeValidator(_seconds("group_wait", positive=False))]
GroupInterval = Annotated[int, BeforeValidator(_seconds("group_interval", positive=False))]


class RouteDefaults(_Model):
    """What a route leaves unsaid (the top-level ``route_defaults:``; Alertmanager's root route)."""

    group_by: GroupBy = Field(default_factory=list)
    group_wait: GroupWait = 0
    group_interval: GroupInterval = 0


class Route(_Model):
    """Where a rule's alerts go: a receiver, for the alerts its matchers select, grouped by labels.

    Waits are in window time (see ``alerts.engine``). Identical routes (receiver, matchers,
    grouping) of different rules are one route: their alerts share groups.
    """

    receiver: str
    matchers: list[MatcherField] = Field(default_factory=list)
    group_by: GroupBy = Field(default_factory=list)
    group_wait: GroupWait = 0
    group_interval: GroupInterval = 0

    @property
    def key(self) -> str:
        """Alertmanager's route key: ``{}`` for the root, ``{}/{matchers}`` below it."""
        return "{}" if not self.matchers else "{}/{" + ",".join(str(m) for m in self.matchers) + "}"

    def group_labels(self, labels: dict[str, str]) -> dict[str, str]:
        if self.group_by == [ALL_LABELS]:
            return dict(sorted(labels.items()))
        return {name: labels.get(name, "") for name in sorted(self.group_by)}

    def group_key(self, labels: dict[str, str]) -> str:
        """Alertmanager's groupKey: the route key and the group's labels."""
        group = self.group_labels(labels)
        return f"{self.key}:{{" + ",".join(f"{k}={json.dumps(v)}" for k, v in group.items()) + "}"

    @property
    def identity(self) -> tuple:
        return (self.receiver, self.key, tuple(self.group_by))


def _route(value: Any) -> Any:
    return {"receiver": value} if isinstance(value, str) else value


class Rule(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    scope: Scope
    width: Annotated[int, BeforeValidator(_seconds("width", positive=True))] = 3600  # the windows' width_seconds
    detector: Literal["negative_share", "negative_volume"]
    params: dict[str, Any] = Field(default_factory=dict)
    baseline_windows: int = Field(24, ge=1)
    first_stories_only: bool = False
    for_windows: int = Field(2, ge=1, description="consecutive windows over the threshold before firing")
    repeat_interval: Annotated[int, BeforeValidator(_seconds("repeat_interval", positive=True))] = 4 * 3600
    severity: Literal["info", "warning", "critical"] = "warning"
    routes: list[Annotated[Route, BeforeValidator(_route)]] = Field(
        default_factory=lambda: [Route(receiver="log")], min_length=1)
    description: str = ""

    @model_validator(mode="after")
    def _params_fit_detector(self) -> "Rule":
        cls = detectors.DETECTORS[self.detector]
        known = cls.__dataclass_fields__
        for name, value in self.params.items():
            if name not in known:
                raise ValueError(f"params.{name}: unknown parameter of {self.detector} "
                                 f"(known: {', '.join(sorted(known))})")
            expected = type(getattr(cls(), name))
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"params.{name}: expected a number, got {value!r}")
            if expected is int and value != int(value):
                raise ValueError(f"params.{name}: expected a whole number, got {value!r}")
            if value < 0:
                raise ValueError(f"params.{name}: must not be negative")
        for name in ("alpha", "resolve_alpha"):
            if name in self.params and not 0 < self.params[name] < 1:
                raise ValueError(f"params.{name}: must be between 0 and 1")
        return self

    def detector_fn(self):
        return detectors.build(self.detector, self.params)

    def labels(self, key: str) -> dict[str, str]:
        return labels_of(self.name, self.scope.dimension, key, self.severity, self.width)


def labels_of(rule: str, dimension: str, key: str, severity: str, width: int) -> dict[str, str]:
    """An alert's labels (the names in LABELS)."""
    return {"alertname": rule, "dimension": dimension, "key": key, "severity": severity, "width": str(width)}


class Inhibit(_Model):
    """While an alert matching ``source_matchers`` fires, alerts matching ``target_matchers`` whose
    ``equal`` labels have the same values are muted (Alertmanager's inhibit_rules). An alert that
    matches both sides is never muted by another that does too (nor by itself)."""

    source_matchers: list[MatcherField] = Field(min_length=1)
    target_matchers: list[MatcherField] = Field(min_length=1)
    equal: list[LabelName] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _old_form(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for old in ("source", "target"):
                if old in value:
                    raise ValueError(f"{old}: replaced by {old}_matchers, a list of matchers, e.g. "
                                     f"{old}_matchers: ['alertname=\"market-negative-share\"']")
        return value


class ReceiverSpec(_Model):
    type: Literal["log", "email", "webhook"]
    to: list[str] | None = None  # email
    url: str | None = None  # webhook
    secret_env: str | None = None  # webhook: the variable holding its whsec_ secret
    allow_unsigned: bool = False  # webhook: send unsigned when it has no secret
    send_resolved: bool = True
    timeout: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _fields_fit_type(self) -> "ReceiverSpec":
        if self.type == "email" and not self.to:
            raise ValueError("an email receiver needs `to`")
        if self.type == "webhook" and not self.url:
            raise ValueError("a webhook receiver needs `url`")
        if self.type == "webhook" and self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError("url: must start with http:// or https://")
        if self.type != "webhook" and (self.secret_env or self.allow_unsigned):
            raise ValueError(f"secret_env and allow_unsigned are for webhook receivers, not {self.type}")
        return self


class RulesFile(_Model):
    rules: list[Rule] = Field(min_length=1)
    route_defaults: RouteDefaults = Field(default_factory=RouteDefaults)
    receivers: dict[str, ReceiverSpec] = Field(default_factory=dict)
    inhibit: list[Inhibit] = Field(default_factory=list)


# --- receivers resolved against settings ---------------------------------------------------

@dataclass(frozen=True)
class Receiver:
    name: str
    type: str  # log | email | webhook
    to: tuple[str, ...] = ()
    url: str | None = None
    secret: SecretStr | None = None
    timeout: float = 10.0
    send_resolved: bool = True
    allow_unsigned: bool = False
    secret_hint: str = ""  # what to set for a signing secret (a variable name or `secret_env`)

    @property
    def target(self) -> str:
        """Where it sends, for logs and the outbox (never with credentials)."""
        if self.type == "email":
            return ",".join(self.to)
        if self.type == "webhook" and self.url:
            return _strip_userinfo(self.url)
        return "log"


def _strip_userinfo(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//", url)


@dataclass(frozen=True)
class Config:
    path: Path
    rules: list[Rule]
    receivers: dict[str, Receiver]  # configured receivers only
    unconfigured: dict[str, str]  # receiver name -> why it is skipped
    inhibit: list[Inhibit]
    unsigned: dict[str, str]  # webhook receiver name -> the one-line refusal, when it has no secret

    def rule(self, name: str) -> Rule:
        return next(r for r in self.rules if r.name == name)

    def routes(self, rule: Rule, labels: dict[str, str]) -> list[tuple[Route, Receiver]]:
        """The rule's routes that select an alert with ``labels``, to configured receivers."""
        return [(route, self.receivers[route.receiver]) for route in rule.routes
                if route.receiver in self.receivers and matches_all(route.matchers, labels)]

    def check_signing(self) -> None:
        """Refuse (RulesError) while a webhook receiver would send unsigned without saying it may."""
        if self.unsigned:
            raise SigningError(self.path, list(self.unsigned.values()))


def _resolve_receivers(spec: RulesFile, settings: Settings) -> tuple[dict[str, Receiver], dict[str, str]]:
    timeout = settings.alerts_delivery_timeout_seconds
    receivers: dict[str, Receiver] = {"log": Receiver("log", "log", timeout=timeout)}
    skipped: dict[str, str] = {}
    if settings.alerts_smtp_host and settings.alerts_email_to:
        to = tuple(a.strip() for a in settings.alerts_email_to.split(",") if a.strip())
        receivers["email"] = Receiver("email", "email", to=to, timeout=timeout)
    else:
        skipped["email"] = "FINPULSE_ALERTS_SMTP_HOST / FINPULSE_ALERTS_EMAIL_TO unset"
    if settings.alerts_webhook_url:
        receivers["webhook"] = Receiver("webhook", "webhook", url=settings.alerts_webhook_url,
                                        secret=settings.alerts_webhook_secret, timeout=timeout,
                                        allow_unsigned=settings.alerts_webhook_allow_unsigned,
                                        secret_hint="FINPULSE_ALERTS_WEBHOOK_SECRET (or "
                                                    "FINPULSE_ALERTS_WEBHOOK_ALLOW_UNSIGNED=true to send unsigned)")
    else:
        skipped["webhook"] = "FINPULSE_ALERTS_WEBHOOK_URL unset"
    for name, r in spec.receivers.items():
        secret = None
        if r.secret_env:
            value = os.environ.get(r.secret_env)
            secret = SecretStr(value) if value else None
        if r.type == "email" and not settings.alerts_smtp_host:
            skipped[name] = "FINPULSE_ALERTS_SMTP_HOST unset"
            continue
        hint = (f"{r.secret_env} (named by its secret_env)" if r.secret_env
                else "secret_env: VARIABLE and export the whsec_ secret in it")
        receivers[name] = Receiver(name, r.type, to=tuple(r.to or ()), url=r.url, secret=secret,
                                   timeout=r.timeout or timeout, send_resolved=r.send_resolved,
                                   allow_unsigned=r.allow_unsigned,
                                   secret_hint=f"{hint}, or allow_unsigned: true to send unsigned")
        skipped.pop(name, None)
    return receivers, skipped


# --- loading ----------------------------------------------------------------------------------

def load(path: Path | None = None, settings: Settings | None = None) -> Config:
    """Read and validate a rules file (default: the shipped one); RulesError lists every problem."""
    from finpulse.settings import get_settings

    settings = settings or get_settings()
    path = Path(path or settings.alerts_rules or SHIPPED_RULES)
    try:
        doc = yamlconf.read(path)
    except yamlconf.SourceError as exc:
        if exc.line is None:
            raise RulesError(path, [f"{path}: {exc.message}"]) from None
        raise RulesError(path, [f"{path}:{exc.line}: (syntax): {exc.message}"]) from None
    if doc.data is None:
        raise RulesError(path, [f"{path}:1: rules: the file is empty"])
    spec, problems = doc.validate(RulesFile)
    problems = yamlconf.sort(problems + _cross_checks(doc))
    if problems:
        raise RulesError(path, [p.format(path) for p in problems])
    assert isinstance(spec, RulesFile)
    spec = _with_route_defaults(spec, doc)
    receivers, skipped = _resolve_receivers(spec, settings)
    bad_secrets = [doc.problem(("receivers", name), "signing secret is not a Standard Webhooks secret "
                                                    "(whsec_ + base64)").format(path)
                   for name, r in receivers.items() if r.secret is not None and not _valid_secret(r.secret)]
    if bad_secrets:
        raise RulesError(path, bad_secrets)
    problems = _one_route_per_identity(spec, doc)
    if problems:
        raise RulesError(path, [p.format(path) for p in problems])
    unsigned = {}
    for name, r in receivers.items():
        if r.type == "webhook" and r.secret is None and not r.allow_unsigned:
            if name in spec.receivers:
                where = doc.problem(("receivers", name), "").format(path)[:-1]  # "file:line: receivers.NAME:"
                unsigned[name] = f"{where} webhook receiver {name} has no signing secret: set {r.secret_hint}"
            else:
                unsigned[name] = (f"{path}: webhook receiver {name} (FINPULSE_ALERTS_WEBHOOK_URL) has no signing "
                                  f"secret: set {r.secret_hint}")
    return Config(path, list(spec.rules), receivers, skipped, list(spec.inhibit), unsigned)


def _with_route_defaults(spec: RulesFile, doc: yamlconf.Document) -> RulesFile:
    """Each route's unset group_by / group_wait / group_interval from ``route_defaults``."""
    defaults = spec.route_defaults.model_dump()
    rules = []
    for rule in spec.rules:
        routes = [Route(**{**defaults, **r.model_dump(exclude_unset=True)}) for r in rule.routes]
        rules.append(rule.model_copy(update={"routes": routes}))
    return spec.model_copy(update={"rules": rules})


def _one_route_per_identity(spec: RulesFile, doc: yamlconf.Document) -> list[yamlconf.Problem]:
    """Routes with the same receiver, matchers and group_by are one route (they share groups), so
    they must agree on the waits."""
    first: dict[tuple, tuple[Route, tuple]] = {}
    problems = []
    for i, rule in enumerate(spec.rules):
        for j, route in enumerate(rule.routes):
            loc = ("rules", i, "routes", j)
            seen = first.setdefault(route.identity, (route, loc))
            if (seen[0].group_wait, seen[0].group_interval) != (route.group_wait, route.group_interval):
                problems.append(doc.problem(loc, f"the same route as {yamlconf.dotted(seen[1])} (receiver, "
                                                 "matchers, group_by) with other group_wait/group_interval: "
                                                 "one route has one timing"))
    return problems


def _cross_checks(doc: yamlconf.Document) -> list[yamlconf.Problem]:
    """Checks across fields, on the raw data so they run even when a rule has field errors."""
    data = doc.data
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        return []
    problems = []
    receivers = data.get("receivers") if isinstance(data.get("receivers"), dict) else {}
    known = set(receivers) | set(BUILTIN_RECEIVERS)
    seen: dict[str, int] = {}
    for i, rule in enumerate(data["rules"]):
        if not isinstance(rule, dict):
            continue
        name = rule.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append(doc.problem(("rules", i, "name"),
                                            f"duplicate rule name {name!r} (first at rules.{seen[name]})"))
            seen.setdefault(name, i)
        routes = rule.get("routes")
        if isinstance(routes, list):
            for j, route in enumerate(routes):
                loc: tuple = ("rules", i, "routes", j)
                if isinstance(route, dict):
                    route, loc = route.get("receiver"), loc + ("receiver",)
                if isinstance(route, str) and route not in known:
                    problems.append(doc.problem(loc, f"unknown receiver {route!r} (define it under `receivers:` "
                                                     f"or use one of {', '.join(BUILTIN_RECEIVERS)})"))
    return problems


def _valid_secret(secret: SecretStr) -> bool:
    # The reference library decodes leniently (any string "works"), so check the spec's form here:
    # whsec_ followed by strict base64 of at least 24 bytes.
    value = secret.get_secret_value()
    if not value.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(value.removeprefix("whsec_"), validate=True)) >= 24
    except ValueError:
        return False


def fingerprint(rule: str, dimension: str, key: str) -> str:
    return hashlib.sha256(f"{rule}\x1f{dimension}\x1f{key}".encode()).hexdigest()[:16]
