"""A batch table: rows of node inputs read from CSV or JSONL, and what each column names.

A column is `NODE.INPUT`: NODE is a node id ("3") or a node title ("Salt"; a node without a title is
called by its type, as the editor shows it), INPUT one of that node's widget inputs: "prompt", "seed",
LoadImage's "image" (a reference file, relative to the input folder), Flux2ReferenceURL's "url".
Values are converted to the input's type here; ranges, sizes and files are checked by the dry run of
each item (runner/batch/items.py), so a row is judged by the same rules as `run`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...flux2.errors import InputError
from ...flux2.rules import MAX_SEED
from ..graph import Link, Node, has_control_widget, is_widget

TABLE_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
MAX_SEEDS = 100_000          # --seeds A-B wider than this is almost certainly a typo
_INT = re.compile(r"^[+-]?\d+$")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class Row:
    number: int               # 1-based: the data row of a CSV (header not counted), the line of a JSONL
    values: dict              # column -> value as read; empty CSV cells are left out (the workflow's value holds)


@dataclass(frozen=True)
class BadRow:
    number: int
    message: str
    seed: int | None = None

    def line(self) -> str:
        return f"row {self.number}" + (f" seed {self.seed}" if self.seed is not None else "") + f": {self.message}"


def read_table(path: Path) -> tuple[list[Row], list[BadRow]]:
    """Rows of a .csv (header = column names) or .jsonl (one JSON object per line) file."""
    path = Path(path)
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"table {path.name} is not CSV or JSONL: name it .csv or .jsonl")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read table {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"table {path.name} is not UTF-8 text, so not {kind.upper()}") from None
    return _read_csv(text, path.name) if kind == "csv" else _read_jsonl(text, path.name)


def _read_csv(text: str, name: str) -> tuple[list[Row], list[BadRow]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise InputError(f"table {name} has no header row naming its columns (e.g. 3.prompt,Salt.seed)")
        header = [h.strip() for h in header]
        dupes = sorted({h for h in header if header.count(h) > 1 and h})
        if dupes:
            raise InputError(f"table {name} names column {dupes[0]!r} twice")
        rows, bad = [], []
        for number, cells in enumerate(reader, 1):
            if not any(c.strip() for c in cells):
                continue                                   # a blank line
            if len(cells) > len(header):
                bad.append(BadRow(number, f"{len(cells)} values, but the header names {len(header)} columns"))
                continue
            rows.append(Row(number, {h: c for h, c in zip(header, cells) if h and c != ""}))
    except csv.Error as exc:
        raise InputError(f"table {name} is not valid CSV (line {reader.line_num}: {exc})") from None
    return rows, bad


def _read_jsonl(text: str, name: str) -> tuple[list[Row], list[BadRow]]:
    rows, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            bad.append(BadRow(number, "not a JSON object (JSONL takes one object per line)"))
            continue
        if not isinstance(value, dict):
            bad.append(BadRow(number, f"a JSON {type(value).__name__}, not an object of column to value"))
            continue
        rows.append(Row(number, value))
    if not rows and not bad:
        raise InputError(f"table {name} has no rows")
    return rows, bad


def parse_seeds(text: str) -> list[int]:
    """`--seeds A-B` (inclusive) or `--seeds N`."""
    parts = str(text).strip().split("-")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"--seeds takes A-B or N (whole numbers >= 0), got {str(text)[:40]!r}")
    first, last = int(parts[0]), int(parts[-1])
    if last < first:
        raise InputError(f"--seeds {text}: the last seed is below the first")
    if last > MAX_SEED:
        raise InputError(f"--seeds {text}: seeds stop at {MAX_SEED}")
    if last - first + 1 > MAX_SEEDS:
        raise InputError(f"--seeds {text} makes {last - first + 1} seeds per row; at most {MAX_SEEDS}")
    return list(range(first, last + 1))


@dataclass(frozen=True)
class Target:
    node: str
    input: str
    spec: tuple = field(compare=False)   # the input's INPUT_TYPES entry (holds a dict: not hashed)

    @property
    def column(self) -> str:
        return f"{self.node}.{self.input}"


class Columns:
    """Resolves column names against one workflow and converts values to the inputs' types."""

    def __init__(self, nodes: dict[str, Node], titles: dict[str, str], registry: dict):
        self.nodes = nodes
        self.registry = registry
        self.by_title: dict[str, list[str]] = {}
        for node_id, node in nodes.items():
            self.by_title.setdefault(titles.get(node_id) or node.class_type, []).append(node_id)
        self._cache: dict[str, Target | InputError] = {}

    def target(self, column: str) -> Target:
        """The node input a column names; InputError (cached) when it names none."""
        hit = self._cache.get(column)
        if hit is None:
            try:
                hit = self._resolve(column)
            except InputError as exc:
                hit = exc
            self._cache[column] = hit
        if isinstance(hit, InputError):
            raise hit
        return hit

    def _resolve(self, column) -> Target:
        if not isinstance(column, str) or "." not in column:
            raise InputError(f"column {str(column)[:60]!r} is not NODE.INPUT (e.g. 3.prompt or Salt.seed)")
        name, _, input_name = column.rpartition(".")
        if name in self.nodes:
            node_id = name
        else:
            ids = self.by_title.get(name, [])
            if not ids:
                raise InputError(f"column {column!r}: no node has id or title {name!r}")
            if len(ids) > 1:
                raise InputError(f"column {column!r}: nodes {', '.join(ids)} are all called {name!r}; "
                                 "name the node by its id")
            node_id = ids[0]
        node = self.nodes[node_id]
        types = self.registry[node.class_type].INPUT_TYPES()
        specs = {**(types.get("required") or {}), **(types.get("optional") or {})}
        spec = specs.get(input_name)
        if spec is None or not is_widget(spec):
            choices = ", ".join(n for n, s in specs.items() if is_widget(s)) or "none"
            raise InputError(f"column {column!r}: node {node_id} ({node.class_type}) has no input {input_name!r} "
                             f"a table can set (its inputs: {choices})")
        if isinstance(node.inputs.get(input_name), Link):
            source = node.inputs[input_name].node
            raise InputError(f"column {column!r}: input {input_name!r} of node {node_id} is linked from node "
                             f"{source}; set that node's input instead")
        return Target(node_id, input_name, tuple(spec))

    def seed_targets(self) -> list[Target]:
        """Every seed widget the workflow sets by value (Flux2Seed, generation nodes not fed by a seed node)."""
        out = []
        for node_id, node in self.nodes.items():
            types = self.registry[node.class_type].INPUT_TYPES()
            for name, spec in {**(types.get("required") or {}), **(types.get("optional") or {})}.items():
                if is_widget(spec) and has_control_widget(name, spec) and not isinstance(node.inputs.get(name), Link):
                    out.append(Target(node_id, name, tuple(spec)))
        return out


def convert(target: Target, value):
    """A table value as the input's type (CSV gives text; JSONL gives JSON values)."""
    kind = target.spec[0]
    where = f"column {target.column}"
    if isinstance(kind, (list, tuple)):
        if value in kind:
            return value
        by_text = {str(option): option for option in kind}
        if str(value) in by_text:
            return by_text[str(value)]
        shown = ", ".join(map(str, kind[:8])) + (" ..." if len(kind) > 8 else "")
        raise InputError(f"{where} = {str(value)[:60]!r} is not one of: {shown}")
    if kind == "INT":
        if isinstance(value, bool):
            raise InputError(f"{where} must be a whole number, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _INT.match(value.strip()):
            return int(value.strip())
        raise InputError(f"{where} must be a whole number, got {str(value)[:40]!r}")
    if kind == "FLOAT":
        if isinstance(value, bool):
            raise InputError(f"{where} must be a number, got {value!r}")
        if isinstance(value, str) and "_" in value:      # float() reads "1_0" as 10
            raise InputError(f"{where} must be a number, got {value[:40]!r}")
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise InputError(f"{where} must be a number, got {str(value)[:40]!r}") from None
        if not math.isfinite(number):
            raise InputError(f"{where} must be a finite number, got {str(value)[:40]!r}")
        return number
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise InputError(f"{where} must be true or false, got {str(value)[:40]!r}")
    if not isinstance(value, str):          # STRING: text only (a JSON number for a prompt is a mistake)
        raise InputError(f"{where} must be text, got a JSON {type(value).__name__}")
    return value
