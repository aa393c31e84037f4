"""Corpora as they come: folders of text files (``files``) and record files (``records``:
JSON Lines, JSON arrays, CSV, Parquet, ``datasets`` folders; ``arrow_rows`` reads their
Arrow columns). The lowest layer above the shared utilities: it knows no tokenizer."""

from lmrs.corpus.files import AddResult, add_to_corpus, iter_source_files

__all__ = ["AddResult", "add_to_corpus", "iter_source_files"]
