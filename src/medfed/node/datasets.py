"""Declared datasets at the node: what a task receives, and what the catalog may say about them.

A dataset declared with ``columns`` in ``site.toml`` (CSV, Parquet, FHIR or OMOP; DICOM and notes
have a fixed table; see :func:`medfed.data.sources.parse_dataset`) reaches a task only through
:func:`load_for_job` (images and notes: :mod:`medfed.node.media_data`): its
purpose limits are checked, it is harmonised and validated, the rows of patients who opted out
are removed (:func:`medfed.data.consent.table_for_task`, with the consent decisions read afresh
from the node's store, so a withdrawal is honoured by the next job), and it becomes the
:class:`TabularData` tasks consume. Only counts of what was left out travel further.

:func:`publish` is what the node says when it registers: which datasets it offers (a declared
dataset that fails validation is not offered) and their catalog entries — schema, tags, codes and
coarse, small-cell-suppressed counts computed on the rows of patients who did not opt out of
everything. Never a row, never an identifier.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from medfed.core.errors import ConfigError, DataError, PermissionDenied, ValidationError
from medfed.data.catalog import CatalogEntry, entry_for
from medfed.data.consent import ANY_PURPOSE, ConsentRegistry, ConsentReport, ConsentStore, apply_consent, table_for_task
from medfed.data.digest import files_version
from medfed.data.media import ImageOptions, NotesOptions
from medfed.data.profile import DatasetProfile, profile_frames
from medfed.data.schema import ColumnType
from medfed.data.sources import MEDIA_FORMATS, DatasetDecl, fingerprint, read_table, to_tabular
from medfed.learn.base import TabularData

if TYPE_CHECKING:
    from medfed.node.runtime import DatasetConfig

log = logging.getLogger(__name__)

#: The purpose of a job whose spec names none (the same word as ``medfed.core.records``).
DEFAULT_PURPOSE = "research"
#: The node's consent decisions, under its ``state_dir``.
CONSENT_FILE = "consent.sqlite"
#: Share of each declared dataset's rows held out for evaluation.
TEST_FRACTION = 0.25
_NUMERIC = (ColumnType.FLOAT, ColumnType.INTEGER, ColumnType.BOOLEAN)


def consent_path(state_dir: Path | None) -> Path | None:
    return None if state_dir is None else state_dir / CONSENT_FILE


def read_registry(state_dir: Path | None) -> ConsentRegistry:
    """The node's consent decisions as they stand now (none recorded, or no state_dir: empty)."""
    path = consent_path(state_dir)
    if path is None or not path.exists():
        return ConsentRegistry()
    store = ConsentStore(path)
    try:
        return store.registry()
    finally:
        store.close()


def model_features(decl: DatasetDecl) -> tuple[str, ...]:
    """The columns a model trains on: the schema's numeric columns, in order, except the label and
    the patient id."""
    skip = {decl.label, decl.patient_id or "patient_id"}
    return tuple(c.name for c in decl.schema.columns if c.type in _NUMERIC and c.name not in skip)


def split_seed(job_id: str, dataset: str) -> int:
    """The same train/test split for every round of a job (and a different one per job)."""
    return int.from_bytes(hashlib.sha256(f"{job_id}/{dataset}".encode()).digest()[:8], "big")


def _id_column(decl: DatasetDecl) -> str:
    return decl.patient_id or ("patient_id" if "patient_id" in decl.schema.names else "")


def _require_ids(decl: DatasetDecl, frame: pd.DataFrame, id_column: str) -> None:
    """Refuse rows that reached past the consent filter without a patient id: no decision can
    apply to them, so they would pass under the registry's default."""
    ids = frame[id_column]
    missing = int((ids.isna() | (ids.astype(str).str.strip() == "")).sum())
    if missing:
        raise DataError(
            f"dataset {decl.name}: {missing} row(s) without a patient id ({id_column!r}): consent cannot be "
            f'applied to them (declare the column with missing = "error" to find them)'
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobData:
    """What a task receives for one job, and the counts (never identities) of what was left out."""

    data: TabularData
    consent: ConsentReport
    dropped_by_policy: int  # rows a missing-value policy excluded

    def metrics(self) -> dict[str, float]:
        """The counts that travel with the result (``medfed.report.rows`` reads them): rows read from
        the source, excluded by consent, dropped as invalid by a missing-value policy."""
        return {
            "policy_rows_read": float(self.consent.rows_in + self.dropped_by_policy),
            "consent_rows_excluded": float(self.consent.rows_excluded),
            "consent_patients_excluded": float(self.consent.patients_excluded),
            "policy_rows_dropped": float(self.dropped_by_policy),
        }


def load_for_job(decl: DatasetDecl, registry: ConsentRegistry, *, purpose: str, on: dt.date, job_id: str) -> JobData:
    """Dataset ``decl`` as a job for ``purpose`` may see it on day ``on``.

    Raises
    ------
    ConfigError
        The dataset declares no ``label``, or no numeric feature column.
    PermissionDenied
        ``purpose`` is not among the dataset's declared purposes.
    DataError, ValidationError
        The dataset fails validation, declares no patient id, or its label is not 0/1.
    """
    if decl.format in MEDIA_FORMATS:  # images and notes: consent on the index, then pixels or scrubbed text
        from medfed.node.media_data import media_for_job

        data, report, excluded = media_for_job(
            decl, registry, purpose=purpose, on=on, split=(TEST_FRACTION, split_seed(job_id, decl.name))
        )
        return JobData(data=data, consent=report, dropped_by_policy=excluded)
    features = model_features(decl)
    if not decl.label or not features:
        raise ConfigError(f"dataset {decl.name}: a model needs label = ... and numeric columns (features: {features})")
    as_of = None if decl.as_of else pd.Timestamp(on, tz="UTC")
    table = table_for_task(decl, registry, purpose=purpose, on=on, as_of=as_of)
    _require_ids(decl, table.frame, _id_column(decl))
    data = to_tabular(table.frame, decl.schema, features, decl.label, TEST_FRACTION, split_seed(job_id, decl.name))
    return JobData(data=data, consent=table.consent, dropped_by_policy=sum(table.dropped_by_policy.values()))


@dataclass(frozen=True, slots=True, kw_only=True)
class Publication:
    """What a node tells the coordinator about its data when it registers."""

    offered: tuple[str, ...]
    entries: tuple[CatalogEntry, ...]
    refused: Mapping[str, str]  # declared datasets not offered, and why (shown only at the site)

    def catalog_json(self) -> str:
        return json.dumps([e.to_dict() for e in self.entries], sort_keys=True)


def local_profile(decl: DatasetDecl, registry: ConsentRegistry, *, on: dt.date) -> DatasetProfile:
    """The profile of ``decl`` on the rows of patients who did not opt out of every purpose (what
    the catalog is built from; shown exactly only at the site).

    Raises
    ------
    DataError, ValidationError
        The dataset cannot be read or fails its schema, declares no patient id, or has rows without one.
    """
    id_column = _id_column(decl)
    if not id_column:
        raise DataError(f"dataset {decl.name}: declares no patient_id column, so consent cannot be applied")
    table = read_table(decl, as_of=None if decl.as_of else pd.Timestamp(on, tz="UTC"))
    frame, _ = apply_consent(table.frame, registry, purpose=ANY_PURPOSE, id_column=id_column, on=on)
    _require_ids(decl, frame, id_column)
    profile = profile_frames(decl.name, decl.schema, [frame])
    return replace(profile, excluded=sum(table.dropped.values()))


def catalog_entry(site: str, decl: DatasetDecl, registry: ConsentRegistry, *, on: dt.date) -> CatalogEntry:
    """The catalog entry of ``decl``: metadata and coarse counts of :func:`local_profile`."""
    digest = "" if decl.dsn else fingerprint(decl.path)
    return entry_for(site, decl, local_profile(decl, registry, on=on), fingerprint=digest)


def publish(site: str, datasets: Mapping[str, DatasetConfig], registry: ConsentRegistry, *, on: dt.date) -> Publication:
    """The datasets this node offers and their catalog entries; legacy CSV directories are offered
    as before and have no entry."""
    offered, entries, refused = [], [], {}
    for name in sorted(datasets):
        decl = datasets[name].decl
        if decl is None:
            offered.append(name)
            continue
        try:
            entry = catalog_entry(site, decl, registry, on=on)
        except (DataError, ValidationError, PermissionDenied) as exc:
            log.warning("site %s: dataset %s is not offered: %s", site, name, exc)
            refused[name] = str(exc)
            continue
        budget = datasets[name].epsilon_budget  # the site's total DP budget, so dashboards can show total/spent/left
        entries.append(entry if budget is None else replace(entry, epsilon_budget=budget,
                                                            delta_budget=datasets[name].delta_budget))  # fmt: skip
        offered.append(name)
    return Publication(offered=tuple(offered), entries=tuple(entries), refused=refused)


def _media_options(decl: DatasetDecl | None) -> ImageOptions | NotesOptions | None:
    """A dicom or notes dataset's options (their labels CSV is part of the dataset's content)."""
    return None if decl is None else decl.images or decl.notes


class Publisher:
    """:func:`publish`, computed again only when the day, the consent decisions or a declared
    dataset's files changed: a node that re-registers after a dropped connection does not re-read
    its datasets."""

    def __init__(self, site: str, datasets: Mapping[str, DatasetConfig], state_dir: Path | None) -> None:
        self._site, self._datasets, self._state_dir = site, datasets, state_dir
        self._key: tuple[object, ...] | None = None
        self._last: Publication | None = None
        self.computed = 0  # how many times the datasets were read (for tests and logs)

    def current(self, *, on: dt.date) -> Publication:
        paths = [d.decl.path for d in self._datasets.values() if d.decl is not None and not d.decl.dsn]
        paths += [o.labels for d in self._datasets.values() if (o := _media_options(d.decl)) and o.labels]
        key = (on, files_version(consent_path(self._state_dir)), *(files_version(p) for p in paths))
        if self._last is None or key != self._key:
            self._last = publish(self._site, self._datasets, read_registry(self._state_dir), on=on)
            self._key = key
            self.computed += 1
        return self._last
