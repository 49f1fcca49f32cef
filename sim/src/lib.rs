//! flashsim: what executes and measures.
//!
//! - [`time`]: simulated time in integer picoseconds, checked arithmetic.
//! - [`engine`]: the discrete-event loop (events ordered by time, kind, sequence number).
//! - [`hw`]: flash, DRAM and compute-unit models.
//! - [`device`]: device files (`configs/devices/`).
//! - [`experiment`]: experiment files and their expansion into points.
//! - [`executor`]: runs a policy's plans as a pipeline on the engine.
//! - [`runner`]: loads, checks and simulates each point; per-point [`runner::Metrics`].
//! - [`output`]: results CSV and the printed table.
//! - [`paths`]: finding device and model files by name.
//! - [`commands`]: the model and trace subcommands (`generate`, `trace …`).

pub mod commands;
pub mod device;
pub mod engine;
pub mod error;
pub mod executor;
pub mod experiment;
pub mod hw;
pub mod output;
pub mod paths;
pub mod runner;
pub mod time;

pub use error::SimError;
pub use time::Ps;
