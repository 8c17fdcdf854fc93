"""The request checks of the Runware loopback server: its model table and the documented parameter limits,
each failure a `TaskError` carrying Runware's error object (code, message, parameter, taskType, taskUUID)."""
from __future__ import annotations

import math
import re

# AIR -> (min side, max side, max refs, (first MP, extra MP, reference MP) or None)
MODELS = {
    "bfl:5@1": (256, 2048, 8, (0.03, 0.015, 0.015)),
    "bfl:6@1": (256, 2048, 8, (0.06, 0.06, 0.06)),
    "bfl:7@1": (256, 2048, 8, (0.07, 0.03, 0.03)),
    "runware:400@1": (512, 2048, 4, None),
    "runware:400@2": (128, 2048, 4, None),
    "runware:400@3": (128, 2048, 4, None),
    "runware:400@4": (128, 2048, 4, None),
    "runware:400@5": (128, 2048, 4, None),
}
# Models whose parameters list `lora` (Runware/runware-python runware/types/task_map.py: the runware:400@* FLUX.2
# models; bfl:5/6/7@1 have none). Items as documented at runware.ai/docs/learn/loras: {"model": AIR, "weight": n}.
LORA_MODELS = {"runware:400@1", "runware:400@2", "runware:400@3", "runware:400@4", "runware:400@5"}
AIR = re.compile(r"^[A-Za-z0-9_-]+:[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.I)


def _err(code: str, message: str, task: dict | None = None, parameter: str | None = None, **extra) -> dict:
    e = {"code": code, "message": message}
    if parameter:
        e["parameter"] = parameter
    if task:
        e["taskType"] = task.get("taskType")
        e["taskUUID"] = task.get("taskUUID")
    e.update(extra)
    return e


def _mp(w: int, h: int) -> int:
    return max(1, math.ceil(w * h / (1024 * 1024) - 1e-9))


class TaskError(Exception):
    def __init__(self, error: dict):
        super().__init__(error.get("message"))
        self.error = error


def check_loras(task, model: str) -> list[tuple[str, float]]:
    """The documented `lora` list: only on models that take LoRAs; each item an AIR id and a numeric weight.
    The error codes are this server's (Runware's own for these cases are not documented)."""
    loras = task.get("lora")
    if loras is None:
        return []
    if model not in LORA_MODELS:
        raise TaskError(_err("unsupportedParameter", f"Model {model} does not support the lora parameter", task,
                             "lora"))
    if not isinstance(loras, list) or not loras:
        raise TaskError(_err("invalidLora", "lora must be a non-empty array of {model, weight} objects", task,
                             "lora"))
    out = []
    for i, item in enumerate(loras):
        if not isinstance(item, dict) or set(item) - {"model", "weight"}:
            raise TaskError(_err("invalidLora", "each lora item is an object with model and weight", task,
                                 f"lora[{i}]"))
        air, weight = item.get("model"), item.get("weight", 1)
        if not isinstance(air, str) or not AIR.match(air):
            raise TaskError(_err("invalidLoraModel", "lora model must be an AIR identifier", task,
                                 f"lora[{i}].model"))
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise TaskError(_err("invalidLoraWeight", "lora weight must be a number", task, f"lora[{i}].weight"))
        out.append((air, float(weight)))
    return out


def check_inference(task: dict, model: str) -> tuple[int, int, int, int, str, str, list[tuple[str, float]]]:
    """A FLUX.2 imageInference task's parameters, checked in the order Runware reports them ->
    (width, height, seed, numberResults, outputFormat, outputType, LoRAs)."""
    lo, hi = MODELS[model][:2]
    prompt = task.get("positivePrompt")
    if not isinstance(prompt, str) or not 1 <= len(prompt) <= 32000:
        raise TaskError(_err("invalidPositivePrompt", "positivePrompt must be 1-32000 characters", task, "positivePrompt"))
    for side in ("width", "height"):
        v = task.get(side)
        if not isinstance(v, int) or v % 16 or not lo <= v <= hi:
            raise TaskError(_err(f"invalid{side.capitalize()}", f"{side} must be a multiple of 16 in {lo}-{hi}",
                                 task, side))
    w, h = task["width"], task["height"]
    if w * h > 2048 * 2048:
        raise TaskError(_err("invalidDimensions", "width x height must be at most 4194304 pixels", task, "width"))
    seed = task.get("seed", 42)
    if not isinstance(seed, int) or not 0 <= seed <= 4294967295:
        raise TaskError(_err("invalidSeed", "seed must be an integer in 0-4294967295", task, "seed"))
    n = task.get("numberResults", 1)
    if not isinstance(n, int) or not 1 <= n <= 20:
        raise TaskError(_err("invalidNumberResults", "numberResults must be 1-20", task, "numberResults"))
    fmt = task.get("outputFormat", "JPG")
    if fmt not in ("JPG", "JPEG", "PNG", "WEBP"):
        raise TaskError(_err("invalidOutputFormat", "outputFormat must be JPG, PNG or WEBP", task, "outputFormat"))
    out_type = task.get("outputType", "URL")
    if out_type not in ("URL", "base64Data", "dataURI"):
        raise TaskError(_err("invalidOutputType", "outputType must be URL, base64Data or dataURI", task, "outputType"))
    _check_provider_settings(task, model)
    return w, h, seed, n, fmt, out_type, check_loras(task, model)


def _check_provider_settings(task: dict, model: str) -> None:
    settings = task.get("providerSettings")
    if settings is None:
        return
    bfl = settings.get("bfl") if isinstance(settings, dict) else None
    if not model.startswith("bfl:") or not isinstance(bfl, dict):
        raise TaskError(_err("invalidProviderSettings", "providerSettings.bfl is only for bfl: models", task,
                             "providerSettings"))
    tol = bfl.get("safetyTolerance", 2)
    if not isinstance(tol, int) or not 0 <= tol <= 5:
        raise TaskError(_err("invalidSafetyTolerance", "safetyTolerance must be 0-5", task,
                             "providerSettings.bfl.safetyTolerance"))
