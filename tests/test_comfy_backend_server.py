"""Flux2ComfyBackend in a real ComfyUI 0.3.75 server: our nodes on core MODEL / CLIP / VAE give the
core graph's images.

One prompt holds both graphs on the same tiny FLUX.2 model (tests/comfy_nodes/flux2_tiny_core: ComfyUI's
own Flux2 classes with random weights), so any difference comes from how the two drive ComfyUI:

  core: CLIPTextEncode -> FluxGuidance -> [VAEEncode -> ReferenceLatent]... -> BasicGuider | CFGGuider,
        EmptyFlux2LatentImage, RandomNoise, KSamplerSelect, Flux2Scheduler -> SamplerCustomAdvanced -> VAEDecode
  ours: Flux2ComfyBackend -> Flux2TextToImage | Flux2Edit

SaveImage truncates 255*x while our nodes round it, so a pixel may be one level higher in ours, never lower.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_server import PACK_DIR_NAME, REPO_ROOT, PromptError, comfyui_server_factory, run_workflow  # noqa: F401

pytestmark = pytest.mark.slow

TINY_CORE = Path(__file__).resolve().parent / "comfy_nodes" / "flux2_tiny_core"
PROMPT = "a lighthouse on a cliff at dusk"
W, H, SEED, STEPS = 96, 64, 1234, 4


@pytest.fixture(scope="module")
def server(comfyui_server_factory, tmp_path_factory):
    srv = comfyui_server_factory(custom_nodes={PACK_DIR_NAME: REPO_ROOT, "flux2_tiny_core": TINY_CORE})
    rng = np.random.default_rng(7)
    for name, (w, h) in {"ref_a.png": (80, 48), "ref_b.png": (64, 64)}.items():
        # smooth gradients plus noise: something a VAE encodes to non-trivial latents
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], -1)
        img = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(srv.input_dir / name)
    return srv


def _core_branch(prefix: str, seed: int, refs: tuple[str, ...] = (), cfg: float = 1.0) -> dict:
    """The core FLUX.2 graph (as ComfyUI's own templates wire it), node ids prefixed."""
    p = lambda n: f"{prefix}{n}"  # noqa: E731
    g = {
        p("enc"): {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": PROMPT}},
        p("cond0"): {"class_type": "FluxGuidance", "inputs": {"conditioning": [p("enc"), 0], "guidance": 4.0}},
        p("lat"): {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": W, "height": H, "batch_size": 1}},
        p("sig"): {"class_type": "Flux2Scheduler", "inputs": {"steps": STEPS, "width": W, "height": H}},
        p("smp"): {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        p("noise"): {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
    }
    cond = p("cond0")
    neg = None
    if cfg != 1.0:
        g[p("nenc")] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": ""}}
        g[p("neg0")] = {"class_type": "FluxGuidance", "inputs": {"conditioning": [p("nenc"), 0], "guidance": 4.0}}
        neg = p("neg0")
    for i, ref in enumerate(refs):
        g[p(f"load{i}")] = {"class_type": "LoadImage", "inputs": {"image": ref}}
        g[p(f"venc{i}")] = {"class_type": "VAEEncode", "inputs": {"pixels": [p(f"load{i}"), 0], "vae": ["m", 2]}}
        g[p(f"ref{i}")] = {"class_type": "ReferenceLatent",
                           "inputs": {"conditioning": [cond, 0], "latent": [p(f"venc{i}"), 0]}}
        cond = p(f"ref{i}")
        if neg:
            g[p(f"nref{i}")] = {"class_type": "ReferenceLatent",
                                "inputs": {"conditioning": [neg, 0], "latent": [p(f"venc{i}"), 0]}}
            neg = p(f"nref{i}")
    if neg:
        g[p("guider")] = {"class_type": "CFGGuider", "inputs": {"model": ["m", 0], "positive": [cond, 0],
                                                                "negative": [neg, 0], "cfg": cfg}}
    else:
        g[p("guider")] = {"class_type": "BasicGuider", "inputs": {"model": ["m", 0], "conditioning": [cond, 0]}}
    g[p("sample")] = {"class_type": "SamplerCustomAdvanced",
                      "inputs": {"noise": [p("noise"), 0], "guider": [p("guider"), 0], "sampler": [p("smp"), 0],
                                 "sigmas": [p("sig"), 0], "latent_image": [p("lat"), 0]}}
    g[p("dec")] = {"class_type": "VAEDecode", "inputs": {"samples": [p("sample"), 0], "vae": ["m", 2]}}
    g[p("save")] = {"class_type": "SaveImage", "inputs": {"images": [p("dec"), 0], "filename_prefix": prefix}}
    return g


def _ours(prefix: str, seed: int, refs: tuple[str, ...] = (), cfg: float = 1.0, batch: int = 1) -> dict:
    p = lambda n: f"{prefix}{n}"  # noqa: E731
    g = {p("backend"): {"class_type": "Flux2ComfyBackend",
                        "inputs": {"model": ["m", 0], "clip": ["m", 1], "vae": ["m", 2], "steps": STEPS,
                                   "guidance": 4.0, "cfg": cfg, "sampler_name": "euler"}}}
    common = {"backend": [p("backend"), 0], "prompt": PROMPT, "width": W, "height": H, "seed": seed,
              "batch_size": batch}
    if refs:
        for i, ref in enumerate(refs):
            g[p(f"load{i}")] = {"class_type": "LoadImage", "inputs": {"image": ref}}
        inputs = {**common, **{f"reference_{i + 1}": [p(f"load{i}"), 0] for i in range(len(refs))}}
        g[p("gen")] = {"class_type": "Flux2Edit", "inputs": inputs}
    else:
        g[p("gen")] = {"class_type": "Flux2TextToImage", "inputs": common}
    g[p("save")] = {"class_type": "SaveImage", "inputs": {"images": [p("gen"), 0], "filename_prefix": prefix}}
    return g


def _images(server, prefix: str) -> list[np.ndarray]:
    out = []
    for png in sorted(server.output_dir.glob(f"{prefix}_[0-9]*_.png")):
        with Image.open(png) as img:
            out.append(np.asarray(img.convert("RGB"), dtype=np.int16))
    return out


def _assert_same(ours: np.ndarray, core: np.ndarray) -> None:
    assert ours.shape == core.shape == (H, W, 3)
    diff = ours - core
    assert diff.min() >= 0 and diff.max() <= 1, (diff.min(), diff.max())   # round vs SaveImage's truncation
    assert core.std() > 5                                                     # a picture, not a flat fill


def test_our_nodes_on_core_models_equal_the_core_graph(server):
    refs = ("ref_a.png", "ref_b.png")
    prompt = {"m": {"class_type": "Flux2TestTinyCoreModels", "inputs": {"seed": 0}}}
    prompt |= _core_branch("core_t2i", SEED) | _core_branch("core_t2i_next", SEED + 1)
    prompt |= _ours("ours_t2i", SEED, batch=2)
    prompt |= _core_branch("core_edit", SEED, refs) | _ours("ours_edit", SEED, refs)
    prompt |= _core_branch("core_cfg", SEED, refs, cfg=3.0) | _ours("ours_cfg", SEED, refs, cfg=3.0)
    run_workflow(server, prompt, timeout=300)

    ours_t2i = _images(server, "ours_t2i")
    assert len(ours_t2i) == 2
    (core_t2i,), (core_next,) = _images(server, "core_t2i"), _images(server, "core_t2i_next")
    _assert_same(ours_t2i[0], core_t2i)
    _assert_same(ours_t2i[1], core_next)          # image i of a batch = seed + i, as on every backend
    (ours_edit,), (core_edit,) = _images(server, "ours_edit"), _images(server, "core_edit")
    _assert_same(ours_edit, core_edit)
    assert np.abs(core_edit - core_t2i).mean() > 1   # the references changed the picture
    (ours_cfg,), (core_cfg,) = _images(server, "ours_cfg"), _images(server, "core_cfg")
    _assert_same(ours_cfg, core_cfg)
    # real CFG is not a no-op (the tiny random text encoder moves the picture little: 0.43 levels mean)
    assert np.abs(core_cfg - core_edit).mean() > 0.2


def test_a_patched_model_runs_and_a_bad_size_is_one_clear_error(server):
    """A MODEL patched by a core node is still FLUX.2; a size off the grid is refused before sampling."""
    prompt = {
        "m": {"class_type": "Flux2TestTinyCoreModels", "inputs": {"seed": 0}},
        "b": {"class_type": "Flux2ComfyBackend", "inputs": {"model": ["s", 0], "clip": ["m", 1], "vae": ["m", 2],
                                                            "steps": 4, "guidance": 4.0, "cfg": 1.0,
                                                            "sampler_name": "euler"}},
        # ModelSamplingFlux patches the same FLUX.2 model: still FLUX.2, so it must be accepted
        "s": {"class_type": "ModelSamplingFlux", "inputs": {"model": ["m", 0], "max_shift": 1.15, "base_shift": 0.5,
                                                            "width": W, "height": H}},
        "g": {"class_type": "Flux2TextToImage", "inputs": {"backend": ["b", 0], "prompt": PROMPT, "width": W,
                                                           "height": H, "seed": 1, "batch_size": 1}},
        "o": {"class_type": "SaveImage", "inputs": {"images": ["g", 0], "filename_prefix": "patched"}},
    }
    run_workflow(server, prompt, timeout=120)
    prompt["g"]["inputs"]["width"] = 100            # off the 16-grid: refused before sampling
    with pytest.raises(PromptError) as err:
        run_workflow(server, prompt, timeout=120)
    text = str(err.value.payload or err.value)
    assert "multiple of 16" in text and "\n" not in str(err.value).strip()


def test_the_core_models_example_runs_with_its_loaders_swapped_for_tiny_ones(server):
    """workflows/api/flux2_core_models.json as shipped, but its three loaders fed by the tiny model (and a
    small size): the graph our users get runs end to end on core objects; the loader widgets it stores are
    the ones this ComfyUI declares."""
    import json

    from comfy_server import object_info

    example = json.loads((REPO_ROOT / "workflows" / "api" / "flux2_core_models.json").read_text())
    info = object_info(server)
    loaders = {k: v for k, v in example.items() if v["class_type"] in ("UNETLoader", "CLIPLoader", "VAELoader")}
    assert sorted(v["class_type"] for v in loaders.values()) == ["CLIPLoader", "UNETLoader", "VAELoader"]
    for node in loaders.values():
        declared = info[node["class_type"]]["input"]
        names = set(declared["required"]) | set(declared.get("optional") or {})
        assert set(node["inputs"]) <= names, node
        if "type" in node["inputs"]:
            assert node["inputs"]["type"] in declared["required"]["type"][0]
    slot = {"UNETLoader": 0, "CLIPLoader": 1, "VAELoader": 2}
    swapped = {"tiny": {"class_type": "Flux2TestTinyCoreModels", "inputs": {"seed": 3}}}
    for key, node in example.items():
        if key in loaders:
            continue
        inputs = {name: (["tiny", slot[loaders[v[0]]["class_type"]]] if isinstance(v, list) and v[0] in loaders else v)
                  for name, v in node["inputs"].items()}
        if node["class_type"] == "Flux2TextToImage":
            inputs.update(width=128, height=96)
        if node["class_type"] == "LoadImage":
            inputs["image"] = "ref_b.png"
        if node["class_type"] == "SaveImage":
            inputs["filename_prefix"] = "example_" + inputs["filename_prefix"].split("/")[-1]
        swapped[key] = {**node, "inputs": inputs}
    run_workflow(server, swapped, timeout=300)
    (first,), (edited,) = _images(server, "example_core_1_teapot"), _images(server, "example_core_2_glazed")
    assert first.shape == edited.shape == (96, 128, 3)      # the edit follows its first reference's size
    assert np.abs(first - edited).mean() > 0.4       # the tiny random model moves it 0.85 levels mean
