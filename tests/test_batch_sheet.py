"""DIR/index.html in a real browser (Debian's chromium through playwright), opened from disk: it loads with
no console error and every thumbnail shows, whatever the prompts hold."""
from __future__ import annotations

import json

from comfyui_flux2.cli import main
from comfyui_flux2.runner.batch.sheet import write_sheet

from test_batch import records, small_workflow
from test_web_extension import CHROMIUM, CHROMIUM_ARGS, _need_browser   # the browser harness: Debian's chromium


def test_contact_sheet_opens_from_disk_with_every_thumbnail(runware, tmp_path):
    _need_browser()
    from playwright.sync_api import sync_playwright

    rows = [{"Make.prompt": "a fox"},
            {"Make.prompt": '</figure><script>window.__pwned = 1</script> "quoted" & <b>bold</b>'},
            {"Make.prompt": "forbidden-content"},                      # refused by the provider's filter: failed
            {"Make.prompt": "a hare", "Save.filename_prefix": "odd name #1/with ?marks% & 'quotes'"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out dir"
    assert main(["batch", str(small_workflow(tmp_path)), "--table", str(tmp_path / "rows.jsonl"),
                 "--output-dir", str(out)]) == 1                      # one item failed
    recs = records(out)
    assert [recs[f"r{i}"]["status"] for i in range(1, 5)] == ["ok", "ok", "failed", "ok"]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            problems = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto((out / "index.html").as_uri())
            page.wait_for_load_state("load")
            images = page.locator("img")
            assert images.count() == 3
            for i in range(images.count()):
                img = images.nth(i)
                img.scroll_into_view_if_needed()
                page.wait_for_function("(img) => img.complete", arg=img.element_handle(), timeout=10_000)
                assert img.evaluate("(img) => img.naturalWidth") == 256, img.get_attribute("src")
            assert page.evaluate("() => window.__pwned") is None
            assert page.locator("figure").count() == 4
            assert "<script>" in page.locator("figure").nth(1).inner_text()     # shown as text
            assert "failed" in page.locator("figure").nth(2).inner_text()
        finally:
            browser.close()
    assert problems == []


def test_a_manifest_entry_pointing_outside_the_folder_gets_no_link(tmp_path):
    page = write_sheet(tmp_path, [{"item": "r1", "row": 1, "status": "ok",
                                   "outputs": ["../secret.png", "/etc/passwd.png", "ok.png"]}]).read_text()
    assert "secret" not in page and "/etc/passwd" not in page and 'src="ok.png"' in page


def test_an_unexpected_error_is_scrubbed_before_it_reaches_the_manifest_and_sheet(tmp_path, monkeypatch):
    """A bug's exception text may quote a request (its key): the manifest line and index.html get *** instead."""
    from types import SimpleNamespace

    from comfyui_flux2.runner.batch.executors import ItemEnv, ItemRun
    from comfyui_flux2.runner.batch.manifest import FAILED

    key = "rw-secret-key-0123456789abcdef"
    monkeypatch.setenv("RUNWARE_API_KEY", key)
    item = SimpleNamespace(id="r1", prompt={})
    run = ItemRun(item, ItemEnv({}, tmp_path, tmp_path))
    outcome = run.ended(FAILED, RuntimeError(f"request {{'apiKey': '{key}'}} failed"))
    assert key not in outcome.error and "***" in outcome.error
    write_sheet(tmp_path, [{"item": "r1", "row": 1, "status": FAILED, "error": outcome.error}])
    assert key not in (tmp_path / "index.html").read_text()


def test_a_ray_error_is_scrubbed_before_it_reaches_the_manifest(monkeypatch):
    from types import SimpleNamespace

    from comfyui_flux2.runner.batch.manifest import FAILED
    from comfyui_flux2.runner.batch.ray_executor import RayItemRun

    key = "bfl-secret-key-0123456789abcdef"
    monkeypatch.setenv("BFL_API_KEY", key)
    outcome = RayItemRun(None, SimpleNamespace(id="r1")).ended(FAILED, RuntimeError(f"x-key: {key}"))
    assert key not in outcome.error and "***" in outcome.error
