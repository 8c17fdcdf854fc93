"""Loopback servers that speak the providers' documented protocols, for tests, demos and benchmarks.

They listen on 127.0.0.1 only, keep everything in memory, and render a deterministic picture from
the request (prompt, seed, size, references) so a run shows a real image without any provider.
"""
