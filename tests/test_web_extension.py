"""The editor extension (web/flux2.js) and its routes (nodes/web_routes.py).

Fast tests: the JSON the browser gets is generated from flux2/models.py and the preview answers with
the engine's own size and price functions.

Slow tests (``--run-slow``): a real ComfyUI 0.3.75 (tests/comfy_server.py) with this pack, driven by
Debian's chromium through playwright, on two frontends -- the one the ComfyUI under test ships (1.32.9 in
0.3.75, 1.49.6 in 0.33; its version is read from the server's interpreter, never assumed) and the
newest ``comfyui-frontend-package`` (served with ``--front-end-root``) -- each in the classic canvas
and in Nodes 2.0 (Vue nodes): the example workflows load without errors from the extension, the
readout and the cost badge show what the engine computes and follow edits -- what the readout widget
last drew is checked against them, so a stale screen fails --, Flux2Edit's reference sockets grow
within the model's limit, the billed cost appears after a run (Runware loopback), and the extension
reads no API the frontend reports as deprecated. Screenshots go to ``test-artifacts/web/`` (and to
``docs/screenshots/`` when ``FLUX2_UPDATE_SCREENSHOTS=1`` or the file is missing, so a test run does
not dirty the repo).
"""
from __future__ import annotations

import io
import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from comfyui_flux2.flux2.models import MAX_REFS_ANY, MODELS, PROVIDERS, get_model
from comfyui_flux2.flux2.pricing import estimate, format_usd
from comfyui_flux2.flux2.rules import delivered_size, remote_rules
from comfyui_flux2.flux2.sizes import ASPECT_RATIOS, SizeLimits, megapixels, size_from_aspect
from comfyui_flux2.flux2.preview import ASSUMED_REF_SIZE
from comfyui_flux2.nodes import web_routes

REPO = Path(__file__).resolve().parents[1]
EXT_NAME = "comfyui-flux2.editor"
PACK_URL = "/extensions/comfyui-flux2/"        # ComfyUI serves WEB_DIRECTORY under the pack's folder name
ARTIFACTS = REPO / "test-artifacts" / "web"
SCREENSHOTS = REPO / "docs" / "screenshots"
MAX_SCREENSHOT_BYTES = 300_000
RUNWARE_KEY = "rw-web-test-key-7d1e"


# --------------------------------------------------------------------------------------------
# fast: route JSON == models.py; preview == engine
# --------------------------------------------------------------------------------------------

def test_models_json_is_models_py():
    data = json.loads(json.dumps(web_routes.models_json()))   # what goes over the wire
    assert data["providers"] == list(PROVIDERS)
    assert data["max_refs_any"] == MAX_REFS_ANY
    assert data["megapixel"] == 1024 * 1024
    assert data["aspect_ratios"] == list(ASPECT_RATIOS)
    assert data["default_limits"] == asdict(SizeLimits())
    assert list(data["models"]) == list(MODELS)
    for name, spec in MODELS.items():
        m = data["models"][name]
        assert (m["family"], m["multiple"], m["max_side"], m["max_pixels"]) == \
            (spec.family, spec.multiple, spec.max_side, spec.max_pixels)
        assert (m["default_steps"], m["default_guidance"]) == (spec.default_steps, spec.default_guidance)
        assert set(m["providers"]) == set(spec.providers)
        for prov, pm in spec.providers.items():
            p = m["providers"][prov]
            assert p["model_id"] == pm.model_id
            assert p["max_refs"] == pm.max_refs
            assert p["min_side"] == pm.min_side
            assert p["price"] == (asdict(pm.price) if pm.price else None)
            assert p["limits"] == asdict(remote_rules(spec, prov).sizes)


def _backend(model="FLUX.2 [pro]", provider="runware"):
    return {"type": "Flux2RemoteBackend", "provider": provider, "model": model}


def test_preview_of_the_seed_example_is_1536x1024_and_0_045():
    body = {"items": [
        {"id": "size", "kind": "size",
         "size": {"flux2_size": {"aspect_ratio": "3:2", "megapixels": 1.5, "width": 1536, "height": 1024}}},
        {"id": "t2i", "kind": "generate", "backend": _backend(), "batch": 1, "references": [],
         "size": {"flux2_size": {"aspect_ratio": "3:2", "megapixels": 1.5, "width": 1536, "height": 1024}}},
    ]}
    size, t2i = web_routes.preview(body)["items"]
    assert (size["width"], size["height"], size["megapixels"]) == (1536, 1024, 1.5)
    assert (t2i["width"], t2i["height"], t2i["cost"], t2i["usd"]) == (1536, 1024, "$0.045", 0.045)
    assert t2i["problems"] == [] and t2i["output_assumed"] is False


@pytest.mark.parametrize("model,provider", [(m, p) for m, s in MODELS.items() for p in s.providers])
@pytest.mark.parametrize("aspect,mp,refs,batch", [("3:2", 1.5, [], 1), ("16:9", 4.0, [[512, 512], None], 2),
                                                  ("1:1", 0.25, [None] * 3, 3), ("9:21", 2.2, [[2000, 3000]], 1)])
def test_preview_uses_the_engine_for_every_model(model, provider, aspect, mp, refs, batch):
    spec = get_model(model)
    limits = remote_rules(spec, provider).sizes
    item = {"id": 1, "kind": "generate", "backend": _backend(model, provider), "batch": batch,
            "references": refs, "size": {"flux2_size": {"aspect_ratio": aspect, "megapixels": mp,
                                                        "width": 1024, "height": 1024,
                                                        "backend": _backend(model, provider)}}}
    [res] = web_routes.preview({"items": [item]})["items"]
    # FLUX 3 Image delivers its nearest aspect ratio x resolution: the readout shows that size.
    w, h = delivered_size(remote_rules(spec, provider), *size_from_aspect(aspect, mp, limits))
    ref_sizes = [tuple(r) if r else ASSUMED_REF_SIZE for r in refs]
    est = estimate(spec, provider, w, h, ref_sizes, batch)
    assert (res["width"], res["height"]) == (w, h)
    assert res["megapixels"] == round(megapixels(w, h), 4)
    assert res["usd"] == est.usd
    assert res["cost"] == (format_usd(est.usd) if est.usd is not None else None)
    assert res["references_assumed"] == sum(1 for r in refs if not r)
    assert res["max_refs"] == spec.on(provider).max_refs


def test_preview_reports_broken_rules_and_bad_items():
    items = [
        {"id": "a", "kind": "generate", "backend": _backend(), "size": {"width": 1000, "height": 1024}},
        {"id": "b", "kind": "generate", "backend": _backend("FLUX.2 [dev]"), "size": {"width": 1024, "height": 1024},
         "references": [None] * 5},
        {"id": "c", "kind": "generate", "backend": _backend("nope"), "size": {"width": 1024, "height": 1024}},
        {"id": "d", "kind": "generate", "backend": None, "size": {"follow": None}, "references": [None]},
        {"id": "e", "kind": "generate", "backend": _backend(), "size": {"follow": [4000, 3000]}, "references": [None]},
        {"id": "f", "kind": "generate", "backend": {"type": "Flux2LocalBackend"}, "size": {"width": 512, "height": 512}},
        {"id": "g", "kind": "generate", "backend": _backend(), "size": {"unknown": "linked"}},
        "junk",
    ]
    a, b, c, d, e, f, g, junk = web_routes.preview({"items": items})["items"]
    assert a["problems"] == ["width 1000 is not a multiple of 16 (try 992 or 1008)"]
    assert b["problems"] == ["5 references; this model takes at most 4"] and b["cost"] is None
    assert "unknown model" in c["error"]
    assert d["width"] is None and d["cost"] is None and "follows reference 1" in d["note"]
    assert (e["width"], e["height"]) == (2048, 1536) and e["references_assumed"] == 1   # fit_size: 2048 max side
    assert f["cost"] == "$0" and f["detail"].startswith("local")
    assert g["width"] is None and g["output_assumed"] is True and g["cost"] == "$0.03"
    assert junk["error"]
    with pytest.raises(ValueError):
        web_routes.preview({"nope": []})


def test_register_is_a_no_op_outside_comfyui():
    assert web_routes.register() is False


def test_web_extension_guards_its_frontend_apis():
    """Static checks on web/flux2.js: one extension, imported the way every frontend serves it."""
    js = (REPO / "web" / "flux2.js").read_text()
    assert 'import { app } from "../../scripts/app.js";' in js
    assert js.count("app.registerExtension(") == 1 and f'name: EXT' in js and f'"{EXT_NAME}"' in js
    assert "/flux2/preview" in js and "/flux2/models" in js
    assert "serialize: false" in js   # the readout never lands in widgets_values or the prompt
    # connectivity through node.isInputConnected / getInputLink; input.link (deprecated in newer
    # frontends) only as the fallback inside those two helpers, for a frontend without them
    fallbacks = "".join(re.search(rf"\nfunction {name}\(.*?\n}}\n", js, re.S).group(0)
                        for name in ("isInputConnected", "linkOf"))
    assert "isInputConnected(slot)" in fallbacks and "getInputLink(slot)" in fallbacks
    assert not re.search(r"\.link\b", js.replace(fallbacks, "")), "input.link read outside the fallbacks"
    # Nodes 2.0 redraws a canvas-drawn widget only through the widget's own triggerDraw()
    assert "triggerDraw?.()" in js


# --------------------------------------------------------------------------------------------
# slow: a real ComfyUI + chromium
# --------------------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
READY = ("() => !!(window.app?.graph && window.app.canvas && "
         "window.app.extensionManager?.workflow?.activeWorkflow)")
BUNDLED_FRONTEND = "bundled"  # what the ComfyUI under test ships; labelled with its installed version
NEWEST_FRONTEND = "1.58.1"    # the newest comfyui-frontend-package on the package index when written
FRONTENDS = (BUNDLED_FRONTEND, NEWEST_FRONTEND)
MODES = ("classic", "nodes2")  # the LiteGraph canvas; Nodes 2.0 = Vue nodes (setting Comfy.VueNodes.Enabled)
DEFAULT = (BUNDLED_FRONTEND, "classic")
ALL_COMBOS = [pytest.param((f, m), id=f"{f}-{m}") for f in FRONTENDS for m in MODES]
READOUT_TYPES = ("Flux2Size", "Flux2TextToImage", "Flux2Edit")


def _need_browser():
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("python package playwright")
    if not os.path.exists(CHROMIUM):
        missing.append(CHROMIUM)
    if missing:
        msg = f"browser test needs {', '.join(missing)} (apt-get install -y chromium; pip install playwright)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def _post_json(url, body):
    import urllib.request
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30) as resp:
        resp.read()


@pytest.fixture(scope="module")
def web_servers(tmp_path_factory):
    """``get(frontend) -> server``: one ComfyUI per frontend, started on first use, shared by the module."""
    _need_browser()
    # tests/comfy_server.py: ComfyUI 0.3.75 (cached) or the one COMFYUI_FLUX2_COMFY_DIR names
    from comfy_server import installed_frontend_version, provision_frontend, start_server

    from comfyui_flux2.loopback.runware_server import RunwareLoopback

    servers = {}
    with RunwareLoopback(api_key=RUNWARE_KEY) as runware:
        def get(frontend):
            if frontend not in servers:
                get.labels[frontend] = (installed_frontend_version() if frontend == BUNDLED_FRONTEND
                                        else frontend)
                extra = [] if frontend == BUNDLED_FRONTEND else ["--front-end-root", str(provision_frontend(frontend))]
                server = start_server(env={"RUNWARE_API_URL": runware.api_url, "RUNWARE_API_KEY": RUNWARE_KEY,
                                           "BFL_API_KEY": None, "BFL_API_URL": None,
                                           # a fresh result cache: a hit from an earlier run would bill $0
                                           "FLUX2_CACHE_DIR": str(tmp_path_factory.mktemp("web-result-cache"))},
                                      extra_args=extra)
                servers[frontend] = server
                if extra:
                    assert f"web root: {extra[1]}" in server.log_text(), server.log_text()[-3000:]
                # nothing copied by hand: the pack provides the examples' images in input/
            return servers[frontend]

        get.labels = {}
        try:
            yield get
        finally:
            for server in servers.values():
                server.stop()


@pytest.fixture(scope="module")
def browser(web_servers):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# Every deprecation the frontend reports while our extension's code is on the stack.
WATCH_DEPRECATIONS = """() => {
    const LG = window.LiteGraph;
    if (!LG || !Array.isArray(LG.onDeprecationWarning)) return false;
    LG.alwaysRepeatWarnings = true;
    window.__flux2Deprecated = [];
    LG.onDeprecationWarning.push((message) => {
        if ((new Error().stack ?? '').includes('flux2.js')) window.__flux2Deprecated.push(String(message));
    });
    return true;
}"""


class Page:
    """One editor tab on one frontend in one mode, with the console messages that concern this extension."""

    def __init__(self, browser, server, frontend, mode, label=None):
        self.frontend, self.mode = frontend, mode
        self.label = label or frontend   # the frontend's version, for file names
        _post_json(server.url + "/api/settings", {"Comfy.TutorialCompleted": True,   # no templates dialog
                                                  "Comfy.Minimap.Visible": False,
                                                  "Comfy.VueNodes.Enabled": mode == "nodes2"})
        self.page = browser.new_page(viewport={"width": 1280, "height": 800})
        # the frontend's "try Nodes 2.0" banner would cover the top of every screenshot
        self.page.add_init_script("try { localStorage.setItem('vueNodesBannerDismissed', 'true') } catch (e) {}")
        self.ours: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self._note("pageerror", str(exc) + " " + (exc.stack or "")))
        self.page.goto(server.url)
        self.page.wait_for_function(READY, timeout=60_000)
        self.watching_deprecations = self.js(WATCH_DEPRECATIONS)
        assert self.js("() => !!window.LiteGraph?.vueNodesMode") == (mode == "nodes2"), "Nodes 2.0 setting not applied"

    def _console(self, msg):
        if msg.type in ("error", "warning"):
            loc = (msg.location or {}).get("url", "")
            self._note(msg.type, f"{msg.text} @ {loc}")

    def _note(self, kind, text):
        if PACK_URL in text or EXT_NAME in text or "flux2.js" in text:
            self.ours.append(f"{kind}: {text}")

    def js(self, code, arg=None):
        return self.page.evaluate(code, arg)

    def fit(self, legible=False):
        try:   # frame the graph; the command exists in both frontends, a missing one only costs framing
            self.js("() => window.app.extensionManager?.command?.execute?.('Comfy.Canvas.FitView')")
        except Exception:
            pass
        if not legible:
            return self.js("() => window.app.graph.setDirtyCanvas(true, true)")
        self.page.wait_for_timeout(600)   # newer frontends animate FitView; zoom after it settled
        # Nodes 2.0 lays nodes out taller, so a whole graph can fit only at a zoom where nodes are drawn
        # as placeholders: then frame the generation node at a zoom where its readout is legible
        self.js("""() => { const c = window.app.canvas;
            if (!c?.ds || c.ds.scale >= 0.6) return;
            const n = window.app.graph.nodes.find(n => ['Flux2Edit', 'Flux2TextToImage'].includes(n.type));
            if (!n || typeof c.centerOnNode !== 'function') return;
            c.ds.scale = 0.8;
            c.centerOnNode(n); }""")
        self.js("() => window.app.graph.setDirtyCanvas(true, true)")

    def load(self, name):
        wf = json.loads((REPO / "workflows" / name).read_text())
        self.js("async (wf) => { await window.app.loadGraphData(wf); }", wf)
        # every readout has an answer from the server
        self.page.wait_for_function("""(types) => window.app.graph.nodes
            .filter(n => types.includes(n.type))
            .every(n => n.flux2Readout && n.flux2Readout.lines.length && n.flux2Readout.lines[0] !== '…')""",
                                    arg=list(READOUT_TYPES), timeout=15_000)
        self.fit()
        for node in wf["nodes"]:
            if node["type"] in READOUT_TYPES:
                if self.mode == "nodes2":   # the node is a DOM element, the readout its widget's own canvas
                    self.page.wait_for_function(
                        "(id) => [...document.querySelectorAll(`[data-node-id='${id}'] canvas`)]"
                        ".some(c => c.height > 0)", arg=node["id"], timeout=15_000)
                self.wait_drawn(node["id"])
        return wf

    def readout(self, node_id):
        return self.js("(id) => window.app.graph.getNodeById(id).flux2Readout", node_id)

    def wait_drawn(self, node_id, timeout=10_000):
        """Until what the readout widget last drew is what the node's readout holds now."""
        self.page.wait_for_function("""(id) => { const n = window.app.graph.getNodeById(id);
                const rows = n.type === 'Flux2Size' ? 2 : 4;
                return JSON.stringify(n.__flux2?.drawn) === JSON.stringify(n.flux2Readout?.lines.slice(0, rows)); }""",
                                    arg=node_id, timeout=timeout)

    def wait_readout(self, node_id, key, value, timeout=10_000):
        self.page.wait_for_function(
            "([id, key, value]) => window.app.graph.getNodeById(id).flux2Readout?.[key] === value",
            arg=[node_id, key, value], timeout=timeout)
        self.wait_drawn(node_id)
        return self.readout(node_id)

    def set_widget(self, node_id, name, value):
        """What a user's edit does: set the value, run the widget's callback."""
        self.js("""([id, name, value]) => {
            const node = window.app.graph.getNodeById(id);
            const w = node.widgets.find(w => w.name === name);
            w.value = value;
            w.callback?.(value, window.app.canvas, node);
            window.app.graph.setDirtyCanvas(true, true);
        }""", [node_id, name, value])

    def input_names(self, node_id):
        return self.js("(id) => window.app.graph.getNodeById(id).inputs.map(i => i.name)", node_id)

    def ref_inputs(self, node_id):
        return [n for n in self.input_names(node_id) if n.startswith("reference_")]

    def screenshot(self, name):
        """``name`` as is for the default frontend and mode, else with ``-<frontend>-<mode>``."""
        if (self.frontend, self.mode) != DEFAULT:
            name = name.replace(".png", f"-{self.label}-{self.mode}.png")
        self.fit(legible=self.mode == "nodes2")
        self.page.wait_for_timeout(300)
        png = _small_png(self.page.screenshot())
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / name).write_bytes(png)
        doc = SCREENSHOTS / name
        if os.environ.get("FLUX2_UPDATE_SCREENSHOTS") == "1" or not doc.exists():
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            doc.write_bytes(png)
        assert len(png) < MAX_SCREENSHOT_BYTES, f"{name}: {len(png)} bytes"

    def deprecated_reads(self):
        return self.js("() => window.__flux2Deprecated ?? null")

    def close(self):
        self.page.close()


def _small_png(raw: bytes) -> bytes:
    if len(raw) < MAX_SCREENSHOT_BYTES * 0.9:
        return raw
    from PIL import Image
    img = Image.open(io.BytesIO(raw)).convert("RGB").quantize(colors=128)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


@pytest.fixture
def combo(request):
    return getattr(request, "param", DEFAULT)


@pytest.fixture
def page(browser, web_servers, combo):
    frontend, mode = combo
    server = web_servers(frontend)
    p = Page(browser, server, frontend, mode, web_servers.labels[frontend])
    try:
        yield p
        assert p.ours == [], "console errors from the extension:\n" + "\n".join(p.ours)
        if p.watching_deprecations:
            assert p.deprecated_reads() == [], "the extension read APIs the frontend deprecates"
    finally:
        p.close()


def _nodes_of(wf, type_):
    return [n["id"] for n in wf["nodes"] if n["type"] == type_]


EXAMPLES = sorted(p.name for p in (REPO / "workflows").glob("*.json"))
# Optional widgets placed last on a node after example files were saved: what the frontend fills in.
NEW_WIDGET_DEFAULTS = {"Flux2RemoteBackend": ["default", "default"]}     # grounding, mode


@pytest.mark.slow
@pytest.mark.parametrize("name,combo", [pytest.param(n, DEFAULT, id=n) for n in EXAMPLES] +
                         [pytest.param("flux2_text_to_image.json", c.values[0], id=f"flux2_text_to_image.json-{c.id}")
                          for c in ALL_COMBOS if c.values[0] != DEFAULT], indirect=["combo"])
def test_example_workflow_loads_with_readouts(page, name):
    wf = page.load(name)
    # the readout widget is not serialised: widgets_values and the API prompt are what they were
    saved = page.js("""() => Object.fromEntries(window.app.graph.serialize().nodes
                         .map(n => [n.id, n.widgets_values]))""")
    for node in wf["nodes"]:
        if node["type"].startswith("Flux2"):
            values, stored = saved[str(node["id"])], node["widgets_values"]
            # widgets added since a file was saved (FLUX 3's grounding and mode, last on the backend node) come
            # after the stored values, at their defaults; the stored values keep their places
            assert values[:len(stored)] == stored, node["type"]
            assert values[len(stored):] == NEW_WIDGET_DEFAULTS.get(node["type"], [])[:len(values) - len(stored)], \
                node["type"]
    prompt = page.js("async () => (await window.app.graphToPrompt()).output")
    assert not any("flux2_readout" in n["inputs"] for n in prompt.values())
    for node_id in _nodes_of(wf, "Flux2TextToImage") + _nodes_of(wf, "Flux2Edit"):
        r = page.readout(node_id)
        assert r["badge"] and r["badge"].lstrip("≈ ").startswith("$"), r
        assert r["problems"] == [], r
    colours = page.js("""() => window.app.graph.nodes.filter(n => n.type.startsWith('Flux2'))
                          .map(n => n.bgcolor)""")
    assert colours and all(colours), colours
    page.screenshot(name.replace(".json", ".png"))


@pytest.mark.slow
@pytest.mark.parametrize("combo", ALL_COMBOS, indirect=True)
def test_text_to_image_readout_and_badge_follow_the_size(page):
    wf = page.load("flux2_text_to_image.json")
    [size_id] = _nodes_of(wf, "Flux2Size")
    [t2i_id] = _nodes_of(wf, "Flux2TextToImage")
    [backend_id] = _nodes_of(wf, "Flux2RemoteBackend")

    size = page.readout(size_id)
    assert (size["size"], size["megapixels"]) == ("1536×1024", "1.50 MP")   # 1 MP = 1024², as the widget
    t2i = page.readout(t2i_id)
    assert (t2i["size"], t2i["megapixels"], t2i["badge"]) == ("1536×1024", "1.50 MP", "$0.045")
    assert t2i["lines"][0] == "1536×1024 · 1.50 MP | $0.045"
    page.screenshot("text_to_image_readout.png")

    pro = get_model("FLUX.2 [pro]")
    page.set_widget(size_id, "megapixels", 1.0)
    w, h = size_from_aspect("3:2", 1.0)
    t2i = page.wait_readout(t2i_id, "size", f"{w}×{h}")
    assert t2i["badge"] == str(estimate(pro, "runware", w, h)) == "$0.03"
    assert page.wait_readout(size_id, "size", f"{w}×{h}")["size"] == f"{w}×{h}"

    page.set_widget(size_id, "aspect_ratio", "16:9")
    page.set_widget(size_id, "megapixels", 4.0)
    w, h = size_from_aspect("16:9", 4.0)
    t2i = page.wait_readout(t2i_id, "size", f"{w}×{h}")
    assert t2i["badge"] == str(estimate(pro, "runware", w, h))
    assert t2i["megapixels"] == f"{megapixels(w, h):.2f} MP"

    page.set_widget(backend_id, "model", "FLUX.2 [max]")
    t2i = page.wait_readout(t2i_id, "badge", str(estimate(get_model("FLUX.2 [max]"), "runware", w, h)))
    page.set_widget(t2i_id, "batch_size", 3)
    page.wait_readout(t2i_id, "badge", str(estimate(get_model("FLUX.2 [max]"), "runware", w, h, batch=3)))

    # unlinked width under the model's minimum (the widget allows 64; [pro] on Runware needs 256)
    page.js("""(id) => { const n = window.app.graph.getNodeById(id);
                         n.disconnectInput(n.inputs.findIndex(i => i.name === 'width')); }""", t2i_id)
    page.set_widget(t2i_id, "width", 128)
    page.page.wait_for_function(
        "(id) => window.app.graph.getNodeById(id).flux2Readout?.problems?.length > 0", arg=t2i_id, timeout=10_000)
    page.wait_drawn(t2i_id)
    t2i = page.readout(t2i_id)
    assert t2i["size"] == f"128×{h}"
    assert any(re.search(r"width 128 is outside 256\.\.2048", line) for line in t2i["lines"]), t2i
    assert t2i["tones"][0] == "warn", t2i       # the size line itself turns to the warning colour
    page.screenshot("text_to_image_warning.png")


@pytest.mark.slow
@pytest.mark.parametrize("combo", ALL_COMBOS, indirect=True)
def test_edit_reference_sockets_grow_within_the_model_limit(page):
    wf = page.load("flux2_local_references_edit.json")
    [edit_id] = _nodes_of(wf, "Flux2Edit")
    [backend_id] = _nodes_of(wf, "Flux2RemoteBackend")
    loaders = _nodes_of(wf, "LoadImage")

    def connect(src_id, name):
        page.js("""([src, dst, name]) => { const g = window.app.graph;
            const d = g.getNodeById(dst); g.getNodeById(src).connect(0, d, d.inputs.findIndex(i => i.name === name)); }""",
                [src_id, edit_id, name])

    def refs_become(names):
        page.page.wait_for_function(
            "([id, names]) => JSON.stringify(window.app.graph.getNodeById(id).inputs.map(i => i.name)"
            ".filter(n => n.startsWith('reference_'))) === JSON.stringify(names)", arg=[edit_id, names], timeout=10_000)

    # three connected references + one empty socket
    refs_become(["reference_1", "reference_2", "reference_3", "reference_4"])
    # the LoadImage previews tell the real reference sizes (512² each, billed as 1 MP): no "≈", no assumption
    pro = get_model("FLUX.2 [pro]")
    three = str(estimate(pro, "runware", 1536, 1024, [(512, 512)] * 3))
    r = page.wait_readout(edit_id, "badge", three, timeout=15_000)
    assert not any("assumed" in line for line in r["lines"]), r
    page.screenshot("edit_references.png")

    connect(loaders[0], "reference_4")
    refs_become([f"reference_{i}" for i in range(1, 6)])
    page.wait_readout(edit_id, "badge", str(estimate(pro, "runware", 1536, 1024, [(512, 512)] * 4)))
    page.js("""(id) => { const n = window.app.graph.getNodeById(id);
                         n.disconnectInput(n.inputs.findIndex(i => i.name === 'reference_4')); }""", edit_id)
    refs_become([f"reference_{i}" for i in range(1, 5)])
    connect(loaders[0], "reference_4")
    refs_become([f"reference_{i}" for i in range(1, 6)])
    # FLUX.2 [dev] on Runware takes 4 references: no fifth socket, no published price
    page.set_widget(backend_id, "model", "FLUX.2 [dev]")
    refs_become([f"reference_{i}" for i in range(1, 5)])
    r = page.wait_readout(edit_id, "badge", "price n/a")
    assert r["problems"] == []
    # a prompt made now carries the four connected references, nothing else
    prompt = page.js("async () => (await window.app.graphToPrompt()).output")
    refs = sorted(k for k in prompt[str(edit_id)]["inputs"] if k.startswith("reference_"))
    assert refs == ["reference_1", "reference_2", "reference_3", "reference_4"]


@pytest.mark.slow
def test_url_reference_shows_a_thumbnail_and_links_into_edit(page, web_servers):
    wf = page.load("flux2_multi_reference_edit.json")
    [edit_id] = _nodes_of(wf, "Flux2Edit")
    url_ids = _nodes_of(wf, "Flux2ReferenceURL")
    # three URL references linked (the frontend accepted FLUX2_REFERENCE into the sockets) + one empty socket
    assert page.ref_inputs(edit_id) == ["reference_1", "reference_2", "reference_3", "reference_4"]
    pro = get_model("FLUX.2 [pro]")
    # the documented URLs do not load here (offline): no thumbnail, each priced as <= 1 MP, marked "≈"
    r = page.wait_readout(edit_id, "badge", "≈ " + str(estimate(pro, "runware", 1536, 1024, [(1024, 1024)] * 3)))
    assert page.js("(id) => window.app.graph.getNodeById(id).imgs?.length ?? 0", url_ids[0]) == 0
    # an image the browser can load (the pack's example image, served by ComfyUI): a thumbnail
    view = f"{web_servers(BUNDLED_FRONTEND).url}/api/view?filename=flux2_example_ref_1.png&type=input"
    page.set_widget(url_ids[0], "url", view)
    page.page.wait_for_function("(id) => window.app.graph.getNodeById(id).imgs?.[0]?.naturalWidth === 512",
                                arg=url_ids[0], timeout=15_000)
    # a fourth URL reference links into the empty socket, and the sockets grow again
    linked = page.js("""([src, dst]) => { const g = window.app.graph, d = g.getNodeById(dst);
        return !!g.getNodeById(src).connect(0, d, d.inputs.findIndex(i => i.name === 'reference_4')); }""",
                     [url_ids[0], edit_id])
    assert linked
    page.page.wait_for_function(
        "(id) => window.app.graph.getNodeById(id).inputs.some(i => i.name === 'reference_5')", arg=edit_id,
        timeout=10_000)
    page.screenshot("reference_url.png")
    prompt = page.js("async () => (await window.app.graphToPrompt()).output")
    assert prompt[str(edit_id)]["inputs"]["reference_4"] == [str(url_ids[0]), 0]
    assert prompt[str(url_ids[0])]["inputs"]["url"] == view


@pytest.mark.slow
@pytest.mark.parametrize("combo", ALL_COMBOS, indirect=True)
def test_billed_cost_shows_after_a_run(page, web_servers, combo):
    server = web_servers(combo[0])
    wf = page.load("flux2_text_to_image.json")
    [t2i_id] = _nodes_of(wf, "Flux2TextToImage")
    # a prompt no earlier test queued on this server (ComfyUI would answer a repeat from its own cache)
    page.set_widget(t2i_id, "seed", 73410 + FRONTENDS.index(combo[0]) * 10 + MODES.index(combo[1]))
    assert page.readout(t2i_id)["billed"] is None
    before = set(server.output_dir.rglob("*.png"))
    page.js("""async () => {
        if (typeof window.app.queuePrompt === 'function') return await window.app.queuePrompt(0, 1);
        return await window.app.extensionManager.command.execute('Comfy.QueuePrompt');
    }""")
    page.page.wait_for_function("(id) => window.app.graph.getNodeById(id).flux2Readout?.billed != null",
                                arg=t2i_id, timeout=120_000)
    page.wait_drawn(t2i_id)
    r = page.readout(t2i_id)
    assert r["billed"] == "$0.045", r
    assert "last run: billed $0.045 · 1536×1024" in r["lines"]
    # The billed readout arrives when the generation node finishes; SaveImage runs just after it.
    deadline = time.monotonic() + 30
    while not set(server.output_dir.rglob("*.png")) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert set(server.output_dir.rglob("*.png")) - before
    try:   # let the queue finish so the screenshot shows the saved image
        page.page.wait_for_function("() => window.app.graph.nodes.some(n => n.type === 'SaveImage' && n.imgs?.length)",
                                    timeout=15_000)
    except Exception:
        pass
    page.screenshot("text_to_image_billed.png")


@pytest.mark.slow
@pytest.mark.parametrize("combo", [DEFAULT, ALL_COMBOS[-1].values[0]], indirect=True)
def test_flux3_layout_boxes_are_drawn_and_the_delivered_size_shown(page):
    wf = page.load("flux3_layout.json")
    [layout_id] = _nodes_of(wf, "Flux2Layout")
    [t2i_id] = _nodes_of(wf, "Flux2TextToImage")
    page.page.wait_for_function("(id) => (window.app.graph.getNodeById(id).__flux2?.result?.boxes ?? []).length === 2",
                                arg=layout_id, timeout=15_000)
    assert page.readout(layout_id)["lines"] == ["2 boxes (canvas = the output)"]
    assert page.readout(t2i_id)["lines"][0] == "1184×880 · 0.99 MP | $0.048"
    page.screenshot("flux3_layout.png")
    page.set_widget(layout_id, "boxes", "sun | 0.5 0.5 0.2 0.9 | x")       # top below bottom: the engine says so
    page.page.wait_for_function("(id) => /top < bottom/.test(window.app.graph.getNodeById(id).__flux2?.error ?? '')",
                                arg=layout_id, timeout=15_000)
    assert "top < bottom" in page.readout(layout_id)["lines"][0]
