"""GGUF twins written with the gguf package's own writer, in the layout ComfyUI-GGUF publishes for FLUX
transformers (facts and sources: docs/model-files.md):

- `general.architecture` "flux" (tools/convert.py ModelFlux: BFL keys, diffusers layout refused), tensor names
  without `model.diffusion_model.` (convert.py strips it), `general.quantization_version`, `general.file_type`;
- 1-D tensors and tensors of <= 1024 elements F32 (convert.py: QUANTIZATION_THRESHOLD);
- `img_in.`, `txt_in.`, `time_in.`, `guidance_in.`, `final_layer.` kept in the source dtype, BF16 (tools/lcpp.patch:
  llama-quantize skips them for LLM_ARCH_FLUX); every other matrix quantised. A _K_M file mixes types per
  tensor, so the twins cycle through `types`.

The package quantises Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and BF16 itself; K-quants are not written here (tiny widths are
not multiples of 256; their de-quantisation is checked block by block in test_gguf_quants.py).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

KEPT_BF16 = ("img_in.", "txt_in.", "time_in.", "guidance_in.", "final_layer.")


def published_type(key: str, t: torch.Tensor, quant: str):
    import gguf

    QT = gguf.GGMLQuantizationType
    if t.ndim == 1 or t.numel() <= 1024:
        return QT.F32
    if key.startswith(KEPT_BF16):
        return QT.BF16
    return QT[quant]


def write_gguf(tensors: dict[str, torch.Tensor], path: Path, arch: str | None, types, general_name: str | None = None,
               fields=None) -> Path:
    """types(key, tensor) -> GGMLQuantizationType; fields(writer) adds further key/values."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch=arch or "flux")
    if arch is None:                                  # sd.cpp-style file without the architecture key
        w.kv_data[0].pop("general.architecture", None)
    if general_name:
        w.add_name(general_name)
    if fields is not None:
        fields(w)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    for key, t in tensors.items():
        qt = types(key, t)
        data = t.detach().to(torch.float32).numpy()
        q = gguf.quants.quantize(data, qt)
        w.add_tensor(key, q, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_gguf_transformer(diffusers_sd, path: Path, quants=("Q8_0", "Q4_0", "Q5_1", "Q4_1", "Q5_0"),
                           prefix: str = "", arch: str | None = "flux", general_name: str | None = None) -> Path:
    """A FLUX.2 transformer as ComfyUI-GGUF publishes it; matrices cycle through `quants` (a mixed file)."""
    import twins

    sd = twins.bfl_transformer(diffusers_sd)
    order = {k: i for i, k in enumerate(sorted(sd))}
    types = lambda key, t: published_type(key[len(prefix):], t, quants[order[key[len(prefix):]] % len(quants)])  # noqa: E731
    return write_gguf({prefix + k: v for k, v in sd.items()}, path, arch, types, general_name)


def dequantized_twin(gguf_path: Path, out: Path, prefix: str = "") -> Path:
    """The same file de-quantised by the gguf package itself (the reference), saved as float32 safetensors."""
    import gguf
    from safetensors.torch import save_file

    r = gguf.GGUFReader(str(gguf_path))
    sd = {}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        x = gguf.quants.dequantize(np.array(t.data), t.tensor_type).reshape(shape)
        sd[re.sub("^" + re.escape(prefix), "", t.name)] = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    save_file(sd, str(out))
    return out
