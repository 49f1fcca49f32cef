//! flashsim: what executes and measures.
//!
//! - [`time`]: simulated time in integer picoseconds, checked arithmetic.
//! - [`engine`]: the discrete-event loop (events ordered by time, kind, sequence number).
//! - [`hw`]: flash, DRAM and compute-unit models.
//! - [`device`]: device files (`configs/devices/`).
//! - [`experiment`]: experiment files and their expansion into points.
//! - [`executor`]: runs a policy's plans as a pipeline on the engine.
//! - [`runner`]: loads, checks and simulates each point; per-point [`runner::Metrics`].
//! - [`output`]: results CSV and Parquet, and the printed table.
//! - [`sweep`]: parallel, resumable, shardable runs of an experiment; merge; manifest.
//! - [`pareto`]: Pareto fronts of results, and `check` against a committed baseline.
//! - [`plots`]: SVG and PNG figures.
//! - [`paths`]: finding device and model files by name.
//! - [`kernels`]: the real backend's kernels alone on each point's own ops (`flashsim kernels`).
//! - [`commands`]: the model and trace subcommands (`generate`, `trace …`).

pub mod calibrate;
pub mod commands;
pub mod device;
pub mod engine;
pub mod error;
pub mod executor;
pub mod experiment;
pub mod hw;
pub mod kernels;
pub mod output;
pub mod pareto;
pub mod paths;
pub mod plots;
pub mod real;
pub mod replay;
pub mod runner;
pub mod sweep;
pub mod time;
pub mod validate;

pub use error::SimError;
pub use time::Ps;
