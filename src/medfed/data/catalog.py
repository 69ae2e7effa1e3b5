"""A metadata-only catalog of the datasets sites offer, and search over it.

A :class:`CatalogEntry` is built at the node from a dataset's declaration and its local profile:
schema (names, types, units), tags, feature names and codes, purposes, a content fingerprint and
*coarse* counts — 1 to 4 shown as ``"<5"``, 5 to 9 as ``"5-9"``, larger counts rounded to the
nearest 10 — including per-bin counts of numeric columns, so ``age>60`` can be answered without a
row or an exact small count leaving the site. Everything here is a pure function on those records;
no function takes rows. Entries travel as JSON-safe dicts (:meth:`CatalogEntry.to_dict`).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from medfed.core.errors import ValidationError
from medfed.data.profile import DatasetProfile
from medfed.data.sources import DatasetDecl

#: Counts below this are never shown exactly.
SMALL_CELL = 5


def coarse_count(n: int) -> str:
    """``"0"``, ``"<5"`` (1-4), ``"5-9"``, else rounded to the nearest 10 (``"240"``)."""
    if n <= 0:
        return "0"
    if n < SMALL_CELL:
        return f"<{SMALL_CELL}"
    if n < 10:
        return "5-9"
    return str(round(n / 10) * 10)


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogColumn:
    name: str
    type: str
    unit: str = ""
    #: (low, high, coarse count) per bin, for numeric columns with a declared range
    bins: tuple[tuple[float, float, str], ...] = ()
    #: coarse count of 1.0 values, for 0/1 flag features (conditions, medications)
    positives: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogEntry:
    """What a site says about one dataset: metadata and coarse counts only."""

    site: str
    dataset: str
    rows: str
    columns: tuple[CatalogColumn, ...]
    tags: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()
    purposes: tuple[str, ...] = ()
    fingerprint: str = ""
    #: the site's total differential-privacy budget for this dataset (``site.toml``); None: none set
    epsilon_budget: float | None = None
    delta_budget: float | None = None

    def to_dict(self) -> dict[str, Any]:
        budget = {} if self.epsilon_budget is None else {"epsilon_budget": self.epsilon_budget}
        if self.delta_budget is not None:
            budget["delta_budget"] = self.delta_budget
        return budget | {
            "site": self.site,
            "dataset": self.dataset,
            "rows": self.rows,
            "columns": [
                {
                    "name": c.name,
                    "type": c.type,
                    "unit": c.unit,
                    "bins": [list(b) for b in c.bins],
                    "positives": c.positives,
                }
                for c in self.columns
            ],
            "tags": list(self.tags),
            "features": list(self.features),
            "codes": list(self.codes),
            "purposes": list(self.purposes),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CatalogEntry:
        try:
            columns = tuple(
                CatalogColumn(
                    name=str(c["name"]),
                    type=str(c["type"]),
                    unit=str(c.get("unit", "")),
                    bins=tuple((float(lo), float(hi), str(n)) for lo, hi, n in c.get("bins", [])),
                    positives=str(c.get("positives", "")),
                )
                for c in raw["columns"]
            )
            return cls(
                site=str(raw["site"]),
                dataset=str(raw["dataset"]),
                rows=str(raw["rows"]),
                columns=columns,
                **{k: tuple(str(x) for x in raw.get(k, [])) for k in ("tags", "features", "codes", "purposes")},
                fingerprint=str(raw.get("fingerprint", "")),
                epsilon_budget=_budget(raw.get("epsilon_budget")),
                delta_budget=_budget(raw.get("delta_budget")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError(f"malformed catalog entry: {exc!r}", where="catalog") from None


def _budget(value: Any) -> float | None:
    """A reported budget: absent, or a finite number >= 0 (anything else is a malformed entry)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"budget {value!r} is not a finite number >= 0")
    return float(value)


def catalog_entry(
    *,
    site: str,
    profile: DatasetProfile,
    tags: tuple[str, ...],
    codes: Mapping[str, tuple[str, ...]],
    purposes: tuple[str, ...],
    fingerprint: str,
) -> CatalogEntry:
    """The entry for one dataset from its local profile (``codes``: feature name -> its codes)."""
    columns = []
    for c in profile.columns:
        present = c.count - c.missing
        is_flag = c.mean is not None and c.minimum is not None and c.minimum >= 0 and (c.maximum or 0) <= 1
        positives = coarse_count(round(c.mean * present)) if is_flag and c.mean is not None and c.name in codes else ""
        bins = tuple((lo, hi, coarse_count(n)) for lo, hi, n in c.histogram)
        columns.append(CatalogColumn(name=c.name, type=c.type.value, unit=c.unit, bins=bins, positives=positives))
    return CatalogEntry(
        site=site,
        dataset=profile.dataset,
        rows=coarse_count(profile.rows),
        columns=tuple(columns),
        tags=tags,
        features=tuple(codes),
        codes=tuple(sorted({code for cs in codes.values() for code in cs})),
        purposes=purposes,
        fingerprint=fingerprint,
    )


def entry_for(site: str, decl: DatasetDecl, profile: DatasetProfile, *, fingerprint: str) -> CatalogEntry:
    """The catalog entry of a declared dataset, from its local profile."""
    codes = {f.name: f.codes for f in decl.features}
    return catalog_entry(
        site=site, profile=profile, tags=decl.tags, codes=codes, purposes=decl.purposes, fingerprint=fingerprint
    )


# --- search ---------------------------------------------------------------------------------------

_OPS: Mapping[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "=": operator.eq,
}
_COMPARISON = re.compile(r"^([A-Za-z_]\w*)(>=|<=|>|<|=)(-?\d+(?:\.\d+)?)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchHit:
    site: str
    dataset: str
    rows: str
    matched: tuple[str, ...]
    #: for each comparison, the coarse count of rows in bins that lie wholly on its side ("?" if unknown)
    estimates: tuple[tuple[str, str], ...] = ()


def _words(text: str) -> set[str]:
    return set(re.split(r"[\s_\-|/.,]+", text.lower())) - {""}


def _vocabulary(entry: CatalogEntry) -> set[str]:
    words: set[str] = set()
    for text in (*entry.tags, *entry.features, *entry.codes, *(c.name for c in entry.columns), entry.dataset):
        words |= _words(text) | {text.lower()}
    return words


def _overlaps(lo: float, hi: float, op: str, value: float) -> bool:
    if op in (">", ">="):
        return _OPS[op](hi, value)
    if op in ("<", "<="):
        return _OPS[op](lo, value)
    return lo <= value <= hi


def _estimate(entry: CatalogEntry, column: str, op: str, value: float) -> str | None:
    """Coarse count of rows in bins that overlap ``column op value`` (an upper bound); ``None`` if
    the dataset has no such numeric column, ``"?"`` if it has no declared range to bin by."""
    col = next((c for c in entry.columns if c.name.lower() == column.lower()), None)
    if col is None or col.type not in ("float", "integer"):
        return None
    if not col.bins:
        return "?"
    inside = [n for lo, hi, n in col.bins if _overlaps(lo, hi, op, value)]
    exact = sum(int(n) for n in inside if n.isdigit())
    if any(not n.isdigit() for n in inside):  # some bins are small cells: say so, never sum them
        bound = sum(SMALL_CELL if n == f"<{SMALL_CELL}" else 10 for n in inside if not n.isdigit())
        return f"{exact}+" if exact else f"<{bound}"
    return str(exact)


def search(entries: Iterable[CatalogEntry], query: str) -> list[SearchHit]:
    """Entries matching every word of ``query`` (column, feature, tag or code names) and having
    every compared column (``age>60``) with at least one row possibly on that side, best first."""
    text = re.sub(r"\s*(>=|<=|>|<|=)\s*", r"\1", query.strip())
    tokens = text.split()
    comparisons = [m.groups() for t in tokens if (m := _COMPARISON.match(t))]
    words = [t.lower() for t in tokens if not _COMPARISON.match(t)]
    if not tokens:
        raise ValidationError("empty query", where="catalog search")
    hits = []
    for entry in entries:
        vocab = _vocabulary(entry)
        if not all(w in vocab or any(w in v for v in vocab) for w in words):
            continue
        estimates = []
        for column, op, value in comparisons:
            est = _estimate(entry, column, op, float(value))
            if est is None or est == "0":
                break
            estimates.append((f"{column}{op}{value}", est))
        else:
            hits.append(
                SearchHit(
                    site=entry.site,
                    dataset=entry.dataset,
                    rows=entry.rows,
                    matched=tuple(words) + tuple(e[0] for e in estimates),
                    estimates=tuple(estimates),
                )
            )
    return sorted(hits, key=lambda h: (h.site, h.dataset))
