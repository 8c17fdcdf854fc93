"""Workflow JSON -> a validated graph of node calls (API format, or the UI format ComfyUI saves).

The conversion follows ComfyUI's own rules: widget values are matched to the node's widget inputs
in declaration order (required, then optional), a seed widget with control-after-generate carries
one extra value, links feed inputs, Reroute/PrimitiveNode/Note nodes exist only in the editor.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..flux2.errors import InputError

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
EDITOR_ONLY = ("Note", "MarkdownNote", "PrimitiveNode", "Reroute")
MUTED, BYPASSED = 2, 4
# Nodes a FLUX.2 graph commonly holds that need ComfyUI itself (models, samplers): named in the error.
COMFY_ONLY = ("UNETLoader", "CLIPLoader", "DualCLIPLoader", "VAELoader", "CheckpointLoaderSimple",
              "CLIPTextEncode", "KSampler", "SamplerCustomAdvanced", "VAEDecode", "VAEEncode")


@dataclass
class Node:
    id: str
    class_type: str
    inputs: dict = field(default_factory=dict)   # name -> literal | Link


@dataclass(frozen=True)
class Link:
    node: str
    slot: int


def load_workflow(path: Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read workflow {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"workflow {Path(path).name} is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise InputError(f"workflow {Path(path).name} must be a JSON object")
    return data


def is_widget(spec) -> bool:
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def widget_inputs(cls) -> list[tuple[str, tuple]]:
    types = cls.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, spec in (types.get(section) or {}).items():
            if is_widget(spec):
                out.append((name, spec))
    return out


def has_control_widget(name: str, spec) -> bool:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0] == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed"))


def from_api(data: dict, registry: dict) -> dict[str, Node]:
    prompt = data.get("prompt", data) if isinstance(data.get("prompt"), dict) else data
    nodes = {}
    for node_id, body in prompt.items():
        if not isinstance(body, dict) or "class_type" not in body:
            raise InputError(f"node {node_id}: API-format nodes need 'class_type' and 'inputs'")
        inputs = {}
        for name, value in (body.get("inputs") or {}).items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and isinstance(value[0], (str, int)):
                inputs[name] = Link(str(value[0]), value[1])
            else:
                inputs[name] = value
        nodes[str(node_id)] = Node(str(node_id), body["class_type"], inputs)
    _check_known(nodes, registry)
    return nodes


def from_ui(data: dict, registry: dict) -> dict[str, Node]:
    raw_nodes = {str(n["id"]): n for n in data.get("nodes", []) if isinstance(n, dict) and "id" in n}
    links = {}
    for entry in data.get("links", []):
        if isinstance(entry, dict):  # newer frontends may store links as objects
            entry = [entry.get("id"), entry.get("origin_id"), entry.get("origin_slot"),
                     entry.get("target_id"), entry.get("target_slot"), entry.get("type")]
        if not isinstance(entry, list) or len(entry) < 5:
            raise InputError("workflow has a malformed link entry")
        links[entry[0]] = (str(entry[1]), int(entry[2]))

    def source(link_id, seen=()):
        if link_id not in links:
            raise InputError(f"workflow link {link_id} is missing from the links table")
        node_id, slot = links[link_id]
        origin = raw_nodes.get(node_id)
        if origin is None:
            raise InputError(f"workflow link {link_id} starts at node {node_id}, which does not exist")
        if origin.get("type") == "Reroute":
            upstream = (origin.get("inputs") or [{}])[0].get("link")
            if upstream is None or node_id in seen:
                raise InputError(f"Reroute node {node_id} has no input")
            return source(upstream, seen + (node_id,))
        return Link(node_id, slot)

    nodes = {}
    for node_id, raw in raw_nodes.items():
        kind = raw.get("type")
        if kind in EDITOR_ONLY or raw.get("mode") == MUTED:
            continue
        if raw.get("mode") == BYPASSED:
            raise InputError(f"node {node_id} ({kind}) is bypassed; the runner does not support bypass, "
                             "mute it or remove it")
        cls = registry.get(kind)
        if cls is None:
            raise InputError(unknown_node(kind, node_id, registry))
        inputs: dict = {}
        values = raw.get("widgets_values", [])
        if isinstance(values, dict):
            inputs.update(values)
        else:
            values = list(values)
            i = 0
            for name, spec in widget_inputs(cls):
                if i >= len(values):
                    break
                inputs[name] = values[i]
                i += 1
                if has_control_widget(name, spec) and i < len(values) and values[i] in CONTROL_VALUES:
                    i += 1
        for slot in raw.get("inputs", []) or []:
            link_id = slot.get("link")
            if link_id is None:
                continue
            src = source(link_id)
            if raw_nodes[src.node].get("type") == "PrimitiveNode":
                continue   # the editor already copied the primitive's value into this widget
            inputs[slot["name"]] = src
        nodes[node_id] = Node(node_id, kind, inputs)
    return nodes


def parse(data: dict, registry: dict) -> dict[str, Node]:
    if isinstance(data.get("nodes"), list):
        return from_ui(data, registry)
    return from_api(data, registry)


def unknown_node(kind, node_id, registry: dict) -> str:
    """One line; says where the node does run when the runner cannot run it."""
    text = f"workflow names unknown node type {kind!r} (node {node_id})"
    if kind in COMFY_ONLY:
        headless = ", ".join(sorted(k for k in registry if not k.startswith("Flux2")))
        text += (f": a ComfyUI node, so this workflow runs inside ComfyUI only (headless runs take our nodes "
                 f"and {headless}; Flux2LocalBackend reads local weights)")
    return text


def _check_known(nodes: dict[str, Node], registry: dict) -> None:
    for node in nodes.values():
        if node.class_type not in registry:
            raise InputError(unknown_node(node.class_type, node.id, registry))


def execution_order(nodes: dict[str, Node], registry: dict) -> list[str]:
    """Nodes that feed an output node, dependencies first (ComfyUI runs nothing else)."""
    outputs = [n.id for n in nodes.values() if getattr(registry[n.class_type], "OUTPUT_NODE", False)]
    if not outputs:
        raise InputError("workflow has no output node (SaveImage or PreviewImage), so nothing would run")
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(node_id: str, chain: tuple) -> None:
        if state.get(node_id) == 2:
            return
        if state.get(node_id) == 1:
            raise InputError(f"workflow has a cycle through node {node_id}")
        if node_id not in nodes:
            raise InputError(f"node {chain[-1]} is linked to node {node_id}, which does not exist")
        state[node_id] = 1
        for value in nodes[node_id].inputs.values():
            if isinstance(value, Link):
                visit(value.node, chain + (node_id,))
        state[node_id] = 2
        order.append(node_id)

    for node_id in sorted(outputs, key=_id_key):
        visit(node_id, (node_id,))
    return order


def _id_key(node_id: str):
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)
