"""Prompt embeddings and reference latents are computed once per model set (caches.py): a seed sweep encodes its
prompt once, a chain of edits encodes each reference once; outputs are bit-identical to an uncached engine; the
cache is bounded by bytes (least recently used goes first) and goes with the model set."""
from __future__ import annotations

import numpy as np
import torch

from comfyui_flux2.flux2.local.weights import loading
from comfyui_flux2.flux2.local.model import params
from comfyui_flux2.flux2.local.caches import TensorLRU, content_hash, module_token
from comfyui_flux2.flux2.local.pipeline import Flux2Engine, prepare_reference

F32 = torch.float32


def modules_for(root, distilled=True):
    preset = params.tiny_preset("klein", distilled)
    return loading.load_modules(preset, diffusers_dir=root / "diffusers" / "flux2-tiny", dtype=F32, device="cpu")


def count_calls(module) -> list:
    calls = []
    module.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    return calls


def pattern(w, h, k) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * (3 + k) + yy) % 256, (yy * (5 - k) + 40 * k) % 256, ((xx ^ yy) * 7) % 256], -1)
    return arr.astype(np.uint8)


# ---------------------------------------------------------------------------------------------- the LRU itself

def test_lru_evicts_least_recently_used_by_bytes():
    lru = TensorLRU(max_bytes=3 * 400)
    a, b, c, d = (torch.full((100,), float(i)) for i in range(4))     # 400 bytes each (float32)
    lru.put("a", a)
    lru.put("b", b)
    lru.put("c", c)
    assert lru.bytes == 1200 and len(lru) == 3
    assert lru.get("a") is a                # a is now the most recent: b goes first
    lru.put("d", d)
    assert "b" not in lru and all(k in lru for k in "acd")
    assert lru.bytes == 1200 and lru.evictions == 1
    lru.put("big", torch.zeros(400))        # 1600 bytes: larger than the budget, not kept, nothing evicted
    assert "big" not in lru and len(lru) == 3
    lru.put("e", torch.zeros(200))          # 800 bytes: two entries must go
    assert list(lru._items) == ["d", "e"] and lru.bytes == 1200 and lru.evictions == 3
    assert (lru.hits, lru.misses) == (1, 0)
    assert lru.get("zzz") is None and lru.misses == 1


def test_lru_stores_a_copy_and_zero_bytes_disables():
    lru = TensorLRU(max_bytes=10_000)
    x = torch.ones(4)
    out = lru.get_or_compute("k", lambda: x, torch.device("cpu"))
    assert out is x and lru.get("k") is not x and torch.equal(lru.get("k"), x)
    off = TensorLRU(max_bytes=0)
    off.get_or_compute("k", lambda: x, torch.device("cpu"))
    assert len(off) == 0


def test_module_tokens_are_never_reused():
    a = torch.nn.Linear(1, 1)
    ta = module_token(a)
    assert module_token(a) == ta
    del a
    b = torch.nn.Linear(1, 1)               # may well get the freed id(); never the freed token
    assert module_token(b) != ta


def test_content_hash_sees_pixels_and_shape():
    x = pattern(32, 16, 1)
    y = x.copy()
    y[3, 4, 0] ^= 1
    assert content_hash(x) == content_hash(x.copy())
    assert content_hash(x) != content_hash(y)
    assert content_hash(x) != content_hash(x.reshape(32, 16, 3))


# ------------------------------------------------------------------------------------------------- the engine

def test_seed_sweep_encodes_the_prompt_once_and_matches_uncached(klein):
    m = modules_for(klein[1])
    calls = count_calls(m.text_encoder)
    cached, plain = Flux2Engine(m), Flux2Engine(m, cache_bytes=0)
    sweep = [cached.generate("a red cat sitting on a chair", 48, 48, [s], 2, 0.0)[0] for s in (1, 2, 3)]
    assert len(calls) == 1, f"text encoder ran {len(calls)} times for one prompt"
    assert cached.cache.hits == 2
    before = len(calls)
    ref = [plain.generate("a red cat sitting on a chair", 48, 48, [s], 2, 0.0)[0] for s in (1, 2, 3)]
    assert len(calls) - before == 3                                   # no cache: once per image
    for a, b in zip(sweep, ref):
        assert np.array_equal(a, b)
    other = cached.generate("a red dog sitting on a chair", 48, 48, [1], 2, 0.0)[0]
    assert len(calls) == before + 4 and not np.array_equal(other, sweep[0])   # another prompt is a miss


def test_cfg_negative_prompt_is_cached_too(klein_base):
    m = modules_for(klein_base[1], distilled=False)
    calls = count_calls(m.text_encoder)
    eng = Flux2Engine(m)
    outs = [eng.generate("a photo of a red cat", 48, 48, [s], 2, 4.0)[0] for s in (1, 2)]
    assert len(calls) == 2                                            # the prompt and "" once each
    plain = Flux2Engine(m, cache_bytes=0)
    assert np.array_equal(outs[1], plain.generate("a photo of a red cat", 48, 48, [2], 2, 4.0)[0])


def test_chain_encodes_each_reference_once_and_matches_uncached(klein):
    m = modules_for(klein[1])
    vae_calls = count_calls(m.vae.encoder)
    cached, plain = Flux2Engine(m), Flux2Engine(m, cache_bytes=0)
    a, b = prepare_reference_arr(pattern(64, 48, 1)), prepare_reference_arr(pattern(48, 64, 2))
    prev = None
    chain = []
    for step in range(3):
        refs = [a, b] + ([prev] if prev is not None else [])
        prev = cached.generate("make the sky green", 48, 48, [step], 2, 0.0, refs)[0]
        chain.append(prev)
    assert len(vae_calls) == 4, f"{len(vae_calls)} VAE encodes for 4 distinct references"   # a, b, out1, out2
    prev = None
    for step in range(3):
        refs = [a, b] + ([prev] if prev is not None else [])
        prev = plain.generate("make the sky green", 48, 48, [step], 2, 0.0, refs)[0]
        assert np.array_equal(prev, chain[step])
    # a cached reference at another position gets that position's ids: order still matters
    swapped = cached.generate("make the sky green", 48, 48, [0], 2, 0.0, [b, a])[0]
    assert not np.array_equal(swapped, chain[0])


def prepare_reference_arr(arr: np.ndarray) -> np.ndarray:
    from PIL import Image

    return prepare_reference(Image.fromarray(arr))


def test_budget_bounds_the_engine_cache(klein):
    m = modules_for(klein[1])
    calls = count_calls(m.text_encoder)
    one = Flux2Engine(m).encode_prompt("x")
    size = one.numel() * one.element_size()
    eng = Flux2Engine(m, cache_bytes=size)                            # room for exactly one embedding
    calls.clear()
    for prompt in ("a", "b", "a", "a"):
        eng.encode_prompt(prompt)
    assert len(calls) == 3 and eng.cache.bytes == size and eng.cache.evictions == 2
    roomy = Flux2Engine(m, cache_bytes=2 * size)
    calls.clear()
    for prompt in ("a", "b", "a", "b"):
        roomy.encode_prompt(prompt)
    assert len(calls) == 2 and roomy.cache.evictions == 0


def test_a_swapped_text_encoder_is_not_answered_from_the_cache(klein):
    m = modules_for(klein[1])
    eng = Flux2Engine(m)
    first = eng.encode_prompt("a red cat")
    other = modules_for(klein[1]).text_encoder
    with torch.no_grad():
        other.embed_tokens.weight.mul_(2.0)
    m.text_encoder = other
    calls = count_calls(other)
    second = eng.encode_prompt("a red cat")
    assert len(calls) == 1 and not torch.equal(first, second)


def test_caches_go_with_the_model_set(klein, klein_base):
    from comfyui_flux2.flux2.backend import GenerationRequest
    from comfyui_flux2.flux2.local.backend import LocalBackend, LocalFiles, clear_cache
    from comfyui_flux2.flux2.run_context import RunContext

    clear_cache()
    try:
        def backend(root, distilled):
            return LocalBackend("tiny", LocalFiles(diffusers_dir=root / "diffusers" / "flux2-tiny"), dtype="fp32",
                                device="cpu", steps=1, preset=params.tiny_preset("klein", distilled))

        first = backend(klein[1], True)
        first.generate(GenerationRequest("a red cat", 64, 64, 1), RunContext())
        engine = first.engine()
        assert len(engine.cache) == 1
        backend(klein_base[1], False).generate(GenerationRequest("a red cat", 64, 64, 1), RunContext())
        assert len(engine.cache) == 0 and engine.cache.bytes == 0
    finally:
        clear_cache()


def test_streamed_text_encoder_is_cached_under_its_own_identity(klein):
    """Under offload=blocks the engine holds the streaming wrapper; the key follows what is loaded."""
    from comfyui_flux2.flux2.local.offload import _StreamedTextEncoder

    m = modules_for(klein[1])
    eng = Flux2Engine(m)
    plain = eng.encode_prompt("a red cat")
    m.text_encoder = _StreamedTextEncoder(m.text_encoder, torch.device("cpu"))
    calls = count_calls(m.text_encoder)
    assert torch.equal(eng.encode_prompt("a red cat"), plain) and len(calls) == 1
    eng.encode_prompt("a red cat")
    assert len(calls) == 1
