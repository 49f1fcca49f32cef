//! Hardware models, each a trait with implementations chosen by name in the device TOML.
//!
//! - [`flash`]: the flash device trait and its registry; [`flash_parametric`] (T0 + S/B on
//!   resource timelines) and [`flash_measured`] (an interpolated table of measured throughput).
//! - [`dram`]: capacity (allocations tracked against the budget, peak reported) and the memory
//!   bus the compute units share.
//! - [`compute`]: named compute units (CPU, GPU, NPU) with a roofline cost per op.

pub mod compute;
pub mod dram;
pub mod flash;
pub mod flash_measured;
pub mod flash_parametric;
