"""Consent registry (CSV and FHIR R4 Consent) and the filter every task's table passes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from datalayer_support import write_bundles
from fhir.resources.R4B.consent import Consent

from medfed.core.errors import PermissionDenied, ValidationError
from medfed.data.consent import (
    ConsentRecord,
    ConsentRegistry,
    ConsentStatus,
    ConsentStore,
    apply_consent,
    read_consent_csv,
    read_consent_fhir,
    table_for_task,
)
from medfed.data.fhir import fhir_features
from medfed.data.schema import parse_features
from medfed.data.sources import parse_dataset, read_table

DAY = dt.date(2026, 6, 1)
FEATURES = parse_features({"glucose": {"code": "loinc|2345-7", "unit": "mmol/L"}}, where="t")


@pytest.fixture(scope="module")
def patients(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    path = write_bundles(tmp_path_factory.mktemp("fhir"), 30, 21)
    return fhir_features(path, FEATURES, as_of=pd.Timestamp(DAY, tz="UTC"))


def consent_resource(patient: str, decision: str, purpose: str | None, when: str) -> dict[str, object]:
    provision: dict[str, object] = {"type": decision}
    if purpose:
        provision["purpose"] = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": purpose}]
    return {
        "resourceType": "Consent",
        "id": f"c-{patient[:8]}-{when}",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "dateTime": when,
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": provision,
    }


def test_opted_out_patients_never_reach_the_task_and_only_counts_are_reported(patients: pd.DataFrame) -> None:
    ids = patients["patient_id"].tolist()
    registry = ConsentRegistry(
        records=(
            ConsentRecord(patient_id=ids[0], purpose="*", status=ConsentStatus.DENY, date=dt.date(2025, 1, 1)),
            ConsentRecord(patient_id=ids[1], purpose="HRESCH", status=ConsentStatus.DENY, date=dt.date(2025, 1, 1)),
            ConsentRecord(patient_id=ids[2], purpose="TREAT", status=ConsentStatus.DENY, date=dt.date(2025, 1, 1)),
        )
    )
    kept, report = apply_consent(patients, registry, purpose="HRESCH", id_column="patient_id", on=DAY)
    assert set(kept["patient_id"]) == set(ids) - {ids[0], ids[1]}
    assert (report.rows_in, report.rows_excluded, report.patients_excluded) == (30, 2, 2)
    assert not any(i in repr(report) for i in ids)


def test_a_withdrawal_is_honoured_by_the_next_filter(patients: pd.DataFrame) -> None:
    registry = ConsentRegistry()
    before, _ = apply_consent(patients, registry, purpose="HRESCH", id_column="patient_id", on=DAY)
    who = patients["patient_id"].iloc[5]
    withdrawn = registry.with_record(ConsentRecord(patient_id=who, purpose="*", status=ConsentStatus.DENY, date=DAY))
    after, report = apply_consent(patients, withdrawn, purpose="HRESCH", id_column="patient_id", on=DAY)
    assert len(before) == 30 and who not in set(after["patient_id"]) and report.patients_excluded == 1
    assert registry.records == ()  # the old registry is unchanged


def test_latest_decision_wins_and_deny_wins_a_tie() -> None:
    d = dt.date
    registry = ConsentRegistry(
        records=(
            ConsentRecord(patient_id="p", purpose="*", status=ConsentStatus.DENY, date=d(2024, 1, 1)),
            ConsentRecord(patient_id="p", purpose="HRESCH", status=ConsentStatus.PERMIT, date=d(2025, 1, 1)),
            ConsentRecord(patient_id="q", purpose="*", status=ConsentStatus.PERMIT, date=d(2025, 1, 1)),
            ConsentRecord(patient_id="q", purpose="*", status=ConsentStatus.DENY, date=d(2025, 1, 1)),
        ),
        default=ConsentStatus.DENY,
    )
    assert registry.decision("p", "HRESCH", d(2024, 6, 1)) is ConsentStatus.DENY
    assert registry.decision("p", "HRESCH", d(2025, 6, 1)) is ConsentStatus.PERMIT
    assert registry.decision("p", "TREAT", d(2025, 6, 1)) is ConsentStatus.DENY
    assert registry.decision("q", "HRESCH", d(2025, 6, 1)) is ConsentStatus.DENY
    assert registry.decision("nobody", "HRESCH", d(2025, 6, 1)) is ConsentStatus.DENY  # opt-in regime


def test_fhir_consent_resources_build_the_registry(tmp_path: Path, patients: pd.DataFrame) -> None:
    ids = patients["patient_id"].tolist()
    resources = [
        consent_resource(ids[0], "deny", None, "2025-03-01"),
        consent_resource(ids[1], "deny", "HRESCH", "2025-03-01"),
        consent_resource(ids[1], "permit", "HRESCH", "2026-01-01"),
    ]
    for r in resources:
        Consent.model_validate(r)  # valid R4B Consent
    (tmp_path / "Consent.ndjson").write_text("\n".join(json.dumps(r) for r in resources) + "\n")
    registry = read_consent_fhir(tmp_path)
    kept, report = apply_consent(patients, registry, purpose="HRESCH", id_column="patient_id", on=DAY)
    assert report.patients_excluded == 1 and ids[0] not in set(kept["patient_id"])
    _, earlier = apply_consent(patients, registry, purpose="HRESCH", id_column="patient_id", on=dt.date(2025, 6, 1))
    assert earlier.patients_excluded == 2


def test_a_bad_consent_csv_lists_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "consent.csv"
    path.write_text(
        "patient_id,purpose,status,date\np1,HRESCH,deny,2025-01-01\n,HRESCH,deny,2025-01-01\np3,*,maybe,2025-13-01\n"
    )
    with pytest.raises(ValidationError) as info:
        read_consent_csv(path)
    assert info.value.problems == [
        f"{path}: line 3: patient id: missing",
        f"{path}: line 4: status: 'maybe' is not one of "
        "['deny', 'granted', 'opt-in', 'opt-out', 'permit', 'withdrawn']",
        f"{path}: line 4: date: '2025-13-01' is not an ISO date (YYYY-MM-DD)",
    ]
    path.write_text("patient_id,purpose,status,date\np1,HRESCH,opt-out,2025-01-01\n")
    assert read_consent_csv(path).decision("p1", "HRESCH", DAY) is ConsentStatus.DENY


def test_a_task_gets_the_validated_table_without_opted_out_patients(tmp_path: Path) -> None:
    write_bundles(tmp_path / "fhir", 30, 21)
    decl = parse_dataset(
        "labs",
        {
            "format": "fhir",
            "path": "fhir",
            "as_of": "2026-06-01",
            "purposes": ["HRESCH"],
            "columns": [
                {"name": "patient_id", "type": "string", "missing": "error"},
                {"name": "glucose", "type": "float", "unit": "mmol/L", "min": 0, "max": 50},
            ],
            "features": {"glucose": {"code": "loinc|2345-7", "unit": "mmol/L"}},
        },
        base=tmp_path,
        where="site.toml",
    )
    everyone = read_table(decl).frame["patient_id"].tolist()
    registry = ConsentRegistry(
        records=tuple(
            ConsentRecord(patient_id=p, purpose="*", status=ConsentStatus.DENY, date=dt.date(2025, 1, 1))
            for p in everyone[:4]
        )
    )
    got = table_for_task(decl, registry, purpose="HRESCH", on=DAY)
    assert len(got.frame) == 26 and not set(everyone[:4]) & set(got.frame["patient_id"])
    assert got.consent.patients_excluded == 4 and got.dropped_by_policy == {}
    with pytest.raises(PermissionDenied, match="'marketing' not allowed"):
        table_for_task(decl, registry, purpose="marketing", on=DAY)


def test_the_store_keeps_decisions_across_restarts_and_honours_a_withdrawal(tmp_path: Path) -> None:
    csv_path = tmp_path / "consent.csv"
    csv_path.write_text("patient_id,purpose,status,date\np1,HRESCH,deny,2025-01-01\np2,*,permit,2025-01-01\n")
    at = dt.datetime(2026, 6, 1, 9, 0, tzinfo=dt.UTC)
    store = ConsentStore(tmp_path / "node.sqlite")
    assert store.add(read_consent_csv(csv_path).records, source=csv_path.name, at=at) == 2
    store.close()
    reopened = ConsentStore(tmp_path / "node.sqlite")
    assert reopened.registry().decision("p2", "HRESCH", DAY) is ConsentStatus.PERMIT
    withdrawal = ConsentRecord(patient_id="p2", purpose="*", status=ConsentStatus.DENY, date=DAY)
    reopened.add([withdrawal], source="withdraw", at=at)
    assert reopened.registry().decision("p2", "HRESCH", DAY) is ConsentStatus.DENY
    assert reopened.summary() == {"deny": 2, "permit": 1}
    reopened.close()
