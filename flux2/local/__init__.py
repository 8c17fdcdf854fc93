"""Local weights: model/ (network code), weights/ (files), and the runtime here (backend, memory plan, offload,
caches, pipeline)."""
