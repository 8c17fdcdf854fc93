"""Batch items: one workflow, one table row, one seed -> one API-format graph, validated and priced.

Every item is dry-run by the runner's own `plan_graph` before anything is sent, so a row with a bad size,
a missing reference file or an unknown column fails in one line naming its row, and the whole batch has
an estimate before its first paid call.
"""
from __future__ import annotations

import copy
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ...flux2.errors import Flux2Error, InputError
from ..graph import Link, parse
from ..pricing import plan_graph
from .table import BadRow, Columns, Row, Target, convert

REMOTE = ("runware", "bfl")


@dataclass
class BatchItem:
    id: str                              # "r12" or "r12-s7": row 12 (with seed 7 from --seeds)
    row: int
    seed: int | None                     # the --seeds value, if any
    inputs: dict                         # column -> value this item sets (what the manifest records)
    prompt: dict                         # the item's own API-format graph
    fingerprint: str = ""                # hash of the graph: a changed row or workflow is a new item
    estimate_usd: float = 0.0            # priced calls only
    unpriced: int = 0                    # calls without a published price
    approximate: bool = False
    approximate_reasons: list = field(default_factory=list)   # why (pricing.approximate_note prints them)
    providers: dict = field(default_factory=dict)   # provider -> tasks it can have in flight at once
    provider_calls: int = 0                          # calls that go to a provider (not served by the cache)
    planned_hits: int = 0                            # provider calls the dry run found in the result cache
    units: list = field(default_factory=list)       # USD of each paid provider task (None: no published price)
    prompts: list = field(default_factory=list)     # the text prompts of its generation nodes (contact sheet)

    @property
    def needs(self) -> set:
        return {p for p, n in self.providers.items() if n}


class Template:
    """The workflow a batch runs, parsed once: its nodes, their titles, the column resolver."""

    def __init__(self, workflow: dict, registry: dict):
        self.registry = registry
        self.nodes = parse(workflow, registry)
        self.columns = Columns(self.nodes, _titles(workflow), registry)
        self.prompt = {n.id: {"class_type": n.class_type,
                              "inputs": {k: ([v.node, v.slot] if isinstance(v, Link) else v) for k, v in n.inputs.items()}}
                       for n in self.nodes.values()}
        self.seed_targets = self.columns.seed_targets()

    def items(self, rows: list[Row], seeds: list[int] | None) -> tuple[list[BatchItem], list[BadRow]]:
        """Rows x seeds as items; a row whose values do not fit the workflow is a BadRow (one line)."""
        if seeds and not self.seed_targets:
            raise InputError("--seeds given, but the workflow sets no seed by value (no Flux2Seed or generation "
                             "node with its own seed)")
        items, bad = [], []
        seed_columns = {t.column for t in self.seed_targets}
        for row in rows:
            try:
                values = {}
                for column, raw in row.values.items():
                    target = self.columns.target(column)
                    if seeds and target.column in seed_columns:
                        raise InputError(f"column {column!r} sets a seed and --seeds sets them too; use one")
                    values[target] = convert(target, raw)
            except InputError as exc:
                bad.append(BadRow(row.number, str(exc)))
                continue
            for seed in (seeds or [None]):
                chosen = dict(values)
                if seed is not None:
                    chosen.update({t: seed for t in self.seed_targets})
                items.append(self._item(row.number, seed, chosen))
        return items, bad

    def _item(self, number: int, seed: int | None, values: dict[Target, object]) -> BatchItem:
        item_id = f"r{number}" + (f"-s{seed}" if seed is not None else "")
        prompt = copy.deepcopy(self.prompt)
        for target, value in values.items():
            prompt[target.node]["inputs"][target.input] = value
        for node in prompt.values():
            # One file name per item: items never race for SaveImage's counter, and a name says its row.
            if node["class_type"] == "SaveImage" and isinstance(node["inputs"].get("filename_prefix"), str):
                node["inputs"]["filename_prefix"] += f"-{item_id}"
        fingerprint = hashlib.sha256(json.dumps(prompt, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return BatchItem(item_id, number, seed, {t.column: v for t, v in values.items()}, prompt, fingerprint)


def _titles(workflow: dict) -> dict[str, str]:
    """node id -> title: the editor's title (UI format) or `_meta.title` (API format)."""
    out = {}
    if isinstance(workflow.get("nodes"), list):
        for node in workflow["nodes"]:
            if isinstance(node, dict) and isinstance(node.get("title"), str) and node.get("id") is not None:
                out[str(node["id"])] = node["title"]
        return out
    prompt = workflow.get("prompt") if isinstance(workflow.get("prompt"), dict) else workflow
    for node_id, body in prompt.items():
        meta = body.get("_meta") if isinstance(body, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("title"), str):
            out[str(node_id)] = meta["title"]
    return out


def shared_backends(registry: dict) -> dict:
    """The registry with backend nodes built once per distinct set of inputs and shared by every item, so
    a batch shares one provider client (its connections, retries and rate-limit handling) and one loaded
    local model instead of building them per row. Backends hold no key and no per-run state."""
    shared: dict[tuple, tuple] = {}
    lock = threading.Lock()
    out = dict(registry)
    for name, cls in registry.items():
        if tuple(getattr(cls, "RETURN_TYPES", ())) != ("FLUX2_BACKEND",):
            continue

        def build(self, __cls=cls, __name=name, **kwargs):
            # Objects (a backend fed into Flux2LoRA) by identity: they are themselves shared, so kept alive here.
            key = (__name, json.dumps(kwargs, sort_keys=True, default=lambda o: f"{type(o).__name__}@{id(o)}"))
            with lock:
                if key not in shared:
                    shared[key] = tuple(getattr(__cls(), __cls.FUNCTION)(**kwargs))
                return shared[key]
        out[name] = type(name, (cls,), {cls.FUNCTION: build})
    return out


def plan_item(item: BatchItem, registry: dict, *, input_dir: Path, more_input_dirs: tuple, output_dir: Path,
              cache, strict: bool) -> None:
    """Dry-run the item's graph (validate every node, price every call); raises its one-line error."""
    plan = plan_graph(item.prompt, registry, input_dir=input_dir, more_input_dirs=more_input_dirs,
                      output_dir=output_dir, strict=strict, cache=cache)
    ledger = plan.ctx.ledger
    item.estimate_usd = ledger.estimated_total
    item.unpriced = ledger.unpriced
    item.approximate = ledger.approximate
    item.approximate_reasons = ledger.approximate_reasons
    providers: dict[str, int] = {}
    for call, est in plan.ctx.planned:
        free = call.backend in REMOTE and est.usd == 0.0      # served from the result cache
        providers[call.backend] = max(providers.get(call.backend, 0), 0 if free else _tasks(call))
        item.provider_calls += call.backend in REMOTE and not free
        item.planned_hits += call.backend in REMOTE and free
        if call.backend in REMOTE and not free:   # what the budget gate admits for the item, task by task
            n = _tasks(call)
            item.units += [None if est.usd is None else round(est.usd / n, 6)] * n
    item.providers = providers
    item.prompts = [n["inputs"]["prompt"] for n in item.prompt.values()
                    if isinstance(n["inputs"].get("prompt"), str) and n["class_type"].startswith("Flux2")]


def _tasks(call) -> int:
    """Provider tasks a planned call runs at once (one per image of its batch)."""
    payload = call.payload if isinstance(call.payload, dict) else {}
    for key in ("tasks", "requests"):
        if isinstance(payload.get(key), list):
            return max(1, len(payload[key]))
    batch = payload.get("batch")
    return batch if isinstance(batch, int) and batch > 0 else 1


def plan_items(items: list[BatchItem], registry: dict, *, on_item=None, **kwargs) -> tuple[list[BatchItem], list[BadRow]]:
    """Plan every item; returns (the good items, one BadRow per item that fails its dry run)."""
    good, bad = [], []
    for item in items:
        try:
            plan_item(item, registry, **kwargs)
            good.append(item)
        except Flux2Error as exc:
            bad.append(BadRow(item.row, str(exc), item.seed))
        except RecursionError:
            bad.append(BadRow(item.row, "the graph is nested too deeply", item.seed))
        if on_item is not None:
            on_item(item)
    return good, bad
