"""The torch de-quantisation of every supported GGML type is bit-identical to the gguf package's own
(`gguf.quants.dequantize`, the llama.cpp project's reference), on random blocks.

Types the package quantises (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16) are built by quantising random floats; the
K-quants and IQ4 types, which it only de-quantises, are random bytes with their float16 scale fields set to finite
values (every bit pattern of the other fields is a valid block)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from comfyui_flux2.flux2.local.weights import gguf_quants as gq  # noqa: E402

QT = gguf.GGMLQuantizationType
# offsets of the float16 scale fields inside one block, per type
F16_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "IQ4_NL": (0,),
              "IQ4_XS": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,)}


def random_blocks(name: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    _, size = gguf.GGML_QUANT_SIZES[QT[name]]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in F16_FIELDS[name]:
        scale = rng.standard_normal(n_blocks).astype(np.float16)
        raw[:, off:off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return raw


def test_type_table_matches_the_package():
    for tid, (name, block, size) in gq.TYPES.items():
        assert QT(tid).name == name
        assert gguf.GGML_QUANT_SIZES[QT(tid)] == (block, size)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                                  "IQ4_NL", "IQ4_XS"])
def test_random_blocks_bit_identical(name):
    rng = np.random.default_rng(7)
    raw = random_blocks(name, 300, rng)
    want = gguf.quants.dequantize(raw, QT[name]).reshape(-1)
    got = gq.dequantize(torch.from_numpy(raw), QT[name].value, (want.size,)).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16", "F16"])
def test_quantised_by_the_package_bit_identical(name):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((48, 256)) * rng.uniform(0.01, 3, (48, 1))).astype(np.float32)
    raw = gguf.quants.quantize(x, QT[name])
    want = gguf.quants.dequantize(raw, QT[name])
    got = gq.dequantize(torch.from_numpy(np.ascontiguousarray(raw).view(np.uint8)), QT[name].value, (48, 256))
    np.testing.assert_array_equal(got.numpy().view(np.uint32), want.view(np.uint32))


def test_chunked_path_and_cast_equal_the_whole(monkeypatch):
    rng = np.random.default_rng(1)
    raw = torch.from_numpy(random_blocks("Q4_K", 64, rng))
    whole = gq.dequantize(raw, QT.Q4_K.value, (64, 256), torch.float32)
    monkeypatch.setattr(gq, "_CHUNK", 1000)                      # forces several chunks of 3 blocks
    assert torch.equal(gq.dequantize(raw, QT.Q4_K.value, (64, 256), torch.float32), whole)
    assert torch.equal(gq.dequantize(raw, QT.Q4_K.value, (64, 256), torch.bfloat16), whole.to(torch.bfloat16))


def test_unported_type_refused_in_one_line():
    from comfyui_flux2.flux2.errors import ModelLoadError

    with pytest.raises(ModelLoadError) as e:
        gq.check_supported(QT.IQ2_XXS.value, "diffusion model x.gguf: tensor a.weight")
    assert "IQ2_XXS" in str(e.value) and "\n" not in str(e.value)
