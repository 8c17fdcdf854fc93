"""DIR/index.html: a contact sheet of every batch item, written from the manifest, opened from disk.

No script, no server, no network: plain HTML with relative image links. Every text shown (prompts,
inputs, errors) is user or provider content and is escaped; image links are percent-encoded relative
paths that must stay inside the batch folder, and a Content-Security-Policy allows nothing but the
inline style and local images.
"""
from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from ...flux2.pricing import format_usd

SHEET = "index.html"
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' file: data:"
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;background:#f6f6f6;color:#222}
h1{font-size:18px;margin:0 0 4px}.sum{margin:0 0 16px;color:#555}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px}
figure.failed,figure.interrupted,figure.cancelled{border-color:#c33}
.imgs{display:flex;flex-wrap:wrap;gap:4px}.imgs img{max-width:100%;max-height:240px;display:block}
.none{height:120px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}
figcaption{margin-top:6px;font-size:12px;word-wrap:break-word}.p{white-space:pre-wrap}
.st{font-weight:600}.st.ok{color:#080}.st.failed,.st.interrupted,.st.cancelled{color:#c33}.err{color:#c33}
dl{margin:4px 0 0;display:grid;grid-template-columns:auto 1fr;gap:0 6px}dt{color:#666}dd{margin:0}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _link(relative: str) -> str | None:
    """A manifest output as a relative URL, or None if it would leave the batch folder."""
    path = PurePosixPath(str(relative))
    if path.is_absolute() or ".." in path.parts or not path.parts or ":" in path.parts[0]:
        return None
    return quote(path.as_posix())


def _sort_key(record: dict):
    seed = record.get("seed")
    return (record.get("row") if isinstance(record.get("row"), int) else 0,
            seed if isinstance(seed, int) else -1, str(record.get("item")))


def write_sheet(folder: Path, records: list[dict], title: str = "batch") -> Path:
    """Write (replace) folder/index.html from the manifest records (one per item, latest)."""
    records = sorted(records, key=_sort_key)
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    billed = sum(_billed(r) for r in records)
    images = sum(len(r.get("outputs") or []) for r in records)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sum">{len(records)} items: '
        + ", ".join(f"{n} {_e(s)}" for s, n in sorted(counts.items()))
        + f"; {images} images; billed {_e(format_usd(billed))}</p>",
        '<div class="grid">',
    ]
    for r in records:
        parts.append(_figure(r))
    parts.append("</div></body></html>")
    target = Path(folder) / SHEET
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".index-", suffix=".html")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")
    os.replace(tmp, target)
    return target


def _billed(r: dict) -> float:
    """What the item's images cost: this run's bill plus an earlier, killed run's for recovered tasks."""
    return float(r.get("billed_usd") or 0.0) + float(r.get("billed_earlier_usd") or 0.0)


def _figure(r: dict) -> str:
    status = str(r.get("status") or "?")
    css = status if status in ("ok", "failed", "interrupted", "cancelled") else "other"
    imgs = []
    for out in r.get("outputs") or []:
        url = _link(out)
        if url is not None and str(out).lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
            alt = f"{r.get('item')}: {PurePosixPath(str(out)).name}"
            imgs.append(f'<a href="{_e(url)}"><img src="{_e(url)}" alt="{_e(alt)}" loading="lazy"></a>')
    body = f'<div class="imgs">{"".join(imgs)}</div>' if imgs else f'<div class="none">{_e(status)}</div>'
    prompts = "".join(f'<div class="p">{_e(p)}</div>' for p in r.get("prompts") or [])
    seeds = r.get("seeds") or ([r["seed"]] if r.get("seed") is not None else [])
    rows = [("item", r.get("item")), ("seed", ", ".join(map(str, seeds)) or "-"),
            ("cost", format_usd(_billed(r))),
            *((k, v) for k, v in (r.get("inputs") or {}).items() if not str(k).endswith(".prompt"))]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    err = f'<div class="err">{_e(r["error"])}</div>' if r.get("error") else ""
    return (f'<figure class="{css}">{body}<figcaption><span class="st {css}">{_e(status)}</span>'
            f"{prompts}<dl>{dl}</dl>{err}</figcaption></figure>")
