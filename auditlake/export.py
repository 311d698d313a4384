"""Export the tables of a local lake to Parquet, CSV or JSON Lines files: a backup that other tools read.

The lake is opened read-only, so an export never changes it; each table is written to a temporary name
in the output directory and renamed into place once complete, so a file named ``<Table>.<ext>`` is
always a whole table, never what an interrupted export left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from auditlake.lake.duckdb_lake import LocalLake
from function_app.lake.schema import TABLES

FORMATS: dict[str, str] = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}
"""Format name → file extension."""

# DuckDB's COPY options per format. jsonl is DuckDB's `json` format, which writes one object per line.
_COPY_OPTIONS: dict[str, str] = {
    "parquet": "FORMAT parquet, COMPRESSION zstd",
    "csv": "FORMAT csv, HEADER true",
    "jsonl": "FORMAT json",
}

# The lake keeps UTC datetimes without a zone. Parquet gets them marked as UTC instants so other readers
# do not take them for local time; the text formats get ISO 8601 ending in Z, as the CLI prints them.
_ISO_Z = "%Y-%m-%dT%H:%M:%S.%fZ"


class ExportError(Exception):
    """An export that cannot be done or did not finish; the message is one line saying what and why."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


@dataclass(frozen=True, slots=True)
class ExportedTable:
    """One table written: its name in the lake, the rows written, and the file."""

    table: str
    rows: int
    path: Path


def export_lake(
    lake_path: Path, out_dir: Path, fmt: str = "parquet", tables: Sequence[str] | None = None
) -> list[ExportedTable]:
    """Write each of *tables* (default: every table of the lake) to ``out_dir/<Table>.<ext>``.

    Table names match case-insensitively and may be repeated; a file of the same name is replaced.
    Raises ExportError for an unknown format or table, a missing lake, an output directory that cannot
    be created or written, or a failed write; everything that can be checked is checked before the
    first file is written. A lake that cannot be opened (a running collector holds it, the file is
    damaged) raises the lake's own LakeUnavailableError, whose cause the caller can act on.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    lake_path, out_dir = Path(lake_path), Path(out_dir)
    try:
        lake = LocalLake(lake_path, read_only=True)
    except FileNotFoundError:
        raise ExportError(f"no lake at {lake_path}") from None
    except duckdb.Error as exc:
        raise ExportError(f"the lake at {lake_path} cannot be opened: {_first_line(exc)}") from None
    try:
        con = lake.connection
        chosen = _choose_tables(con, lake_path, tables)
        _prepare_out_dir(out_dir)
        return [_export_table(con, name, out_dir, fmt) for name in chosen]
    finally:
        lake.close()


def _lake_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The lake's tables: those of the schema in its order, then any other (LakeInfo) by name."""
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'main' AND table_type = 'BASE TABLE' ORDER BY table_name"
    ).fetchall()
    present = [str(r[0]) for r in rows]
    order = {t.name: i for i, t in enumerate(TABLES)}
    return sorted(present, key=lambda n: (order.get(n, len(order)), n))


def _choose_tables(con: duckdb.DuckDBPyConnection, lake_path: Path, tables: Sequence[str] | None) -> list[str]:
    present = _lake_tables(con)
    if tables is None:
        return present
    # DuckDB's identifiers are case-insensitive; the file is named as the lake spells the table.
    by_lower = {n.lower(): n for n in present}
    chosen: list[str] = []
    for name in tables:
        canonical = by_lower.get(name.strip().lower())
        if canonical is None:
            raise ExportError(f"no table {name!r} in the lake at {lake_path}; it has {', '.join(present)}")
        if canonical not in chosen:
            chosen.append(canonical)
    return chosen


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the output directory {out_dir}: {exc.strerror or exc}") from None
    # Writing a file is the only test of writability that holds for root, ACLs and read-only mounts alike.
    try:
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise ExportError(f"cannot write to the output directory {out_dir}: {exc.strerror or exc}") from None


def _export_table(con: duckdb.DuckDBPyConnection, name: str, out_dir: Path, fmt: str) -> ExportedTable:
    final = out_dir / f"{name}.{FORMATS[fmt]}"
    # Same directory, so the rename is atomic; a leading dot keeps it out of a `*.parquet` glob meanwhile.
    partial = out_dir / f".{final.name}.{os.getpid()}.partial"
    query = f"COPY ({_select(con, name, fmt)}) TO {_literal(str(partial))} ({_COPY_OPTIONS[fmt]})"
    try:
        row = con.execute(query).fetchone()
        os.replace(partial, final)
    except (duckdb.Error, OSError) as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        detail = _first_line(exc) if isinstance(exc, duckdb.Error) else (exc.strerror or str(exc))
        raise ExportError(f"{name}: not written to {final}: {detail}") from None
    rows = int(row[0]) if row is not None else 0
    return ExportedTable(table=name, rows=rows, path=final)


def _select(con: duckdb.DuckDBPyConnection, name: str, fmt: str) -> str:
    columns = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
        [name],
    ).fetchall()
    exprs = []
    for column, data_type in columns:
        ident = _ident(str(column))
        if str(data_type) != "TIMESTAMP":
            exprs.append(ident)
        elif fmt == "parquet":
            # The lake's connection runs in UTC, so the cast keeps the instant.
            exprs.append(f"CAST({ident} AS TIMESTAMPTZ) AS {ident}")
        else:
            exprs.append(f"strftime({ident}, {_literal(_ISO_Z)}) AS {ident}")
    return f"SELECT {', '.join(exprs)} FROM {_ident(name)}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
