"""Provider options a user picks on the backend node (shared by Runware and BFL)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

OUTPUT_FORMATS = ("PNG", "JPEG", "WEBP")
ON_MODERATION = ("error", "placeholder")


@dataclass(frozen=True)
class RemoteOptions:
    prompt_upsampling: bool = False
    safety_tolerance: int = 2            # 0 strictest .. 5 most permissive (FLUX.2 accepts 0-5)
    output_format: str = "PNG"           # lossless by default: outputs feed further edits
    output_quality: int = 95             # JPEG/WEBP only
    steps: int = 0                       # 0 = the model's default (flex, dev, klein only)
    guidance: float = 0.0                # 0 = the model's default (flex, dev, klein Base only)
    on_moderation: str = "error"         # "placeholder": a grey image instead of failing the graph

    def validate(self) -> None:
        if not 0 <= self.safety_tolerance <= 5:
            raise InputError(f"safety_tolerance must be 0..5, got {self.safety_tolerance}")
        if self.output_format not in OUTPUT_FORMATS:
            raise InputError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")
        if not 20 <= self.output_quality <= 99:
            raise InputError(f"output_quality must be 20..99, got {self.output_quality}")
        if not 0 <= self.steps <= 50:
            raise InputError(f"steps must be 0 (model default) or 1..50, got {self.steps}")
        if self.guidance and not 1.5 <= self.guidance <= 10:
            raise InputError(f"guidance must be 0 (model default) or 1.5..10, got {self.guidance}")
        if self.on_moderation not in ON_MODERATION:
            raise InputError(f"on_moderation must be one of {', '.join(ON_MODERATION)}")
