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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_NODE_ID_CHARS = 100


def load_workflow(path: Path) -> dict:
    name = Path(path).name
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read workflow {path}: {exc.strerror}") from None
    if raw.startswith(PNG_SIGNATURE) or raw[:3] == b"\xff\xd8\xff" or raw[8:12] == b"WEBP":
        raise InputError(f"{name} is an image, not a workflow: give the .json file ComfyUI saves "
                         "(Workflow > Export, or Export (API))")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"workflow {name} is not UTF-8 text, so not a JSON workflow") from None
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise InputError(f"workflow {name} gives {exc.args[0]!r} twice in one object; node ids and input names "
                         "must be unique (JSON would keep only the last)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"workflow {name} is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise InputError(f"workflow {name} is nested too deeply to be a workflow") from None
    if not isinstance(data, dict):
        raise InputError(f"workflow {name} must be a JSON object")
    return data


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list) -> dict:
    """json.loads' object hook: a key given twice (a second node "5", a second "prompt") is refused - json
    would silently keep the last, so half of what the file says would never run."""
    data = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key[:40])
        data[key] = value
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


def _node_id(value) -> str:
    """Node ids name files and appear in messages: short text without control characters."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"workflow has a node id of type {type(value).__name__}; ids are numbers or text")
    text = str(value)
    if not text or len(text) > MAX_NODE_ID_CHARS or not text.isprintable():
        raise InputError(f"workflow has an invalid node id {text[:40]!r} (empty, over {MAX_NODE_ID_CHARS} "
                         "characters, or with control characters)")
    return text


def _link(value, what: str) -> Link:
    node, slot = value
    if isinstance(slot, bool) or not isinstance(slot, int) or slot < 0:
        raise InputError(f"{what}: link slot {slot!r} is not an output index")
    return Link(_node_id(node), slot)


def from_api(data: dict, registry: dict) -> dict[str, Node]:
    prompt = data.get("prompt", data) if isinstance(data.get("prompt"), dict) else data
    nodes = {}
    for node_id, body in prompt.items():
        node_id = _node_id(node_id)
        if not isinstance(body, dict) or not isinstance(body.get("class_type"), str):
            raise InputError(f"node {node_id}: API-format nodes need 'class_type' and 'inputs'")
        raw_inputs = body.get("inputs") or {}
        if not isinstance(raw_inputs, dict):
            raise InputError(f"node {node_id}: 'inputs' must be an object of input name to value")
        inputs = {}
        for name, value in raw_inputs.items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
                    and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool):
                inputs[name] = _link(value, f"node {node_id} input {name!r}")
            else:
                inputs[name] = value
        nodes[node_id] = Node(node_id, body["class_type"], inputs)
    _check_known(nodes, registry)
    return nodes


def _ui_list(data: dict, key: str) -> list:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise InputError(f"workflow {key!r} must be a list")
    return value


def _ui_links(data: dict) -> dict:
    """link id -> (origin node id, origin slot)."""
    links = {}
    for entry in _ui_list(data, "links"):
        if isinstance(entry, dict):  # newer frontends may store links as objects
            entry = [entry.get("id"), entry.get("origin_id"), entry.get("origin_slot"),
                     entry.get("target_id"), entry.get("target_slot"), entry.get("type")]
        if not isinstance(entry, list) or len(entry) < 5 or entry[1] is None \
                or isinstance(entry[0], (list, dict)):
            raise InputError("workflow has a malformed link entry")
        link = _link((entry[1], entry[2]), f"workflow link {entry[0]}")
        links[entry[0]] = (link.node, link.slot)
    return links


def _widget_inputs(raw: dict, node_id: str, cls) -> dict:
    values = raw.get("widgets_values", [])
    if values is None:
        return {}
    if isinstance(values, dict):
        return dict(values)
    if not isinstance(values, list):
        raise InputError(f"node {node_id}: 'widgets_values' must be a list, got {type(values).__name__}")
    inputs: dict = {}
    i = 0
    for name, spec in widget_inputs(cls):
        if i >= len(values):
            break
        inputs[name] = values[i]
        i += 1
        if has_control_widget(name, spec) and i < len(values) and values[i] in CONTROL_VALUES:
            i += 1
    return inputs


def from_ui(data: dict, registry: dict) -> dict[str, Node]:
    raw_nodes = {}
    for n in _ui_list(data, "nodes"):
        if isinstance(n, dict) and "id" in n:
            node_id = _node_id(n["id"])
            if node_id in raw_nodes:        # the second would silently replace the first (and its links)
                raise InputError(f"workflow has two nodes with id {node_id}; node ids must be unique")
            raw_nodes[node_id] = n
    links = _ui_links(data)

    def source(link_id) -> Link:
        """Where a link starts, through any chain of Reroute nodes (followed without recursion)."""
        seen: set[str] = set()
        while True:
            try:
                known = link_id in links
            except TypeError:          # an unhashable link id (a list, an object)
                known = False
            if not known:
                raise InputError(f"workflow link {str(link_id)[:40]} is missing from the links table")
            node_id, slot = links[link_id]
            origin = raw_nodes.get(node_id)
            if origin is None:
                raise InputError(f"workflow link {link_id} starts at node {node_id}, which does not exist")
            if origin.get("type") != "Reroute":
                return Link(node_id, slot)
            slots = origin.get("inputs")
            first = slots[0] if isinstance(slots, list) and slots and isinstance(slots[0], dict) else {}
            if first.get("link") is None or node_id in seen:
                raise InputError(f"Reroute node {node_id} has no input")
            seen.add(node_id)
            link_id = first["link"]

    nodes = {}
    for node_id, raw in raw_nodes.items():
        kind = raw.get("type")
        if kind in EDITOR_ONLY or raw.get("mode") == MUTED:
            continue
        if raw.get("mode") == BYPASSED:
            raise InputError(f"node {node_id} ({kind}) is bypassed; the runner does not support bypass, "
                             "mute it or remove it")
        cls = registry.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise InputError(unknown_node(kind, node_id, registry))
        inputs = _widget_inputs(raw, node_id, cls)
        slots = raw.get("inputs") or []
        if not isinstance(slots, list):
            raise InputError(f"node {node_id}: 'inputs' must be a list of input slots")
        for slot in slots:
            if not isinstance(slot, dict) or not isinstance(slot.get("name"), str):
                raise InputError(f"node {node_id}: an input slot has no name")
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
    """Nodes that feed an output node, dependencies first (ComfyUI runs nothing else).

    Depth-first without recursion: a chain of thousands of nodes must not hit Python's recursion limit.
    """
    outputs = [n.id for n in nodes.values() if getattr(registry[n.class_type], "OUTPUT_NODE", False)]
    if not outputs:
        raise InputError("workflow has no output node (SaveImage or PreviewImage), so nothing would run")
    order: list[str] = []
    state: dict[str, int] = {}           # 1: on the current path, 2: done

    for start in sorted(outputs, key=_id_key):
        if state.get(start) == 2:
            continue
        state[start] = 1
        stack = [(start, iter(list(nodes[start].inputs.values())))]
        while stack:
            node_id, pending = stack[-1]
            for value in pending:
                if not isinstance(value, Link):
                    continue
                dep = value.node
                if state.get(dep) == 2:
                    continue
                if state.get(dep) == 1:
                    raise InputError(f"workflow has a cycle through node {dep}")
                if dep not in nodes:
                    raise InputError(f"node {node_id} is linked to node {dep}, which does not exist")
                state[dep] = 1
                stack.append((dep, iter(list(nodes[dep].inputs.values()))))
                break
            else:
                stack.pop()
                state[node_id] = 2
                order.append(node_id)
    return order


def _id_key(node_id: str):
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)
