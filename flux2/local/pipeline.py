"""Text-to-image and multi-reference edit with loaded FLUX.2 modules (no file handling here)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..errors import ModelLoadError
from .caches import DEFAULT_BYTES, TensorLRU, content_hash, module_token
from .model.modules import Flux2Modules
from .model.sampling import euler_step, image_ids, initial_noise, model_timestep, pack, sigmas, text_ids, unpack
from .model.transformer import RefKV

REF_MAX_PIXELS = 1024 * 1024


class NonFiniteValues(ModelLoadError):
    """A stage produced NaN or Inf: weights holding them (a damaged or badly converted file) turn the whole
    image black. `part` is the component whose file is the likely cause: "text_encoder", "transformer"
    (or a LoRA on it), "vae"; the backend names the file."""

    def __init__(self, stage: str, part: str):
        super().__init__(f"{stage} produced non-finite values (NaN/Inf)")
        self.stage, self.part = stage, part


def require_finite(x: torch.Tensor, stage: str, part: str) -> None:
    """Stop at the first stage that went non-finite (one reduction; on a GPU it waits for the stage)."""
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteValues(stage, part)


def prepare_reference(img: Image.Image) -> np.ndarray:
    """RGB; > 1 MP is LANCZOS-resized to ~1 MP; floor to multiples of 16 and centre-crop. -> uint8 [H, W, 3]."""
    img = img.convert("RGB")
    w, h = img.size
    if w * h > REF_MAX_PIXELS:
        scale = math.sqrt(REF_MAX_PIXELS / (w * h))
        img = img.resize((int(w * scale), int(h * scale)), Image.Resampling.LANCZOS)
        w, h = img.size
    cw, ch = w // 16 * 16, h // 16 * 16
    left, top = (w - cw) // 2, (h - ch) // 2
    return np.asarray(img.crop((left, top, left + cw, top + ch)), dtype=np.uint8)


TILED_DECODE_PIXELS = 2 * 1024 * 1024   # "auto" tiles above 2 MP on a GPU (a 4 MP decode needs ~10+ GB)
VAE_TILE = 128                          # latent pixels per tile side (1024 image pixels)


def decode_tile(setting: str, device: torch.device, height: int, width: int) -> int:
    """Latent pixels per VAE tile side for this decode; 0 = decode the whole image at once."""
    if setting == "on" or (setting == "auto" and device.type == "cuda" and height * width > TILED_DECODE_PIXELS):
        return VAE_TILE
    return 0


def reference_size(width: int, height: int) -> tuple[int, int]:
    """Size a reference has after prepare_reference (no pixels needed)."""
    if width * height > REF_MAX_PIXELS:
        scale = math.sqrt(REF_MAX_PIXELS / (width * height))
        width, height = int(width * scale), int(height * scale)
    return width // 16 * 16, height // 16 * 16


class Flux2Engine:
    def __init__(self, m: Flux2Modules, cache_bytes: int = DEFAULT_BYTES):
        self.m = m
        # Prompt embeddings and reference latents of this model set (caches.py); 0 bytes = no caching.
        self.cache = TensorLRU(cache_bytes)

    @property
    def device(self) -> torch.device:
        return self.m.device

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """-> [1, 512, 3*hidden] in the text encoder dtype (cached per text encoder, tokenizer and prompt)."""
        te, tok = self.m.text_encoder, self.m.tokenizer
        key = ("prompt", module_token(te), module_token(tok), prompt)
        return self.cache.get_or_compute(key, lambda: self._encode_prompt(prompt), self.device)

    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        te = self.m.text_encoder
        ids, mask = self.m.tokenizer([prompt])
        dev = te.__dict__.get("device") or te.embed_tokens.weight.device     # offload wrapper has .device
        return te(ids.to(dev), mask.to(dev)).to(self.device)

    @torch.no_grad()
    def encode_references(self, refs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [H, W, 3] each (already prepared) -> tokens [1, sum Li, 128], ids [sum Li, 4].
        Each reference's latent tokens are cached per VAE, content hash and prepared size."""
        vae = self.m.vae
        toks, ids = [], []
        for k, arr in enumerate(refs):
            arr = np.asarray(arr, dtype=np.uint8)
            h, w = arr.shape[0] // 16, arr.shape[1] // 16                # latent grid after the VAE's 16x
            key = ("reference", module_token(vae), content_hash(arr), arr.shape[:2])
            toks.append(self.cache.get_or_compute(key, lambda: self._encode_reference(arr), self.device))
            ids.append(image_ids(h, w, t=10 * (k + 1), device=self.device))
        return torch.cat(toks, 1), torch.cat(ids, 0)

    def _encode_reference(self, arr: np.ndarray) -> torch.Tensor:
        """uint8 [H, W, 3] -> latent tokens [1, H/16 * W/16, 128]."""
        vae = self.m.vae
        x = torch.from_numpy(np.array(arr, dtype=np.uint8)).float().div(255.0).permute(2, 0, 1)[None]
        x = (2.0 * x - 1.0).to(self.device, vae.dtype)
        return pack(vae.encode(x))                                       # [1, 128, h, w] -> [1, h*w, 128]

    @torch.no_grad()
    def generate(self, prompt: str, width: int, height: int, seeds: list[int], steps: int, guidance: float,
                 references: list[np.ndarray] = (), on_step: Callable[[int, int], None] | None = None,
                 cfg_one_forward: bool = True, vae_tiling: str = "auto") -> list[np.ndarray]:
        """cfg_one_forward: with CFG, run the conditional and unconditional halves as one batch of 2B per step
        (the backend turns it off under block offload or when its memory plan says 2B will not fit).
        vae_tiling: "auto" | "on" | "off" (decode_tile), this call's alone: the engine is shared."""
        m = self.m
        preset, tr, dev = m.preset, m.transformer, self.device
        B = len(seeds)
        emb = self.encode_prompt(prompt)                                  # [1, Lt, C]
        require_finite(emb, "the text encoder", "text_encoder")
        dtype = emb.dtype                                                 # diffusers: latents in the text dtype
        neg = self.encode_prompt("") if preset.uses_cfg and guidance > 1.0 else None
        # One generator per image (seed, seed+1, ...): image i equals diffusers' single image with seed+i.
        x = torch.cat([initial_noise(s, 1, width, height, dtype) for s in seeds], 0).to(dev)   # [B, L, 128]
        h, w = height // 16, width // 16
        img_ids = image_ids(h, w, device=dev)
        L = x.shape[1]
        ref_tok = None
        all_ids = img_ids
        if references:
            ref_tok, ref_ids = self.encode_references(list(references))
            require_finite(ref_tok, "the VAE encoder (reference latents)", "vae")
            ref_tok = ref_tok.expand(B, -1, -1).to(tr.dtype)
            all_ids = torch.cat((img_ids, ref_ids), 0)
        cond = emb.expand(B, -1, -1).to(tr.dtype)
        uncond = neg.expand(B, -1, -1).to(tr.dtype) if neg is not None else None
        t_ids = text_ids(cond.shape[1], device=dev)
        sig = sigmas(steps, L).to(dev)
        g = torch.full((B,), float(guidance), dtype=torch.float32, device=dev) if tr.params.guidance_embed else None
        one_forward = uncond is not None and cfg_one_forward
        if one_forward:                    # cond and uncond prompts have the same padded length: stack them
            both = torch.cat((cond, uncond), 0)                           # [2B, Lt, C]
            g2 = g.repeat(2) if g is not None else None
        # KV variant: references join only the first step; their keys/values are kept (one set per prompt kind)
        kv = (RefKV(ref_tok.shape[1]), RefKV(ref_tok.shape[1])) if ref_tok is not None and preset.reference_kv else None
        try:
            for i in range(steps):
                t = model_timestep(sig[i], B, x.dtype)
                refs_in = ref_tok is not None and (kv is None or not kv[0].filled)
                inp = torch.cat((x.to(tr.dtype), ref_tok), 1) if refs_in else x.to(tr.dtype)
                ids = all_ids if refs_in else img_ids
                if one_forward:
                    v, v_u = tr(inp.repeat(2, 1, 1), ids, both, t_ids, t.repeat(2), g2,
                                ref_kv=kv and kv[0])[:, :L].chunk(2)
                    v = v_u + guidance * (v - v_u)
                else:
                    v = tr(inp, ids, cond, t_ids, t, g, ref_kv=kv and kv[0])[:, :L]
                    if uncond is not None:
                        v_u = tr(inp, ids, uncond, t_ids, t, g, ref_kv=kv and kv[1])[:, :L]
                        v = v_u + guidance * (v - v_u)
                x = euler_step(x, v, sig[i], sig[i + 1])
                require_finite(x, f"step {i + 1} of {steps}", "transformer")      # not a black image later
                if on_step is not None:
                    on_step(i + 1, steps)
        finally:
            if kv is not None:
                for c in kv:
                    c.clear()
        return self.decode(x, h, w, vae_tiling)

    @torch.no_grad()
    def decode(self, x: torch.Tensor, h: int, w: int, vae_tiling: str = "auto") -> list[np.ndarray]:
        vae = self.m.vae
        tile = decode_tile(vae_tiling, self.device, h * 16, w * 16)
        out = []
        for i in range(x.shape[0]):       # one at a time: the VAE decoder is the memory peak
            img = vae.decode(unpack(x[i:i + 1], h, w).to(vae.dtype), tile=tile)   # [1, 3, H, W]
            require_finite(img, "the VAE decoder", "vae")
            img = (img.float() / 2 + 0.5).clamp(0, 1)
            out.append((img[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))
        return out
