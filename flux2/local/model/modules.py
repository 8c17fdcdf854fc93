"""The loaded parts of one FLUX.2 model, handed from the weight loader to the pipeline."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .autoencoder import AutoencoderFlux2
from .params import ModelPreset
from .text_encoder import TextEncoder
from .tokenizer import PromptTokenizer
from .transformer import Flux2Transformer


@dataclass
class Flux2Modules:
    preset: ModelPreset
    transformer: Flux2Transformer
    text_encoder: TextEncoder
    tokenizer: PromptTokenizer
    vae: AutoencoderFlux2
    device: torch.device
    dtype: torch.dtype
