//! Helpers shared by the integration tests.
#![allow(dead_code)]

use flashsim::experiment::Experiment;
use flashsim::runner::{run_experiment, PointResult};
use flashsim_workloads::TomlSource;
use std::path::PathBuf;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The repository's `configs/` folder.
pub fn configs() -> PathBuf {
    repo().join("configs")
}

/// An experiment parsed from `text`, as if it were `configs/experiments/<file>`.
pub fn experiment(file: &str, text: &str) -> Result<Experiment, flashsim_workloads::ConfigError> {
    let path = configs().join("experiments").join(file);
    Experiment::from_source(TomlSource::from_text(path, text)?)
}

/// Runs an experiment written inline.
pub fn run(text: &str) -> Vec<PointResult> {
    let exp = experiment("inline-test.toml", text).expect("experiment parses");
    run_experiment(&exp, |_| {}).expect("experiment runs")
}

/// Prints a Ramulator-style comparison line and returns the relative deviation.
pub fn report(what: &str, expected: f64, measured: f64) -> f64 {
    let dev = (measured - expected) / expected;
    println!(
        "{what}: expected {expected:.6}, measured {measured:.6}, deviation {:+.3}%",
        dev * 100.0
    );
    dev
}
