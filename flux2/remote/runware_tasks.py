"""The tasks sent to Runware (`POST /v1`, a JSON array of tasks), one typed body per task type.

Field names and order are Runware's (docs: imageInference, imageUpload, getResponse; see
shared remote-api-facts). The replies are parsed into typed results in runware_replies.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .wire import WireBody


@dataclass(frozen=True)
class BflSettings(WireBody):
    """providerSettings.bfl: only for BFL-hosted models (bfl:*)."""

    promptUpsampling: bool | None        # None for FLUX 3 Image, which always expands the prompt
    safetyTolerance: int


@dataclass(frozen=True)
class ProviderSettings(WireBody):
    bfl: BflSettings


@dataclass(frozen=True)
class Inputs(WireBody):
    referenceImages: tuple[str, ...]     # imageUUID, public URL, data URI or bare base64


@dataclass(frozen=True)
class Lora(WireBody):
    """One item of imageInference's `lora` list (runware.ai/docs/learn/loras: `{"model": AIR, "weight": 1.0}`)."""

    model: str                           # the LoRA's AIR id, e.g. civitai:120096@135931
    weight: float


@dataclass(frozen=True, kw_only=True)
class ImageInference(WireBody):
    """One imageInference task. Optional fields stay None (omitted) where the model does not take them."""

    taskType: str = field(default="imageInference", init=False)
    taskUUID: str
    model: str                           # AIR id, e.g. bfl:5@1
    positivePrompt: str
    width: int
    height: int
    seed: int | None                     # None (omitted) for FLUX 3 Image, which takes no seed
    numberResults: int = 1               # one image per task: each image of a batch has its own seed
    outputType: str = "URL"
    outputFormat: str
    includeCost: bool = True             # the cost of each result comes back with it
    deliveryMethod: str = "sync"
    outputQuality: int | None = None     # JPEG/WEBP only
    steps: int | None = None
    CFGScale: float | None = None
    lora: tuple[Lora, ...] | None = None   # only models that take LoRAs (runware:400@*); None when there are none
    providerSettings: ProviderSettings | None = None
    inputs: Inputs | None = None         # None when there are no references (never an empty list)


@dataclass(frozen=True, kw_only=True)
class ImageUpload(WireBody):
    taskType: str = field(default="imageUpload", init=False)
    taskUUID: str
    image: str                           # URL, data URI or base64


@dataclass(frozen=True, kw_only=True)
class GetResponse(WireBody):
    """Asks for the result of a task whose submit answer was lost (instead of submitting it again).
    Documented for async tasks ("checks active operations"); Runware's SDKs also send it for a task whose
    sync answer was lost (sdk-python base.py, after a conflictTaskUUID), so it is asked first."""

    taskType: str = field(default="getResponse", init=False)
    taskUUID: str


@dataclass(frozen=True, kw_only=True)
class GetTaskDetails(WireBody):
    """The original request and whole answer of any previously executed task, sync ones included
    (runware.ai/docs/platform/task-details: "recovering responses that your application didn't store")."""

    taskType: str = field(default="getTaskDetails", init=False)
    taskUUID: str


RunwareTask = Union[ImageInference, ImageUpload, GetResponse, GetTaskDetails]
