"""Whole runs out to other tools: ``export`` (a run or model to a transformers folder or a
GGUF file) and ``gguf_export``."""
