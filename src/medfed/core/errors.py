"""The one exception tree of medfed.

Every error medfed raises on purpose derives from :class:`MedfedError`::

    MedfedError
    ├── ConfigError            a job file, site file or option is malformed (names file/key)
    ├── ValidationError        a value broke a contract (shape, dtype, NaN); collects every problem
    ├── RegistryError          an unknown task, strategy or other named plug-in
    ├── DataError              a dataset is missing or unreadable at a node (names site/dataset)
    ├── TransportError         the wire failed: unreachable peer, broken stream, bad frame
    │   └── AuthenticationError  TLS identity refused (wrong CA, expired, revoked, wrong host)
    ├── PermissionDenied       an authenticated caller lacks the role for an action
    │   ├── BudgetExhausted      a release would overspend a dataset's privacy budget at a node
    │   └── DatasetChanged       a dataset's content changed since the site admin approved the job
    ├── StoreError             the coordinator's store or a checkpoint is unreadable or tampered
    ├── JobError               a job cannot go on (too few nodes, every round failed)
    └── TaskError              a task failed at a node; travels to the coordinator as a value

Failures at a node travel to the coordinator as error *values* (kind + message) in the result
message, never as exceptions across the wire; :func:`error_from_kind` rebuilds them.
"""

from __future__ import annotations

import enum


class MedfedError(Exception):
    """Base of every medfed error."""

    kind = "medfed"


class ConfigError(MedfedError):
    """A configuration file or option is malformed; the message names the file and key."""

    kind = "config"


class ValidationError(MedfedError):
    """A value broke a contract. Carries every problem found, raised once."""

    kind = "validation"

    def __init__(self, problems: list[str] | str, *, where: str = "") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.where = where
        prefix = f"{where}: " if where else ""
        if len(self.problems) == 1:
            message = prefix + self.problems[0]
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{prefix}{len(self.problems)} problems:\n{lines}"
        super().__init__(message)


class RegistryError(MedfedError):
    """An unknown named plug-in (task, strategy)."""

    kind = "registry"


class DataError(MedfedError):
    """A dataset is missing or unreadable at a node."""

    kind = "data"


class TransportError(MedfedError):
    """The wire failed: unreachable peer, broken stream, malformed frame."""

    kind = "transport"


class AuthenticationError(TransportError):
    """A TLS identity was refused: wrong CA, expired, revoked or wrong host name."""

    kind = "authentication"


class Refusal(enum.StrEnum):
    """Why a site refused a task (its ``task.refused`` audit outcome; travels on the error result)."""

    NO_SPEC = "no-spec"  # the task carries no job spec to judge
    BAD_SPEC = "bad-spec"  # the spec does not parse, or the task asks for something else
    POLICY = "policy"  # the site's [policy] forbids the job
    NOT_CLEARED = "not-cleared"  # no approval of this spec (pending, rejected, expired) nor a standing rule
    DATASET_CHANGED = "dataset-changed"  # the dataset's content differs from what the approval pinned


class PermissionDenied(MedfedError):  # noqa: N818 - reads as a verdict, like PermissionError
    """An authenticated caller lacks the role for the action.

    A site's governance sets ``refusal`` (and the refused spec's ``spec_hash``) when it refuses a
    task, so the error result tells the coordinator why without parsing the message.
    """

    kind = "permission"
    refusal: Refusal | None = None
    spec_hash: str = ""


class DatasetChanged(PermissionDenied):
    """A dataset's content fingerprint differs from the one recorded when its job was approved."""


class BudgetExhausted(PermissionDenied):
    """A differentially private release would overspend the (ε, δ) budget a site set."""

    kind = "budget"


class StoreError(MedfedError):
    """The coordinator's store or a checkpoint is unreadable or fails its integrity check."""

    kind = "store"


class JobError(MedfedError):
    """A job cannot continue."""

    kind = "job"


class TaskError(MedfedError):
    """A task failed at a node."""

    kind = "task"


_KINDS: dict[str, type[MedfedError]] = {
    cls.kind: cls
    for cls in (
        MedfedError,
        ConfigError,
        RegistryError,
        DataError,
        TransportError,
        AuthenticationError,
        PermissionDenied,
        BudgetExhausted,
        StoreError,
        JobError,
        TaskError,
    )
}


def error_from_kind(kind: str, message: str) -> MedfedError:
    """Rebuild an error that travelled as a value; unknown kinds become :class:`TaskError`."""
    if kind == ValidationError.kind:
        return ValidationError(message)
    return _KINDS.get(kind, TaskError)(message)


def error_kind(exc: BaseException) -> str:
    """The wire name of an exception's kind (``task`` for anything not from medfed)."""
    return exc.kind if isinstance(exc, MedfedError) else TaskError.kind
