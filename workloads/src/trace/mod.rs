//! Activation traces: per token and layer, `x_attn`, `x_o`, `x_mlp` and `h` (f16), in
//! safetensors so that a notebook opens them with `safetensors` and `numpy`.
//!
//! - [`format`](mod@format): the file layout, a streaming writer and a memory-mapped reader.
//! - [`record`]: running the reference model over prompts into a trace.
//! - [`stats`]: the per-layer statistics policies depend on.
//! - [`synth`]: seeded synthetic traces for any model shape, and fitting them to a real trace.

pub mod format;
pub mod record;
pub mod stats;
pub mod synth;

pub use format::{Act, Trace, TraceWriter};
