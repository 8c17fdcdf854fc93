"""The batch runner: one workflow over every row of a table (`comfyui-flux2 batch`, and `Batch` in Python).

table -> items -> manifest (what an earlier run left) -> scheduler -> executors (in-process, Ray) -> sheet.
"""
from .batch import Batch

__all__ = ["Batch"]
