"""A real ComfyUI 0.3.75 server loads this pack; the /prompt -> /history path works.

Slow (provisioning ~1 min the first time, cached in .cache/comfyui; server start ~10 s):
run with ``pytest --run-slow tests/test_comfyui_server.py``.
"""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from comfy_server import (  # noqa: F401  (fixtures are used by name)
    PACK_DIR_NAME,
    PromptError,
    ServerStartError,
    comfyui_server,
    comfyui_server_factory,
    object_info,
    queue_prompt,
    run_workflow,
)

pytestmark = pytest.mark.slow

EXPECTED_NODES = {"Flux2RemoteBackend", "Flux2TextToImage", "Flux2Edit", "Flux2Seed", "Flux2Size", "Flux2LocalBackend",
                  "Flux2ComfyBackend", "Flux2ReferenceURL", "Flux2LoRA", "Flux2Layout"}


def test_server_lists_the_pack_nodes(comfyui_server):
    info = object_info(comfyui_server)
    ours = {name for name, node in info.items() if node.get("python_module") == f"custom_nodes.{PACK_DIR_NAME}"}
    flux2 = {name for name in info if name.startswith("Flux2")}  # core has Flux2Scheduler too
    assert EXPECTED_NODES <= ours, f"missing: {sorted(EXPECTED_NODES - ours)}\nlog:\n{comfyui_server.log_text()[-4000:]}"
    assert EXPECTED_NODES <= flux2
    assert all(name.startswith("Flux2") for name in ours), sorted(ours)
    # a single class, too, and core nodes are there beside ours
    assert set(object_info(comfyui_server, "Flux2Seed")) == {"Flux2Seed"}
    assert {"EmptyImage", "SaveImage"} <= set(info)
    assert "(IMPORT FAILED)" not in comfyui_server.log_text()


def test_core_workflow_through_prompt(comfyui_server):
    from PIL import Image

    prompt = {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0xFF8000}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "flux2_smoke"}},
    }
    entry = run_workflow(comfyui_server, prompt, timeout=120)
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = entry["outputs"]["2"]["images"]
    assert len(images) == 1 and images[0]["type"] == "output"
    path = comfyui_server.output_dir / images[0]["subfolder"] / images[0]["filename"]
    assert path.is_file()
    with Image.open(path) as im:
        assert im.size == (64, 48)
        assert im.convert("RGB").getpixel((10, 10)) == (255, 128, 0)
    # the frontend's way to the same file
    view = f"{comfyui_server.url}/view?filename={images[0]['filename']}&type=output&subfolder={images[0]['subfolder']}"
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(view, timeout=30) as resp:
        assert resp.read() == path.read_bytes()


def test_invalid_prompt_is_refused_with_node_errors(comfyui_server):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 48, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bad"}},
    }
    with pytest.raises(PromptError) as info:
        queue_prompt(comfyui_server, prompt)
    assert "1" in info.value.payload["node_errors"]


def test_pack_import_failure_fails_loudly(comfyui_server_factory, tmp_path):
    broken = tmp_path / "broken_pack"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('flux2-broken-pack-marker')\n")
    with pytest.raises(ServerStartError) as info:
        comfyui_server_factory(custom_nodes={"broken_pack": broken})
    assert "IMPORT FAILED" in str(info.value) and "flux2-broken-pack-marker" in str(info.value)


def _template_prompt(server, name: str) -> dict:
    """A template as the template browser serves it, turned into the API prompt the editor would queue."""
    import json as _json

    from comfyui_flux2.cli import node_registry
    from comfyui_flux2.runner.executor import Executor

    url = f"{server.url}/api/workflow_templates/{PACK_DIR_NAME}/{name}.json"
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=30) as response:
        workflow = _json.load(response)
    return Executor(workflow, registry=node_registry(), input_dir=server.input_dir,
                    output_dir=server.output_dir).api_prompt


def test_templates_queue_as_shipped_on_loopback_runware(comfyui_server_factory, tmp_path):
    """Each template, loaded from the template browser and queued on a real ComfyUI, runs against the
    loopback Runware server with nothing copied by hand: the pack provided the examples' images in
    input/ when it loaded, keeping a file a user already had there."""
    import io

    from PIL import Image

    from comfyui_flux2.loopback.runware_server import RunwareLoopback

    workflows = Path(__file__).resolve().parents[1] / "workflows"
    base = tmp_path / "comfy"
    users = base / "input" / "flux2_example_ref_3.png"                  # the user's own file, same name
    users.parent.mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (10, 200, 30)).save(buf, "PNG")
    users.write_bytes(buf.getvalue())
    key = "comfy-e2e-key-77"
    with RunwareLoopback(api_key=key) as runware:
        server = comfyui_server_factory(base_dir=base, env={"RUNWARE_API_URL": runware.api_url, "RUNWARE_API_KEY": key,
                                                            "FLUX2_CACHE_DIR": str(tmp_path / "cache")})
        provided = sorted(p.name for p in server.input_dir.glob("flux2_example_ref_*.png"))
        assert provided == ["flux2_example_ref_1.png", "flux2_example_ref_2.png", "flux2_example_ref_3.png",
                            "flux2_example_ref_mask.png"]
        assert users.read_bytes() == buf.getvalue()                          # never replaced
        assert (server.input_dir / "flux2_example_ref_1.png").read_bytes() == \
            (workflows / "flux2_example_ref_1.png").read_bytes()
        for name, expect in (("flux2_text_to_image", ["salt_cathedral"]),
                             ("flux2_multi_reference_edit", ["harbor_panorama"]),
                             ("flux2_local_references_edit", ["local_references_edit"]),
                             ("flux2_chain_edit", ["chain_1_teapot", "chain_2_cobalt", "chain_3_table"])):
            entry = run_workflow(server, _template_prompt(server, name), timeout=120)
            assert entry["status"]["status_str"] == "success", (name, entry["status"])
            for prefix in expect:
                (png,) = (server.output_dir / "flux2").glob(f"{prefix}_*.png")
                with Image.open(png) as img:
                    assert img.size[0] % 16 == 0 and img.getextrema()[0][1] > 0
        seed_task, harbor = runware.tasks("imageInference")[:2]
        assert (seed_task["model"], seed_task["width"], seed_task["height"], seed_task["seed"]) == (
            "bfl:5@1", 1536, 1024, 73410)
        assert seed_task["providerSettings"] == {"bfl": {"promptUpsampling": True, "safetyTolerance": 2}}
        assert harbor["inputs"]["referenceImages"][0].startswith("https://assets.runware.ai/")
        assert len(runware.tasks("imageInference")) == 6
        assert len(runware.tasks("imageUpload")) == 3   # three LoadImage refs; chain steps go as their imageUUID
        assert all(r["auth_ok"] for r in runware.requests)
        assert key not in server.log_text()


def test_flux3_templates_queue_as_shipped_on_loopback_bfl(comfyui_server_factory, tmp_path):
    """The FLUX 3 templates on a real ComfyUI: core LoadImageMask's MASK into Flux2Edit's optional `mask`,
    Flux2Layout into `layout`, against the loopback BFL server speaking FLUX 3's closed schemas."""
    from PIL import Image

    from comfyui_flux2.loopback.bfl_server import BflLoopback

    key = "comfy-e2e-bfl-key-31"
    with BflLoopback(api_key=key) as bfl:
        server = comfyui_server_factory(base_dir=tmp_path / "comfy", env={
            "BFL_API_URL": bfl.api_url, "BFL_API_KEY": key, "FLUX2_CACHE_DIR": str(tmp_path / "cache")})
        for name, prefix, size in (("flux3_text_to_image", "lighthouse", (2048, 1152)),
                                   ("flux3_1_masked_edit", "masked_edit", (512, 512)),
                                   ("flux3_layout", "layout", (1184, 880))):
            entry = run_workflow(server, _template_prompt(server, name), timeout=120)
            assert entry["status"]["status_str"] == "success", (name, entry["status"])
            (png,) = (server.output_dir / "flux3").glob(f"{prefix}_*.png")
            with Image.open(png) as img:
                assert img.size == size
        t2i, masked, layout = bfl.submits()
        assert (t2i["aspect_ratio"], t2i["resolution"], t2i["grounding"]) == ("16:9", "1.5k", False)
        assert masked["mode"] == "fast" and masked["mask"] and (masked["width"], masked["height"]) == (512, 512)
        assert layout["prompt"].endswith("\"desc\": \"a small blue fishing boat\"}]")
        assert key not in server.log_text()


def test_bad_reference_url_is_refused_when_the_queue_is_validated(comfyui_server_factory, tmp_path):
    """ComfyUI asks VALIDATE_INPUTS of every node before running any: nothing is sent."""
    from comfyui_flux2.loopback.runware_server import RunwareLoopback

    prompt = json.loads((Path(__file__).resolve().parents[1] / "workflows" / "api" /
                         "flux2_multi_reference_edit.json").read_text())
    prompt["3"]["inputs"]["url"] = "http://assets.example.com/not-https.jpg"
    with RunwareLoopback(api_key="url-key-12345678") as runware:
        server = comfyui_server_factory(env={"RUNWARE_API_URL": runware.api_url, "RUNWARE_API_KEY": "url-key-12345678",
                                             "FLUX2_CACHE_DIR": str(tmp_path)})
        with pytest.raises(PromptError) as err:
            queue_prompt(server, prompt)
        assert "3" in err.value.payload["node_errors"]
        assert "only https URLs" in json.dumps(err.value.payload)
        assert runware.requests == []


def test_missing_key_is_one_clear_error_in_comfyui(comfyui_server_factory):
    import json
    from pathlib import Path

    prompt = json.loads((Path(__file__).resolve().parents[1] / "workflows" / "api" / "flux2_text_to_image.json").read_text())
    server = comfyui_server_factory(env={"RUNWARE_API_KEY": None, "RUNWARE_API_URL": "http://127.0.0.1:9/v1"})
    with pytest.raises(PromptError) as err:
        run_workflow(server, prompt, timeout=60)
    assert "RUNWARE_API_KEY" in str(err.value.payload) or "RUNWARE_API_KEY" in str(err.value)


def test_examples_appear_in_the_template_browser(comfyui_server):
    import json as _json
    with urllib.request.urlopen(comfyui_server.url + "/workflow_templates", timeout=30) as response:
        templates = _json.load(response)
    from comfy_server import REPO_ROOT
    shipped = sorted(p.stem for p in (REPO_ROOT / "workflows").glob("*.json"))
    assert "flux2_text_to_image" in shipped and len(shipped) >= 5
    assert sorted(templates[PACK_DIR_NAME]) == shipped
    url = f"{comfyui_server.url}/api/workflow_templates/{PACK_DIR_NAME}/flux2_text_to_image.json"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert _json.load(response)["nodes"]


def test_budget_cap_refuses_a_queued_graph_before_any_call(comfyui_server_factory, tmp_path):
    import json
    from pathlib import Path

    from comfyui_flux2.loopback.runware_server import RunwareLoopback

    prompt = json.loads((Path(__file__).resolve().parents[1] / "workflows" / "api" / "flux2_chain_edit.json").read_text())
    with RunwareLoopback(api_key="budget-key-1234") as runware:
        server = comfyui_server_factory(env={"RUNWARE_API_URL": runware.api_url, "RUNWARE_API_KEY": "budget-key-1234",
                                             "FLUX2_BUDGET_USD": "0.1", "FLUX2_CACHE_DIR": str(tmp_path)})
        with pytest.raises(PromptError) as err:
            run_workflow(server, prompt, timeout=120)
        assert "over FLUX2_BUDGET_USD" in str(err.value.payload) + str(err.value)
        assert runware.requests == []


def test_budget_cap_holds_task_by_task_when_the_provider_charges_over_its_table(comfyui_server_factory, tmp_path):
    """The chain (3 [pro] tasks, estimated $0.12) fits a $0.20 cap, but the provider charges $0.10 a task. The first
    task shows it; the second (its $0.045 estimate x 3.33 on top of $0.10 billed) would pass the cap and is not
    sent. Before the run's gate, all three were billed ($0.30): the cap was checked once, on the estimate."""
    import json
    from pathlib import Path

    from comfyui_flux2.loopback.runware_server import RunwareLoopback

    prompt = json.loads((Path(__file__).resolve().parents[1] / "workflows" / "api" / "flux2_chain_edit.json").read_text())
    with RunwareLoopback(api_key="budget-key-5678", charge_usd=0.10) as runware:
        server = comfyui_server_factory(env={"RUNWARE_API_URL": runware.api_url, "RUNWARE_API_KEY": "budget-key-5678",
                                             "FLUX2_BUDGET_USD": "0.2", "FLUX2_CACHE_DIR": str(tmp_path)})
        with pytest.raises(PromptError) as err:
            run_workflow(server, prompt, timeout=120)
        text = str(err.value.payload) + str(err.value)
        import re
        message = re.search(r"not started: [^\"\\]*", text)
        assert message and "would pass FLUX2_BUDGET_USD $0.2" in message.group(0), re.findall(r"exception_message.{0,300}", text)
        assert len(runware.billed_tasks) == 1 and runware.billed == pytest.approx(0.10)


def test_pack_installed_the_way_comfyui_manager_does_runs_an_example(tmp_path):
    """A folder named comfyui-flux2 in custom_nodes/ (not a symlink to this checkout), requirements.txt
    installed line by line with ComfyUI's interpreter, then the text-to-image example on loopback Runware."""
    import json

    from PIL import Image

    from comfy_server import _import_failures, install_like_manager, provision, start_server

    from comfyui_flux2.loopback.runware_server import RunwareLoopback

    install = provision()
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    pack = install_like_manager(install, base / "custom_nodes")
    assert pack.name == PACK_DIR_NAME and not pack.is_symlink()
    assert (pack / "__init__.py").is_file() and (pack / "requirements.txt").is_file()
    key = "manager-install-key-31"
    with RunwareLoopback(api_key=key) as runware:
        server = start_server(install, custom_nodes={}, base_dir=base,
                              env={"RUNWARE_API_URL": runware.api_url, "RUNWARE_API_KEY": key,
                                   "FLUX2_CACHE_DIR": str(tmp_path / "cache")})
        try:
            assert _import_failures(server.log_text(), [PACK_DIR_NAME]) == [], server.log_text()[-4000:]
            info = object_info(server)
            ours = {n for n, v in info.items() if v.get("python_module") == f"custom_nodes.{PACK_DIR_NAME}"}
            assert EXPECTED_NODES <= ours, sorted(ours)
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"{server.url}/extensions/{PACK_DIR_NAME}/flux2.js", timeout=30) as resp:
                assert b"registerExtension" in resp.read()
            with opener.open(f"{server.url}/flux2/models", timeout=30) as resp:
                assert "FLUX.2 [pro]" in json.load(resp)["models"]
            prompt = json.loads((pack / "workflows" / "api" / "flux2_text_to_image.json").read_text())
            entry = run_workflow(server, prompt, timeout=120)
            assert entry["status"]["status_str"] == "success"
            (png,) = (server.output_dir / "flux2").glob("salt_cathedral_*.png")
            with Image.open(png) as img:
                assert img.size == (1536, 1024)
            assert len(runware.tasks("imageInference")) == 1
        finally:
            server.stop()


def test_comfyui_reads_the_registry_metadata():
    """ComfyUI's own pyproject parser (comfy_config, the Registry's model) on this pack."""
    import json
    import subprocess

    from comfy_server import REPO_ROOT, provision

    install = provision()
    code = ("import json, sys; from comfy_config import config_parser; "
            "c = config_parser.extract_node_configuration(sys.argv[1]); print(json.dumps(c.model_dump()))")
    proc = subprocess.run([str(install.python), "-c", code, str(REPO_ROOT)], cwd=install.comfy_dir,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads(proc.stdout.strip().splitlines()[-1])
    comfy, project = cfg["tool_comfy"], cfg["project"]
    assert comfy["publisher_id"] == "comfyui-flux2" and comfy["display_name"]
    assert comfy["icon"].startswith("https://raw.githubusercontent.com/comfyui-flux2/comfyui-flux2/main/")
    assert (REPO_ROOT / comfy["icon"].split("/main/", 1)[1]).is_file()
    assert project["name"] == "comfyui-flux2" and project["license"]["text"] == "Apache-2.0"
    assert project["urls"]["repository"] == "https://github.com/comfyui-flux2/comfyui-flux2"
    assert project["supported_comfyui_version"] == ">=0.3.75"
    assert project["supported_os"] == ["OS Independent"]


def test_requirements_cover_every_import_comfyui_does_not_provide():
    """Every third-party module the pack imports at run time (also lazily, inside functions) comes from
    ComfyUI itself, from ComfyUI's requirements.txt, or from this pack's requirements.txt."""
    import ast
    import sys
    from importlib.metadata import packages_distributions

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from comfy_server import REPO_ROOT, provision

    install = provision()
    comfy_modules = {p.stem for p in install.comfy_dir.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    comfy_modules |= {p.name for p in install.comfy_dir.iterdir() if p.is_dir()}

    def names(path):
        return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()
                if line.split("#", 1)[0].strip() and not line.startswith("-")]

    provided = {canonicalize_name(Requirement(r).name) for r in names(install.comfy_dir / "requirements.txt")}
    ours = {canonicalize_name(Requirement(r).name) for r in names(REPO_ROOT / "requirements.txt")}
    # Optional extras (pyproject, other than `test`): allowed only as lazy imports inside functions, so
    # loading the pack in ComfyUI never needs them (e.g. ray for `batch --executor ray`).
    import tomllib
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    optional = {canonicalize_name(Requirement(r).name) for name, reqs in extras.items() if name != "test"
                for r in reqs}
    dists = packages_distributions()
    runtime = [REPO_ROOT / "__init__.py", REPO_ROOT / "demo.py",
               *[p for d in ("flux2", "nodes", "runner", "loopback", "cli") for p in (REPO_ROOT / d).rglob("*.py")]]
    missing = {}
    for path in runtime:
        tree = ast.parse(path.read_text())
        lazy = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top == "__future__" or top in comfy_modules:
                    continue
                owners = {canonicalize_name(d) for d in dists.get(top, [top])}
                if owners & optional and id(node) in lazy:
                    continue
                if not owners & (provided | ours):
                    missing.setdefault(top, str(path.relative_to(REPO_ROOT)))
    assert not missing, f"imported but neither ComfyUI nor requirements.txt provides: {missing}"
