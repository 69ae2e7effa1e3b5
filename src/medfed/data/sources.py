"""Dataset declarations and the tabular sources behind them (CSV, Parquet), read in streams.

A site admin declares each dataset in ``site.toml`` (``[datasets.<name>]``): where it is, its
format, the schema it must meet, how its columns map onto that schema, tags and the purposes it may
serve. :func:`parse_dataset` turns that TOML table into a frozen :class:`DatasetDecl`, listing every
problem at once. CSV and Parquet are read in record batches through pyarrow (:func:`iter_batches`),
so a file larger than memory can be checked and profiled; :func:`read_table` loads the harmonised
table for a task, and :func:`to_tabular` turns it into the :class:`TabularData` tasks consume.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from medfed.core.errors import ConfigError, DataError, ValidationError
from medfed.data.digest import fingerprint as fingerprint  # re-exported; it lives where pandas is not imported
from medfed.data.fhir import fhir_features
from medfed.data.media import (
    IMAGE_KEYS,
    NOTES_KEYS,
    ImageOptions,
    NotesOptions,
    media_schema,
    parse_image_options,
    parse_notes_options,
)
from medfed.data.omop import connect, omop_features
from medfed.data.schema import (
    ColumnMapping,
    Conformed,
    FeatureSpec,
    Schema,
    conform,
    harmonise,
    parse_features,
)
from medfed.learn.base import TabularData

#: Rows per record batch when streaming a file.
DEFAULT_BATCH_ROWS = 65_536


class SourceFormat(enum.Enum):
    CSV = "csv"
    PARQUET = "parquet"
    FHIR = "fhir"  # a bundle (.json), an NDJSON bulk export (.ndjson), or a directory of them
    OMOP = "omop"  # a DuckDB file (path) or a PostgreSQL database (dsn)
    DICOM = "dicom"  # a directory of DICOM files, one labelled image each (medfed.data.dicom_source)
    NOTES = "notes"  # clinical notes: JSONL, or FHIR DocumentReference (medfed.data.notes_source)


#: Formats whose table is fixed (medfed.data.media.media_schema) and whose content is not tabular.
MEDIA_FORMATS = frozenset({SourceFormat.DICOM, SourceFormat.NOTES})


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetDecl:
    """One dataset a site offers, as declared in its ``site.toml``."""

    name: str
    format: SourceFormat
    path: Path
    schema: Schema
    mappings: tuple[ColumnMapping, ...] = ()
    features: tuple[FeatureSpec, ...] = ()
    tags: tuple[str, ...] = ()
    purposes: tuple[str, ...] = ()
    patient_id: str = ""
    label: str = ""
    encoding: str = "utf-8"
    batch_rows: int = DEFAULT_BATCH_ROWS
    as_of: str = ""
    dsn: str = ""
    images: ImageOptions | None = None  # format = "dicom"
    notes: NotesOptions | None = None  # format = "notes"


_TABLE_KEYS = {
    "format",
    "kind",
    "path",
    "columns",
    "map",
    "features",
    "tags",
    "purposes",
    "patient_id",
    "label",
    "encoding",
    "batch_rows",
    "as_of",
    "dsn",
    "epsilon_budget",
    "delta_budget",
}
_KEYS = _TABLE_KEYS | IMAGE_KEYS | NOTES_KEYS


def _strings(raw: Any, key: str, problems: list[str]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        problems.append(f"{key}: must be a list of strings, got {raw!r}")
        return ()
    return tuple(raw)


def _mappings(raw: Any, problems: list[str]) -> tuple[ColumnMapping, ...]:
    """``map.<target> = "source"`` or ``map.<target> = {source, unit, values, analyte}``."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        problems.append("map: must be a table of target = source")
        return ()
    out = []
    for target, spec in raw.items():
        spec = {"source": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or not isinstance(spec.get("source", target), str):
            problems.append(f"map.{target}: must be a column name or a table {{source, unit, values}}")
            continue
        values = spec.get("values", {})
        if not isinstance(values, dict):
            problems.append(f"map.{target}.values: must be a table of source code = schema value")
            continue
        out.append(
            ColumnMapping(
                target=target,
                source=str(spec.get("source", target)),
                unit=str(spec.get("unit", "")),
                values={str(k): str(v) for k, v in values.items()},
                analyte=str(spec.get("analyte", "")),
            )
        )
    return tuple(out)


def parse_dataset(name: str, table: Mapping[str, Any], *, base: Path, where: str) -> DatasetDecl:
    """A :class:`DatasetDecl` from a ``[datasets.<name>]`` table; paths are relative to ``base``.

    Raises
    ------
    ConfigError
        Every problem in the table (unknown keys, bad format, bad columns, mappings or features),
        each naming ``where`` and the key.
    """
    where = f"{where}: datasets.{name}"
    problems = [f"unknown key {k!r} (allowed: {sorted(_KEYS)})" for k in table if k not in _KEYS]
    try:
        fmt = SourceFormat(table.get("format", table.get("kind", "csv")))
    except ValueError:
        problems.append(f"format: {table.get('format')!r} is not one of {[f.value for f in SourceFormat]}")
        fmt = SourceFormat.CSV
    path, dsn = table.get("path", ""), table.get("dsn", "")
    if not isinstance(path, str) or not isinstance(dsn, str) or not (path or dsn):
        problems.append('needs path = "<file or directory>" (or dsn = "postgresql://..." for omop)')
        path, dsn = "", ""
    schema: Schema | None = None
    features: tuple[FeatureSpec, ...] = ()
    images, notes = _media(fmt, table, base, problems)
    if fmt in MEDIA_FORMATS:
        schema = media_schema(name, images=fmt is SourceFormat.DICOM)
        if "columns" in table:
            problems.append(f"columns: a {fmt.value} dataset has a fixed table {list(schema.names)}; drop columns")
    else:
        try:
            schema = Schema.from_dicts(name, list(table.get("columns", [])), where="columns")
        except (ValidationError, TypeError) as exc:
            problems.extend(getattr(exc, "problems", [str(exc)]))
    if "features" in table:
        try:
            features = parse_features(table["features"], where="features")
        except ValidationError as exc:
            problems.extend(exc.problems)
    batch_rows = table.get("batch_rows", DEFAULT_BATCH_ROWS)
    if not isinstance(batch_rows, int) or isinstance(batch_rows, bool) or batch_rows < 1:
        problems.append(f"batch_rows: must be a positive integer, got {batch_rows!r}")
    decl_args = {k: table.get(k, "") for k in ("patient_id", "label", "as_of")}
    problems.extend(f"{k}: must be a string" for k, v in decl_args.items() if not isinstance(v, str))
    tags = _strings(table.get("tags"), "tags", problems)
    purposes = _strings(table.get("purposes"), "purposes", problems)
    mappings = _mappings(table.get("map"), problems)
    if problems or schema is None:
        raise ConfigError(f"{where}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return DatasetDecl(
        name=name,
        format=fmt,
        path=base / path if path else base,
        schema=schema,
        mappings=mappings,
        features=features,
        tags=tags,
        purposes=purposes,
        encoding=str(table.get("encoding", "utf-8")),
        batch_rows=int(batch_rows),
        dsn=dsn,
        images=images,
        notes=notes,
        **decl_args,
    )


def _media(
    fmt: SourceFormat, table: Mapping[str, Any], base: Path, problems: list[str]
) -> tuple[ImageOptions | None, NotesOptions | None]:
    """The image or notes options of a media dataset; media keys on any other format are problems."""
    if fmt is SourceFormat.DICOM:
        return parse_image_options(table, base=base, problems=problems), None
    if fmt is SourceFormat.NOTES:
        return None, parse_notes_options(table, base=base, problems=problems)
    problems.extend(
        f"{k}: only a dicom or notes dataset takes this key" for k in sorted(IMAGE_KEYS | NOTES_KEYS) if k in table
    )
    return None, None


# --- streaming ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """A slice of a source as strings/raw values; ``first_row`` is its first row's display number."""

    frame: pd.DataFrame
    first_row: int
    row_word: str


def _csv_batches(decl: DatasetDecl) -> Iterator[Batch]:
    # Every column as a string: the schema, not pyarrow's guess, decides types; empty stays empty.
    reader_opts = pacsv.ReadOptions(encoding=decl.encoding, block_size=1 << 20)
    try:
        header = pacsv.open_csv(decl.path, read_options=reader_opts).schema.names
        convert = pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=False)
        reader = pacsv.open_csv(decl.path, read_options=reader_opts, convert_options=convert)
    except (OSError, pa.ArrowInvalid, UnicodeDecodeError, LookupError) as exc:
        raise DataError(f"{decl.path}: cannot be read as CSV ({decl.encoding}): {exc}") from None
    line = 2  # the header is line 1
    pending = pd.DataFrame()
    while True:
        try:
            record_batch = reader.read_next_batch()
        except StopIteration:
            break
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            after = line + len(pending) - 1
            raise DataError(f"{decl.path}: after line {after}: unreadable ({decl.encoding}): {exc}") from None
        fresh = record_batch.to_pandas(types_mapper=pd.ArrowDtype)  # strings stay Arrow strings: vectorised checks
        pending = pd.concat([pending, fresh], ignore_index=True) if len(pending) else fresh
        while len(pending) >= decl.batch_rows:  # pyarrow blocks are bytes; batches are rows
            yield Batch(frame=pending.iloc[: decl.batch_rows].reset_index(drop=True), first_row=line, row_word="line")
            line += decl.batch_rows
            pending = pending.iloc[decl.batch_rows :].reset_index(drop=True)
    if len(pending):
        yield Batch(frame=pending, first_row=line, row_word="line")


def _parquet_batches(decl: DatasetDecl) -> Iterator[Batch]:
    try:
        parquet = pq.ParquetFile(decl.path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"{decl.path}: cannot be read as Parquet: {exc}") from None
    row = 1
    for record_batch in parquet.iter_batches(batch_size=decl.batch_rows):
        yield Batch(frame=record_batch.to_pandas(), first_row=row, row_word="row")
        row += record_batch.num_rows


def iter_batches(decl: DatasetDecl) -> Iterator[Batch]:
    """The raw source in record batches of about ``decl.batch_rows`` rows (CSV and Parquet)."""
    if not decl.path.is_file():
        raise DataError(f"dataset {decl.name}: {decl.path} is not a file")
    if decl.format is SourceFormat.CSV:
        return _csv_batches(decl)
    if decl.format is SourceFormat.PARQUET:
        return _parquet_batches(decl)
    raise DataError(f"dataset {decl.name}: {decl.format.value} sources are not read in batches")


def iter_conformed(decl: DatasetDecl) -> Iterator[Conformed]:
    """Each batch harmonised onto the schema and validated (problems name file, line and column)."""
    for batch in iter_batches(decl):
        where = str(decl.path)
        frame = harmonise(batch.frame, decl.schema, decl.mappings, where=where)
        yield conform(frame, decl.schema, where=where, first_row=batch.first_row, row_word=batch.row_word)


@dataclass(frozen=True, slots=True, kw_only=True)
class Table:
    """A harmonised table and the rows its missing-value policies excluded (counted, per column)."""

    frame: pd.DataFrame
    dropped: Mapping[str, int]


def _as_of(decl: DatasetDecl, as_of: pd.Timestamp | None) -> pd.Timestamp:
    if decl.as_of:
        try:
            return pd.Timestamp(decl.as_of, tz="UTC")
        except ValueError:
            raise DataError(f"dataset {decl.name}: as_of {decl.as_of!r} is not an ISO date") from None
    if as_of is None:
        raise DataError(f"dataset {decl.name}: a {decl.format.value} source needs as_of (the reference date)")
    return as_of


def iter_harmonised(decl: DatasetDecl, *, as_of: pd.Timestamp | None = None) -> Iterator[Conformed]:
    """The dataset as harmonised, validated frames: batches for CSV/Parquet, one frame per patient
    table for FHIR and OMOP (features taken on or before ``as_of``, or the declaration's ``as_of``), the
    index (patient id, label; one row per file or note) for DICOM and notes."""
    if decl.format in (SourceFormat.CSV, SourceFormat.PARQUET):
        yield from iter_conformed(decl)
        return
    if decl.format in MEDIA_FORMATS:  # the index table: one row per image or note (pixels, text stay out)
        yield conform(_media_index(decl), decl.schema, where=str(decl.path), row_word="indexed row")
        return
    day = _as_of(decl, as_of)
    if decl.format is SourceFormat.FHIR:
        wide = fhir_features(decl.path, decl.features, as_of=day)
    else:
        conn = connect(path=None if decl.dsn else decl.path, dsn=decl.dsn)
        try:
            wide = omop_features(
                conn, decl.features, as_of=day, where="OMOP database (dsn)" if decl.dsn else str(decl.path)
            )
        finally:
            conn.close()
    where = str(decl.path)
    frame = harmonise(wide, decl.schema, decl.mappings, where=where)
    yield conform(frame, decl.schema, where=where, first_row=1, row_word="patient row")


def _media_index(decl: DatasetDecl) -> pd.DataFrame:
    """A DICOM or notes dataset's table, every file decoded (a bad one fails validation here)."""
    # imported here: pydicom and the scrubber's word lists load only at sites that declare such data
    if decl.format is SourceFormat.DICOM:
        from medfed.data.dicom_source import index_images

        return index_images(decl, decode=True)[list(decl.schema.names)]
    from medfed.data.notes_source import index_notes

    return index_notes(decl)[list(decl.schema.names)]


def read_table(decl: DatasetDecl, *, as_of: pd.Timestamp | None = None) -> Table:
    """The whole harmonised, validated table of any declared source."""
    frames: list[pd.DataFrame] = []
    dropped: dict[str, int] = {}
    for part in iter_harmonised(decl, as_of=as_of):
        frames.append(part.frame)
        for col, n in part.dropped.items():
            dropped[col] = dropped.get(col, 0) + n
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(decl.schema.names))
    return Table(frame=frame, dropped=dropped)


def to_tabular(
    frame: pd.DataFrame, schema: Schema, features: tuple[str, ...], label: str, test_fraction: float, seed: int
) -> TabularData:
    """A harmonised frame as float32 features and a {0, 1} label, split at random (stratified by label).

    Raises
    ------
    ValidationError
        Unknown or non-numeric columns, missing values in the chosen columns, a label other than
        0/1, or a split that leaves a side empty.
    """
    problems = [f"unknown column {c!r}" for c in (*features, label) if c not in schema.names]
    if not 0.0 < test_fraction < 1.0:
        problems.append(f"test_fraction must be in (0, 1), got {test_fraction}")
    if problems:
        raise ValidationError(problems, where="to_tabular")
    x = frame[list(features)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    y = pd.to_numeric(frame[label].astype("float64"), errors="coerce").to_numpy(dtype=np.float64)
    bad_x = sorted({features[j] for j in np.nonzero(~np.isfinite(x))[1].tolist()})
    problems += [f"column {c!r} has missing or non-numeric values" for c in bad_x]
    if not np.isin(y, (0.0, 1.0)).all():
        problems.append(f"label {label!r} has values other than 0 and 1")
    if problems:
        raise ValidationError(problems, where="to_tabular")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for cls in (0.0, 1.0):  # stratified: each class split in the same proportion
        idx = rng.permutation(np.nonzero(y == cls)[0])
        test[idx[: round(len(idx) * test_fraction)]] = True
    if test.all() or not test.any():
        raise ValidationError(f"{len(y)} rows cannot be split {test_fraction}", where="to_tabular")
    return TabularData(
        x_train=x[~test].astype(np.float32),
        y_train=y[~test].astype(np.float32),
        x_test=x[test].astype(np.float32),
        y_test=y[test].astype(np.float32),
        feature_names=tuple(features),
    )
