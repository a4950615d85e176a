"""Alert rules, receivers and inhibitions from YAML, validated with file, line and field of every error.

The file is composed into YAML nodes first, so every value keeps its line; the plain data is
then validated by pydantic models (unknown fields refused, all errors collected), and each
error is mapped back to the line of the deepest node on its path. ``RulesError`` carries
every error at once: an operator fixes the file in one go.

Secrets never appear in the file: ``${ENV:NAME}`` in a string is replaced by the environment
variable NAME (an unset variable is an error naming it), and a webhook's signing secret is
named by ``secret_env``.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from alerts import detectors
from finpulse.settings import Settings

SHIPPED_RULES = Path(__file__).resolve().parent / "rules.yaml"
_ENV_REF = re.compile(r"\$\{ENV:([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
BUILTIN_RECEIVERS = ("log", "email", "webhook")


class RulesError(ValueError):
    """The rules file is invalid; ``errors`` lists every problem as 'file:line: field: message'."""

    def __init__(self, path: Path, errors: list[str]):
        self.path = path
        self.errors = errors
        super().__init__(f"invalid alert rules {path} ({len(errors)} error(s)):\n  " + "\n  ".join(errors))


def parse_duration(value: Any) -> int:
    """Seconds from 3600, '3600', '90s', '15m', '1h', '1d'."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 60, 15m, 1h or 1d")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration like 60, 15m, 1h or 1d")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0 or seconds != int(seconds):
        raise ValueError("a duration is a positive whole number of seconds")
    return int(seconds)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class Rule(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    scope: Scope
    width: int = 3600  # seconds; the windows' width_seconds
    detector: Literal["negative_share", "negative_volume"]
    params: dict[str, Any] = Field(default_factory=dict)
    baseline_windows: int = Field(24, ge=1)
    first_stories_only: bool = False
    for_windows: int = Field(2, ge=1, description="consecutive windows over the threshold before firing")
    repeat_interval: int = 4 * 3600
    severity: Literal["info", "warning", "critical"] = "warning"
    routes: list[str] = Field(default_factory=lambda: ["log"], min_length=1)
    description: str = ""

    @field_validator("width", "repeat_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int:
        return parse_duration(value)

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
        return {"alertname": self.name, "dimension": self.scope.dimension, "key": key,
                "severity": self.severity, "width": str(self.width)}


class Matcher(_Model):
    rule: str | None = None
    dimension: Literal["all", "topic", "ticker", "source"] | None = None
    key: str = "*"
    severity: Literal["info", "warning", "critical"] | None = None

    def matches(self, labels: dict[str, str]) -> bool:
        return ((self.rule is None or labels["alertname"] == self.rule)
                and (self.dimension is None or labels["dimension"] == self.dimension)
                and (self.severity is None or labels["severity"] == self.severity)
                and fnmatch.fnmatchcase(labels["key"], self.key))


class Inhibit(_Model):
    """While an alert matching ``source`` fires, alerts matching ``target`` (with equal ``equal`` labels) are muted."""

    source: Matcher
    target: Matcher
    equal: list[Literal["width", "severity", "key"]] = Field(default_factory=lambda: ["width"])


class ReceiverSpec(_Model):
    type: Literal["log", "email", "webhook"]
    to: list[str] | None = None  # email
    url: str | None = None  # webhook
    secret_env: str | None = None  # webhook: the variable holding its whsec_ secret
    timeout: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _fields_fit_type(self) -> "ReceiverSpec":
        if self.type == "email" and not self.to:
            raise ValueError("an email receiver needs `to`")
        if self.type == "webhook" and not self.url:
            raise ValueError("a webhook receiver needs `url`")
        if self.type == "webhook" and self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError("url: must start with http:// or https://")
        return self


class RulesFile(_Model):
    rules: list[Rule] = Field(min_length=1)
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

    def rule(self, name: str) -> Rule:
        return next(r for r in self.rules if r.name == name)

    def routes(self, rule: Rule) -> list[Receiver]:
        return [self.receivers[name] for name in rule.routes if name in self.receivers]


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
                                        secret=settings.alerts_webhook_secret, timeout=timeout)
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
        receivers[name] = Receiver(name, r.type, to=tuple(r.to or ()), url=r.url, secret=secret,
                                   timeout=r.timeout or timeout)
        skipped.pop(name, None)
    return receivers, skipped


# --- loading with line numbers -------------------------------------------------------------

def _to_data(node: yaml.Node, path: tuple, lines: dict[tuple, int], errors: list[str], file: Path) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in out:
                errors.append(f"{file}:{key_node.start_mark.line + 1}: {_dotted(path + (key,))}: duplicate key")
            out[key] = _to_data(value_node, path + (key,), lines, errors, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_data(child, path + (i,), lines, errors, file) for i, child in enumerate(node.value)]
    value = yaml.SafeLoader.construct_object(_LOADER, node)  # type: ignore[arg-type]
    if isinstance(value, str):
        def env(match: re.Match) -> str:
            name = match.group(1)
            if name not in os.environ:
                errors.append(f"{file}:{node.start_mark.line + 1}: {_dotted(path)}: environment variable {name} is not set")
                return ""
            return os.environ[name]
        value = _ENV_REF.sub(env, value)
    return value


_LOADER = yaml.SafeLoader("")


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _line_for(loc: tuple, lines: dict[tuple, int]) -> int:
    loc = tuple(loc)
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


def load(path: Path | None = None, settings: Settings | None = None) -> Config:
    """Read and validate a rules file (default: the shipped one); RulesError lists every problem."""
    from finpulse.settings import get_settings

    settings = settings or get_settings()
    path = Path(path or settings.alerts_rules or SHIPPED_RULES)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(path, [f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise RulesError(path, [f"{path}:{line}: (syntax): {getattr(exc, 'problem', exc)}"]) from None
    if root is None:
        raise RulesError(path, [f"{path}:1: rules: the file is empty"])
    errors: list[str] = []
    lines: dict[tuple, int] = {}
    data = _to_data(root, (), lines, errors, path)
    spec = None
    try:
        spec = RulesFile.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            # A model-level check names its field in the message ("params.alpha: ..."): point at it.
            m = re.match(r"^([a-z_]+(?:\.[a-z0-9_]+)*): (.*)$", msg)
            if m and ";" not in msg:
                sub = tuple(int(p) if p.isdigit() else p for p in m.group(1).split("."))
                if sub[0] == "rules":
                    loc = sub
                else:
                    loc = loc + sub
                msg = m.group(2)
            if ";" in msg:
                for part in msg.split("; "):
                    m2 = re.match(r"^([a-z_]+(?:\.[a-z0-9_]+)*): (.*)$", part)
                    sub = tuple(int(p) if p.isdigit() else p for p in m2.group(1).split(".")) if m2 else loc
                    errors.append(f"{path}:{_line_for(sub, lines)}: {_dotted(sub)}: {m2.group(2) if m2 else part}")
                continue
            errors.append(f"{path}:{_line_for(loc, lines)}: {_dotted(loc)}: {msg}")
    errors.extend(_cross_checks(data, lines, path))
    if errors:
        raise RulesError(path, errors)
    assert spec is not None
    receivers, skipped = _resolve_receivers(spec, settings)
    bad_secrets = [f"{path}:{_line_for(('receivers', name), lines)}: receivers.{name}: signing secret is not a "
                   f"Standard Webhooks secret (whsec_ + base64)"
                   for name, r in receivers.items() if r.secret is not None and not _valid_secret(r.secret)]
    if bad_secrets:
        raise RulesError(path, bad_secrets)
    return Config(path, list(spec.rules), receivers, skipped, list(spec.inhibit))


def _cross_checks(data: Any, lines: dict[tuple, int], path: Path) -> list[str]:
    """Checks across fields, on the raw data so they run even when a rule has field errors."""
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        return []
    errors = []
    receivers = data.get("receivers") if isinstance(data.get("receivers"), dict) else {}
    known = set(receivers) | set(BUILTIN_RECEIVERS)
    seen: dict[str, int] = {}
    for i, rule in enumerate(data["rules"]):
        if not isinstance(rule, dict):
            continue
        name = rule.get("name")
        if isinstance(name, str):
            if name in seen:
                errors.append(f"{path}:{_line_for(('rules', i, 'name'), lines)}: rules.{i}.name: "
                              f"duplicate rule name {name!r} (first at rules.{seen[name]})")
            seen.setdefault(name, i)
        routes = rule.get("routes")
        if isinstance(routes, list):
            for j, route in enumerate(routes):
                if isinstance(route, str) and route not in known:
                    errors.append(f"{path}:{_line_for(('rules', i, 'routes', j), lines)}: rules.{i}.routes.{j}: "
                                  f"unknown receiver {route!r} (define it under `receivers:` or use one of "
                                  f"{', '.join(BUILTIN_RECEIVERS)})")
    return errors


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
