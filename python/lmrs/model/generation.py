"""Sampling from a :class:`~lmrs.model.GPT`: greedy, temperature, top-k, top-p, with a KV cache.

The prompt is run through the model in one pass that fills the KV cache; after that each
step feeds only the newest token. Every prompt row draws from its own seeded
``torch.Generator`` (row ``i`` of a batch uses ``seed + i``), so a prompt's continuation
does not depend on what else is in the batch, and ``generate(model, [p0, p1], seed=s)``
equals ``[generate(model, p0, seed=s), generate(model, p1, seed=s + 1)]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch

from lmrs.model.decode import Decoder, resolve_dtype, resolve_engine
from lmrs.model.gpt import GPT

PromptIds = Union[Sequence[int], Sequence[Sequence[int]]]


@dataclass(frozen=True)
class SamplingOptions:
    """How the next token is picked from the logits.

    temperature 0 is greedy (argmax); top_k None or 0 keeps every token; top_p None or 1.0
    keeps every token (otherwise the smallest set of most likely tokens whose probability
    reaches top_p).
    """

    temperature: float = 0.8
    top_k: Optional[int] = 50
    top_p: Optional[float] = None

    def validate(self) -> None:
        if math.isnan(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 0):
            raise ValueError(f"top_k must be >= 0 (0 or None = no limit), got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def nucleus(self) -> bool:
        """Whether top-p cuts anything (None and 1.0 keep every token)."""
        return self.top_p is not None and self.top_p < 1.0


def filter_logits(logits: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
    """Temperature-scaled logits (B, V) with tokens outside top-k / top-p set to -inf."""
    logits = logits.float() / options.temperature
    vocab = logits.shape[-1]
    if options.top_k and options.top_k < vocab:
        kth_largest = torch.topk(logits, options.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if options.nucleus:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # drop a token when the more likely ones before it already reach top_p;
        # the most likely token is always kept
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = mass_before >= options.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _pick_next(
    logits: torch.Tensor, options: SamplingOptions, uniforms: torch.Tensor
) -> torch.Tensor:
    """Next token per row (B,) from last-position logits (B, V) and one uniform per row (B,).

    On the CPU the rule runs in Rust (``lmrs._lmrs.sample_next``: one pass per row instead
    of a tensor operation per stage, which cost half a millisecond per step at batch 16);
    elsewhere :func:`_pick_next_torch`. Both pick the same tokens (tested).
    """
    if logits.device.type != "cpu":
        return _pick_next_torch(logits, options, uniforms)
    from lmrs import _lmrs

    picked = _lmrs.sample_next(
        logits.float().contiguous().numpy(),
        options.temperature,
        options.top_k or 0,
        options.top_p if options.nucleus else 1.0,
        uniforms.float().contiguous().numpy(),
    )
    return torch.from_numpy(picked)


def _pick_next_torch(
    logits: torch.Tensor, options: SamplingOptions, uniforms: torch.Tensor
) -> torch.Tensor:
    """:func:`_pick_next` in tensor operations, for any device.

    Draws from the same distribution as ``filter_logits(...).softmax()``, but vectorised:
    the inverse-CDF draw replaces one ``torch.multinomial`` call per row (those calls were
    a quarter of a batch-16 decoding step), and the softmax runs over the top-k candidates
    only. Rows stay independent: each row's uniforms come from that row's own generator.
    """
    if options.greedy:
        return logits.argmax(dim=-1)
    candidates: Optional[torch.Tensor] = None  # vocabulary ids of the columns, when cut
    # cut before scaling: dividing by a positive temperature keeps the order, and scaling
    # the top-k columns only is cheaper than scaling the whole vocabulary
    if options.top_k and options.top_k < logits.shape[-1]:
        logits, candidates = torch.topk(logits, options.top_k, dim=-1)  # sorted, descending
    if options.nucleus and candidates is None:
        logits, candidates = torch.sort(logits, dim=-1, descending=True)
    logits = logits.float() / options.temperature
    if options.nucleus:
        probs = logits.softmax(dim=-1)
        # same rule as filter_logits: drop a token once the likelier ones reach top_p
        logits = logits.masked_fill(probs.cumsum(dim=-1) - probs >= options.top_p, float("-inf"))
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)
    # first column whose cumulative probability exceeds u * total; zero-probability columns
    # repeat their predecessor's value, so right=True never lands on them
    target = uniforms.to(cdf.dtype)[:, None] * cdf[:, -1:]
    choice = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
    if candidates is not None:
        choice = candidates.gather(-1, choice)
    return choice.squeeze(-1)


def _as_prompts(prompt_ids: PromptIds) -> tuple[list[list[int]], bool]:
    """(list of prompts, whether a batch was given)."""
    if isinstance(prompt_ids, torch.Tensor):
        prompt_ids = prompt_ids.tolist()
    if not isinstance(prompt_ids, Sequence) or isinstance(prompt_ids, (str, bytes)):
        raise ValueError("prompt_ids must be a list of token ids or a list of such lists")
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty: give at least one token")
    if all(isinstance(p, Sequence) for p in prompt_ids):
        return [list(p) for p in prompt_ids], True  # type: ignore[arg-type]
    return [list(prompt_ids)], False  # type: ignore[arg-type]


def _check_request(
    model: GPT, prompts: list[list[int]], max_length: int, options: SamplingOptions
) -> None:
    options.validate()
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 0:
        raise ValueError(f"max_length must be a non-negative integer, got {max_length!r}")
    vocab, limit = model.config.vocab_size, model.config.max_seq_len
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {index} is empty: give at least one token")
        for token in prompt:
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab:
                raise ValueError(
                    f"prompt {index} has token {token!r} outside the vocabulary [0, {vocab})"
                )
    for prompt in prompts:
        if len(prompt) + max_length > limit:
            raise ValueError(
                f"prompt of {len(prompt)} tokens + max_length {max_length} = "
                f"{len(prompt) + max_length} exceeds the model's max_seq_len {limit}"
            )


def _sampling_dtype(
    model: GPT,
    device: Union[str, torch.device, None],
    dtype: Union[str, torch.dtype, None],
    engine: str = "auto",
) -> torch.dtype:
    """Move the model to ``device`` if given; the dtype its matrix products will sample in."""
    return resolve_dtype(
        dtype, _model_device(model, device), model.token_embedding.weight.dtype, engine
    )


def _model_device(model: GPT, device: Union[str, torch.device, None]) -> torch.device:
    """The device to run on; the model is moved there if it is elsewhere."""
    current = next(model.parameters()).device
    if device is None:
        return current
    target = torch.device(device)
    if target != current:
        model.to(target)
    return next(model.parameters()).device


def _new_tokens(
    model: GPT,
    prompts: list[list[int]],
    max_length: int,
    options: SamplingOptions,
    seeds: list[int],
    dtype: Union[str, torch.dtype, None],
    use_cache: bool,
    engine: str = "auto",
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (B,), ``max_length`` times. Prompts share a length.

    With the cache, the prompt runs in one pass and each later step feeds only the newest
    token; without it, every step reruns the whole sequence (the reference the cache is
    tested against).
    """
    device = model.token_embedding.weight.device
    # every row's random numbers for the whole run, drawn up front from its own generator
    uniforms = torch.stack(
        [torch.rand(max(max_length, 1), generator=torch.Generator().manual_seed(s)) for s in seeds]
    ).to(device)
    tokens = torch.tensor(prompts, dtype=torch.long, device=device)
    decoder = Decoder(model, len(prompts), tokens.shape[1] + max_length, dtype=dtype, engine=engine)
    step_input = tokens
    for step in range(max_length):
        if not use_cache:
            decoder.reset()
        with torch.inference_mode():
            next_token = _pick_next(decoder(step_input), options, uniforms[:, step])
            if use_cache:
                step_input = next_token[:, None]
            else:
                tokens = step_input = torch.cat([tokens, next_token[:, None]], dim=1)
        yield next_token


def _base_seed(seed: Optional[int]) -> int:
    # no seed: draw one from torch's global RNG, so torch.manual_seed still reproduces runs
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    return int(seed)


def generate(
    model: GPT,
    prompt_ids: PromptIds,
    max_length: int = 100,
    temperature: float = 0.8,
    top_k: Optional[int] = 50,
    top_p: Optional[float] = None,
    stop_tokens: Optional[Iterable[int]] = None,
    seed: Optional[int] = None,
    device: Union[str, torch.device, None] = None,
    use_cache: bool = True,
    dtype: Union[str, torch.dtype, None] = "auto",
    engine: str = "auto",
) -> Union[list[int], list[list[int]]]:
    """New token ids continuing ``prompt_ids`` (a list of ids, or a list of such lists).

    Returns a list of at most ``max_length`` new ids (a list of lists for a batch). A row
    stops at the first token in ``stop_tokens``, which is NOT included in its output.
    Prompts of different lengths are run as separate same-length groups (no padding), so
    every row gets what it would get alone (row ``i`` seeded with ``seed + i``), up to the
    rounding of the matrix products, which may differ with the batch size (a near-tie
    between two tokens can then break either way, more often in bfloat16).

    ``dtype`` is the precision of the matrix products while sampling: "auto" is bfloat16
    for a float32 model on hardware that computes it natively (CUDA, CPUs with AVX512-BF16
    or AMX), the model's own dtype elsewhere; "float32" gives the model's own numbers.
    ``engine`` picks the decoding implementation ("auto", "rust", "torch"; see
    :func:`lmrs.model.decode.resolve_engine`): "auto" runs bfloat16 on x86-64 CPUs (AVX2 or
    AVX512-BF16) in Rust, where a row's tokens do not depend on the rest of the batch at all.

    Raises ValueError for an empty prompt, ids outside the vocabulary, temperature < 0,
    top_k < 0, top_p outside (0, 1], or prompt + max_length over ``max_seq_len``.
    """
    prompts, is_batch = _as_prompts(prompt_ids)
    options = SamplingOptions(temperature, top_k, top_p)
    _check_request(model, prompts, max_length, options)
    stops = set(stop_tokens or ())
    base_seed = _base_seed(seed)
    sampling_dtype = _sampling_dtype(model, device, dtype, engine)
    resolve_engine(engine, model.token_embedding.weight.device, sampling_dtype)  # checked now

    outputs: list[list[int]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(index)
    for rows in by_length.values():
        finished = [False] * len(rows)
        steps = _new_tokens(
            model,
            [prompts[i] for i in rows],
            max_length,
            options,
            [base_seed + i for i in rows],
            sampling_dtype,
            use_cache,
            engine,
        )
        for next_tokens in steps:
            for slot, token in enumerate(next_tokens.tolist()):
                if finished[slot]:
                    continue
                if token in stops:
                    finished[slot] = True
                else:
                    outputs[rows[slot]].append(token)
            if all(finished):
                steps.close()  # type: ignore[attr-defined]
                break
    return outputs if is_batch else outputs[0]


def stream_generate(
    model: GPT,
    prompt_ids: Sequence[int],
    max_length: int = 100,
    temperature: float = 0.8,
    top_k: Optional[int] = 50,
    top_p: Optional[float] = None,
    stop_tokens: Optional[Iterable[int]] = None,
    seed: Optional[int] = None,
    device: Union[str, torch.device, None] = None,
    use_cache: bool = True,
    dtype: Union[str, torch.dtype, None] = "auto",
    engine: str = "auto",
) -> Iterator[int]:
    """Yield new token ids one at a time for ONE prompt; same options and ids as
    :func:`generate` (the stop token is not yielded). Arguments are checked at the call,
    before the first token is asked for.
    """
    prompts, is_batch = _as_prompts(prompt_ids)
    if is_batch:
        raise ValueError("stream_generate takes one prompt (a list of ids), not a batch")
    options = SamplingOptions(temperature, top_k, top_p)
    _check_request(model, prompts, max_length, options)
    stops = set(stop_tokens or ())
    seeds = [_base_seed(seed)]
    sampling_dtype = _sampling_dtype(model, device, dtype, engine)
    resolve_engine(engine, model.token_embedding.weight.device, sampling_dtype)  # checked now
    steps = _new_tokens(
        model, prompts, max_length, options, seeds, sampling_dtype, use_cache, engine
    )
    return _until_stop(steps, stops)


def _until_stop(steps: Iterator[torch.Tensor], stops: set[int]) -> Iterator[int]:
    try:
        for next_token in steps:
            token = int(next_token[0])
            if token in stops:
                return
            yield token
    finally:
        steps.close()  # type: ignore[attr-defined]  # restores the model's train/eval mode
