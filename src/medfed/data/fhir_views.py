"""Declarative views that flatten FHIR resources into rows, after SQL-on-FHIR v2 ViewDefinitions.

A view names a resource type, optional ``where`` filters and a ``select`` of columns, each column a
path in a FHIRPath subset::

    expr   := path | path = literal
    path   := step ("." step)*
    step   := name | name.ofType(Type) | where(path = 'literal') | where(path) | first() | exists()
            | getResourceKey() | getReferenceKey()

``select`` entries may unnest a repeating element with ``forEach`` (one row per element) or
``forEachOrNull`` (and one row of nulls when there is none), and nest further ``select`` lists; sibling
selects are cross-joined, as the specification says (https://build.fhir.org/ig/FHIR/sql-on-fhir-v2/).
Paths are compiled once into closures, so flattening is a few dict look-ups per cell, no models.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from medfed.core.errors import ValidationError

Items = list[Any]
Step = Callable[[Items], Items]
Path = Callable[[Items], Items]


class ColumnKind(enum.Enum):
    STRING = "string"
    DECIMAL = "decimal"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "dateTime"


_PRIMITIVE: dict[ColumnKind, tuple[type, ...]] = {
    ColumnKind.STRING: (str,),
    ColumnKind.DECIMAL: (int, float),
    ColumnKind.INTEGER: (int,),
    ColumnKind.BOOLEAN: (bool,),
    ColumnKind.DATE: (str,),
    ColumnKind.DATETIME: (str,),
}
_LITERAL = re.compile(r"^'((?:[^'\\]|\\.)*)'$|^(-?\d+(?:\.\d+)?)$|^(true|false)$")
_CALL = re.compile(r"^([A-Za-z]+)\((.*)\)$", re.S)


def _split(path: str, sep: str = ".") -> list[str]:
    """Split at ``sep`` outside parentheses and quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(path):
        if ch == "'" and (i == 0 or path[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and path.startswith(sep, i):
            parts.append(path[start:i])
            start = i + len(sep)
    parts.append(path[start:])
    if depth or quoted:
        raise ValidationError(f"unbalanced parentheses or quotes in path {path!r}")
    return [p.strip() for p in parts]


def _member(name: str) -> Step:
    def step(items: Items) -> Items:
        out: Items = []
        for item in items:
            if not isinstance(item, dict):
                continue
            value = item.get(name)
            if value is None:  # a choice element (value[x]): any valueQuantity, valueString, ...
                value = [v for k, v in item.items() if k.startswith(name) and k[len(name) : len(name) + 1].isupper()]
            if isinstance(value, list):
                out.extend(value)
            elif value is not None:
                out.append(value)
        return out

    return step


def _literal(text: str) -> object:
    m = _LITERAL.match(text.strip())
    if not m:
        raise ValidationError(f"unsupported literal {text!r} (use 'text', a number, true or false)")
    if m.group(1) is not None:
        return m.group(1).replace("\\'", "'")
    if m.group(2) is not None:
        return float(m.group(2)) if "." in m.group(2) else int(m.group(2))
    return m.group(3) == "true"


def _where(arg: str) -> Step:
    eq = _split(arg, "=")
    if len(eq) == 2:
        lhs, value = compile_path(eq[0]), _literal(eq[1])
        return lambda items: [i for i in items if value in lhs([i])]
    if len(eq) == 1:
        cond = compile_path(arg)
        return lambda items: [i for i in items if any(v is not False for v in cond([i]))]
    raise ValidationError(f"where({arg}): only path = literal or a path is supported")


def _reference_key(items: Items) -> Items:
    out = []
    for item in items:
        ref = item.get("reference") if isinstance(item, dict) else None
        if isinstance(ref, str):
            out.append(ref.removeprefix("urn:uuid:").rsplit("/", 1)[-1])
    return out


_FUNCTIONS: Mapping[str, Step] = {
    "first": lambda items: items[:1],
    "exists": lambda items: [bool(items)],
    "empty": lambda items: [not items],
    "getReferenceKey": _reference_key,
    "getResourceKey": lambda items: [i["id"] for i in items if isinstance(i, dict) and "id" in i],
}


def compile_path(path: str) -> Path:
    """A FHIRPath-subset expression as a function from a collection to a collection."""
    sides = _split(path, "=")
    if len(sides) == 2:  # path = literal: a one-element boolean collection
        lhs, value = compile_path(sides[0]), _literal(sides[1])
        return lambda items: [value in lhs(items)]
    steps: list[Step] = []
    parts = _split(path)
    i = 0
    while i < len(parts):
        part = parts[i]
        call = _CALL.match(part)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part) and not call:
            raise ValidationError(f"unsupported step {part!r} in path {path!r}")
        if call is None:
            nxt = _CALL.match(parts[i + 1]) if i + 1 < len(parts) else None
            if nxt and nxt.group(1) == "ofType":  # value.ofType(Quantity) reads valueQuantity
                steps.append(_member(part + nxt.group(2).strip()[:1].upper() + nxt.group(2).strip()[1:]))
                i += 2
                continue
            steps.append(_member(part))
        elif call.group(1) == "where":
            steps.append(_where(call.group(2)))
        elif call.group(1) in _FUNCTIONS:
            if call.group(2).strip() and call.group(1) != "getReferenceKey":  # getReferenceKey(Patient) is allowed
                raise ValidationError(f"{call.group(1)}() takes no argument in {path!r}")
            steps.append(_FUNCTIONS[call.group(1)])
        else:
            raise ValidationError(
                f"unsupported function {call.group(1)!r} in {path!r} (known: where, ofType, {sorted(_FUNCTIONS)})"
            )
        i += 1

    def run(items: Items) -> Items:
        for step in steps:
            items = step(items)
        return items

    return run


# --- view definitions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewColumn:
    name: str
    path: str
    kind: ColumnKind = ColumnKind.STRING
    compiled: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Select:
    columns: tuple[ViewColumn, ...] = ()
    for_each: str = ""
    or_null: bool = False
    selects: tuple[Select, ...] = ()
    unnest: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewDefinition:
    """A flattening of one resource type into rows; build with :meth:`from_dict`."""

    name: str
    resource: str
    select: tuple[Select, ...]
    where: tuple[Path, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in _columns(self.select))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ViewDefinition:
        """Parse a ViewDefinition-shaped dict, collecting every problem (bad paths, kinds, names)."""
        problems: list[str] = []
        name = str(raw.get("name", raw.get("resource", "?")))
        if not isinstance(raw.get("resource"), str):
            problems.append("needs resource = '<FHIR resource type>'")
        select = tuple(s for i, r in enumerate(raw.get("select", [])) if (s := _select(r, f"select[{i}]", problems)))
        if not select:
            problems.append("needs at least one select")
        where = []
        for i, w in enumerate(raw.get("where", [])):
            try:
                where.append(compile_path(w["path"] if isinstance(w, dict) else str(w)))
            except (ValidationError, KeyError) as exc:
                problems.append(f"where[{i}]: {exc}")
        names = [c.name for c in _columns(select)]
        problems += [f"column {n!r} declared twice" for n in sorted({n for n in names if names.count(n) > 1})]
        if problems:
            raise ValidationError(problems, where=f"view {name}")
        return cls(name=name, resource=str(raw["resource"]), select=select, where=tuple(where))


def _columns(selects: Iterable[Select]) -> Iterable[ViewColumn]:
    for s in selects:
        yield from s.columns
        yield from _columns(s.selects)


def _select(raw: Any, where: str, problems: list[str]) -> Select | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a table")
        return None
    columns = []
    for j, col in enumerate(raw.get("column", [])):
        try:
            kind = ColumnKind(col.get("type", "string"))
            columns.append(
                ViewColumn(name=col["name"], path=col["path"], kind=kind, compiled=compile_path(col["path"]))
            )
        except (ValidationError, ValueError, KeyError, AttributeError) as exc:
            problems.append(f"{where}.column[{j}]: {exc} (needs name, path, type in {[k.value for k in ColumnKind]})")
    unnest_expr = raw.get("forEach") or raw.get("forEachOrNull") or ""
    unnest = None
    if unnest_expr:
        try:
            unnest = compile_path(unnest_expr)
        except ValidationError as exc:
            problems.append(f"{where}.forEach: {exc}")
    nested = tuple(
        s for i, r in enumerate(raw.get("select", [])) if (s := _select(r, f"{where}.select[{i}]", problems))
    )
    return Select(
        columns=tuple(columns), for_each=unnest_expr, or_null="forEachOrNull" in raw, selects=nested, unnest=unnest
    )


Row = dict[str, Any]


def _value(col: ViewColumn, node: Any, where: str) -> Any:
    if col.compiled is None:
        raise ValidationError(f"column {col.name!r} is not compiled: build views with ViewDefinition.from_dict")
    found = col.compiled([node])
    if not found:
        return None
    if len(found) > 1:
        raise ValidationError(
            f"{where}: {col.path}: {len(found)} values for column {col.name!r}; use first() or forEach"
        )
    value = found[0]
    ok = _PRIMITIVE[col.kind]
    if not isinstance(value, ok) or (isinstance(value, bool) and col.kind is not ColumnKind.BOOLEAN):
        raise ValidationError(f"{where}: {col.path}: {value!r} is not a FHIR {col.kind.value}")
    return value


def _rows(select: Select, node: Any, where: str) -> list[Row]:
    nodes = select.unnest([node]) if select.unnest is not None else [node]
    if not nodes and select.or_null:
        return [dict.fromkeys((c.name for c in _columns([select])), None)]
    out: list[Row] = []
    for item in nodes:
        base = {c.name: _value(c, item, where) for c in select.columns}
        out.extend({**base, **extra} for extra in _cross(select.selects, item, where))
    return out


def _cross(selects: tuple[Select, ...], node: Any, where: str) -> list[Row]:
    rows: list[Row] = [{}]
    for s in selects:
        rows = [{**a, **b} for a in rows for b in _rows(s, node, where)]
    return rows


def evaluate(view: ViewDefinition, resource: Mapping[str, Any], *, where: str) -> list[Row]:
    """The rows ``view`` makes of one resource (none if it is another type or fails a filter).

    Raises
    ------
    ValidationError
        A value of the wrong FHIR type, or several values for a single-valued column; the message
        names ``where`` (file and line or entry) and the path.
    """
    if resource.get("resourceType") != view.resource:
        return []
    if any(not any(v is not False for v in w([resource])) for w in view.where):
        return []
    return _cross(view.select, resource, where)
