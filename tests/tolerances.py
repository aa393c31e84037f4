"""Tolerances shared by tests that compare float32 results computed in different ways.

Each is justified by the arithmetic, not tuned on one CPU: the suite runs on AVX2-only,
AVX-512 and AVX512-BF16 hosts (and with LMRS_CPU=portable), whose kernels and reductions
round differently.
"""

# Loss curves of N processes (or N micro-batches) against one process: the ranks' gradients
# are summed in another order than one process sums them, so each step's update differs in
# its last float32 bits (relative 1e-7), and training amplifies that over the steps. Observed:
# up to 6.4e-5 on losses of 3-5 (1.6e-5 relative) on an AVX512-BF16 host over 6 steps. A
# wrong curve (other batches, a skipped or repeated step, another learning rate) differs by
# 1e-2 or more, so 2e-4 relative still fails it by two orders of magnitude.
CURVE_RTOL = 2e-4
