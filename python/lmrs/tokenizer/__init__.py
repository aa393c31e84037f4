"""The BPE tokenizer: ``core`` (:class:`Tokenizer`, a thin class over the Rust engine) and
``importing`` (tiktoken ranks files and Hugging Face tokenizer.json read into it)."""

from lmrs.tokenizer.core import Tokenizer, TokenizerError, TrainStats

__all__ = ["Tokenizer", "TokenizerError", "TrainStats"]
