"""Schema drift: which fields each (Workload, RecordType, Operation) carries, of which JSON type.

``SchemaObserver`` folds the records of a blob into ``SchemaObservation`` rows, one per
(Workload, RecordType, Operation, FieldPath, FieldType), with the earliest and latest
CreationTime and the number of records. The local lake merges these rows into the stored ones
(min, max, sum); ADX appends them per blob and the ``SchemaObservationSummary`` view folds them
the same way. A new operation, a new field, a field that stopped arriving or changed type is
then one KQL query away.

Field paths: object keys joined with ``.``; the elements of an array as ``[]``
(``Folders[].FolderItems[].SizeInBytes``); the entries of the name/value arrays at the top of a
record (Parameters, ExtendedProperties, ModifiedProperties, OperationProperties,
DeviceProperties) by their name, ``ExtendedProperties[UserAgent]``, typed by the entry's
``Value`` (else ``NewValue``), because those names are the fields there. Types: string, int,
real, bool, null, object, array. Bounds that keep the table small: a path has at most
``MAX_DEPTH`` keys (deeper values are reported as their container), at most
``MAX_ARRAY_ITEMS`` elements of an array are looked at, at most ``MAX_PATHS`` paths come from one
shape, an entry name longer than ``MAX_NAME`` (or not a string) is reported as ``Field[]``. Keys
are kept as delivered, so a key containing ``.`` or ``[`` reads ambiguously; the documented
schema has none.

Cost. Walking a record's nested values costs as much as flattening it, so not every record is
walked below its top level:

* every record's top level is observed exactly: its keys, and the type of every value;
* the nested values (objects, arrays, name/value entries) are walked in full for the first
  record of each top-level signature (group, keys, value types, and the size of every object
  and array), and again every ``RECHECK_EVERY``-th record with that signature; the records in
  between are credited with the nested shape last walked. Signatures are remembered across
  blobs (per process).

A nested field that comes or goes changes a size and is seen at once; a change that keeps every
size (a field swapped for another, a nested int turned real) is seen within ``RECHECK_EVERY``
records of that signature. FirstSeen, LastSeen and Records of nested paths can therefore be off
by the records between two walks; top-level paths are exact. ``field_paths`` walks one record in
full.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from itertools import compress, repeat
from operator import itemgetter
from typing import Any, overload

import orjson

from function_app.records.flatten import ARRAY_FIELDS

MAX_DEPTH = 8
MAX_ARRAY_ITEMS = 256
MAX_PATHS = 1000
MAX_NAME = 100
RECHECK_EVERY = 32

TYPE_NAMES: dict[type, str] = {
    str: "string", int: "int", float: "real", bool: "bool", type(None): "null", dict: "object", list: "array",
}
"""The FieldType of each Python type a JSON value can have; any other type is "other"."""
_NAMED_ARRAYS = frozenset(ARRAY_FIELDS)
_CONTAINER_TYPES: dict[type, bool] = {dict: True, list: True}
_IS_CONTAINER: Callable[[type], bool | None] = _CONTAINER_TYPES.get
_NONE = type(None)
_ONLY_OBJECTS = frozenset({dict})

# A record's shape, as nested tuples that hash and compare at C speed (orjson hands out one
# str object per repeated key, so keys hash from cache):
#   object: (keys, value types, shapes of the container values in key order)
#   array:  (frozenset of element types, distinct shapes of the container elements)
#   name/value array at the top: (names, types of Value, types of NewValue)
# Building it touches each key once without making a path string; paths are made in rows(),
# once per distinct shape of the batch.
Shape = tuple[Any, ...]


class _Known:
    """A shape met before: its rows' fixed columns (made once) and how long to trust it unwalked."""

    __slots__ = ("_fields", "_templates", "shape", "trust")

    def __init__(self, shape: Shape, trust: int) -> None:
        self.shape = shape
        self.trust = trust
        self._templates: dict[tuple[str, str], dict[str, Any]] | None = None
        self._fields: orjson.Fragment | None = None

    def fields(self, group: tuple[str, int, str]) -> orjson.Fragment:
        """The shape's (FieldPath, FieldType) pairs as the JSON array ``[[path, type], ...]``, in
        ``templates`` order, encoded once: what ``SchemaObserver.grouped`` sends for it."""
        if self._fields is None:
            self._fields = orjson.Fragment(orjson.dumps(list(self.templates(group))))
        return self._fields

    def templates(self, group: tuple[str, int, str]) -> dict[tuple[str, str], dict[str, Any]]:
        """(path, type) -> a row with every column but FirstSeen, LastSeen and Records filled.

        A shape belongs to one group (the group is part of its signature), so the rows are made
        once and copied for each batch: blobs in steady state repeat the same few shapes.
        """
        if self._templates is None:
            workload, record_type, operation = group
            self._templates = {
                (path, kind): {
                    "Workload": workload,
                    "RecordType": record_type,
                    "Operation": operation,
                    "FieldPath": path,
                    "FieldType": kind,
                    "FirstSeen": None,
                    "LastSeen": None,
                    "Records": 0,
                }
                for path, kinds in shape_paths(self.shape).items()
                for kind in sorted(kinds)
            }
        return self._templates


class _TopLevel:
    """What one top-level signature (group, keys, value types) implies, worked out once."""

    __slots__ = ("by_sizes", "container_keys", "containers", "flat", "named")

    def __init__(self, keys: tuple[Any, ...], types: tuple[type, ...]) -> None:
        self.container_keys = tuple(k for k, t in zip(keys, types, strict=True) if t is dict or t is list)
        # itemgetter fetches the object and array values at C speed (one key: the value itself).
        self.containers: Callable[[dict[Any, Any]], Any] = (
            itemgetter(*self.container_keys) if self.container_keys else _no_containers
        )
        self.flat = _Known((keys, types, ()), 0) if not self.container_keys else None
        # Name/value arrays (ModifiedProperties, ...) name their fields in the entries: two
        # records with arrays of one size can still carry different fields, so the names are
        # part of what must match before a shape is trusted unwalked.
        self.named = tuple(i for i, k in enumerate(self.container_keys) if k in _NAMED_ARRAYS)
        # Sizes of the object and array values -> the shape of the record last walked with them.
        self.by_sizes: dict[tuple[Any, ...], _Known] = {}


def _no_containers(record: dict[Any, Any]) -> tuple[()]:
    return ()


def _entry_names(entries: Any) -> tuple[Any, ...]:
    if type(entries) is not list:
        return ()
    names = []
    for entry in entries[:MAX_ARRAY_ITEMS]:
        name = entry.get("Name") if type(entry) is dict else None
        # Only text names take part: anything else (unhashable too) stands for "no name".
        names.append(name if type(name) is str else None)
    return tuple(names)


# Top-level signature -> what it implies. Shared by every observer of the process, so blobs in
# steady state walk (and expand) almost nothing; bounded by clearing.
_TOP: dict[tuple[Any, ...], _TopLevel] = {}
_TOP_MAX = 20_000


class SchemaObserver(Sequence[dict[str, Any]]):
    """Accumulates the field paths of the records of one batch; ``rows()`` gives the table rows.

    An observer also reads as the sequence of its rows (made when first read), so it can stand
    for them wherever a blob's table rows go, and a writer that commits many blobs at once can
    ``fold`` their observers first: one row per (group, path, type) for the whole commit instead of
    one per blob, which for blobs of a few dozen records was ten rows per record to build, convert
    and merge."""

    __slots__ = ("_fallback", "_rows", "_tallies")

    def __init__(self, fallback_time: datetime) -> None:
        """*fallback_time* stands in for the CreationTime of records that have none."""
        self._fallback = fallback_time
        # id(known shape) -> [group, known shape, first seen, last seen, records]; the list holds
        # the shape, so the id cannot be reused while the observer lives.
        self._tallies: dict[int, list[Any]] = {}
        self._rows: list[dict[str, Any]] | None = None

    @classmethod
    def fold(cls, observers: Iterable[SchemaObserver]) -> SchemaObserver:
        """One observer holding what all of *observers* saw (earliest, latest, records summed)."""
        observers = list(observers)
        folded = cls(observers[0]._fallback if observers else datetime.min)
        tallies = folded._tallies
        for observer in observers:
            for key, (group, known, first, last, count) in observer._tallies.items():
                tally = tallies.get(key)
                if tally is None:
                    tallies[key] = [group, known, first, last, count]
                    continue
                if first < tally[2]:
                    tally[2] = first
                if last > tally[3]:
                    tally[3] = last
                tally[4] += count
        return folded

    def _materialised(self) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows = self.rows()
        return self._rows

    def __len__(self) -> int:
        # Counted without making the rows: a writer that folds observers may ask a blob's for its
        # size and never read its rows.
        if self._rows is not None:
            return len(self._rows)
        # One row per (path, type) of a group, whichever of its shapes saw it (as ``rows`` folds them).
        return sum(len(set().union(*(tally[1].templates(group) for tally in tallies)))
                   for group, tallies in self._by_group().items())

    def __bool__(self) -> bool:
        # A writer asks whether there is anything to write before it iterates: answered by the
        # first shape with a field (templates are made once per shape) instead of counting every
        # row (``__len__``), which the ADX sink paid again for each batch's fold.
        return any(tally[1].templates(tally[0]) for tally in self._tallies.values())

    def _by_group(self) -> dict[tuple[str, int, str], list[list[Any]]]:
        """The tallies of each (Workload, RecordType, Operation): one per shape seen."""
        by_group: dict[tuple[str, int, str], list[list[Any]]] = {}
        for tally in self._tallies.values():
            by_group.setdefault(tally[0], []).append(tally)
        return by_group

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | Sequence[dict[str, Any]]:
        return self._materialised()[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._materialised())

    def add(self, record: Any, row: dict[str, Any]) -> None:
        """Observe one record and its ``AuditRecord`` row; never raises on record content.

        A value that is not a JSON object is not observed: it has no fields.
        """
        if type(record) is not dict:
            return
        self._rows = None
        group = (row["Workload"] or "", row["RecordType"], row["Operation"])
        # The one pass calling type() per value is most of the cost of observing a record.
        types = tuple(map(type, record.values()))
        keys = tuple(record)
        signature = (group, keys, types)
        top = _TOP.get(signature)
        if top is None:
            if len(_TOP) >= _TOP_MAX:
                _TOP.clear()
            top = _TOP[signature] = _TopLevel(keys, types)
        known = top.flat
        if known is None:
            # Walking nested values costs as much as flattening the record, so a record whose
            # top level and the sizes of its objects and arrays match a record walked in full
            # recently is taken to share its nested shape (see the module docstring).
            containers = top.containers(record)
            if len(top.container_keys) == 1:
                containers = (containers,)
            sizes: tuple[Any, ...] = tuple(map(len, containers))
            if top.named:
                sizes += tuple(_entry_names(containers[i]) for i in top.named)
            known = top.by_sizes.get(sizes)
            if known is None or known.trust <= 0:
                inner = tuple(map(_top_container_shape, top.container_keys, containers))
                shape = (keys, types, inner)
                if known is None or known.shape != shape:
                    known = top.by_sizes[sizes] = _Known(shape, RECHECK_EVERY - 1)
                else:
                    # Re-walked and unchanged: keep the object, so tallies and paths carry on.
                    known.trust = RECHECK_EVERY - 1
            else:
                known.trust -= 1
        time = row["TimeGenerated"] or self._fallback
        tally = self._tallies.get(id(known))
        if tally is None:
            self._tallies[id(known)] = [group, known, time, time, 1]
            return
        if time < tally[2]:
            tally[2] = time
        elif time > tally[3]:
            tally[3] = time
        tally[4] += 1

    def rows(self) -> list[dict[str, Any]]:
        """``SchemaObservation`` rows, one per (Workload, RecordType, Operation, FieldPath, FieldType)."""
        out = []
        for group, tallies in self._by_group().items():
            if len(tallies) == 1:
                _, known, first, last, count = tallies[0]
                for template in known.templates(group).values():
                    row = template.copy()
                    row["FirstSeen"], row["LastSeen"], row["Records"] = first, last, count
                    out.append(row)
                continue
            out.extend(_folded(group, tallies))
        return out

    def grouped(self) -> list[dict[str, Any]]:
        """The same rows as ``rows``, grouped for the ADX staging table: one dict per set of rows
        that share Workload, RecordType, Operation, FirstSeen, LastSeen and Records, with their
        (FieldPath, FieldType) pairs in ``Fields`` as ``[[path, type], ...]``. ADX's update policy
        expands them (``lake.staging``).

        An operation seen in one shape, the common case, is one dict whose ``Fields`` is encoded once
        per shape and process (``_Known.fields``). An operation seen in several shapes is folded row
        by row, as ``rows`` folds it, and its rows with the same tallies are grouped. In the bench's
        Azure part a batch of ~1,270 records had ~1,220 rows, each built and encoded by the client
        (~8 µs a record); the ~370-720 rows of 30 of the emulator's blobs are 22-48 dicts."""
        out: list[dict[str, Any]] = []
        for group, tallies in self._by_group().items():
            if len(tallies) == 1:
                _, known, first, last, count = tallies[0]
                if known.templates(group):
                    out.append({"Workload": group[0], "RecordType": group[1], "Operation": group[2],
                                "FirstSeen": first, "LastSeen": last, "Records": count,
                                "Fields": known.fields(group)})
                continue
            # Several shapes: fold row by row, then group the rows that came out alike (the paths
            # every shape has share their tallies), so each key is still one row per ingestion.
            alike: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
            for row in _folded(group, tallies):
                tally = (row["FirstSeen"], row["LastSeen"], row["Records"])
                element = alike.get(tally)
                if element is None:
                    element = alike[tally] = as_grouped(row)
                else:
                    element["Fields"].append([row["FieldPath"], row["FieldType"]])
            out.extend(alike.values())
        return out


def _folded(group: tuple[str, int, str], tallies: list[list[Any]]) -> Iterable[dict[str, Any]]:
    """The rows of one operation seen in several shapes: the paths they share folded (min, max, sum)."""
    fields: dict[tuple[str, str], dict[str, Any]] = {}
    for _, known, first, last, count in tallies:
        for pair, template in known.templates(group).items():
            row = fields.get(pair)
            if row is None:
                row = fields[pair] = template.copy()
                row["FirstSeen"], row["LastSeen"], row["Records"] = first, last, count
                continue
            if first < row["FirstSeen"]:
                row["FirstSeen"] = first
            if last > row["LastSeen"]:
                row["LastSeen"] = last
            row["Records"] += count
    return fields.values()


def as_grouped(row: Mapping[str, Any]) -> dict[str, Any]:
    """One ``SchemaObservation`` row in the grouped form of ``SchemaObserver.grouped``."""
    grouped = {name: row.get(name) for name in _GROUPED}
    grouped["Fields"] = [[row.get("FieldPath"), row.get("FieldType")]]
    return grouped


_GROUPED = ("Workload", "RecordType", "Operation", "FirstSeen", "LastSeen", "Records")


def field_paths(record: Any) -> dict[str, tuple[str, ...]]:
    """Every field path of *record* with the JSON types seen there, sorted (one record's part)."""
    if type(record) is not dict:
        return {}
    return {path: tuple(sorted(kinds)) for path, kinds in shape_paths(record_shape(record)).items()}


# ---------------------------------------------------------------------------------------------
# shapes


def record_shape(record: dict[Any, Any]) -> Shape:
    """The shape of a record (see ``Shape``); equal for records with the same fields and types."""
    values = record.values()
    types = tuple(map(type, values))
    keys = tuple(record)
    if dict not in types and list not in types:
        return (keys, types, ())
    flags = tuple(map(_IS_CONTAINER, types))
    return (keys, types, tuple(map(_top_container_shape, compress(keys, flags), compress(values, flags))))


def _top_container_shape(key: Any, value: Any) -> Shape:
    if type(value) is dict:
        return _object_shape(value, 2)
    if key in _NAMED_ARRAYS:
        return _named_shape(value)
    return _array_shape(value, 2)


def _container_shape(value: Any, depth: int) -> Shape:
    return _object_shape(value, depth) if type(value) is dict else _array_shape(value, depth)


def _object_shape(obj: dict[Any, Any], depth: int) -> Shape:
    """An object whose keys are at nesting *depth* (the record's own keys are depth 1)."""
    values = obj.values()
    types = tuple(map(type, values))
    if depth >= MAX_DEPTH or (dict not in types and list not in types):
        return (tuple(obj), types, ())
    flags = tuple(map(_IS_CONTAINER, types))
    return (tuple(obj), types, tuple(map(_container_shape, compress(values, flags), repeat(depth + 1))))


def _array_shape(items: list[Any], depth: int) -> Shape:
    """An array whose object elements have their keys at nesting *depth*."""
    if len(items) > MAX_ARRAY_ITEMS:
        items = items[:MAX_ARRAY_ITEMS]
    kinds = frozenset(map(type, items))
    if dict not in kinds and list not in kinds:
        return (kinds, ())
    if depth > MAX_DEPTH:
        return (kinds, ())
    if kinds == _ONLY_OBJECTS:
        # The common case (Actor, Target, FolderItems, ...): the distinct (keys, value types) of
        # the elements, found without a Python-level step per element.
        distinct = dict.fromkeys(zip(
            map(tuple, items), map(tuple, map(map, repeat(type), map(dict.values, items))), strict=True,
        ))
        if not any(dict in types or list in types for _, types in distinct):
            return (kinds, tuple((keys, types, ()) for keys, types in distinct))
    elements = dict.fromkeys(
        map(_container_shape, compress(items, map(_IS_CONTAINER, map(type, items))), repeat(depth))
    )
    return (kinds, tuple(elements))


def _named_shape(entries: list[Any]) -> Shape:
    """A top-level name/value array: the names with the types of Value and NewValue."""
    if len(entries) > MAX_ARRAY_ITEMS:
        entries = entries[:MAX_ARRAY_ITEMS]
    if frozenset(map(type, entries)) != _ONLY_OBJECTS:
        return _array_shape(entries, 2)
    get = dict.get
    return (
        tuple(map(get, entries, repeat("Name"))),
        tuple(map(type, map(get, entries, repeat("Value")))),
        tuple(map(type, map(get, entries, repeat("NewValue")))),
    )


def shape_paths(shape: Shape) -> dict[str, frozenset[str]]:
    """Path -> FieldType names of every field a shape holds, at most ``MAX_PATHS`` paths."""
    seen: dict[str, set[str]] = {}
    _object_paths(shape, "", seen, top=True)
    return {path: frozenset(kinds) for path, kinds in seen.items()}


def _note(seen: dict[str, set[str]], path: str, kind: type) -> None:
    kinds = seen.get(path)
    if kinds is None:
        if len(seen) >= MAX_PATHS:
            return
        kinds = seen[path] = set()
    kinds.add(TYPE_NAMES.get(kind, "other"))


def _object_paths(shape: Shape, prefix: str, seen: dict[str, set[str]], *, top: bool = False) -> None:
    keys, types, inner = shape
    containers = iter(inner)
    for key, kind in zip(keys, types, strict=True):
        path = prefix + (key if type(key) is str else str(key))
        _note(seen, path, kind)
        if kind is not dict and kind is not list:
            continue
        child = next(containers, None)
        if child is None:  # deeper than MAX_DEPTH
            continue
        if kind is dict:
            _object_paths(child, path + ".", seen)
        elif top and key in _NAMED_ARRAYS and len(child) == 3:
            _named_paths(child, path, seen)
        else:
            _array_paths(child, path + "[]", seen)


def _array_paths(shape: Shape, path: str, seen: dict[str, set[str]]) -> None:
    kinds, elements = shape
    for kind in kinds:
        _note(seen, path, kind)
    for element in elements:
        if len(element) == 3:
            _object_paths(element, path + ".", seen)
        else:
            _array_paths(element, path + "[]", seen)


def _named_paths(shape: Shape, field: str, seen: dict[str, set[str]]) -> None:
    names, value_types, new_value_types = shape
    for name, value_type, new_value_type in zip(names, value_types, new_value_types, strict=True):
        if type(name) is str and name and len(name) <= MAX_NAME:
            _note(seen, f"{field}[{name}]", value_type if value_type is not _NONE else new_value_type)
        else:
            _note(seen, field + "[]", dict)
