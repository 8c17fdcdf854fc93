"""What every provider shares: the HTTP transport (deadlines, retries), the network guard, key handling.

The scrubber stays in flux2/redaction.py, below errors.py (every error message passes it). Kept free of
imports: loading the pack must not bring httpx.
"""
