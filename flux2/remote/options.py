"""Provider options a user picks on the backend node (shared by Runware and BFL)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

OUTPUT_FORMATS = ("PNG", "JPEG", "WEBP")
ON_MODERATION = ("error", "placeholder")
# FLUX 3 options (docs/flux3.md). "default" sends nothing, so the provider's own default applies:
# FLUX 3 Image's grounding is a boolean (default on: off/on), FLUX 3.1 Image's is off/auto/force (default off).
GROUNDING = ("default", "off", "on", "auto", "force")
MODES = ("default", "fast", "quality")        # FLUX 3.1 Image (default quality)


@dataclass(frozen=True)
class RemoteOptions:
    prompt_upsampling: bool = False
    safety_tolerance: int = 2            # 0 strictest .. 5 most permissive (FLUX.2 accepts 0-5)
    output_format: str = "PNG"           # lossless by default: outputs feed further edits
    output_quality: int = 95             # JPEG/WEBP only
    steps: int = 0                       # 0 = the model's default (flex, dev, klein only)
    guidance: float = 0.0                # 0 = the model's default (flex, dev, klein Base only)
    on_moderation: str = "error"         # "placeholder": a grey image instead of failing the graph
    grounding: str = "default"           # FLUX 3 / 3.1 only: web and image search before generating
    mode: str = "default"                # FLUX 3.1 only: fast | quality

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
        if self.grounding not in GROUNDING:
            raise InputError(f"grounding must be one of {', '.join(GROUNDING)}, got {self.grounding!r}")
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    def validate_for(self, model) -> None:
        """The options a model takes: grounding/mode only where the model has them, in its own values."""
        family = model.family
        if family == "flux3":
            if self.grounding not in ("default", "off", "on"):
                raise InputError(f"{model.name} takes grounding off or on (FLUX 3.1 Image takes auto/force), "
                                 f"got {self.grounding}")
            if self.safety_tolerance > 4:
                raise InputError(f"{model.name} takes safety_tolerance 0..4, got {self.safety_tolerance}")
        elif family == "flux3.1":
            if self.grounding == "on":
                raise InputError(f"{model.name} takes grounding off, auto or force (not on)")
            if self.safety_tolerance > 4:
                raise InputError(f"{model.name} takes safety_tolerance 0..4, got {self.safety_tolerance}")
        elif self.grounding != "default":
            raise InputError(f"{model.name} takes no grounding option (FLUX 3 Image and FLUX 3.1 Image do); "
                             "set grounding to default")
        if self.mode != "default" and family != "flux3.1":
            raise InputError(f"{model.name} takes no mode (FLUX 3.1 Image does); set mode to default")
