"""add_to_corpus (placeholder)."""


def add_to_corpus(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise NotImplementedError
