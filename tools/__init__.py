"""Developer tools: the crash/fault harness (``tools/chaos.py``) and its process helpers."""
