"""Static checks of a parsed graph against each node's INPUT_TYPES, as ComfyUI does before running."""
from __future__ import annotations

import math
import re

from ..flux2.errors import InputError
from ..flux2.models import MAX_REFS_ANY
from .graph import Link, Node


def _label(node: Node) -> str:
    return f"node {node.id} ({node.class_type})"


def check_graph(nodes: dict[str, Node], order: list[str], registry: dict) -> None:
    for node_id in order:
        node = nodes[node_id]
        cls = registry[node.class_type]
        types = cls.INPUT_TYPES()
        required = types.get("required") or {}
        optional = types.get("optional") or {}
        _check_undeclared_links(node, {**required, **optional})
        for name, spec in {**required, **optional}.items():
            present = name in node.inputs and node.inputs[name] is not None
            if not present:
                if name in required:
                    raise InputError(f"{_label(node)}: required input {name!r} is missing")
                continue
            value = node.inputs[name]
            if isinstance(value, Link):
                _check_link(nodes, registry, node, name, spec, value)
            else:
                _check_value(node, name, spec, value)


def _check_undeclared_links(node: Node, declared: dict) -> None:
    """A link into an input the node does not have would be dropped without a word (an image that never
    arrives: a 9th reference on Flux2Edit, whose sockets stop at the most any model takes)."""
    extra = sorted(name for name, value in node.inputs.items() if isinstance(value, Link) and name not in declared)
    if not extra:
        return
    refs = [n for n in extra if re.fullmatch(r"reference_\d+", n)]
    if refs and node.class_type == "Flux2Edit":
        linked = sum(1 for n, v in node.inputs.items() if isinstance(v, Link) and n.startswith("reference_"))
        raise InputError(f"{_label(node)}: {linked} references linked ({', '.join(refs[:3])} beyond its sockets); "
                         f"it takes at most {MAX_REFS_ANY} (reference_1..reference_{MAX_REFS_ANY}), fewer on "
                         "some models")
    raise InputError(f"{_label(node)}: input {extra[0]!r} is linked, but the node has no such input")


def _check_link(nodes, registry, node, name, spec, link: Link) -> None:
    source = nodes.get(link.node)
    if source is None:
        raise InputError(f"{_label(node)}: input {name!r} is linked to node {link.node}, which does not exist")
    out_types = registry[source.class_type].RETURN_TYPES
    if not 0 <= link.slot < len(out_types):
        raise InputError(f"{_label(node)}: input {name!r} is linked to output {link.slot} of {_label(source)}, "
                         "which has no such output")
    want = spec[0]
    got = out_types[link.slot]
    if isinstance(want, (list, tuple)):
        want = "COMBO"
    # "IMAGE,FLUX2_REFERENCE" is a union: any shared type links, as in ComfyUI's validate_node_input.
    shared = {t.strip() for t in str(want).split(",")} & {t.strip() for t in str(got).split(",")}
    if not shared and "*" not in (want, got) and not (want == "COMBO" and got in ("COMBO", "STRING")):
        raise InputError(f"{_label(node)}: input {name!r} expects {want}, but {_label(source)} gives {got}")


def _check_value(node, name, spec, value) -> None:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    where = f"{_label(node)}: {name}"
    if isinstance(kind, (list, tuple)):
        if value not in kind:
            raise InputError(f"{where} = {value!r} is not one of: {', '.join(map(str, kind))}")
        return
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise InputError(f"{where} must be an integer, got {value!r}")
    elif kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"{where} must be a finite number, got {str(value)[:40]}")
    elif kind == "BOOLEAN":
        if not isinstance(value, bool):
            raise InputError(f"{where} must be true or false, got {value!r}")
        return
    elif kind == "STRING":
        if not isinstance(value, str):
            raise InputError(f"{where} must be text, got {type(value).__name__}")
        _check_text(where, value)
        return
    else:
        raise InputError(f"{where}: a {kind} input must be linked to another node's output")
    if "min" in opts and value < opts["min"]:
        raise InputError(f"{where} = {value} is below the minimum {opts['min']}")
    if "max" in opts and value > opts["max"]:
        raise InputError(f"{where} = {value} is above the maximum {opts['max']}")


def _check_text(where: str, value: str) -> None:
    """Text must survive the trip to a provider or a file name: UTF-8-encodable (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{where} cannot be encoded as UTF-8 (character {exc.start}: "
                         f"{value[exc.start]!r}, a lone surrogate)") from None
