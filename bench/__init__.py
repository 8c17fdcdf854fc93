"""Benchmarks (`comfyui-flux2 benchmark remote|local`): measured against a peer in the same run."""
