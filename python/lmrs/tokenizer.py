"""Tokenizer: a thin Python class over the Rust BPE engine (placeholder)."""


class TokenizerError(ValueError):
    """A tokenizer file or argument is wrong; the message names the file and the problem."""


class Tokenizer:
    pass
