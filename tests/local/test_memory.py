"""Device memory planning (memory.py): the counts match real modules, [dev] fits a 24 GB card with block
offload, and a run that cannot fit is refused in one line before any weight is loaded."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from comfyui_flux2.flux2.backend import GenerationRequest
from comfyui_flux2.flux2.errors import ConfigError
from comfyui_flux2.flux2.images import ref_from_array
from comfyui_flux2.flux2.local import backend as lb
from comfyui_flux2.flux2.local.weights import loading
from comfyui_flux2.flux2.local import memory
from comfyui_flux2.flux2.local.model import params
from comfyui_flux2.flux2.local.model.autoencoder import AutoencoderFlux2
from comfyui_flux2.flux2.local.memory import GIB, module_sizes, plan_memory
from comfyui_flux2.flux2.local.model.text_encoder import TextEncoder
from comfyui_flux2.flux2.local.model.transformer import Flux2Transformer

DEV = params.PRESETS["FLUX.2 [dev]"]
CARD_24GB = 24 * 10**9
RAM_32GB = 32 * 10**9


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
    assert blocks.ram < RAM_32GB, blocks.describe_ram()          # the weights stay in the mapped files


def test_ram_plan_counts_staging_and_loading():
    kw = dict(dtype_bytes=2, width=1024, height=1024)
    s = module_sizes(DEV, 2, 0.0, 0.0)
    blocks = plan_memory(DEV, offload="blocks", **kw)
    assert blocks.ram == 2 * max(s.transformer_largest_block, s.text_largest_layer) + s.transformer_resident + s.vae
    assert "pinned staging" in blocks.describe_ram()
    # on CUDA two blocks are on the device (the running one and the prefetched next); on the CPU one
    assert blocks.weights == s.transformer_resident + s.vae + 2 * s.transformer_largest_block
    cpu = plan_memory(DEV, offload="blocks", device_type="cpu", **kw)
    assert cpu.weights == s.transformer_resident + s.vae + s.transformer_largest_block
    assert cpu.ram == cpu.weights + cpu.activations
    whole = plan_memory(DEV, offload="none", **kw)
    assert whole.ram == s.transformer_resident + s.transformer_blocks > RAM_32GB


def test_untiled_4mp_decode_is_the_peak_and_tiling_bounds_it():
    untiled = plan_memory(params.PRESETS["FLUX.2 [klein] 4B"], dtype_bytes=2, offload="none", width=2048, height=2048)
    tiled = plan_memory(params.PRESETS["FLUX.2 [klein] 4B"], dtype_bytes=2, offload="none", width=2048, height=2048,
                        vae_tile=128)
    assert untiled.phase == "decoding" and tiled.total < untiled.total


def _dev_files(tmp_path, fp8=False):
    """Real-size [dev] files as ComfyUI ships them: exact headers, no data (sparse; planning reads headers only)."""
    import twins

    twins.write_sparse(tmp_path / "t.safetensors", twins.bfl_transformer_table(
        DEV.transformer, fp8_blocks=fp8, prefix="model.diffusion_model."))
    twins.write_sparse(tmp_path / "te.safetensors", twins.text_encoder_table(DEV.text_encoder, 40))
    twins.write_sparse(tmp_path / "vae.safetensors", twins.vae_table(DEV.vae))
    return lb.LocalFiles(transformer=tmp_path / "t.safetensors", text_encoder=tmp_path / "te.safetensors",
                         vae=tmp_path / "vae.safetensors")


def _dev_backend(tmp_path, offload, before_load=None):
    files = _dev_files(tmp_path)
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
    assert "RAM ≈ " in call.summary and 1 < call.payload["ram_gib"] < 8


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
    assert fp8_share(tmp_path / "diffusers.st") == 1.0 and fp8_share(None) == 0.0
    # a header that cannot be read is an error naming the file, never a silent "no fp8" (issue 15)
    from comfyui_flux2.flux2.errors import ModelLoadError
    (tmp_path / "cut.st").write_bytes((tmp_path / "mixed.st").read_bytes()[:40])
    for bad in ("missing.st", "cut.st"):
        with pytest.raises(ModelLoadError, match=bad):
            fp8_share(tmp_path / bad)


def test_header_sizes_equal_the_module_sizes(tmp_path):
    """Planning from the files' headers counts what the meta-built modules count (same preset, same dtype)."""
    from comfyui_flux2.flux2.local.memory import sizes_from_headers

    files = _dev_files(tmp_path)
    det = lb.LocalBackend("auto", files).detection()
    assert det.preset.transformer == DEV.transformer and det.preset.text_encoder == DEV.text_encoder
    got = sizes_from_headers(det.transformer, det.text_encoder, det.vae, dtype_bytes=2, keep_fp8=True,
                             text_layers_used=30)
    want = module_sizes(DEV, 2, 0.0, 0.0)
    for field in ("transformer_resident", "transformer_blocks", "transformer_largest_block", "text_embedding",
                  "text_layers", "text_largest_layer", "largest_linear_elements"):
        assert getattr(got, field) == getattr(want, field), field
    assert 0 <= got.vae - want.vae <= 4 * 128 * 2          # + the BatchNorm statistics (buffers)


def test_fp8_header_sizes_keep_one_byte_per_weight(tmp_path):
    from comfyui_flux2.flux2.local.memory import sizes_from_headers

    det = lb.LocalBackend("auto", _dev_files(tmp_path, fp8=True)).detection()
    got = sizes_from_headers(det.transformer, det.text_encoder, det.vae, dtype_bytes=2, keep_fp8=True,
                             text_layers_used=30)
    want = module_sizes(DEV, 2, 1.0, 0.0)                  # every block Linear is fp8 in the file
    assert got.transformer_blocks == want.transformer_blocks and got.kept_fp8
    none = sizes_from_headers(det.transformer, det.text_encoder, det.vae, dtype_bytes=2, keep_fp8=False,
                              text_layers_used=30)        # MPS: up-cast at load
    assert none.transformer_blocks == module_sizes(DEV, 2, 0.0, 0.0).transformer_blocks and not none.kept_fp8


@pytest.mark.slow   # three sparse real-size files and a fresh interpreter: ~10 s; CI runs it (--run-slow)
def test_a_64gb_file_is_planned_from_its_header(tmp_path):
    """Real-size [dev] files (64 GB bf16 transformer, 24 GB fp8 text encoder; exact headers, sparse, no data):
    the dry-run plan reads headers only. Time and memory are measured in a fresh interpreter and printed;
    memory growth is asserted (a full-file map or a weight read would show as GBs)."""
    import json
    import os
    import subprocess
    import sys

    import twins

    tr = twins.write_sparse(tmp_path / "flux2-dev.safetensors", twins.bfl_transformer_table(DEV.transformer))
    te = twins.write_sparse(tmp_path / "mistral_3_small_flux2_fp8.safetensors",
                            twins.text_encoder_table(DEV.text_encoder, 40, quant="fp8"))
    ae = twins.write_sparse(tmp_path / "ae.safetensors", twins.vae_table(DEV.vae))
    assert tr.stat().st_size > 64 * 10**9
    code = f"""
import json, resource, time
from pathlib import Path
from comfyui_flux2.flux2.local import backend as lb
from comfyui_flux2.flux2.backend import GenerationRequest
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
b = lb.LocalBackend("auto", lb.LocalFiles(transformer=Path({str(tr)!r}), text_encoder=Path({str(te)!r}),
                    vae=Path({str(ae)!r})), device="cuda")
(call,) = b.plan(GenerationRequest("a cat", 1024, 1024, seed=1))
print(json.dumps({{"s": time.perf_counter() - t, "rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
                  "summary": call.summary}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"planned a {tr.stat().st_size / 1e9:.1f} GB file in {res['s']:.3f} s, peak RSS growth {res['rss_mb']:.1f} MB")
    assert res["rss_mb"] < 100
    assert "detected FLUX.2 [dev]" in res["summary"] and "device memory ≈ " in res["summary"]


@pytest.mark.parametrize("base, kinds", [(False, 1), (True, 2)])
def test_kv_variant_plans_its_kept_reference_keys_values(base, kinds):
    """The KV variant's denoising peak is the plain plan's plus exactly the kept reference K/V:
    prompt kinds x batch x reference tokens x 2 (K, V) x heads*head_dim x dtype bytes x blocks."""
    plain = params.PRESETS["FLUX.2 [klein] 9B" + (" Base" if base else "")]
    kv_preset = replace(plain, reference_kv=True)
    kw = dict(dtype_bytes=2, offload="none", width=1024, height=1024, batch=2, prompt_kinds=kinds,
              reference_pixels=[1024 * 1024, 768 * 512])
    without, with_kv = plan_memory(plain, **kw), plan_memory(kv_preset, **kw)
    assert without.phase == with_kv.phase == "denoising"
    t = plain.transformer
    expected = kinds * 2 * (4096 + 1536) * 2 * t.heads * t.head_dim * 2 * (t.depth_double + t.depth_single)
    assert expected == memory.reference_kv_bytes(t, 4096 + 1536, dtype_bytes=2, batch=2, prompt_kinds=kinds)
    assert with_kv.total - without.total == with_kv.reference_kv == expected
    assert with_kv.weights == without.weights and without.reference_kv == 0
    assert "kept reference K/V" in with_kv.describe()
    # [klein] 9B: 2 GiB per 1 MP reference, batch 1, one prompt kind, bf16
    assert memory.reference_kv_bytes(t, 4096, dtype_bytes=2) == 2 * GIB
    # on the CPU the cache is in RAM
    cpu = [plan_memory(p, **{**kw, "device_type": "cpu"}) for p in (plain, kv_preset)]
    assert cpu[1].ram - cpu[0].ram == expected


def test_dry_run_counts_one_kv_cache_per_prompt_kind(monkeypatch):
    """A KV model under CFG: two caches when the prompt kinds run as two forwards, and the same bytes when they
    run as one batch of 2B (cfg_one_forward's check); the dry run's text and payload say it."""
    monkeypatch.setattr(lb, "pick_device", lambda device: torch.device("cuda"))
    backend = lb.LocalBackend("FLUX.2 [klein] 9B Base", lb.LocalFiles(), dtype="bf16", device="cuda")
    backend.preset = replace(backend.model_preset, reference_kv=True)      # as with_reference_kv on KV files
    assert backend.effective_guidance > 1.0
    ref = ref_from_array(np.zeros((1024, 1024, 3), np.uint8))
    request = GenerationRequest("a cat", 1024, 1024, seed=1, references=(ref,))
    two_forwards = backend.memory_plan(request)
    one_forward = backend.memory_plan(replace(request, batch=2), cfg_batched=True)
    assert two_forwards.reference_kv == one_forward.reference_kv == 4 * GIB    # 2 GiB per kind, 1 MP, bf16
    (call,) = backend.plan(request)
    assert call.payload["reference_kv_gib"] == 4.0 and "4.0 of them kept reference K/V" in call.summary
