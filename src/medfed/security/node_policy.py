"""A node's local policy: which researchers, purposes, tasks and datasets this site allows.

The node checks it itself, from facts it derived from the job spec it holds; it never takes the
coordinator's word that a job is allowed. Parsed from the ``[policy]`` table of ``site.toml``::

    [policy]
    researchers = ["alice", "bob"]      # required; ["*"] admits every researcher
    purposes = ["cardiology-research"]  # required
    tasks = ["logistic_regression"]     # required
    datasets = ["heart"]                # required
    max_rounds = 50                     # optional
    approval = "required"               # optional, default "required"; "off" is loud (see below)

    [policy.dataset_researchers]        # optional: narrower lists per dataset
    heart = ["alice"]

Deny by default: a missing list is an error, an empty list admits nobody.

Site approval is on by default: every job needs its spec approved by the site admin (by hash) or
a standing rule (:mod:`medfed.security.approvals`), and a ``site.toml`` without ``[policy]`` gets
:meth:`NodePolicy.approval_only` (no list limits, approval required). Turning approval off takes
an explicit ``approval = "off"`` in a ``[policy]`` that also sets the four lists; the node records
it in its audit log at every start and ``medfed node check`` warns. (Fed-BioMed's code approval
defaults to off; here the unsafe choice has to be written down.) The older ``require_approval = true``
is still accepted; ``require_approval = false`` is refused in favour of ``approval = "off"``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from medfed.core.errors import ConfigError, PermissionDenied
from medfed.core.records import JobSpec

__all__ = ["ANY", "ApprovalMode", "JobFacts", "NodePolicy", "parse_node_policy"]

#: The wildcard a list may hold instead of names.
ANY = "*"
_LISTS = ("researchers", "purposes", "tasks", "datasets")
_OPTIONAL = ("max_rounds", "approval", "require_approval", "dataset_researchers")


class ApprovalMode(enum.StrEnum):
    """Whether a job needs the site admin's approval (``[policy] approval``)."""

    REQUIRED = "required"  # the default: the spec approved by hash, or a standing rule
    OFF = "off"  # written explicitly; audited at every node start; medfed node check warns


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFacts:
    """What a node knows about a job, derived from the spec text it received (not from labels)."""

    job_id: str
    name: str
    researcher: str  # the submitting user id, from the coordinator's authenticated record
    purpose: str
    task: str
    dataset: str
    rounds: int
    spec_hash: str
    spec_text: str

    @classmethod
    def from_spec(cls, spec: JobSpec, *, job_id: str, researcher: str, purpose: str) -> JobFacts:
        return cls(
            job_id=job_id, name=spec.name, researcher=researcher, purpose=purpose, task=spec.task,
            dataset=spec.dataset, rounds=spec.rounds, spec_hash=spec.spec_hash, spec_text=spec.source,
        )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePolicy:
    """A site's rules for which jobs may touch its data. Build it with :func:`parse_node_policy`."""

    site: str
    researchers: frozenset[str]
    purposes: frozenset[str]
    tasks: frozenset[str]
    datasets: frozenset[str]
    max_rounds: int | None = None
    dataset_researchers: Mapping[str, frozenset[str]] = field(default_factory=dict)
    approval: ApprovalMode = ApprovalMode.REQUIRED

    @classmethod
    def approval_only(cls, site: str) -> NodePolicy:
        """A site without a ``[policy]`` table: any researcher, purpose, task and dataset, each job
        only once the site admin approved its spec or a standing rule covers it."""
        anything = frozenset({ANY})
        return cls(site=site, researchers=anything, purposes=anything, tasks=anything, datasets=anything)

    def violations(self, facts: JobFacts) -> list[str]:
        """Every rule ``facts`` breaks (empty when the job is allowed)."""
        found = []
        for what, value, allowed in (
            ("researcher", facts.researcher, self.researchers),
            ("purpose", facts.purpose, self.purposes),
            ("task", facts.task, self.tasks),
            ("dataset", facts.dataset, self.datasets),
        ):
            if not _admits(allowed, value):
                found.append(f"{what} {value!r} is not allowed here (allowed: {sorted(allowed)})")
        narrower = self.dataset_researchers.get(facts.dataset)
        if narrower is not None and not _admits(narrower, facts.researcher):
            found.append(f"researcher {facts.researcher!r} may not use dataset {facts.dataset!r}")
        if self.max_rounds is not None and facts.rounds > self.max_rounds:
            found.append(f"{facts.rounds} rounds exceed this site's limit of {self.max_rounds}")
        return found

    def check(self, facts: JobFacts) -> None:
        """Raise :class:`PermissionDenied` naming every broken rule, or return when allowed."""
        found = self.violations(facts)
        if found:
            raise PermissionDenied(f"site {self.site!r} refuses job {facts.job_id!r}: " + "; ".join(found))


def _admits(allowed: frozenset[str], value: str) -> bool:
    return ANY in allowed or value in allowed


def _names(value: object, key: str, problems: list[str]) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        problems.append(f"{key} must be a list of non-empty strings, got {value!r}")
        return frozenset()
    return frozenset(value)


def parse_node_policy(table: Mapping[str, object], *, site: str, where: str = "site.toml [policy]") -> NodePolicy:
    """Parse the ``[policy]`` table; collects every problem and raises one :class:`ConfigError`."""
    problems: list[str] = []
    unknown = sorted(set(table) - set(_LISTS) - set(_OPTIONAL))
    if unknown:
        problems.append(f"unknown keys {unknown} (known: {sorted(_LISTS + _OPTIONAL)})")
    lists = {}
    for key in _LISTS:
        if key not in table:
            problems.append(f"{key} is required (deny by default; use [{ANY!r}] to allow any)")
        lists[key] = _names(table.get(key, []), key, problems)
    max_rounds = table.get("max_rounds")
    if max_rounds is not None and (not isinstance(max_rounds, int) or isinstance(max_rounds, bool) or max_rounds < 1):
        problems.append(f"max_rounds must be an integer >= 1, got {max_rounds!r}")
    if table.get("require_approval", True) is not True:
        problems.append(
            "require_approval must be true: every job needs the site admin's approval or a standing rule "
            '(to run jobs unapproved, write approval = "off": audited at every start)'
        )
    approval = table.get("approval", ApprovalMode.REQUIRED.value)
    if approval not in [m.value for m in ApprovalMode]:
        problems.append(f"approval must be one of {[m.value for m in ApprovalMode]}, got {approval!r}")
    per_dataset: dict[str, frozenset[str]] = {}
    raw = table.get("dataset_researchers", {})
    if not isinstance(raw, Mapping):
        problems.append(f"dataset_researchers must be a table of dataset = [researchers], got {raw!r}")
    else:
        for dataset, names in raw.items():
            per_dataset[str(dataset)] = _names(names, f"dataset_researchers.{dataset}", problems)
            if not _admits(lists["datasets"], str(dataset)):
                problems.append(f"dataset_researchers.{dataset}: {dataset!r} is not in datasets")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    return NodePolicy(
        site=site, researchers=lists["researchers"], purposes=lists["purposes"], tasks=lists["tasks"],
        datasets=lists["datasets"], max_rounds=max_rounds if isinstance(max_rounds, int) else None,
        dataset_researchers=per_dataset, approval=ApprovalMode(str(approval)),
    )  # fmt: skip
