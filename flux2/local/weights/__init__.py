"""Weight files: headers, detection, loading per component, quantised formats (fp8, NVFP4, GGUF), LoRA files."""
