"""Model files: safetensors headers, detection, loading per component, quantized formats, LoRA files, models folder.

Builds model/ classes from files; never imports the runtime (backend, pipeline, memory, offload).
"""
