// comfyui-flux2 editor extension: what a FLUX.2 node will make and what it will cost, before Queue.
//
// - Flux2Size / Flux2TextToImage / Flux2Edit: live W×H and megapixel readout (1 MP = 1024×1024, the
//   convention of the pack's megapixels widget and of the providers' billing), in a warning colour
//   when the size breaks the connected model's rules.
// - Flux2TextToImage / Flux2Edit: cost badge from the connected backend, the size (followed through
//   links from Flux2Size), batch_size and the connected references; the billed cost after a run.
// - Flux2Edit: reference sockets grow as they are connected, up to the model's limit.
// - Flux2Layout: its boxes drawn on a small canvas (as the engine reads them), and the line at fault.
// - After a FLUX 3 run: the prompt as the provider expanded it.
// - Flux2ReferenceURL: a thumbnail of the URL's image where the browser can load it (and then its
//   size prices the reference exactly instead of as <= 1 MP).
// - One colour for every node of the FLUX.2 category.
//
// No number is computed here: the graph's values go to POST /flux2/preview, which answers with the
// engine's own functions (flux2/sizes.py, flux2/pricing.py), so the editor cannot drift from what the
// nodes bill. Every frontend API is feature-tested: an old or new frontend loses a feature, never the page.
import { app } from "../../scripts/app.js";

const EXT = "comfyui-flux2.editor";
const SIZE = "Flux2Size";
const T2I = "Flux2TextToImage";
const EDIT = "Flux2Edit";
const REMOTE = "Flux2RemoteBackend";
const URL_REF = "Flux2ReferenceURL";
const LOCAL = ["Flux2LocalBackend", "Flux2ComfyBackend"];
const LORA = "Flux2LoRA";
const LAYOUT = "Flux2Layout";
const READOUT_NODES = new Set([SIZE, T2I, EDIT, LAYOUT]);
const CATEGORY = "FLUX.2";
const COLORS = { color: "#332a5c", bgcolor: "#221d38" };
const REF_RE = /^reference_(\d+)$/;
const POLL_MS = 250;
const LINE_H = 16;
const WIDGET_NAME = "flux2_readout";

const state = {
  models: null,          // GET /flux2/models
  maxRefsAny: 8,
  inFlight: false,
  lastSig: null,
  failures: 0,
  nextKey: 1,
  flux2Types: new Set(),  // node types of the FLUX.2 category
};

// ---------------------------------------------------------------------------------------------
// small guarded helpers
// ---------------------------------------------------------------------------------------------

function apiFetch(path, options) {
  const api = app?.api ?? window.comfyAPI?.api?.api;
  if (api && typeof api.fetchApi === "function") return api.fetchApi(path, options);
  return fetch("api" + path, options);   // relative: works behind a sub-path too
}

function nodeType(node) {
  return node?.comfyClass ?? node?.type ?? node?.constructor?.comfyClass;
}

function widget(node, name) {
  return Array.isArray(node?.widgets) ? node.widgets.find((w) => w?.name === name) : undefined;
}

function widgetValue(node, name) {
  return widget(node, name)?.value;
}

function inputIndex(node, name) {
  return Array.isArray(node?.inputs) ? node.inputs.findIndex((i) => i?.name === name) : -1;
}

function isInputConnected(node, slot) {
  // node.isInputConnected / getInputLink: the frontend's connectivity API (newer frontends warn on
  // input.link, which they keep only as a deprecated mirror); input.link where a frontend lacks them
  if (!node || slot == null || slot < 0 || !node.inputs?.[slot]) return false;
  try {
    if (typeof node.isInputConnected === "function") return !!node.isInputConnected(slot);
  } catch (_) { /* a node outside a graph */ }
  return node.inputs[slot].link != null;
}

function linkOf(node, slot) {
  try {
    if (typeof node.getInputLink === "function") return node.getInputLink(slot);
  } catch (_) { /* a node outside a graph */ }
  const id = node?.inputs?.[slot]?.link;
  const links = node?.graph?.links ?? node?.graph?._links;
  if (id == null || !links) return null;
  return typeof links.get === "function" ? links.get(id) : links[id];
}

function originOf(node, slot, depth = 0) {
  // -> {node, slot} of what feeds node.inputs[slot], through Reroute nodes; null if unconnected
  if (!isInputConnected(node, slot) || depth > 16) return null;
  const link = linkOf(node, slot);
  if (!link) return null;
  let origin = null;
  try {
    origin = typeof node.getInputNode === "function" ? node.getInputNode(slot)
      : node.graph?.getNodeById?.(link.origin_id);
  } catch (_) { origin = null; }
  if (!origin) return null;
  if (nodeType(origin) === "Reroute") return originOf(origin, 0, depth + 1);
  return { node: origin, slot: link.origin_slot ?? 0 };
}

function originByName(node, name) {
  return originOf(node, inputIndex(node, name));
}

function markDirty(node) {
  // Nodes 2.0 (Vue nodes) draws a canvas-drawn widget on a canvas of its own that redraws on mount,
  // resize or the widget's triggerDraw(), never on setDirtyCanvas: ask the widget itself first.
  try { widget(node, WIDGET_NAME)?.triggerDraw?.(); } catch (_) { /* ignore */ }
  try { node.setDirtyCanvas?.(true, true); } catch (_) { /* ignore */ }
  try { app.graph?.setDirtyCanvas?.(true, true); } catch (_) { /* ignore */ }
}

function flux2(node) {
  node.__flux2 ??= { key: String(state.nextKey++), result: null, error: null, last: null };
  return node.__flux2;
}

// ---------------------------------------------------------------------------------------------
// what the graph holds -> preview items
// ---------------------------------------------------------------------------------------------

function backendSpec(node, depth = 0) {
  const src = originByName(node, "backend");
  if (!src) return null;
  const type = nodeType(src.node);
  // A Flux2LoRA chain keeps its backend's limits and price: follow it to the backend node.
  if (type === LORA) return depth < 64 ? backendSpec(src.node, depth + 1) : null;
  if (type === REMOTE) {
    return { type, provider: widgetValue(src.node, "provider"), model: widgetValue(src.node, "model"),
             mode: widgetValue(src.node, "mode") ?? "default" };
  }
  if (LOCAL.includes(type)) return { type };
  return null;
}

function sideValue(node, name) {
  // -> {value} | {size: Flux2Size node, slot} | {unknown}
  const i = inputIndex(node, name);
  if (isInputConnected(node, i)) {
    const src = originOf(node, i);
    if (!src) return { unknown: true };
    const t = nodeType(src.node);
    if (t === SIZE) return { size: src.node, slot: src.slot };
    if (t === "PrimitiveNode" || t === "PrimitiveInt") {
      const v = src.node.widgets?.[0]?.value;
      return typeof v === "number" ? { value: v } : { unknown: true };
    }
    return { unknown: true };
  }
  const v = widgetValue(node, name);
  return typeof v === "number" ? { value: v } : { unknown: true };
}

function flux2SizeSpec(node) {
  return {
    aspect_ratio: widgetValue(node, "aspect_ratio"),
    megapixels: widgetValue(node, "megapixels"),
    width: widgetValue(node, "width"),
    height: widgetValue(node, "height"),
    backend: backendSpec(node),
  };
}

function imageSize(src) {
  // a reference's pixel size where the editor already has the image (LoadImage preview, URL
  // thumbnail), else null
  if (!src || !["LoadImage", URL_REF].includes(nodeType(src.node))) return null;
  const img = src.node.imgs?.[0];
  const w = img?.naturalWidth, h = img?.naturalHeight;
  return w > 0 && h > 0 ? [w, h] : null;
}

function referenceSources(node) {
  const refs = [];
  for (let i = 0; i < (node.inputs?.length ?? 0); i++) {
    const m = REF_RE.exec(node.inputs[i]?.name ?? "");
    if (m && isInputConnected(node, i)) refs.push({ n: Number(m[1]), src: originOf(node, i) });
  }
  return refs.sort((a, b) => a.n - b.n);
}

function sizeSpec(node, refs) {
  const w = sideValue(node, "width"), h = sideValue(node, "height");
  if (w.size && h.size && w.size === h.size && w.slot === 0 && h.slot === 1) {
    return { flux2_size: flux2SizeSpec(w.size) };
  }
  const resolve = (s, slot) => {
    if ("value" in s) return s.value;
    if (s.size) {   // one side from a Flux2Size: use what the server answered for that node
      const r = s.size.__flux2?.result;
      return r ? (s.slot === 0 ? r.width : r.height) : null;
    }
    return null;
  };
  const wv = resolve(w), hv = resolve(h);
  if (typeof wv !== "number" || typeof hv !== "number") return { unknown: "size from a linked node, known after the run" };
  if (nodeType(node) === EDIT && wv === 0 && hv === 0) {
    const first = refs.find((r) => r.n === 1);
    return { follow: first ? imageSize(first.src) : null };
  }
  return { width: wv, height: hv };
}

function itemFor(node) {
  const type = nodeType(node);
  const id = flux2(node).key;
  if (type === SIZE) return { id, kind: "size", size: { flux2_size: flux2SizeSpec(node) } };
  if (type === LAYOUT) return { id, kind: "layout", boxes: String(widgetValue(node, "boxes") ?? "") };
  const refs = type === EDIT ? referenceSources(node) : [];
  const batch = sideValue(node, "batch_size");
  return {
    id, kind: "generate",
    backend: backendSpec(node),
    size: sizeSpec(node, refs),
    references: refs.map((r) => imageSize(r.src)),
    batch: typeof batch.value === "number" ? batch.value : 1,
  };
}

function allGraphNodes() {
  const graph = app?.graph;
  if (!graph) return [];
  const nodes = [...(graph.nodes ?? graph._nodes ?? [])];
  try {
    const subs = graph.subgraphs;
    if (subs && typeof subs.values === "function") for (const sg of subs.values()) nodes.push(...(sg.nodes ?? []));
  } catch (_) { /* older frontends: no subgraphs */ }
  return nodes;
}

// ---------------------------------------------------------------------------------------------
// refresh loop: send when what the graph holds changed, show what the server answers
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Flux2ReferenceURL: thumbnail
// ---------------------------------------------------------------------------------------------

function showUrlThumbnail(node) {
  const url = String(widgetValue(node, "url") ?? "").trim();
  const s = flux2(node);
  if (s.thumbUrl === url) return;
  s.thumbUrl = url;
  const drop = () => {
    if (flux2(node).thumbUrl !== url) return;
    node.imgs = undefined;
    markDirty(node);
    refreshSoon();
  };
  if (!/^https?:\/\//i.test(url)) { drop(); return; }   // e.g. a Runware imageUUID: nothing to show
  const img = new Image();
  img.referrerPolicy = "no-referrer";
  img.onload = () => {
    if (flux2(node).thumbUrl !== url) return;
    node.imgs = [img];
    markDirty(node);
    refreshSoon();   // the reference's size is known now: price it exactly
  };
  img.onerror = drop;
  img.src = url;
}

async function refresh() {
  if (state.inFlight || document.hidden) return;
  for (const n of allGraphNodes()) if (nodeType(n) === URL_REF) showUrlThumbnail(n);
  const nodes = allGraphNodes().filter((n) => READOUT_NODES.has(nodeType(n)));
  if (!nodes.length) return;
  for (const n of nodes) if (nodeType(n) === EDIT) syncReferenceInputs(n);
  const items = nodes.map(itemFor);
  const sig = JSON.stringify(items);
  if (sig === state.lastSig) return;
  state.inFlight = true;
  try {
    const res = await apiFetch("/flux2/preview", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ items }),
    });
    if (!res.ok) throw new Error(`POST /flux2/preview: HTTP ${res.status}`);
    const body = await res.json();
    const byId = new Map((body.items ?? []).map((r) => [String(r.id), r]));
    for (const n of nodes) {
      const s = flux2(n);
      const r = byId.get(s.key);
      s.result = r && !r.error ? r : null;
      s.error = r?.error ?? null;
      updateReadout(n);
    }
    state.lastSig = sig;
    state.failures = 0;
  } catch (err) {
    state.failures++;
    state.lastSig = state.failures >= 3 ? sig : null;   // stop hammering a server without the route
    if (state.failures === 3) console.warn(`[${EXT}] size/cost preview unavailable:`, err);
    for (const n of nodes) { flux2(n).error = "size/cost preview unavailable"; updateReadout(n); }
  } finally {
    state.inFlight = false;
  }
}

function refreshSoon() {
  state.lastSig = null;
  setTimeout(() => { refresh().catch((e) => console.warn(`[${EXT}]`, e)); }, 0);
}

// ---------------------------------------------------------------------------------------------
// readout text (kept on the node, so tests and screenshots see the same lines) and drawing
// ---------------------------------------------------------------------------------------------

const fmtSize = (w, h) => `${w}×${h}`;
const fmtMp = (mp) => `${Number(mp).toFixed(2)} MP`;

function readoutLines(node) {
  const s = flux2(node), r = s.result, type = nodeType(node);
  const lines = [];   // {text, tone: "main"|"dim"|"warn"|"cost"|"billed", badge?}
  if (s.error) lines.push({ text: s.error, tone: "warn" });
  if (!r) return lines.length ? lines : [{ text: "…", tone: "dim" }];
  if (type === LAYOUT) {
    const n = (r.boxes ?? []).length;
    return [{ text: `${n} box${n === 1 ? "" : "es"} (canvas = the output)`, tone: "main", key: "size" }];
  }
  const bad = (r.problems ?? []).length > 0;
  const sizeText = r.width != null ? `${fmtSize(r.width, r.height)} · ${fmtMp(r.megapixels)}` : (r.note ?? "size after the run");
  const head = { text: sizeText, tone: bad ? "warn" : "main", key: "size" };
  if (type === SIZE) {
    const spec = flux2SizeSpec(node);
    lines.push(head);
    if (spec.aspect_ratio === "custom" && r.width != null && (spec.width !== r.width || spec.height !== r.height)) {
      lines.push({ text: `snapped from ${fmtSize(spec.width, spec.height)}`, tone: "warn" });
    } else if (r.backend) {
      lines.push({ text: `limits of ${r.backend}`, tone: "dim" });
    }
    return lines;
  }
  if (r.cost != null) head.badge = (r.output_assumed || r.references_assumed ? "≈ " : "") + r.cost;
  else if (r.usd === null && r.backend) head.badge = "price n/a";
  if (bad && head.badge) head.badgeTone = "warn";   // priced, but the run would be refused as it stands
  if (r.note && r.width != null) head.text += ` (${r.note})`;
  lines.push(head);
  lines.push({ text: r.detail || " ", tone: "dim", key: "detail" });
  const notes = [];
  if (r.references_assumed) notes.push(`refs assumed ≤1 MP each`);
  if (r.output_assumed && r.backend) notes.push("output size known after the run, priced as 1 MP");
  if (bad) lines.push({ text: [...r.problems, ...notes].join("; "), tone: "warn", key: "problem" });
  else if (notes.length) lines.push({ text: notes.join("; "), tone: "dim", key: "assumption" });
  if (s.last) {
    const l = s.last;
    const what = l.dry_run ? "dry run, nothing billed" : `billed ${l.billed}`;
    const size = Array.isArray(l.size) ? ` · ${fmtSize(l.size[0], l.size[1])}` : "";
    // FLUX 3 rewrites every prompt before it draws: show what it drew from (truncated to the node's width).
    const expanded = Array.isArray(l.expanded_prompts) ? l.expanded_prompts[0] : null;
    const tail = typeof expanded === "string" ? ` · expanded prompt: ${expanded}` : "";
    lines.push({ text: `last run: ${what}${size}${tail}`, tone: "billed", key: "billed" });
  }
  return lines;
}

const lineText = (l) => (l.badge ? `${l.text} | ${l.badge}` : l.text);

function updateReadout(node) {
  const s = flux2(node);
  s.lines = readoutLines(node);
  // a plain summary for tests and tooltips: "1536×1024 · 1.50 MP | $0.045"
  const head = s.lines.find((l) => l.key === "size");
  node.flux2Readout = {
    size: s.result?.width != null ? fmtSize(s.result.width, s.result.height) : null,
    megapixels: s.result?.megapixels != null ? fmtMp(s.result.megapixels) : null,
    cost: s.result?.cost ?? null,
    badge: head?.badge ?? null,
    problems: s.result?.problems ?? [],
    billed: s.last?.billed ?? null,
    lines: s.lines.map(lineText),
    tones: s.lines.map((l) => l.tone),
  };
  ensureHeight(node);
  markDirty(node);
}

const TONES = {
  main: "#d8d8e8", dim: "#9a9ab0", warn: "#ffb347", billed: "#8fd18f",
};

function rowsFor(node) {
  const t = nodeType(node);
  return t === SIZE ? 2 : t === LAYOUT ? 7 : 4;
}

function drawLayout(ctx, node, width, y) {
  // The boxes as the engine read them, on a canvas standing for the output ([top, left, bottom, right], 0..1).
  const boxes = flux2(node).result?.boxes ?? [];
  const margin = 15, top = y + 4 + LINE_H, h = (rowsFor(node) - 1) * LINE_H - 4, w = width - 2 * margin;
  ctx.strokeStyle = "#6a6a88";
  ctx.strokeRect(margin, top, w, h);
  const palette = ["#ffb347", "#8fd18f", "#7fb3ff", "#ff8fa3", "#d9a6ff", "#f0e68c"];
  boxes.forEach((b, i) => {
    const [t, l, btm, r] = b.box;
    ctx.strokeStyle = palette[i % palette.length];
    ctx.strokeRect(margin + l * w, top + t * h, (r - l) * w, (btm - t) * h);
    ctx.fillStyle = palette[i % palette.length];
    ctx.font = "10px sans-serif";
    ctx.fillText(truncate(ctx, String(b.id), Math.max(10, (r - l) * w - 4)), margin + l * w + 2, top + t * h + 7);
  });
}

function truncate(ctx, text, maxWidth) {
  if (ctx.measureText(text).width <= maxWidth) return text;
  let lo = 0, hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (ctx.measureText(text.slice(0, mid) + "…").width <= maxWidth) lo = mid; else hi = mid - 1;
  }
  return text.slice(0, lo) + "…";
}

function makeReadoutWidget(node) {
  return {
    name: WIDGET_NAME,
    type: "flux2_readout",
    value: "",
    options: { serialize: false },   // never in widgets_values nor in the prompt
    serialize: false,
    computeSize(width) { return [width ?? 200, rowsFor(node) * LINE_H + 8]; },
    draw(ctx, n, width, y) {
      const lines = flux2(n).lines ?? [{ text: "…", tone: "dim" }];
      flux2(n).drawn = lines.slice(0, rowsFor(n)).map(lineText);   // what is on screen now, for tests
      const margin = 15;
      ctx.save();
      try {
        ctx.font = "12px sans-serif";
        ctx.textBaseline = "middle";
        ctx.textAlign = "left";
        if (nodeType(n) === LAYOUT && flux2(n).result) drawLayout(ctx, n, width, y);
        lines.slice(0, nodeType(n) === LAYOUT && flux2(n).result ? 1 : rowsFor(n)).forEach((line, i) => {
          const cy = y + 4 + i * LINE_H + LINE_H / 2;
          let room = width - 2 * margin;
          if (line.badge) {
            ctx.font = "bold 12px sans-serif";
            const bw = ctx.measureText(line.badge).width + 14;
            const bx = width - margin - bw;
            ctx.fillStyle = line.badgeTone === "warn" ? "#8a5a12" : line.badge.startsWith("price") ? "#555" : "#2e7d4f";
            ctx.beginPath();
            if (typeof ctx.roundRect === "function") ctx.roundRect(bx, cy - 8, bw, 16, 8);
            else ctx.rect(bx, cy - 8, bw, 16);
            ctx.fill();
            ctx.fillStyle = "#ffffff";
            ctx.fillText(line.badge, bx + 7, cy + 0.5);
            room -= bw + 8;
          }
          ctx.font = line.tone === "main" || line.tone === "warn" && i === 0 ? "bold 12px sans-serif" : "11px sans-serif";
          ctx.fillStyle = TONES[line.tone] ?? TONES.main;
          ctx.fillText(truncate(ctx, line.text, Math.max(20, room)), margin, cy + 0.5);
        });
      } finally {
        ctx.restore();
      }
    },
    mouse() { return false; },
  };
}

function ensureHeight(node) {
  try {
    if (typeof node.computeSize !== "function" || !Array.isArray(node.size)) return;
    const need = node.computeSize();
    if (Array.isArray(need) && node.size[1] < need[1]) node.setSize?.([Math.max(node.size[0], need[0]), need[1]]);
  } catch (_) { /* ignore */ }
}

function addReadout(node) {
  if (widget(node, WIDGET_NAME)) return;
  flux2(node);
  try {
    if (typeof node.addCustomWidget === "function") node.addCustomWidget(makeReadoutWidget(node));
    else (node.widgets ??= []).push(makeReadoutWidget(node));
  } catch (err) {
    console.warn(`[${EXT}] readout widget not added:`, err);
  }
  updateReadout(node);
}

// ---------------------------------------------------------------------------------------------
// Flux2Edit: reference sockets that grow as they are connected
// ---------------------------------------------------------------------------------------------

function maxRefsFor(node) {
  const b = backendSpec(node);
  const pm = b?.provider && state.models?.models?.[b.model]?.providers?.[b.provider];
  return Math.min(pm?.max_refs ?? state.maxRefsAny, state.maxRefsAny);
}

function syncReferenceInputs(node) {
  if (!Array.isArray(node?.inputs) || typeof node.addInput !== "function" || typeof node.removeInput !== "function") return;
  if (app?.configuringGraph || node.graph?._configuring) return;   // retried by the refresh loop
  const s = flux2(node);
  const refs = node.inputs.map((inp, i) => ({ inp, i, n: Number(REF_RE.exec(inp?.name ?? "")?.[1] ?? 0) }))
    .filter((r) => r.n > 0);
  // new sockets copy an existing one (type "IMAGE,FLUX2_REFERENCE": images and URL references)
  const template = refs.find((r) => r.n > 1)?.inp ?? refs.find((r) => r.n === 1)?.inp;
  if (template) s.template ??= { type: template.type, shape: template.shape };
  const last = refs.reduce((m, r) => (isInputConnected(node, r.i) ? Math.max(m, r.n) : m), 0);
  // one empty socket after the last connected, within the model's limit; never hide a connected one
  const target = Math.min(state.maxRefsAny, Math.max(1, last, Math.min(last + 1, maxRefsFor(node))));
  let changed = false;
  for (const r of [...refs].sort((a, b) => b.i - a.i)) {
    if (r.n > target && !isInputConnected(node, r.i)) { node.removeInput(r.i); changed = true; }
  }
  for (let n = 2; n <= target; n++) {
    if (inputIndex(node, `reference_${n}`) < 0) {
      const t = s.template ?? { type: "IMAGE" };
      const extra = {};
      if (t.shape != null) extra.shape = t.shape;
      node.addInput(`reference_${n}`, t.type ?? "IMAGE", extra);
      changed = true;
    }
  }
  if (changed) {
    try {
      const need = node.computeSize?.();
      if (Array.isArray(need)) node.setSize?.([node.size[0], Math.max(need[1], 0)]);
    } catch (_) { /* ignore */ }
    markDirty(node);
  }
}

// ---------------------------------------------------------------------------------------------
// registration
// ---------------------------------------------------------------------------------------------

function chain(proto, name, fn) {
  const original = proto[name];
  proto[name] = function (...args) {
    const r = typeof original === "function" ? original.apply(this, args) : undefined;
    try { fn.apply(this, args); } catch (err) { console.warn(`[${EXT}] ${name}:`, err); }
    return r;
  };
}

function colour(node) {
  const t = nodeType(node);
  const cat = node?.constructor?.nodeData?.category ?? node?.constructor?.category;
  if (!state.flux2Types.has(t) && !(typeof cat === "string" && cat.startsWith(CATEGORY))) return;
  if (!node.color) node.color = COLORS.color;
  if (!node.bgcolor) node.bgcolor = COLORS.bgcolor;
}

app.registerExtension({
  name: EXT,

  async setup() {
    try {
      const res = await apiFetch("/flux2/models");
      if (res.ok) {
        state.models = await res.json();
        state.maxRefsAny = Number(state.models.max_refs_any) || state.maxRefsAny;
      } else {
        console.warn(`[${EXT}] GET /flux2/models: HTTP ${res.status}`);
      }
    } catch (err) {
      console.warn(`[${EXT}] GET /flux2/models failed:`, err);
    }
    setInterval(() => { refresh().catch((e) => console.warn(`[${EXT}]`, e)); }, POLL_MS);
    refreshSoon();
  },

  async beforeRegisterNodeDef(nodeType_, nodeData) {
    const name = nodeData?.name;
    if (typeof nodeData?.category === "string" && nodeData.category.startsWith(CATEGORY)) state.flux2Types.add(name);
    const proto = nodeType_?.prototype;
    if (!proto || !READOUT_NODES.has(name)) return;
    chain(proto, "onConnectionsChange", function () {
      if (name === EDIT) setTimeout(() => syncReferenceInputs(this), 0);
      refreshSoon();
    });
    chain(proto, "onExecuted", function (output) {
      const info = Array.isArray(output?.flux2) ? output.flux2[0] : null;
      if (info && typeof info === "object") {
        flux2(this).last = info;
        updateReadout(this);
      }
    });
  },

  nodeCreated(node) {
    colour(node);
    const t = nodeType(node);
    if (t === URL_REF) setTimeout(() => showUrlThumbnail(node), 0);
    if (!READOUT_NODES.has(t)) return;
    addReadout(node);
    if (t === EDIT) setTimeout(() => syncReferenceInputs(node), 0);
    refreshSoon();
  },

  loadedGraphNode(node) {
    if (nodeType(node) === EDIT) syncReferenceInputs(node);
    if (READOUT_NODES.has(nodeType(node))) refreshSoon();
  },
});
