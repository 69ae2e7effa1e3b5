"""Patient consent and opt-out at the node: a registry, and the filter every task's table passes.

A :class:`ConsentRegistry` holds dated decisions (patient id, purpose or ``*`` for every purpose,
permit or deny), read from a CSV or from FHIR ``Consent`` resources. For a purpose and a day the
latest decision on or before that day counts; on the same day a deny outranks a permit. Patients
with no decision get the registry's default (``permit`` for an opt-out regime, ``deny`` for
opt-in). :func:`apply_consent` removes the rows of patients who may not be used and reports how
many it removed, never who; :func:`table_for_task` is what a node hands a task: purpose limits
checked, the table harmonised and validated, then consent-filtered.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medfed.core.errors import DataError, PermissionDenied, ValidationError
from medfed.crypto.pseudonym import PREFIX, Pseudonymizer, new_pseudonym_key
from medfed.data.fhir import iter_resources
from medfed.data.fhir_views import ViewDefinition, evaluate
from medfed.data.sources import DatasetDecl, read_table

ANY_PURPOSE = "*"
#: The node-local key of the consent store's pseudonyms, next to (not inside) the node's state_dir.
CONSENT_KEY_FILE = "consent-id.key"


class ConsentStatus(enum.Enum):
    PERMIT = "permit"
    DENY = "deny"


_STATUS_WORDS: Mapping[str, ConsentStatus] = {
    "permit": ConsentStatus.PERMIT,
    "opt-in": ConsentStatus.PERMIT,
    "granted": ConsentStatus.PERMIT,
    "deny": ConsentStatus.DENY,
    "opt-out": ConsentStatus.DENY,
    "withdrawn": ConsentStatus.DENY,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentRecord:
    """One dated decision by (or for) one patient about one purpose (``*``: every purpose)."""

    patient_id: str
    purpose: str
    status: ConsentStatus
    date: dt.date


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentRegistry:
    """Every consent decision at a site; immutable: :meth:`with_record` returns a new registry."""

    records: tuple[ConsentRecord, ...] = ()
    default: ConsentStatus = ConsentStatus.PERMIT
    #: When the records carry pseudonyms (a :class:`ConsentStore`'s), what turns a patient id into one.
    pseudonym: Callable[[str], str] | None = field(default=None, repr=False, compare=False)
    _index: dict[str, list[ConsentRecord]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, list[ConsentRecord]] = {}
        for rec in self.records:
            index.setdefault(rec.patient_id, []).append(rec)
        object.__setattr__(self, "_index", index)

    def with_record(self, record: ConsentRecord) -> ConsentRegistry:
        """This registry plus ``record`` (a withdrawal is a ``deny`` record dated today)."""
        return ConsentRegistry(records=(*self.records, record), default=self.default, pseudonym=self.pseudonym)

    def key_of(self, patient_id: str) -> str:
        """How ``patient_id`` appears in :attr:`records` (its pseudonym in a store's registry)."""
        return patient_id if self.pseudonym is None else self.pseudonym(patient_id)

    def purposes_of(self, patient_id: str) -> list[str]:
        """The purposes with a recorded decision for ``patient_id``."""
        return sorted({r.purpose for r in self._index.get(self.key_of(patient_id), ())})

    def decision(self, patient_id: str, purpose: str, on: dt.date) -> ConsentStatus:
        """What holds for ``patient_id`` and ``purpose`` on day ``on``."""
        mine = self._index.get(self.key_of(patient_id), ())
        relevant = [r for r in mine if r.purpose in (purpose, ANY_PURPOSE) and r.date <= on]
        if not relevant:
            return self.default
        # latest date wins; on a tie, deny sorts last and wins
        latest = max(relevant, key=lambda r: (r.date, r.status is ConsentStatus.DENY))
        return latest.status

    def allowed(self, patient_ids: Iterable[str], purpose: str, on: dt.date) -> list[bool]:
        return [self.decision(p, purpose, on) is ConsentStatus.PERMIT for p in patient_ids]


def _record(
    patient: object, purpose: object, status: object, date: object, problems: list[str], where: str
) -> ConsentRecord | None:
    start = len(problems)
    if not isinstance(patient, str) or not patient.strip():
        problems.append(f"{where}: patient id: missing")
    word = str(status or "").strip().lower()
    if word not in _STATUS_WORDS:
        problems.append(f"{where}: status: {status!r} is not one of {sorted(_STATUS_WORDS)}")
    try:
        day = dt.date.fromisoformat(str(date).strip()[:10])
    except ValueError:
        problems.append(f"{where}: date: {date!r} is not an ISO date (YYYY-MM-DD)")
    if len(problems) > start:
        return None
    purpose_text = str(purpose).strip() if purpose else ANY_PURPOSE
    return ConsentRecord(patient_id=str(patient).strip(), purpose=purpose_text, status=_STATUS_WORDS[word], date=day)


def read_consent_csv(path: Path, *, default: ConsentStatus = ConsentStatus.PERMIT) -> ConsentRegistry:
    """A registry from a CSV with columns ``patient_id, purpose, status, date``; every bad line listed."""
    problems: list[str] = []
    records = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"patient_id", "purpose", "status", "date"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"{path}: missing columns {sorted(missing)}")
            for line, row in enumerate(reader, start=2):
                rec = _record(
                    row["patient_id"], row["purpose"], row["status"], row["date"], problems, f"{path}: line {line}"
                )
                if rec is not None:
                    records.append(rec)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as UTF-8 CSV ({exc})") from None
    if problems:
        raise ValidationError(problems, where=f"consent registry {path}")
    return ConsentRegistry(records=tuple(records), default=default)


#: R4 Consent, one row per provision purpose (or one row with none: every purpose).
CONSENT_VIEW = ViewDefinition.from_dict(
    {
        "name": "consent",
        "resource": "Consent",
        "where": [{"path": "status = 'active'"}],
        "select": [
            {
                "column": [
                    {"name": "patient_id", "path": "patient.getReferenceKey()"},
                    {"name": "status", "path": "provision.type"},
                    {"name": "date", "path": "dateTime"},
                ]
            },
            {"forEachOrNull": "provision.purpose", "column": [{"name": "purpose", "path": "code"}]},
        ],
    }
)


def read_consent_fhir(path: Path, *, default: ConsentStatus = ConsentStatus.PERMIT) -> ConsentRegistry:
    """A registry from active FHIR R4 ``Consent`` resources (bundle or NDJSON) under ``path``."""
    problems: list[str] = []
    records = []
    for located in iter_resources(path, problems):
        try:
            rows = evaluate(CONSENT_VIEW, located.resource, where=located.where)
        except ValidationError as exc:
            problems.extend(exc.problems)
            continue
        for row in rows:
            rec = _record(row["patient_id"], row["purpose"], row["status"], row["date"], problems, located.where)
            if rec is not None:
                records.append(rec)
    if problems:
        raise ValidationError(problems, where=f"consent registry {path}")
    return ConsentRegistry(records=tuple(records), default=default)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentReport:
    """What the filter did, in counts only: no identity leaves this record."""

    purpose: str
    rows_in: int
    rows_excluded: int
    patients_excluded: int


def apply_consent(
    frame: pd.DataFrame, registry: ConsentRegistry, *, purpose: str, id_column: str, on: dt.date
) -> tuple[pd.DataFrame, ConsentReport]:
    """``frame`` without the rows of patients who may not be used for ``purpose`` on day ``on``."""
    if id_column not in frame.columns:
        raise ValidationError(f"no patient id column {id_column!r} (columns: {list(frame.columns)})", where="consent")
    ids = frame[id_column].astype(str)
    verdict = {p: ok for p, ok in zip(ids.unique(), registry.allowed(ids.unique(), purpose, on), strict=True)}
    keep = ids.map(verdict).to_numpy(dtype=bool)
    report = ConsentReport(
        purpose=purpose,
        rows_in=len(frame),
        rows_excluded=int((~keep).sum()),
        patients_excluded=sum(1 for ok in verdict.values() if not ok),
    )
    return frame.loc[keep].reset_index(drop=True), report


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskTable:
    """What a task receives: the harmonised, consent-filtered table, and what was left out (counts)."""

    frame: pd.DataFrame
    dropped_by_policy: Mapping[str, int]
    consent: ConsentReport


def table_for_task(
    decl: DatasetDecl, registry: ConsentRegistry, *, purpose: str, on: dt.date, as_of: pd.Timestamp | None = None
) -> TaskTable:
    """The dataset as a task may see it for ``purpose`` on day ``on``: harmonised, validated, and
    without the rows of patients who opted out.

    Raises
    ------
    PermissionDenied
        ``purpose`` is not among the dataset's declared purposes (when it declares any).
    DataError, ValidationError
        The dataset fails validation (then it is not offered at all), or declares no patient id.
    """
    if decl.purposes and purpose not in decl.purposes:
        raise PermissionDenied(f"dataset {decl.name}: purpose {purpose!r} not allowed (allowed: {list(decl.purposes)})")
    id_column = decl.patient_id or ("patient_id" if "patient_id" in decl.schema.names else "")
    if not id_column:
        raise DataError(f"dataset {decl.name}: declares no patient_id column, so consent cannot be applied")
    table = read_table(decl, as_of=as_of)
    frame, report = apply_consent(table.frame, registry, purpose=purpose, id_column=id_column, on=on)
    return TaskTable(frame=frame, dropped_by_policy=table.dropped, consent=report)


class ConsentStore:
    """Consent decisions kept in the node's SQLite, append-only: a withdrawal is a new, later row,
    so the history stays auditable and :meth:`registry` always reflects the newest decisions.

    Patient ids are stored as keyed pseudonyms (HMAC-SHA256, :mod:`medfed.crypto.pseudonym`) under a
    node-local key kept outside the data directory (``key_path``, default ``consent-id.key`` next to
    the store's directory, created 0600), so the file at rest holds no identifier; lookups hash the
    id asked about. A registry written before (plaintext ids) is converted when opened, and its
    freed pages are wiped (``secure_delete``, ``VACUUM``).
    """

    def __init__(self, path: Path, *, key_path: Path | None = None) -> None:
        self._path = path
        self._pseudonym = Pseudonymizer(_consent_key(key_path or path.parent.parent / CONSENT_KEY_FILE, path))
        try:
            self._db = sqlite3.connect(path)
            self._db.execute("PRAGMA secure_delete=ON")
            with self._db:
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS consent (patient_id TEXT NOT NULL, purpose TEXT NOT NULL, "
                    "status TEXT NOT NULL, date TEXT NOT NULL, source TEXT NOT NULL, recorded_at TEXT NOT NULL)"
                )
                self._db.execute("CREATE TABLE IF NOT EXISTS consent_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._migrate()
        except sqlite3.Error as exc:
            raise DataError(f"consent store {path}: {exc}") from None

    def _migrate(self) -> None:
        """Check the key against the one the store was written with; pseudonymise plaintext ids."""
        found = self._db.execute("SELECT value FROM consent_meta WHERE name='key'").fetchone()
        if found is not None and found[0] != self._pseudonym.fingerprint:
            raise DataError(f"consent store {self._path}: its ids were pseudonymised under another key than "
                            f"{CONSENT_KEY_FILE} (fingerprint {found[0]}); restore that key file")  # fmt: skip
        # every open (each task reads consent afresh): let SQLite skip the pseudonyms, and write only when needed
        candidates = self._db.execute(
            "SELECT rowid, patient_id FROM consent WHERE NOT (substr(patient_id, 1, ?) = ? AND length(patient_id) = ?)",
            (len(PREFIX), PREFIX, len(PREFIX) + 64),
        )
        plain = [(r, p) for r, p in candidates if not Pseudonymizer.is_pseudonym(p)]
        if found is not None and not plain:
            return
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO consent_meta VALUES ('key', ?)", (self._pseudonym.fingerprint,))
            self._db.executemany("UPDATE consent SET patient_id=? WHERE rowid=?",
                                 [(self._pseudonym(p), r) for r, p in plain])  # fmt: skip
        if plain:
            self._db.execute("VACUUM")  # no copy of a plaintext id left in a free page

    def add(self, records: Iterable[ConsentRecord], *, source: str, at: dt.datetime) -> int:
        """Append ``records`` (all or none) from ``source`` (a file name, ``withdraw``...); how many."""
        rows = [
            (self._pseudonym(r.patient_id), r.purpose, r.status.value, r.date.isoformat(), source, at.isoformat())
            for r in records
        ]
        try:
            with self._db:
                self._db.executemany("INSERT INTO consent VALUES (?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise DataError(f"consent store {self._path}: {exc}") from None
        return len(rows)

    def registry(self, *, default: ConsentStatus = ConsentStatus.PERMIT) -> ConsentRegistry:
        """The decisions, keyed by pseudonym; the registry hashes the ids it is asked about."""
        try:
            rows = self._db.execute("SELECT patient_id, purpose, status, date FROM consent ORDER BY rowid").fetchall()
            records = tuple(
                ConsentRecord(patient_id=p, purpose=u, status=ConsentStatus(s), date=dt.date.fromisoformat(d))
                for p, u, s, d in rows
            )
        except (sqlite3.Error, ValueError) as exc:
            raise DataError(f"consent store {self._path}: unreadable ({exc})") from None
        return ConsentRegistry(records=records, default=default, pseudonym=self._pseudonym)

    def summary(self) -> dict[str, int]:
        """Decisions per status: what ``medfed consent list`` may show beyond the site."""
        return dict(self._db.execute("SELECT status, count(*) FROM consent GROUP BY status ORDER BY status").fetchall())

    def close(self) -> None:
        self._db.close()


def _consent_key(key_path: Path, store: Path) -> bytes:
    """The store's pseudonym key: read, or created (0600) when neither it nor a store exists yet."""
    if key_path.resolve().is_relative_to(store.parent.resolve()):
        raise DataError(f"consent store {store}: the key {key_path} must be kept outside its directory")
    try:
        if key_path.is_file():
            if key_path.stat().st_mode & 0o077:
                raise DataError(f"{key_path}: group or others may read this key; chmod 600 it")
            return bytes.fromhex(key_path.read_text(encoding="ascii").strip())
        if store.is_file() and store.stat().st_size > 0 and _pseudonymised(store):
            raise DataError(f"consent store {store}: its key {key_path} is missing; restore it (ids cannot be matched)")
        key = new_pseudonym_key()
        key_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key.hex() + "\n")
        return key
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"consent store key {key_path}: {exc}") from None


def _pseudonymised(store: Path) -> bool:
    """Whether an existing store holds pseudonymised decisions (plaintext ones can still be converted)."""
    try:
        db = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM consent_meta WHERE name='key'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return row is not None
