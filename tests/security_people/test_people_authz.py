"""The authorisation matrix: every role against every action, deny by default, reach, scopes, break glass."""

from __future__ import annotations

import itertools

import pytest

from medfed.core.errors import PermissionDenied
from medfed.security.authz import (
    ACTION_RESOURCE,
    MATRIX,
    Action,
    Principal,
    Reach,
    Resource,
    ResourceKind,
    UserRole,
    authorize,
    matrix_markdown,
    role_actions,
)

# What each role may do on its own things: the expected matrix, written independently of MATRIX.
EXPECTED: dict[UserRole, set[Action]] = {
    UserRole.RESEARCHER: {Action.JOB_SUBMIT, Action.JOB_READ, Action.JOB_CANCEL, Action.RESULT_READ,
                          Action.CATALOG_READ},
    UserRole.FEDERATION_ADMIN: {Action.USER_MANAGE, Action.SITE_MANAGE, Action.JOB_READ, Action.JOB_CANCEL,
                                Action.AUDIT_READ, Action.ALERT_READ, Action.CATALOG_READ},
    UserRole.SITE_ADMIN: {Action.JOB_READ, Action.APPROVAL_READ, Action.APPROVAL_DECIDE, Action.POLICY_EDIT,
                          Action.BUDGET_READ, Action.AUDIT_READ, Action.ALERT_READ, Action.CATALOG_READ},
    UserRole.AUDITOR: {Action.JOB_READ, Action.APPROVAL_READ, Action.BUDGET_READ, Action.AUDIT_READ, Action.ALERT_READ,
                       Action.CATALOG_READ},
}  # fmt: skip


def principal(role: UserRole, **kw: object) -> Principal:
    site = "cleveland" if role is UserRole.SITE_ADMIN else ""
    return Principal(user_id="u1", role=role, site=site, **kw)  # type: ignore[arg-type]


def own(action: Action) -> Resource:
    kind = ACTION_RESOURCE[action]
    if kind is ResourceKind.FEDERATION:
        return Resource.federation()
    return Resource.site("cleveland") if kind is ResourceKind.SITE else Resource.job("j1", owner="u1")


def others(action: Action) -> Resource:
    kind = ACTION_RESOURCE[action]
    if kind is ResourceKind.FEDERATION:
        return Resource.federation()
    return Resource.site("hungary") if kind is ResourceKind.SITE else Resource.job("j2", owner="someone-else")


@pytest.mark.parametrize(("role", "action"), list(itertools.product(UserRole, Action)))
def test_every_role_against_every_action(role: UserRole, action: Action) -> None:
    p = principal(role)
    if action in EXPECTED[role]:
        assert authorize(p, action, own(action)).emergency is False
    else:
        with pytest.raises(PermissionDenied, match=f"may not {action.value}"):
            authorize(p, action, own(action))
    reach = MATRIX.get((role, action))
    if reach is Reach.ANY:
        authorize(p, action, others(action))
    else:
        with pytest.raises(PermissionDenied):
            authorize(p, action, others(action))


def test_matrix_is_exactly_the_expected_one() -> None:
    assert {r: set(role_actions(r)) for r in UserRole} == EXPECTED


def test_site_admin_only_for_own_site() -> None:
    sam = principal(UserRole.SITE_ADMIN)
    authorize(sam, Action.APPROVAL_DECIDE, Resource.site("cleveland"))
    with pytest.raises(PermissionDenied, match="only on their own site"):
        authorize(sam, Action.APPROVAL_DECIDE, Resource.site("hungary"))


def test_wrong_resource_kind_is_denied() -> None:
    with pytest.raises(PermissionDenied, match="applies to a site"):
        authorize(principal(UserRole.SITE_ADMIN), Action.APPROVAL_DECIDE, Resource.federation())


def test_token_scopes_narrow_the_role() -> None:
    p = principal(UserRole.RESEARCHER, scopes=frozenset({Action.JOB_READ}))
    authorize(p, Action.JOB_READ, own(Action.JOB_READ))
    with pytest.raises(PermissionDenied, match="token's scopes"):
        authorize(p, Action.JOB_SUBMIT, Resource.federation())


def test_break_glass_widens_reach_but_not_role() -> None:
    sam = principal(UserRole.SITE_ADMIN, emergency=True)
    assert authorize(sam, Action.AUDIT_READ, Resource.site("hungary")).emergency
    assert authorize(sam, Action.JOB_CANCEL, Resource.job("j9", owner="x")).emergency
    assert not authorize(sam, Action.APPROVAL_READ, Resource.site("cleveland")).emergency
    for action, resource in (
        (Action.USER_MANAGE, Resource.federation()),
        (Action.APPROVAL_DECIDE, Resource.site("hungary")),
    ):
        with pytest.raises(PermissionDenied):
            authorize(sam, action, resource)
    root = principal(UserRole.FEDERATION_ADMIN, emergency=True)
    assert authorize(root, Action.BUDGET_READ, Resource.site("hungary")).emergency
    with pytest.raises(PermissionDenied):
        authorize(root, Action.RESULT_READ, Resource.job("j2", owner="other"))
    rita = principal(UserRole.RESEARCHER, emergency=True)
    with pytest.raises(PermissionDenied):  # researchers have no emergency powers even if flagged
        authorize(rita, Action.RESULT_READ, Resource.job("j2", owner="other"))


def test_matrix_markdown_has_a_row_per_action_and_a_column_per_role() -> None:
    table = matrix_markdown().splitlines()
    assert len(table) == 2 + len(Action)
    assert all(r.value in table[0] for r in UserRole)
    row = next(line for line in table if line.startswith("| `approval.decide`"))
    assert row.split("|")[2:6] == [" — ", " — ", " own site ", " — "]
