"""What went wrong while loading: `ModelError` records collected in a `LoadReport`.

Errors are values, not exceptions: a bad document is reported and skipped, the rest loads.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an object was written: the file and the 1-based document index in it."""

    path: str
    document: int
    line: int | None = None  # 1-based line where the document starts, when known

    def __str__(self) -> str:
        return f"{self.path} doc {self.document}"


@dataclass(frozen=True, slots=True)
class ModelError:
    """One problem in the input, named precisely enough to find and fix it.

    `str()` gives the one-line form users see, e.g.
    `mesh.yaml doc 3 Service default/web: spec.ports[1].port: expected an integer 1-65535,
    got "http"`; a file-level problem (`document` None) reads `mesh.yaml:12: ...`.
    """

    path: str
    message: str
    document: int | None = None  # 1-based; None for a problem with the whole file
    line: int | None = None  # 1-based
    kind: str = ""
    namespace: str = ""
    name: str = ""
    field: str = ""  # dotted path inside the document, e.g. spec.ports[1].port
    severity: Severity = Severity.ERROR

    @property
    def file_level(self) -> bool:
        """True when the whole file could not be used (unreadable, YAML syntax error)."""
        return self.document is None and self.severity is Severity.ERROR

    def __str__(self) -> str:
        if self.document is None:
            where = f"{self.path}:{self.line}" if self.line is not None else self.path
        else:
            where = f"{self.path} doc {self.document}"
        parts = [where]
        if self.kind:
            parts.append(f" {self.kind}")
        if self.name:
            parts.append(f" {self.namespace}/{self.name}" if self.namespace else f" {self.name}")
        text = "".join(parts) + ": "
        if self.field:
            text += f"{self.field}: "
        text += self.message
        if self.severity is Severity.WARNING:
            text = "warning: " + text
        return text


@dataclass(frozen=True, slots=True)
class LoadReport:
    """Everything a load found wrong, in input order (files sorted, documents in order)."""

    problems: tuple[ModelError, ...] = field(default=())

    @classmethod
    def of(cls, problems: Iterable[ModelError]) -> LoadReport:
        return cls(tuple(problems))

    @property
    def errors(self) -> tuple[ModelError, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[ModelError, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.WARNING)

    @property
    def file_failures(self) -> tuple[ModelError, ...]:
        """Problems that made a whole file unusable (the watcher keeps its last good version)."""
        return tuple(p for p in self.problems if p.file_level)

    @property
    def ok(self) -> bool:
        return not self.errors

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]

    def __str__(self) -> str:
        return "\n".join(self.lines())
