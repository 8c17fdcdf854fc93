"""Runs a parsed workflow headless: the pack's own node classes plus core image stand-ins.

Two passes. The first is always a dry run (validate every node, plan every provider call, sum the
estimate) so bad input anywhere in the graph fails before any money or GPU time is spent. The second
executes for real, unless --dry-run.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..flux2.errors import Flux2Error
from ..flux2.images import encode
from ..flux2.run_context import RunContext, using
from .core_nodes import RunFolders, reset_folders, using_folders, write_new
from .graph import Link, Node, execution_order, parse
from .validate import check_graph

log = logging.getLogger("comfyui_flux2.runner")
UNSAVED = "flux2-unsaved"            # paid images no SaveImage wrote, kept under the output folder


@dataclass
class RunReport:
    order: list[str]
    ctx: RunContext
    saved: list[Path] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)


class Executor:
    def __init__(self, workflow: dict, *, registry: dict, input_dir: Path, output_dir: Path, on_node=None,
                 more_input_dirs: tuple = ()):
        """`registry`: node class by name (the caller's pack nodes plus `core_nodes.headless_registry`);
        the runner imports no node pack itself, so it sits below the nodes that use it."""
        self.workflow = workflow
        self.registry = registry
        self.nodes: dict[str, Node] = parse(workflow, self.registry)
        self.order = execution_order(self.nodes, self.registry)
        check_graph(self.nodes, self.order, self.registry)
        self.input_dir = Path(input_dir)
        self.more_input_dirs = tuple(Path(p) for p in more_input_dirs)
        self.output_dir = Path(output_dir)
        self.on_node = on_node or (lambda node, index, total: None)
        self.executed: set[str] = set()
        self.running: str | None = None      # the node being executed (named when a run is aborted)
        self.folders: RunFolders | None = None
        self.api_prompt = {n.id: {"class_type": n.class_type,
                                  "inputs": {k: ([v.node, v.slot] if isinstance(v, Link) else v)
                                             for k, v in n.inputs.items()}} for n in self.nodes.values()}

    def run(self, ctx: RunContext) -> RunReport:
        folders = RunFolders(input_dir=self.input_dir, more_input_dirs=self.more_input_dirs, output_dir=self.output_dir, save=not ctx.dry_run,
                             prompt_json=self.api_prompt,
                             workflow_json=self.workflow if isinstance(self.workflow.get("nodes"), list) else None)
        self.folders = folders          # what SaveImage wrote, also when the run fails part way
        outputs: dict[str, tuple] = {}
        self.executed: set[str] = set()
        token = using_folders(folders)
        try:
            with using(ctx):
                for index, node_id in enumerate(self.order):
                    ctx.check_cancelled()
                    node = self.nodes[node_id]
                    self.running = node_id
                    self.on_node(node, index, len(self.order))
                    outputs[node_id] = self._call(node, outputs)
                    self.executed.add(node_id)
                self.running = None
        finally:
            reset_folders(token)
        return RunReport(self.order, ctx, list(folders.saved), outputs)

    def saved_by_graph(self, node_id: str) -> bool:
        """Whether a SaveImage that takes this node's image has already run."""
        return any(n.class_type == "SaveImage" and n.id in self.executed
                   and isinstance(n.inputs.get("images"), Link) and n.inputs["images"].node == node_id
                   for n in self.nodes.values())

    def reaches_save(self, node_id: str) -> bool:
        """Whether a SaveImage takes this node's output, directly or through other nodes (a chained edit
        whose result is saved); PreviewImage keeps nothing headless."""
        users: dict[str, list[str]] = {}
        for n in self.nodes.values():
            for value in n.inputs.values():
                if isinstance(value, Link):
                    users.setdefault(value.node, []).append(n.id)
        seen, todo = set(), [node_id]
        while todo:
            current = todo.pop()
            for user in users.get(current, ()):
                if user in seen:
                    continue
                if self.nodes[user].class_type == "SaveImage":
                    return True
                seen.add(user)
                todo.append(user)
        return False

    def _call(self, node: Node, outputs: dict) -> tuple:
        cls = self.registry[node.class_type]
        kwargs = {}
        for name, value in node.inputs.items():
            kwargs[name] = outputs[value.node][value.slot] if isinstance(value, Link) else value
        types = cls.INPUT_TYPES()
        hidden = types.get("hidden") or {}
        if "unique_id" in hidden:
            kwargs["unique_id"] = node.id
        declared = set(types.get("required") or {}) | set(types.get("optional") or {}) | set(hidden)
        kwargs = {k: v for k, v in kwargs.items() if k in declared}
        try:
            result = getattr(cls(), cls.FUNCTION)(**kwargs)
        except Flux2Error as exc:
            # Name the node, keeping the error's type and attributes (status, code) intact.
            exc.args = (f"node {node.id} ({node.class_type}): {exc}",)
            raise exc from None
        if isinstance(result, dict):
            result = result.get("result", ())
        return tuple(result)


def file_token(text: str, limit: int = 40) -> str:
    """A workflow-given id as one safe file-name part: [A-Za-z0-9_-] only, short; a changed id gets a
    hash suffix so two ids never map to the same file ("a/b" and "a_b" stay apart)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", text)[:limit] or "x"
    if safe != text:
        safe += "-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return safe


def save_unsaved_results(results: list, output_dir: Path, prefix: str = "") -> list[Path]:
    """Paid images that the graph did not get to save (a later node failed): keep them anyway.

    Names come from the node id and seed (after `prefix`: a batch item's "r12_"), confined to
    OUTPUT/flux2-unsaved/; one image that cannot be written does not stop the others.
    """
    paths = []
    folder = Path(output_dir) / UNSAVED
    for request, result in results:
        node = file_token(str(request.node_id or "x"))
        for i, image in enumerate(result.images):
            seed = result.seeds[i] if i < len(result.seeds) else f"x{i}"
            stem = f"{prefix}node{node}_seed{file_token(str(seed))}"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                # Never over an image an earlier run (another prompt, same node and seed) kept here.
                path, _ = write_new(lambda n: folder / (f"{stem}.png" if n == 1 else f"{stem}_{n}.png"), 1,
                                    encode(image, "PNG"), same_is_kept=True)
            except (OSError, Flux2Error) as exc:
                log.error("could not keep a paid image (%s.png): %s", stem, getattr(exc, "strerror", None) or exc)
                continue
            paths.append(path)
    return paths
