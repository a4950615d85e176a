"""YAML config files with line numbers: one loader for the alert rules and the ingest sources.

A file is composed into YAML nodes (not loaded straight to data), so every value keeps the line
it came from; the plain data is then validated by the caller's pydantic model, and each error
is mapped back to a line. Every problem of a file is collected, never only the first, so an
operator fixes the file in one go. Each problem is a :class:`Problem` (path, line, message);
:func:`Problem.format` renders it as ``file:line: field: message``.

- ``${ENV:NAME}`` in a string is replaced by the environment variable NAME and
  ``${ENV:NAME:-default}`` falls back to ``default``; an unset variable without a default is a
  problem naming it (secrets live in the environment, never in the file). A value that is
  wrong only because its variable is missing is reported once, as the missing variable.
- A duplicate key in a mapping is a problem (plain YAML keeps the last one silently).
- A validator can point at a part of what it checks by starting its message with that part's
  path: ``params.alpha: must be between 0 and 1`` raised on a rule is reported on the line and
  path of ``params.alpha``; a path whose first part is a top-level key (``rules.1.routes.0: ...``)
  starts at the top. Several such parts joined by ``"; "`` are several problems.
- A pydantic location part that is not in the file (a tagged union's tag) is left out of the
  path shown; a last part that is not in the file (a missing field) is kept, on its parent's line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

ENV_REF = re.compile(r"\$\{ENV:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PATH_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*): (.*)$", re.S)
_LOADER = yaml.SafeLoader("")

Loc = tuple  # (key, index, ...) from the top of the document


@dataclass(frozen=True)
class Problem:
    loc: Loc
    line: int | None
    message: str

    @property
    def field(self) -> str:
        return dotted(self.loc)

    def format(self, file: Path | str) -> str:
        """``file:line: field: message``."""
        return f"{file}:{self.line or 1}: {self.field}: {self.message}"


class SourceError(ValueError):
    """The file cannot be read or is not YAML; ``line`` is where the parser stopped (None if unknown)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line


def dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


@dataclass
class Document:
    """Plain data with the line of every path, and the problems found while building it."""

    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def shown(self, loc: Iterable) -> tuple[Loc, int | None]:
        """The path as the file has it, and its line (see the module docstring)."""
        loc = tuple(loc)
        if not self.lines:  # data built in code: nothing to compare with
            return loc, None
        found: Loc = ()
        line = self.lines.get((), None)
        for i, part in enumerate(loc):
            candidate = found + (part,)
            if candidate in self.lines:
                found = candidate
                line = self.lines[candidate]
            elif i == len(loc) - 1:
                found = candidate  # a missing field: named, on its parent's line
        return found, line

    def problem(self, loc: Iterable, message: str) -> Problem:
        shown, line = self.shown(loc)
        return Problem(shown, line, message)

    def validate(self, model: type[BaseModel]) -> tuple[BaseModel | None, list[Problem]]:
        """The model (None when invalid) and every problem: the document's own, then pydantic's, by line."""
        problems = list(self.problems)
        missing_env = [p.loc for p in self.problems if p.message.startswith("environment variable ")]
        instance = None
        try:
            instance = model.model_validate(self.data)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                shown, _ = self.shown(err["loc"])
                if any(shown[:len(m)] == m for m in missing_env):
                    continue
                problems.extend(self._from_message(tuple(err["loc"]), err["msg"].removeprefix("Value error, ")))
        return instance, sort(problems)

    def _from_message(self, loc: Loc, message: str) -> list[Problem]:
        parts = message.split("; ")
        matches = [_PATH_PREFIX.match(part) for part in parts]
        if not all(matches):
            return [self.problem(loc, message)]
        top = set(self.data) if isinstance(self.data, dict) else set()
        out = []
        for match in matches:
            sub = tuple(int(p) if p.isdigit() else p for p in match.group(1).split("."))
            # "rules.1.routes.0: ..." starts at the top of the file; "params.alpha: ..." below the value.
            out.append(self.problem(sub if sub[0] in top else loc + sub, match.group(2)))
        return out


def sort(problems: list[Problem]) -> list[Problem]:
    """File order (line, then as found)."""
    return sorted(problems, key=lambda p: p.line or 0)


def read(path: Path | str) -> Document:
    """Compose ``path`` (UTF-8) into a Document; SourceError if it cannot be read or parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return parse(text)


def parse(text: str) -> Document:
    """Compose YAML text into a Document (``data`` None for an empty file)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SourceError(str(getattr(exc, "problem", None) or exc), mark.line + 1 if mark else None) from None
    doc = Document(None)
    if root is not None:
        doc.data = _to_data(root, (), doc)
    doc.data = _expand(doc.data, (), doc)
    return doc


def from_data(data: Any) -> Document:
    """A Document of data built in code (no lines); ``${ENV:...}`` references are still resolved."""
    doc = Document(None)
    doc.data = _expand(data, (), doc)
    return doc


def _to_data(node: yaml.Node, loc: Loc, doc: Document) -> Any:
    doc.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader.construct_object(_LOADER, key_node)  # type: ignore[arg-type]
            child = loc + (key,)
            if key in out:
                doc.problems.append(Problem(child, key_node.start_mark.line + 1, "duplicate key"))
                continue
            doc.lines[child] = key_node.start_mark.line + 1  # the key's line: where a person looks
            out[key] = _to_data(value_node, child, doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_data(child, loc + (i,), doc) for i, child in enumerate(node.value)]
    return yaml.SafeLoader.construct_object(_LOADER, node)  # type: ignore[arg-type]


def _expand(value: Any, loc: Loc, doc: Document) -> Any:
    if isinstance(value, str):
        def env(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            doc.problems.append(doc.problem(loc, f"environment variable {name} is not set"))
            return ""

        return ENV_REF.sub(env, value)
    if isinstance(value, dict):
        return {k: _expand(v, loc + (k,), doc) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, loc + (i,), doc) for i, v in enumerate(value)]
    return value
