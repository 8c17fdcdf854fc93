"""Writes the example workflows in workflows/ (UI format for ComfyUI, API format for the CLI).

Both formats come from one description here, with widget order taken from the node classes
themselves, so the UI file opens in ComfyUI and the API file runs in `comfyui-flux2 run`.
Run: python scripts/make_workflows.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT.parent))
PACKAGE = ROOT.name

import importlib  # noqa: E402

pack = importlib.import_module(PACKAGE) if PACKAGE == "comfyui_flux2" else None
if pack is None:
    import comfyui_flux2 as pack  # noqa: E402  (installed with pip install -e .)
from comfyui_flux2.loopback.base import render  # noqa: E402
from comfyui_flux2.runner.core_nodes import CORE_NODES  # noqa: E402
from comfyui_flux2.runner.graph import has_control_widget, widget_inputs  # noqa: E402



class _CoreLoader:
    """Input specs of ComfyUI core's FLUX.2 loaders (0.3.75), only to write the example's widget order.
    tests/test_comfy_backend_server.py checks them against a running ComfyUI's /object_info."""
    CATEGORY = "loaders"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.INPUT_TYPES = classmethod(lambda c: {"required": dict(c.SPEC)})


class UNETLoader(_CoreLoader):
    SPEC = {"unet_name": ([],), "weight_dtype": (["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"],)}
    RETURN_TYPES = ("MODEL",)


class CLIPLoader(_CoreLoader):
    SPEC = {"clip_name": ([],), "type": (["flux2"],), "device": (["default", "cpu"],)}
    RETURN_TYPES = ("CLIP",)


class VAELoader(_CoreLoader):
    SPEC = {"vae_name": ([],)}
    RETURN_TYPES = ("VAE",)


COMFY_LOADERS = {c.__name__: c for c in (UNETLoader, CLIPLoader, VAELoader)}
REGISTRY = {**CORE_NODES, **COMFY_LOADERS, **pack.NODE_CLASS_MAPPINGS}
OUT = ROOT / "workflows"

# The two FLUX.2 [pro] requests of Runware's documentation the pack was specified from
# (tests/data/runware_flux2_pro_examples.json, verbatim): the examples send them field for field.
SALT_PROMPT = ("A monumental cathedral formed entirely from white salt and translucent mineral crystal on a "
               "vast dried lakebed, soaring ribbed vaults eroded by centuries of wind, delicate buttresses "
               "shaped like frozen waves, long processional path of cracked geometric salt tiles leading to the "
               "entrance, tiny robed pilgrims and pack animals for scale, suspended prayer ribbons fluttering "
               "between carved arches, airborne salt dust catching angled sunrise light, pale apricot and "
               "silver sky after a storm, distant mirage shimmer on the horizon, hyper-detailed textures of "
               "crusted salt, carved mineral veins, and weathered surfaces, cinematic wide shot, awe-filled "
               "atmosphere, grand sense of scale, masterful depth, crisp focal clarity, realistic volumetric "
               "haze, high dynamic range, richly detailed environmental storytelling")
HARBOR_PROMPT = ("A grand panoramic harbor city built around colossal tidal clockwork, terraced quays, suspended "
                 "bridges, and cathedral-scale brass mechanisms turning above the waterline; fishing vessels and "
                 "cargo barges dwarfed by gigantic engraved gears; airborne manta-like creatures circling through "
                 "bright maritime air; wet cobblestones, salt spray, oxidized metal, canvas sails, carved stone "
                 "arches, cranes, pulleys, and intricate mechanical details; cinematic wide composition, "
                 "believable scale, highly detailed textures, atmospheric depth, natural color harmony, crisp "
                 "focus, masterful environmental storytelling")
HARBOR_REFERENCES = (
    "https://assets.runware.ai/assets/inputs/bdaeb71c-ebf0-49de-b3da-590fae66fb93.jpg",
    "https://assets.runware.ai/assets/inputs/c1d8b027-b1c2-4a58-b50d-72126cef99b7.jpg",
    "https://assets.runware.ai/assets/inputs/94cbc938-56de-4405-8d1a-838a112330fd.jpg",
)
# Our own multi-reference example: three local images (beside the workflows), uploaded once each.
LOCAL_EDIT_PROMPT = ("Combine the three references into one scene: the building from image 1, the colour palette "
                     "of image 2 and the texture of image 3, golden hour, photographic")
# The examples' local images lie beside the workflows and are copied to the top of ComfyUI's input/ folder:
# LoadImage lists only that folder's own files, and newer frontends flag a value missing from the list.
EXAMPLE_IMAGE = "flux2_example_ref_{}.png"


class Graph:
    def __init__(self):
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, kind: str, widgets: dict, pos, links: dict | None = None, title: str | None = None) -> int:
        """widgets: name -> value (control-after-generate stored after seeds); links: input -> (node, slot)."""
        node_id = len(self.nodes) + 1
        self.nodes.append({"id": node_id, "kind": kind, "widgets": widgets, "links": links or {}, "pos": pos,
                           "title": title})
        return node_id

    def api(self) -> dict:
        prompt = {}
        for n in self.nodes:
            inputs = dict(n["widgets"])
            inputs.pop("_control", None)
            for name, (src, slot) in n["links"].items():
                inputs[name] = [str(src), slot]
            prompt[str(n["id"])] = {"class_type": n["kind"], "inputs": inputs, "_meta": {"title": n["title"] or n["kind"]}}
        return prompt

    def ui(self) -> dict:
        links, nodes = [], []
        out_links: dict[tuple[int, int], list[int]] = {}
        for n in self.nodes:
            for name, (src, slot) in n["links"].items():
                link_id = len(links) + 1
                kind = REGISTRY[self.nodes[src - 1]["kind"]].RETURN_TYPES[slot]
                links.append([link_id, src, slot, n["id"], name, kind])
                out_links.setdefault((src, slot), []).append(link_id)
        for order, n in enumerate(self.nodes):
            cls = REGISTRY[n["kind"]]
            types = cls.INPUT_TYPES()
            all_inputs = {**(types.get("required") or {}), **(types.get("optional") or {})}
            widget_names = [name for name, _ in widget_inputs(cls)]
            inputs = []
            for name, spec in all_inputs.items():
                link = next((l for l in links if l[3] == n["id"] and l[4] == name), None)
                if name in widget_names:
                    if link:   # a widget fed by a link ("converted to input")
                        inputs.append({"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO",
                                       "widget": {"name": name}, "link": link[0]})
                    continue
                if link or name in (types.get("required") or {}):
                    inputs.append({"name": name, "type": spec[0], "link": link[0] if link else None})
            values = []
            for name, spec in widget_inputs(cls):
                if name not in n["widgets"]:
                    break
                values.append(n["widgets"][name])
                if has_control_widget(name, spec):
                    values.append(n["widgets"].get("_control", "fixed"))
            if n["kind"] in ("LoadImage", "LoadImageMask"):
                values.append(n["widgets"].get("upload", "image"))   # core's upload button widget
            names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
            outputs = [{"name": names[i], "type": t, "links": out_links.get((n["id"], i), []), "slot_index": i}
                       for i, t in enumerate(cls.RETURN_TYPES)]
            node = {"id": n["id"], "type": n["kind"], "pos": list(n["pos"]), "size": [340, 120 + 26 * len(values)],
                    "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                    "properties": {"Node name for S&R": n["kind"]}, "widgets_values": values}
            if n["title"]:
                node["title"] = n["title"]
            nodes.append(node)
        for link in links:  # UI links store the target slot index, not the name
            target = nodes[link[3] - 1]
            link[4] = next(i for i, inp in enumerate(target["inputs"]) if inp.get("link") == link[0])
        return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
                "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def backend(g: Graph, pos, upsampling: bool) -> int:
    return g.add("Flux2RemoteBackend", {"provider": "runware", "model": "FLUX.2 [pro]", "prompt_upsampling": upsampling,
                                        "safety_tolerance": 2, "output_format": "PNG", "output_quality": 95,
                                        "steps": 0, "guidance": 0.0, "on_moderation": "error"}, pos)


def text_to_image() -> Graph:
    g = Graph()
    b = backend(g, (40, 60), True)
    size = g.add("Flux2Size", {"aspect_ratio": "3:2", "megapixels": 1.5, "width": 1536, "height": 1024}, (40, 420))
    t2i = g.add("Flux2TextToImage", {"prompt": SALT_PROMPT, "width": 1536, "height": 1024, "seed": 73410,
                                     "_control": "fixed", "batch_size": 1},
                (420, 60), {"backend": (b, 0), "width": (size, 0), "height": (size, 1)})
    g.add("SaveImage", {"filename_prefix": "flux2/salt_cathedral"}, (860, 60), {"images": (t2i, 0)})
    return g


def three_reference_edit(upsampling: bool, add_references, prompt: str, prefix: str) -> Graph:
    """Backend, three reference nodes (from add_references(g)), a 1536x1024 edit at seed 27270, a save."""
    g = Graph()
    b = backend(g, (40, 60), upsampling)
    refs = add_references(g)
    edit = g.add("Flux2Edit", {"prompt": prompt, "width": 1536, "height": 1024, "seed": 27270,
                               "_control": "fixed", "batch_size": 1},
                 (420, 60), {"backend": (b, 0), **{f"reference_{i}": (r, 0) for i, r in enumerate(refs, 1)}})
    g.add("SaveImage", {"filename_prefix": prefix}, (860, 60), {"images": (edit, 0)})
    return g


def multi_reference_edit() -> Graph:
    return three_reference_edit(True, lambda g: [g.add("Flux2ReferenceURL", {"url": url}, (40 + 380 * i, 480))
                                                 for i, url in enumerate(HARBOR_REFERENCES)],
                                HARBOR_PROMPT, "flux2/harbor_panorama")


def local_references_edit() -> Graph:
    return three_reference_edit(False, lambda g: [g.add("LoadImage", {"image": EXAMPLE_IMAGE.format(i),
                                                                      "upload": "image"}, (40, 420 + 330 * (i - 1)))
                                                  for i in (1, 2, 3)],
                                LOCAL_EDIT_PROMPT, "flux2/local_references_edit")


def chain() -> Graph:
    g = Graph()
    b = backend(g, (40, 60), False)
    seed = g.add("Flux2Seed", {"seed": 5150, "_control": "fixed"}, (40, 420))
    t2i = g.add("Flux2TextToImage", {"prompt": "a ceramic teapot shaped like a snail, studio photo, white background",
                                     "width": 1024, "height": 1024, "seed": 5150, "_control": "fixed", "batch_size": 1},
                (420, 60), {"backend": (b, 0), "seed": (seed, 0)})
    e1 = g.add("Flux2Edit", {"prompt": "make the teapot glazed in deep cobalt blue", "width": 0, "height": 0,
                             "seed": 5150, "_control": "fixed", "batch_size": 1},
               (820, 60), {"backend": (b, 0), "reference_1": (t2i, 0), "seed": (seed, 0)})
    e2 = g.add("Flux2Edit", {"prompt": "put the teapot on a rustic wooden table by a rainy window", "width": 0,
                             "height": 0, "seed": 5150, "_control": "fixed", "batch_size": 1},
               (1220, 60), {"backend": (b, 0), "reference_1": (e1, 0), "seed": (seed, 0)})
    for i, (node, name) in enumerate(((t2i, "chain_1_teapot"), (e1, "chain_2_cobalt"), (e2, "chain_3_table"))):
        g.add("SaveImage", {"filename_prefix": f"flux2/{name}"}, (420 + 400 * i, 520), {"images": (node, 0)})
    return g


def core_models() -> Graph:
    """FLUX.2 [dev] loaded the core way (ComfyUI's own file names), our nodes on top."""
    g = Graph()
    unet = g.add("UNETLoader", {"unet_name": "flux2_dev_fp8mixed.safetensors", "weight_dtype": "default"}, (40, 60))
    clip = g.add("CLIPLoader", {"clip_name": "mistral_3_small_flux2_fp8.safetensors", "type": "flux2",
                                 "device": "default"}, (40, 220))
    vae = g.add("VAELoader", {"vae_name": "flux2-vae.safetensors"}, (40, 380))
    b = g.add("Flux2ComfyBackend", {"steps": 20, "guidance": 4.0, "cfg": 1.0, "sampler_name": "euler"}, (420, 60),
              {"model": (unet, 0), "clip": (clip, 0), "vae": (vae, 0)})
    t2i = g.add("Flux2TextToImage", {"prompt": "a ceramic teapot shaped like a snail, studio photo, white background",
                                     "width": 1024, "height": 1024, "seed": 5150, "_control": "fixed", "batch_size": 1},
                (820, 60), {"backend": (b, 0)})
    ref = g.add("LoadImage", {"image": EXAMPLE_IMAGE.format(2), "upload": "image"}, (420, 420))
    edit = g.add("Flux2Edit", {"prompt": "glaze the teapot in the colours of image 2", "width": 0, "height": 0,
                               "seed": 5150, "_control": "fixed", "batch_size": 1},
                 (1220, 60), {"backend": (b, 0), "reference_1": (t2i, 0), "reference_2": (ref, 0)})
    for i, (node, name) in enumerate(((t2i, "core_1_teapot"), (edit, "core_2_glazed"))):
        g.add("SaveImage", {"filename_prefix": f"flux2/{name}"}, (820 + 400 * i, 520), {"images": (node, 0)})
    return g


# ComfyUI's FLUX.2 [dev] templates (comfyui-workflow-templates: image_flux2*.json): Comfy-Org/flux2-dev's split files
# and fal's Turbo LoRA (fal/FLUX.2-dev-Turbo, comfy/Flux_2-Turbo-LoRA_comfyui.safetensors) at strength 1, 8 steps
# instead of 20, guidance 4.
DEV_FILES = {"diffusion_model": "flux2_dev_fp8mixed.safetensors", "text_encoder": "mistral_3_small_flux2_fp8.safetensors",
             "vae": "flux2-vae.safetensors"}
TURBO_LORA = "Flux_2-Turbo-LoRA_comfyui.safetensors"


def dev_turbo_lora() -> Graph:
    """FLUX.2 [dev] + the Turbo LoRA at 8 steps on local weights (the template's settings)."""
    g = Graph()
    b = g.add("Flux2LocalBackend", {"model": "auto", **DEV_FILES, "diffusers_folder": "(none)", "dtype": "bf16",
                                    "device": "auto", "steps": 8, "guidance": 4.0, "offload": "none",
                                    "vae_tiling": "auto"}, (40, 60))
    lo = g.add("Flux2LoRA", {"lora_name": TURBO_LORA, "strength": 1.0, "runware_lora": ""}, (420, 60),
               {"backend": (b, 0)})
    t2i = g.add("Flux2TextToImage", {"prompt": "a ceramic teapot shaped like a snail, studio photo, white background",
                                     "width": 1024, "height": 1024, "seed": 5150, "_control": "fixed", "batch_size": 1},
                (800, 60), {"backend": (lo, 0)})
    g.add("SaveImage", {"filename_prefix": "flux2/dev_turbo_lora"}, (1200, 60), {"images": (t2i, 0)})
    return g


# FLUX 3 examples (issue 23): BFL direct with BFL_API_KEY; the optional backend widgets say their values.
EXAMPLE_MASK = "flux2_example_ref_mask.png"      # matches the examples' glob, so ComfyUI's input/ gets it too
FLUX3_LAYOUT = ("lighthouse | 0.10 0.55 0.85 0.80 | a white lighthouse with a red lantern room\n"
                "boat | 0.62 0.08 0.92 0.45 | a small blue fishing boat")


def flux3_backend(g: Graph, pos, model: str, grounding: str = "default", mode: str = "default") -> int:
    return g.add("Flux2RemoteBackend", {"provider": "bfl", "model": model, "prompt_upsampling": False,
                                        "safety_tolerance": 2, "output_format": "PNG", "output_quality": 95,
                                        "steps": 0, "guidance": 0.0, "on_moderation": "error",
                                        "grounding": grounding, "mode": mode}, pos)


def flux3_text_to_image() -> Graph:
    """FLUX 3 Image: Flux2Size with the backend connected gives the size it delivers (16:9 x 1.5k = 2048x1152)."""
    g = Graph()
    b = flux3_backend(g, (40, 60), "FLUX 3 Image", grounding="off")
    size = g.add("Flux2Size", {"aspect_ratio": "16:9", "megapixels": 2.0, "width": 1024, "height": 1024}, (40, 460),
                 {"backend": (b, 0)})
    t2i = g.add("Flux2TextToImage", {"prompt": "a lighthouse on a basalt cliff at dawn, long exposure sea, film photo",
                                     "width": 2048, "height": 1152, "seed": 0, "_control": "fixed", "batch_size": 1},
                (420, 60), {"backend": (b, 0), "width": (size, 0), "height": (size, 1)})
    g.add("SaveImage", {"filename_prefix": "flux3/lighthouse"}, (860, 60), {"images": (t2i, 0)})
    return g


def flux3_masked_edit() -> Graph:
    """FLUX 3.1 Image inpainting: reference 1 and a mask (white changes) from LoadImageMask's red channel."""
    g = Graph()
    b = flux3_backend(g, (40, 60), "FLUX 3.1 Image", mode="fast")
    ref = g.add("LoadImage", {"image": EXAMPLE_IMAGE.format(1), "upload": "image"}, (40, 460))
    mask = g.add("LoadImageMask", {"image": EXAMPLE_MASK, "channel": "red", "upload": "image"}, (40, 800))
    edit = g.add("Flux2Edit", {"prompt": "replace the masked square with a round stained-glass window", "width": 0,
                               "height": 0, "seed": 0, "_control": "fixed", "batch_size": 1},
                 (420, 60), {"backend": (b, 0), "reference_1": (ref, 0), "mask": (mask, 0)})
    g.add("SaveImage", {"filename_prefix": "flux3/masked_edit"}, (860, 60), {"images": (edit, 0)})
    return g


def flux3_layout() -> Graph:
    """Flux2Layout boxes on FLUX 3 Image (appended to the prompt as BFL documents), 4:3 x 1k = 1184x880."""
    g = Graph()
    b = flux3_backend(g, (40, 60), "FLUX 3 Image")
    layout = g.add("Flux2Layout", {"boxes": FLUX3_LAYOUT}, (40, 460))
    t2i = g.add("Flux2TextToImage", {"prompt": "a postcard of <lighthouse_1> on a rocky coast with <boat_1> in the bay",
                                     "width": 1184, "height": 880, "seed": 0, "_control": "fixed", "batch_size": 1},
                (420, 60), {"backend": (b, 0), "layout": (layout, 0)})
    g.add("SaveImage", {"filename_prefix": "flux3/layout"}, (860, 60), {"images": (t2i, 0)})
    return g


def reference_images() -> None:
    from PIL import Image
    prompts = ("salt arches", "amber dusk palette", "crystal ripple texture")
    for i, text in enumerate(prompts, start=1):
        Image.fromarray(render(text, i, 512, 512)).save(OUT / EXAMPLE_IMAGE.format(i), optimize=True)
    mask = Image.new("L", (512, 512), 0)
    mask.paste(255, (160, 128, 352, 320))              # white: the part FLUX 3.1 changes
    mask.convert("RGB").save(OUT / EXAMPLE_MASK, optimize=True)


def main() -> None:
    (OUT / "api").mkdir(parents=True, exist_ok=True)
    reference_images()
    for name, build in (("flux2_text_to_image", text_to_image), ("flux2_multi_reference_edit", multi_reference_edit),
                        ("flux2_local_references_edit", local_references_edit),
                        ("flux2_chain_edit", chain), ("flux2_core_models", core_models),
                        ("flux2_dev_turbo_lora", dev_turbo_lora), ("flux3_text_to_image", flux3_text_to_image),
                        ("flux3_1_masked_edit", flux3_masked_edit), ("flux3_layout", flux3_layout)):
        g = build()
        (OUT / f"{name}.json").write_text(json.dumps(g.ui(), indent=1) + "\n")
        (OUT / "api" / f"{name}.json").write_text(json.dumps(g.api(), indent=1) + "\n")
        print(f"wrote workflows/{name}.json and workflows/api/{name}.json")


if __name__ == "__main__":
    main()
