"""Small deterministic multi-language text for the tokenizer tests (no shared data)."""

from __future__ import annotations

import random

WORDS = (
    "the quick brown fox jumps over lazy dog and then runs back home again while "
    "rain falls softly on old roofs"
).split()
OTHER = [
    "café",
    "naïve",
    "Übermäßig",
    "straße",
    "日本語",
    "中文字符",
    "Ελληνικά",
    "русский",
    "🙂",
    "🚀🚀",
    "مرحبا",
    "हिन्दी",
    "don't",
    "WE'LL",
    "it's",
    "you've",
]
CODE = [
    "def f(x):\n    return x * 2\n",
    "for i in range(10):\n\tprint(i, end='')\n",
    "if (a && b) { c += 1; }\r\n",
    "x = [1, 2, 3]  # comment\n\n\n",
    "    \n  \t  value = 12345678 + 0.5e-3\n",
]


def make_texts(n: int = 60, seed: int = 0) -> list[str]:
    """`n` documents mixing English, other scripts, numbers, code and odd whitespace."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(5, 40)):
            kind = rng.random()
            if kind < 0.6:
                parts.append(rng.choice(WORDS))
            elif kind < 0.75:
                parts.append(rng.choice(OTHER))
            elif kind < 0.85:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 7))))
            elif kind < 0.95:
                parts.append(rng.choice(CODE))
            else:
                parts.append(rng.choice(["  ", "\n", "\t", " \n ", "!!", "...", "?"]))
        texts.append(" ".join(parts) + rng.choice(["", "\n", "  ", "\n\n"]))
    return texts


def write_corpus(root, texts: list[str], suffix: str = ".txt") -> list:
    """One file per text under `root` (two levels, sorted names); returns the paths."""
    paths = []
    for i, text in enumerate(texts):
        path = root / f"d{i % 3}" / f"doc{i:03d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))  # keep \r\n as written
        paths.append(path)
    return sorted(paths)
