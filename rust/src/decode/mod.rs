//! Decoding on the CPU: a GPT's forward step with a key/value cache ([`model`]), the next
//! token from its logits ([`sample`]), and the per-CPU kernels they run ([`kernels`]).

pub mod kernels;
pub mod model;
pub mod sample;
