//! The CPU kernels of decoding: the crate's one CPU-feature detection ([`cpu`]) and the
//! bfloat16 matrix products it picks a kernel for ([`bf16`]).

pub mod bf16;
pub mod cpu;
