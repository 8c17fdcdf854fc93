"""The pack's node classes by name: filled by nodes/__init__.py, read at run time by the budget check.

A leaf module, so the generation nodes can price their whole graph with every node class without
importing the package that imports them (no import circle).
"""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
