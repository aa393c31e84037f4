"""Training configuration and the option lists, with no PyTorch import.

The CLI builds its options (choices and defaults) from these, so ``lmrs train --help`` and
``TrainConfig`` cannot drift apart, and ``lmrs --help`` starts without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

OPTIMIZERS = ("adamw", "adam", "sgd", "muon")
DECAYS = ("cosine", "linear")  # learning-rate decay shapes (lmrs.training.trainer.learning_rate_at)
TRAIN_DTYPES = ("auto", "float32", "bfloat16")  # training precision (autocast)
STRATEGIES = ("ddp", "fsdp")  # data parallelism under torchrun
CHECKPOINT_FORMATS = ("full", "sharded")  # TrainConfig.checkpoint_format
LOG_SINKS = (
    "tensorboard",
    "wandb",
)  # metric sinks besides metrics.jsonl (lmrs.training.metrics_sinks)
POSITIONS = ("learned", "rope")  # ModelConfig.position
NORMS = ("layernorm", "rmsnorm")  # ModelConfig.norm
MLPS = ("gelu", "relu2", "swiglu")  # ModelConfig.mlp
ENGINES = ("auto", "torch", "rust")  # decoding implementations
MAX_VAL_FRACTION = 0.1  # the most TrainConfig.val_fraction=None holds out for validation
SAMPLING_DTYPES = ("auto", "float32", "bfloat16", "float16")
PRESETS: dict[str, dict[str, Any]] = {
    "small": {"embed_dim": 128, "num_heads": 4, "num_layers": 2, "ff_dim": 512},
    "full": {"embed_dim": 256, "num_heads": 8, "num_layers": 6, "ff_dim": 1024},
}
# named sets of ModelConfig options, each combinable with every size preset. "gpt2" is the
# ModelConfig defaults (GPT-2's shape, kept for compatibility and export); "modern" is the
# recipe of the small-model speed runs (nanochat, modded-nanogpt), to be tuned by measurement
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "gpt2": {
        "position": "learned",
        "norm": "layernorm",
        "norm_scale": True,
        "qk_norm": False,
        "mlp": "gelu",
        "bias": True,
        "tie_weights": True,
        "logit_softcap": None,
        "zero_init_proj": False,
        "dropout_rate": 0.1,
    },
    "modern": {
        "position": "rope",
        "norm": "rmsnorm",
        # a learned gain and SwiGLU measured best at 10 minutes (bench_recipe.py --try), and
        # with them (and no soft-cap) the recipe is exactly Qwen3's: it exports
        "norm_scale": True,
        "qk_norm": True,
        "mlp": "swiglu",
        "bias": False,
        "tie_weights": False,
        # no soft-cap: at 10 minutes it cost 14% of the small model's steps for nothing
        # (bench_recipe.py: 2.019 bits/byte with a cap of 15, 1.998 without)
        "logit_softcap": None,
        "zero_init_proj": True,
        # budgeted runs underfit, they do not overfit (bench_recipe.py's dropout row)
        "dropout_rate": 0.0,
    },
}
# what `lmrs train` and `lmrs quickstart` build unless told otherwise (bench_recipe.py)
DEFAULT_ARCH = "modern"
# sizing to a budget (lmrs.training.sizing): tokens per non-embedding parameter aimed at; measured
# best on CPU budgets (see lmrs.training.sizing), where Chinchilla's large-scale figure is 20
TOKENS_PER_PARAM = 5.0


@dataclass
class TrainConfig:
    """Everything that shapes a training run (saved as the checkpoint's train_config.json)."""

    batch_size: int = 32  # global batch, in sequences per optimizer step (all processes)
    seq_len: int = 128
    # length of the run: the first of these that is set decides the schedule; max_steps and
    # time_budget_s both stop the run (whichever comes first); none set → 1 epoch
    max_steps: Optional[int] = None
    epochs: Optional[float] = None
    time_budget_s: Optional[float] = None
    stop_at_step: Optional[int] = None  # end this session early; the schedule is unchanged
    # Muon's and AdamW's groups share it (Muon's steps are scaled to AdamW's RMS,
    # lmrs.training.optim);
    # measured best for 4-10 minute CPU budgets by benchmarks/bench_model.py --quality
    learning_rate: float = 4e-3
    # the decay ends at learning_rate * min_lr_ratio; to zero measured 0.013 bits per byte
    # better than to 10% in 10 minutes at the same steps (docs/recipe.md, bench_recipe.py)
    min_lr_ratio: float = 0.0
    warmup_steps: int = 50
    # the decay takes the last cooldown_frac of the run after warmup, the peak holding
    # before it (1.0: decay all the way). Warmup-stable-decay (modded-nanogpt's trapezoid),
    # linear over the last 40%, measured 0.012 bits per byte better than cosine over the
    # whole run in two 10-minute pairs at equal steps (docs/recipe.md)
    decay: str = "linear"  # shape of the decay: cosine or linear
    cooldown_frac: float = 0.4
    # peak rate of Muon's hidden matrices (None: learning_rate); the AdamW groups
    # (embeddings, head, biases, norms) take learning_rate. Both follow one schedule.
    muon_lr: Optional[float] = None
    # peak rates of the token embeddings and of an untied output head under Muon (None:
    # learning_rate); same schedule
    embed_lr: Optional[float] = None
    head_lr: Optional[float] = None
    weight_decay: float = 0.1  # AdamW / SGD, only on parameters with >= 2 dimensions
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    muon_momentum: float = 0.95  # muon only (its hidden matrices; the rest runs AdamW)
    # Muon's momentum rises linearly from muon_momentum_start to muon_momentum over the
    # first muon_momentum_warmup steps (modded-nanogpt, nanochat); 0: constant
    muon_momentum_warmup: int = 0
    muon_momentum_start: float = 0.85
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    grad_accum_steps: int = 1
    # muon: Muon on the hidden matrices, AdamW on the rest (lmrs.training.optim); the measured best
    optimizer: str = "muon"
    eval_every: int = 200  # steps between evaluations (0: only at the end)
    eval_batches: int = 20
    # sequences per evaluation batch, all processes together (each takes its share); default
    # batch_size // grad_accum_steps, so each process evaluates its training micro-batch
    eval_batch_size: Optional[int] = None
    log_every: int = 10
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end)
    # checkpoints kept in out_dir, the newest included (older ones as checkpoint-STEP)
    keep_checkpoints: int = 1
    # "full": rank 0 writes model.safetensors + optimizer.pt; "sharded": every rank writes
    # its part with torch.distributed.checkpoint (lmrs.checkpoint.sharded), consolidated on
    # the last save
    checkpoint_format: str = "full"
    out_dir: Optional[str] = None
    device: str = "auto"  # auto: CUDA → MPS → CPU
    dtype: str = "auto"  # auto: bf16 autocast where the device has native bf16, else float32
    compile: bool = False
    seed: int = 0
    # share of a whole TokenDataset held out by document for validation; None: the tokens
    # validation reads (eval_batches windows of eval_batch_size x seq_len), at most
    # MAX_VAL_FRACTION, so a large corpus is not held out for windows nobody evaluates
    val_fraction: Optional[float] = None
    strategy: str = "ddp"  # "ddp" or "fsdp" when launched with several processes
    dist_timeout_s: float = 300.0
    show_progress: bool = True
    log_to: tuple[str, ...] = ()  # extra metric sinks, from LOG_SINKS
    # one CPU process: the intra-op thread count follows the cores actually free, measured
    # as it trains (lmrs.training.cpu_threads); False keeps torch's count
    adapt_threads: bool = True

    def validate(self) -> None:
        positive = {
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "grad_accum_steps": self.grad_accum_steps,
            "eval_batches": self.eval_batches,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(
                f"checkpoint_format must be one of {CHECKPOINT_FORMATS}, "
                f"got {self.checkpoint_format!r}"
            )
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s}")
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {self.decay!r}")
        if not 0.0 < self.cooldown_frac <= 1.0:
            raise ValueError(f"cooldown_frac must be in (0, 1], got {self.cooldown_frac}")
        for name in ("muon_lr", "embed_lr", "head_lr"):
            rate = getattr(self, name)
            if rate is not None and not 0 < rate < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {rate}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("warmup_steps, weight_decay and grad_clip must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("muon_momentum", "muon_momentum_start"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.muon_momentum_warmup < 0:
            raise ValueError(f"muon_momentum_warmup must be >= 0, got {self.muon_momentum_warmup}")
        if self.dtype not in TRAIN_DTYPES:
            raise ValueError(f"dtype must be one of {TRAIN_DTYPES}, got {self.dtype!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")
        if self.val_fraction is not None and not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if any(name not in LOG_SINKS for name in self.log_to):
            raise ValueError(f"log_to must name sinks from {LOG_SINKS}, got {self.log_to}")

    def eval_rows(self) -> int:
        """Sequences per evaluation batch, all processes together."""
        return self.eval_batch_size or max(1, self.batch_size // self.grad_accum_steps)

    def validation_fraction(self, num_tokens: int) -> float:
        """The share of ``num_tokens`` to hold out: ``val_fraction``, or by default the
        tokens the evaluation windows read (at least one window), at most
        :data:`MAX_VAL_FRACTION`."""
        if self.val_fraction is not None:
            return self.val_fraction
        reads = self.eval_batches * self.eval_rows() * self.seq_len + 1
        return min(MAX_VAL_FRACTION, reads / max(num_tokens, 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


TRAIN_DEFAULTS = TrainConfig()
