"""Image conversions: IMAGE tensors [B, H, W, C] 0..1 <-> uint8 arrays <-> PNG/JPEG/WebP bytes <-> data URIs."""
from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .errors import InputError, ProviderError

# Decompression-bomb guard: FLUX.2 never needs more than 4 MP; allow generous headroom for inputs.
MAX_DECODE_PIXELS = 64 * 1024 * 1024

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def _pil_image():
    """PIL.Image, imported on first use so that loading the pack costs no image library."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit in decode(), with a clear error
    return Image


@dataclass(frozen=True)
class RefImage:
    """One reference image, encoded once (lossless PNG) and identified by its content hash."""

    png: bytes
    width: int
    height: int
    sha256: str
    # Of the uint8 pixels: equal for an image this pack generated and the same image coming back as a
    # reference (IMAGE float round trip included), so a provider can be sent its own image id instead.
    pixels_sha256: str = ""
    size_known: ClassVar[bool] = True   # decoded pixels; a UrlReference's size is assumed until fetched

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def tensor_to_arrays(image: torch.Tensor) -> list[np.ndarray]:
    """IMAGE [B, H, W, C] float 0..1 -> list of uint8 [H, W, 3]."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"expected an IMAGE tensor [B, H, W, C], got {shape}")
    if image.shape[0] == 0:
        raise InputError("IMAGE batch is empty")
    rgb = image[..., :3] if image.shape[-1] != 1 else image.expand(-1, -1, -1, 3)
    # In numpy, one thread: torch's clamp/round/cast of one picture start its intra-op thread pool, which on a
    # busy CPU costs 10-30x the work (a batch saves a picture per item, and its dry run one per item too).
    # Same values as torch's: clamp, float32 x 255, round half to even; NaN -> 0 as torch's cast gives on x86.
    arr = np.clip(rgb.detach().float().cpu().numpy(), 0.0, 1.0) * np.float32(255.0)    # [B, H, W, 3]
    arr = np.rint(arr, out=arr)
    arr[np.isnan(arr)] = 0.0
    arr = arr.astype(np.uint8)
    return [arr[i] for i in range(arr.shape[0])]


def arrays_to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    """list of uint8 [H, W, 3] (same size) -> IMAGE [B, H, W, 3] float32 0..1."""
    stacked = np.stack(arrays).astype(np.float32) / 255.0
    return torch.from_numpy(stacked)


def encode(array: np.ndarray, fmt: str = "PNG", quality: int = 95, pnginfo=None) -> bytes:
    buf = io.BytesIO()
    img = _pil_image().fromarray(array, "RGB")
    if fmt == "PNG":
        img.save(buf, "PNG", pnginfo=pnginfo, compress_level=4)
    else:
        img.save(buf, fmt, quality=quality)
    return buf.getvalue()


def pixel_digest(array: np.ndarray) -> str:
    """sha256 of a uint8 [H, W, 3] image's size and pixels (cheap next to a PNG encode)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()


def ref_from_array(array: np.ndarray) -> RefImage:
    png = encode(array, "PNG")
    return RefImage(png=png, width=array.shape[1], height=array.shape[0],
                    sha256=hashlib.sha256(png).hexdigest(), pixels_sha256=pixel_digest(array))


def mask_from_tensor(mask) -> RefImage:
    """ComfyUI MASK ([H, W] or [B, H, W] float 0..1, 1 = the part to change; the first of a batch) -> a
    black/white PNG as BFL's FLUX 3.1 takes it: white changes, black is kept exactly, grey blends."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or mask.numel() == 0:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InputError(f"expected a MASK tensor [H, W] or [B, H, W], got {shape}")
    m = mask[0] if mask.ndim == 3 else mask                                    # [H, W]
    grey = (m.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    return ref_from_array(np.repeat(grey[..., None], 3, axis=2))                # [H, W, 3]


def decode(data: bytes, what: str = "image", error: type = InputError) -> np.ndarray:
    """Bytes of PNG/JPEG/WebP -> uint8 [H, W, 3]; a corrupt or truncated file raises `error`."""
    Image = _pil_image()
    from PIL import UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_DECODE_PIXELS:
                raise error(f"{what} is {img.width}x{img.height}, larger than this pack decodes")
            img.load()  # forces a full decode: a truncated file fails here, not later
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise error(f"{what} is not a readable PNG/JPEG/WebP image ({type(exc).__name__})") from None


@dataclass(frozen=True, eq=False)
class ProviderFile:
    """A picture as the provider sent it (PNG/JPEG/WebP bytes) and the pixels `decode` makes of it. The result
    cache stores these bytes as they came instead of encoding the pixels again: a PNG encode per image saved
    (about 8 ms of CPU at 256x256, tens of ms at 1 MP), and the cached pixels are the same by construction."""

    data: bytes
    image: np.ndarray                   # uint8 [H, W, 3]


def provider_file(data: bytes, what: str) -> ProviderFile:
    return ProviderFile(data, decode(data, what, error=ProviderError))


def data_uri_file(uri: str, what: str = "image") -> ProviderFile:
    """A data URI (or bare base64) from a provider's answer -> its file and pixels."""
    try:
        _, b64 = uri.split(",", 1) if uri.startswith("data:") else ("", uri)
        raw = base64.b64decode(b64, validate=True)
    except (ValueError, base64.binascii.Error):
        raise ProviderError(f"{what} is not valid base64") from None
    return provider_file(raw, what)


def load_image_file(path, what: str | None = None) -> np.ndarray:
    label = what or f"image file {getattr(path, 'name', path)}"
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"cannot read {label}: {exc.strerror}") from None
    return decode(data, label)


def placeholder(width: int, height: int, shade: int = 128) -> np.ndarray:
    """A flat grey image, used for dry runs and for moderated results when the user asks for one."""
    return np.full((height, width, 3), shade, dtype=np.uint8)
