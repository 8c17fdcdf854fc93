"""Device memory planning (memory.py): the counts match real modules, [dev] fits a 24 GB card with block
offload, and a run that cannot fit is refused in one line before any weight is loaded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_flux2.flux2.backend import GenerationRequest
from comfyui_flux2.flux2.errors import ConfigError
from comfyui_flux2.flux2.images import ref_from_array
from comfyui_flux2.flux2.local import backend as lb
from comfyui_flux2.flux2.local import loading, memory, params
from comfyui_flux2.flux2.local.autoencoder import AutoencoderFlux2
from comfyui_flux2.flux2.local.memory import GIB, module_sizes, plan_memory
from comfyui_flux2.flux2.local.text_encoder import TextEncoder
from comfyui_flux2.flux2.local.transformer import Flux2Transformer

DEV = params.PRESETS["FLUX.2 [dev]"]
CARD_24GB = 24 * 10**9


def _param_bytes(module, per=4):
    return sum(p.numel() for p in module.parameters()) * per


def test_counts_equal_the_real_modules():
    tiny = params.tiny_preset("dev")
    s = module_sizes(tiny, 4, 0.0, 0.0)
    tr, te, vae = Flux2Transformer(tiny.transformer), TextEncoder(tiny.text_encoder), AutoencoderFlux2(tiny.vae)
    blocks = list(tr.double_blocks) + list(tr.single_blocks)
    assert s.transformer_resident + s.transformer_blocks == _param_bytes(tr)
    assert s.transformer_largest_block == max(_param_bytes(b) for b in blocks)
    assert s.text_embedding + s.text_layers == _param_bytes(te)
    assert s.vae == _param_bytes(vae)


def test_fp8_files_halve_the_linear_weights():
    bf16, fp8 = module_sizes(DEV, 2, 0.0, 0.0), module_sizes(DEV, 2, 1.0, 1.0)
    assert 0.5 <= fp8.transformer_blocks / bf16.transformer_blocks < 0.51     # block weights are all Linear
    assert fp8.text_embedding == bf16.text_embedding                         # the embedding is not a Linear
    assert 60 * GIB > bf16.transformer_blocks > 55 * GIB                       # [dev]: 32B parameters


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("size, tile, refs", [(1024, 0, 0), (2048, 128, 0), (1024, 0, 4)])
def test_dev_fits_a_24gb_card_only_with_block_offload(fp8, size, tile, refs):
    kw = dict(dtype_bytes=2, width=size, height=size, vae_tile=tile, reference_pixels=[1024 * 1024] * refs,
              fp8_transformer=float(fp8), fp8_text=float(fp8))
    blocks, whole = plan_memory(DEV, offload="blocks", **kw), plan_memory(DEV, offload="none", **kw)
    assert blocks.total < CARD_24GB, blocks.describe()
    assert whole.total > CARD_24GB, whole.describe()


def test_untiled_4mp_decode_is_the_peak_and_tiling_bounds_it():
    untiled = plan_memory(params.PRESETS["FLUX.2 [klein] 4B"], dtype_bytes=2, offload="none", width=2048, height=2048)
    tiled = plan_memory(params.PRESETS["FLUX.2 [klein] 4B"], dtype_bytes=2, offload="none", width=2048, height=2048,
                        vae_tile=128)
    assert untiled.phase == "decoding" and tiled.total < untiled.total


def _dev_backend(tmp_path, offload, before_load=None):
    for name in ("t.safetensors", "te.safetensors", "vae.safetensors"):
        (tmp_path / name).write_bytes(b"")           # never read: the check comes first
    files = lb.LocalFiles(transformer=tmp_path / "t.safetensors", text_encoder=tmp_path / "te.safetensors",
                          vae=tmp_path / "vae.safetensors")
    return lb.LocalBackend("FLUX.2 [dev]", files, dtype="bf16", device="cuda", offload=offload,
                           before_load=before_load)


@pytest.fixture
def card_24gb(monkeypatch):
    """A CUDA device with 23.5 GB free of 24 GB, on a CPU-only machine; loading weights is an error."""
    monkeypatch.setattr(lb, "pick_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(memory.torch.cuda, "mem_get_info", lambda device=None: (23_500_000_000, CARD_24GB))
    monkeypatch.setattr(loading, "load_modules", lambda *a, **k: pytest.fail("weights loaded despite the check"))
    lb.clear_cache()


def test_a_run_that_cannot_fit_is_refused_before_loading(card_24gb, tmp_path):
    unloaded = []
    backend = _dev_backend(tmp_path, "none", before_load=lambda: unloaded.append(1))
    request = GenerationRequest("a cat", 1024, 1024, seed=1)
    with pytest.raises(ConfigError) as err:
        backend.engine(request)
    text = str(err.value)
    assert "FLUX.2 [dev] at 1024x1024 needs ≈ " in text and "offload=none" in text
    assert "21.9 of 22.4 GiB are free; offload=blocks needs ≈ " in text and "\n" not in text
    assert unloaded == [1]          # ComfyUI's models were unloaded first, so "free" is what we could get


def test_block_offload_passes_the_check(card_24gb, tmp_path):
    backend = _dev_backend(tmp_path, "blocks")
    ref = ref_from_array(np.zeros((1024, 1024, 3), np.uint8))
    with pytest.raises(pytest.fail.Exception, match="weights loaded"):
        backend.engine(GenerationRequest("a cat", 2048, 2048, seed=1, references=(ref,) * 4))


def test_dry_run_plan_shows_the_device_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(lb, "pick_device", lambda device: torch.device("cuda"))
    (call,) = _dev_backend(tmp_path, "blocks").plan(GenerationRequest("a cat", 1024, 1024, seed=1))
    assert "device memory ≈ " in call.summary and 3 < call.payload["device_memory_gib"] < 12


def test_a_dry_run_plans_for_a_gpu_this_machine_lacks(tmp_path):
    """Planning names the GPU's memory even where torch sees no CUDA; only running needs the device."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (call,) = _dev_backend(tmp_path, "blocks").plan(GenerationRequest("a cat", 1024, 1024, seed=1))
    assert "device memory ≈ " in call.summary


class LiveBytes:
    """Peak bytes of live tensors created while running on the meta device (weights excluded: made before)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self
        self.live, self.peak, self.ids = 0, 0, set()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in torch.utils._pytree.tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and not t._is_view() and id(t) not in tracker.ids:
                        tracker._add(t)
                return out

        self.mode = Mode()

    def _add(self, t):
        import weakref

        n, key = t.untyped_storage().nbytes(), id(t)
        self.ids.add(key)
        self.live += n
        self.peak = max(self.peak, self.live)

        def gone():
            self.live -= n
            self.ids.discard(key)

        weakref.finalize(t, gone)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_plan_bounds_the_real_decoders_live_tensors(dtype, monkeypatch):
    """The real-size FLUX.2 VAE decoder, run on the meta device with every live tensor counted: the plan's
    decode activations are at least that (attention replaced by an O(N) stand-in, as GPUs run it)."""
    import torch.nn.functional as F

    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, **kw: torch.empty_like(q))
    preset = params.PRESETS["FLUX.2 [klein] 4B"]
    with torch.device("meta"):
        vae = AutoencoderFlux2(preset.vae).to(dtype)
        z = torch.empty(1, preset.vae.latent_channels, 64, 64, dtype=dtype)   # 512 x 512 output
    tracker = LiveBytes()
    with torch.no_grad(), tracker.mode:
        vae.decoder(z)
    planned = plan_memory(preset, dtype_bytes=dtype.itemsize, offload="none", width=512, height=512)
    decode = planned.activations if planned.phase == "decoding" else None
    assert decode is not None and decode >= tracker.peak > 0.5 * decode, (decode, tracker.peak)


def test_fp8_share_reads_the_header_and_knows_up_cast_layouts(tmp_path):
    from safetensors.torch import save_file

    from comfyui_flux2.flux2.local.memory import fp8_share

    f8 = torch.zeros(4, 8).to(torch.float8_e4m3fn)
    bf = torch.zeros(4, 8, dtype=torch.bfloat16)
    save_file({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": f8,
               "model.diffusion_model.double_blocks.0.img_attn.proj.weight": bf,
               "model.diffusion_model.double_blocks.0.img_attn.qkv.scale_weight": torch.ones(1)}, tmp_path / "mixed.st")
    save_file({"transformer_blocks.0.attn.to_q.weight": f8}, tmp_path / "diffusers.st")
    assert fp8_share(tmp_path / "mixed.st", upcast_marker="transformer_blocks.") == 0.5     # "fp8mixed" files
    assert fp8_share(tmp_path / "diffusers.st", upcast_marker="transformer_blocks.") == 0.0  # up-cast at load
    assert fp8_share(tmp_path / "diffusers.st") == 1.0 and fp8_share(tmp_path / "missing.st") == 0.0
