"""Block offload: weights live on the CPU and each transformer block visits the GPU only while it runs.

Lets [dev] (64 GB in bf16) run on a 24 GB card at the cost of PCIe traffic per step. The text encoder streams
the same way, one decoder layer at a time (the 30 Mistral Small 3.2 layers FLUX.2 reads are 31 GiB in bf16);
the VAE (~170 MB) stays resident. memory.py works out what this leaves on the device.
"""
from __future__ import annotations

import torch
from torch import nn


def _device_copy(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device, non_blocking=True)


class _BlockMover:
    """Streams one block's weights to the device at a time. Weights never change, so on release nothing is copied
    back: the device copies are dropped and the parameters point at their host tensors again (half the PCIe
    traffic of moving the block there and back, and no new host allocation per step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.current: nn.Module | None = None
        self.host: list[tuple[torch.Tensor, torch.Tensor]] = []     # (parameter or buffer, its host tensor)

    def __call__(self, block: nn.Module) -> None:
        if self.current is block:
            return
        self.release()
        for t in list(block.parameters()) + list(block.buffers()):
            self.host.append((t, t.data))
            t.data = _device_copy(t.data, self.device)
        self.current = block

    def release(self) -> None:
        for t, host in self.host:
            t.data = host
        self.host.clear()
        self.current = None


class _StreamedTextEncoder(nn.Module):
    """Wraps the text encoder: its embedding visits the device for the call; its layers stream one at a time
    through the encoder's layer hook, which the encoder releases after the pass (as the transformer does)."""

    def __init__(self, inner: nn.Module, device: torch.device):
        super().__init__()
        self.inner = inner
        self.device = device              # pipeline.encode_prompt puts the token ids here
        inner.layer_hook = _BlockMover(device)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def forward(self, *args, **kwargs):
        embed = self.inner.embed_tokens
        embed.to(self.device)
        try:
            return self.inner(*args, **kwargs)
        finally:
            embed.to("cpu")


def offload_transformer(tr: nn.Module, device: torch.device) -> None:
    """Blocks stay on the CPU and visit `device` one at a time; the small always-needed parts (embedders,
    modulations, final layer) stay resident there."""
    for name, child in tr.named_children():
        if name not in ("double_blocks", "single_blocks"):
            child.to(device)
    tr.block_hook = _BlockMover(device)      # the transformer calls it per block and releases after the pass


def apply_offload(modules, device: torch.device) -> None:
    """Keep everything on the CPU; stream transformer blocks and run encoder/decoder calls on `device`."""
    if device.type == "cpu":
        return
    offload_transformer(modules.transformer, device)
    for attr in ("encoder", "decoder", "post_quant_conv", "quant_conv"):
        getattr(modules.vae, attr).to(device)   # the VAE is small (~170 MB): keep it resident
    modules.vae.bn.to(device)
    te = modules.text_encoder
    modules.text_encoder = _StreamedTextEncoder(te, device)
