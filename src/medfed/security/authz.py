"""Who may do what: the authorisation matrix (role × action × resource), as data.

Deny by default: a (role, action) pair absent from :data:`MATRIX` is refused, and so is an action
on the wrong kind of resource. Each allowed pair carries a :class:`Reach` that limits it to the
caller's own site or own job. A principal that came from an API token may additionally be limited
to the token's scopes; a break-glass ("emergency access", 45 CFR 164.312(a)(2)(ii)) admin may also
do the few actions of :data:`EMERGENCY_EXTRA` on any resource, and the caller must audit every such
decision loudly (:attr:`Decision.emergency`).

The coordinator's API calls :func:`authorize` before every request; a node calls it for the site
admin's actions (approvals, policy) and, independently, checks its own
:class:`~medfed.security.node_policy.NodePolicy` for jobs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from medfed.core.errors import PermissionDenied

__all__ = [
    "ACTION_RESOURCE",
    "EMERGENCY_EXTRA",
    "MATRIX",
    "Action",
    "Decision",
    "Principal",
    "Reach",
    "Resource",
    "ResourceKind",
    "UserRole",
    "authorize",
    "matrix_markdown",
    "role_actions",
]


class UserRole(enum.StrEnum):
    """The roles a person can hold in a federation."""

    FEDERATION_ADMIN = "federation_admin"
    RESEARCHER = "researcher"
    SITE_ADMIN = "site_admin"
    AUDITOR = "auditor"


class ResourceKind(enum.StrEnum):
    FEDERATION = "federation"
    SITE = "site"
    JOB = "job"


class Action(enum.StrEnum):
    """Everything a person can ask of medfed; also the vocabulary of API-token scopes."""

    USER_MANAGE = "user.manage"  # add, disable, reset people; revoke their tokens
    SITE_MANAGE = "site.manage"  # provision or revoke a site's identity
    JOB_SUBMIT = "job.submit"
    JOB_READ = "job.read"  # status, spec, metrics
    JOB_CANCEL = "job.cancel"
    RESULT_READ = "result.read"  # download the final model
    APPROVAL_READ = "approval.read"
    APPROVAL_DECIDE = "approval.decide"  # approve / reject a spec, standing rules
    POLICY_EDIT = "policy.edit"  # a node's local policy
    BUDGET_READ = "budget.read"
    AUDIT_READ = "audit.read"  # read, verify and export audit logs
    ALERT_READ = "alert.read"  # access-anomaly alerts
    CATALOG_READ = "catalog.read"  # search the federation's catalog (metadata and coarse counts, never rows)


#: The kind of resource each action applies to.
ACTION_RESOURCE: dict[Action, ResourceKind] = {
    Action.USER_MANAGE: ResourceKind.FEDERATION,
    Action.SITE_MANAGE: ResourceKind.FEDERATION,
    Action.JOB_SUBMIT: ResourceKind.FEDERATION,
    Action.JOB_READ: ResourceKind.JOB,
    Action.JOB_CANCEL: ResourceKind.JOB,
    Action.RESULT_READ: ResourceKind.JOB,
    Action.APPROVAL_READ: ResourceKind.SITE,
    Action.APPROVAL_DECIDE: ResourceKind.SITE,
    Action.POLICY_EDIT: ResourceKind.SITE,
    Action.BUDGET_READ: ResourceKind.SITE,
    Action.AUDIT_READ: ResourceKind.SITE,
    Action.ALERT_READ: ResourceKind.SITE,
    Action.CATALOG_READ: ResourceKind.FEDERATION,
}


class Reach(enum.StrEnum):
    """How far an allowed (role, action) pair extends."""

    ANY = "any"  # every resource of the action's kind
    OWN_SITE = "own_site"  # only the site the principal administers
    OWN_JOB = "own_job"  # only jobs the principal owns


_R, _F, _S, _A = UserRole.RESEARCHER, UserRole.FEDERATION_ADMIN, UserRole.SITE_ADMIN, UserRole.AUDITOR

#: The matrix. Separation of duties: the federation admin runs the federation but cannot approve
#: a job at a site or read results; a site admin decides only for the site's own data; an auditor
#: reads, never writes.
MATRIX: dict[tuple[UserRole, Action], Reach] = {
    (_R, Action.JOB_SUBMIT): Reach.ANY,
    (_R, Action.JOB_READ): Reach.OWN_JOB,
    (_R, Action.JOB_CANCEL): Reach.OWN_JOB,
    (_R, Action.RESULT_READ): Reach.OWN_JOB,
    (_R, Action.CATALOG_READ): Reach.ANY,  # where a job is designed
    (_F, Action.USER_MANAGE): Reach.ANY,
    (_F, Action.SITE_MANAGE): Reach.ANY,
    (_F, Action.JOB_READ): Reach.ANY,
    (_F, Action.JOB_CANCEL): Reach.ANY,
    (_F, Action.AUDIT_READ): Reach.ANY,
    (_F, Action.ALERT_READ): Reach.ANY,
    (_F, Action.CATALOG_READ): Reach.ANY,
    (_S, Action.JOB_READ): Reach.ANY,  # a site admin reviews any spec before approving it
    (_S, Action.APPROVAL_READ): Reach.OWN_SITE,
    (_S, Action.APPROVAL_DECIDE): Reach.OWN_SITE,
    (_S, Action.POLICY_EDIT): Reach.OWN_SITE,
    (_S, Action.BUDGET_READ): Reach.OWN_SITE,
    (_S, Action.AUDIT_READ): Reach.OWN_SITE,
    (_S, Action.ALERT_READ): Reach.OWN_SITE,
    (_S, Action.CATALOG_READ): Reach.ANY,  # what the federation offers (the site's own entries among them)
    (_A, Action.JOB_READ): Reach.ANY,
    (_A, Action.APPROVAL_READ): Reach.ANY,
    (_A, Action.BUDGET_READ): Reach.ANY,
    (_A, Action.AUDIT_READ): Reach.ANY,
    (_A, Action.ALERT_READ): Reach.ANY,
    (_A, Action.CATALOG_READ): Reach.ANY,  # metadata only: an auditor reads what sites publish
}

#: What break glass grants, on any resource: stop any running job and investigate (audit, alerts,
#: approvals). It never grants the power to approve a job at another site or to read results.
EMERGENCY_EXTRA: dict[UserRole, frozenset[Action]] = {
    UserRole.SITE_ADMIN: frozenset({Action.JOB_CANCEL, Action.AUDIT_READ, Action.ALERT_READ, Action.APPROVAL_READ}),
    UserRole.FEDERATION_ADMIN: frozenset({Action.JOB_CANCEL, Action.APPROVAL_READ, Action.BUDGET_READ}),
}


def role_actions(role: UserRole) -> frozenset[Action]:
    """The actions ``role`` has at all (whatever the reach): what its tokens may be scoped to."""
    return frozenset(action for (r, action) in MATRIX if r is role)


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """An authenticated person, as the API sees them.

    ``site`` is set for site admins (the site they administer). ``scopes`` is ``None`` for a
    password + TOTP session (the role's full rights) and the token's scopes for an API token.
    """

    user_id: str
    role: UserRole
    site: str = ""
    scopes: frozenset[Action] | None = None
    emergency: bool = False

    def __post_init__(self) -> None:
        if self.role is UserRole.SITE_ADMIN and not self.site:
            raise PermissionDenied(f"site admin {self.user_id!r} has no site")


@dataclass(frozen=True, slots=True, kw_only=True)
class Resource:
    """What an action touches: the federation, one site, or one job (with its owner)."""

    kind: ResourceKind
    name: str = ""
    owner: str = ""  # jobs: the researcher who submitted it

    @classmethod
    def federation(cls) -> Resource:
        return cls(kind=ResourceKind.FEDERATION)

    @classmethod
    def site(cls, name: str) -> Resource:
        return cls(kind=ResourceKind.SITE, name=name)

    @classmethod
    def job(cls, job_id: str, *, owner: str) -> Resource:
        return cls(kind=ResourceKind.JOB, name=job_id, owner=owner)

    def describe(self) -> str:
        return self.kind.value if self.kind is ResourceKind.FEDERATION else f"{self.kind.value} {self.name!r}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """A granted request. ``emergency`` is true when only break glass allowed it: audit it loudly."""

    principal: Principal
    action: Action
    resource: Resource
    emergency: bool = False


def _within_reach(reach: Reach, principal: Principal, resource: Resource) -> bool:
    if reach is Reach.ANY:
        return True
    if reach is Reach.OWN_SITE:
        return bool(principal.site) and resource.name == principal.site
    return resource.owner == principal.user_id


def authorize(principal: Principal, action: Action, resource: Resource) -> Decision:
    """Grant ``action`` on ``resource`` to ``principal`` or raise :class:`PermissionDenied`.

    The message says which rule refused, never more than the caller already knows.
    """
    who = f"{principal.role.value} {principal.user_id!r}"
    what = f"{action.value} on {resource.describe()}"
    if ACTION_RESOURCE[action] is not resource.kind:
        raise PermissionDenied(f"{who} may not {what}: {action.value} applies to a {ACTION_RESOURCE[action].value}")
    if principal.scopes is not None and action not in principal.scopes:
        allowed = sorted(s.value for s in principal.scopes)
        raise PermissionDenied(f"{who} may not {what}: the API token's scopes are {allowed}")
    reach = MATRIX.get((principal.role, action))
    if reach is not None and _within_reach(reach, principal, resource):
        return Decision(principal=principal, action=action, resource=resource)
    if principal.emergency and action in EMERGENCY_EXTRA.get(principal.role, frozenset()):
        return Decision(principal=principal, action=action, resource=resource, emergency=True)
    if reach is None:
        raise PermissionDenied(f"{who} may not {what}: the role has no {action.value} right")
    limit = "their own site" if reach is Reach.OWN_SITE else "their own jobs"
    raise PermissionDenied(f"{who} may not {what}: a {principal.role.value} may do this only on {limit}")


def matrix_markdown() -> str:
    """The matrix as a Markdown table (for ``docs/security.md``), generated so that it cannot drift."""
    roles = list(UserRole)
    lines = ["| action | " + " | ".join(r.value for r in roles) + " |", "|---" * (len(roles) + 1) + "|"]
    for action in Action:
        cells = []
        for role in roles:
            reach = MATRIX.get((role, action))
            cell = "—" if reach is None else reach.value.replace("_", " ")
            if action in EMERGENCY_EXTRA.get(role, frozenset()) and reach is not Reach.ANY:
                cell = "break glass only" if reach is None else f"{cell}; any under break glass"
            cells.append(cell)
        lines.append(f"| `{action.value}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
