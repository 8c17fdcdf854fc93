"""Model files: safetensors and GGUF headers, detection, loading per component, quantized formats (fp8, NVFP4,
GGUF), LoRA files, models folder.

Builds model/ classes from files; never imports the runtime (backend, pipeline, memory, offload).
"""
