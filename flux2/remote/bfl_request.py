"""The body of a BFL FLUX.2 submit (`POST /v1/flux-2-<model>`), typed.

Field names and order are BFL's (docs.bfl.ai; see shared remote-api-facts). The answers are parsed
in `bfl.submit_answer` and the poll in `BflBackend._poll_status`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .wire import WireBody


def input_image_field(index: int) -> str:
    """BFL names the references input_image, input_image_2 ... input_image_8."""
    return "input_image" if index == 0 else f"input_image_{index + 1}"


@dataclass(frozen=True, kw_only=True)
class BflRequest(WireBody):
    prompt: str
    width: int
    height: int
    seed: int
    safety_tolerance: int                # 0 strictest .. 5
    output_format: str                   # jpeg | png
    prompt_upsampling: bool | None = None
    steps: int | None = None
    guidance: float | None = None
    # Sent as input_image, input_image_2, ... after the other fields, not as a list.
    input_images: tuple[str, ...] = field(default=(), metadata={"wire": False})

    def to_json(self) -> dict:
        body = super().to_json()
        for i, ref in enumerate(self.input_images):
            body[input_image_field(i)] = ref
        return body
