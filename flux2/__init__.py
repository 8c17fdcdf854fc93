"""comfyui-flux2 engine: FLUX.2 generation on remote providers and local weights.

Never imports ComfyUI (a test enforces it), so it runs in the CLI, in tests and in any Python program.
"""
