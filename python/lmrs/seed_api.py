"""The seed README's names, as thin aliases of lmrs's own calls.

lmrs started from a README whose API read ``BytePairEncoding.add_to_corpus(src, corpus,
extensions)``, ``BytePairEncoding.compress(corpus, 5000)`` → vocab,
``Tokenizer.from_vocab(vocab)``, ``Tokenizer.encode(tok, text, add_special_tokens=True)``
and ``Transformer.create_model / train / generate / evaluate``. These aliases keep that
code working; each does exactly what the lmrs call beside it does (docs/seed-api.md: "Coming from
the seed API"). ``Tokenizer.from_vocab`` and ``Tokenizer.encode(...,
add_special_tokens=True)`` are lmrs's own spelling already.

Nothing here imports torch until a ``Transformer`` method is called.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional

from lmrs.corpus.files import AddResult, add_to_corpus
from lmrs.tokenizer.core import Tokenizer

__all__ = ["BytePairEncoding", "Transformer", "compress"]


def compress(
    corpus: Any,
    vocab_size: int,
    *,
    min_frequency: int = 2,
    extensions: Optional[Sequence[str]] = None,
    show_progress: bool = False,
) -> list[tuple[int, int]]:
    """The merges of a BPE vocabulary of `vocab_size` tokens trained on `corpus` (what
    ``Tokenizer.from_vocab`` takes): ``Tokenizer.from_vocab(compress(c, n))`` is
    ``Tokenizer.train(c, n)`` (GPT-4 pattern, ``<|endoftext|>`` as the one special token).
    """
    tokenizer = Tokenizer.train(
        corpus,
        vocab_size,
        min_frequency=min_frequency,
        extensions=extensions,
        show_progress=show_progress,
    )
    return tokenizer.merges


class BytePairEncoding:
    """The seed's tokenizer-building namespace."""

    @staticmethod
    def add_to_corpus(
        src: str | os.PathLike[str],
        corpus: str | os.PathLike[str],
        extensions: Optional[Sequence[str]] = None,
        **options: Any,
    ) -> AddResult:
        """``lmrs.add_to_corpus(src, corpus, extensions)``."""
        return add_to_corpus(src, corpus, extensions, **options)

    @staticmethod
    def compress(corpus: Any, vocab_size: int, **options: Any) -> list[tuple[int, int]]:
        """``lmrs.compress(corpus, vocab_size)``: merges for ``Tokenizer.from_vocab``."""
        return compress(corpus, vocab_size, **options)


class Transformer:
    """The seed's model namespace: ``lmrs.create_model``, ``lmrs.train``,
    ``lmrs.generate`` and ``lmrs.evaluate`` under their seed names."""

    @staticmethod
    def create_model(*args: Any, **kwargs: Any) -> Any:
        """``lmrs.create_model(vocab_size, max_seq_len, embed_dim, ...)``."""
        from lmrs.model.gpt import create_model

        return create_model(*args, **kwargs)

    @staticmethod
    def train(*args: Any, **kwargs: Any) -> Any:
        """``lmrs.train(model, data, config, ...)``."""
        from lmrs.training.trainer import train

        return train(*args, **kwargs)

    @staticmethod
    def generate(*args: Any, **kwargs: Any) -> Any:
        """``lmrs.generate(model, prompt_ids, max_length, ...)``."""
        from lmrs.model.generation import generate

        return generate(*args, **kwargs)

    @staticmethod
    def evaluate(*args: Any, **kwargs: Any) -> Any:
        """``lmrs.evaluate(model, data, ...)``."""
        from lmrs.training.evaluation import evaluate

        return evaluate(*args, **kwargs)
