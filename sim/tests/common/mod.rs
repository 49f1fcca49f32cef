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

/// A good device file (parametric flash, DRAM, one compute unit), as if at
/// `configs/devices/d.toml`: tests edit it into bad ones, or take its `[dram]` and `[compute]`
/// tail for a device with another flash model.
pub const DEVICE: &str = r#"name = "d"

[flash]
model = "parametric"
read_latency_us = 50.0
request_bandwidth_gb_per_s = 2.0
max_bandwidth_gb_per_s = 3.0
parallel_units = 8

[dram]
capacity_gib = 8
bandwidth_gb_per_s = 50

[compute.cpu]
peak_gflops = 100
mem_bandwidth_gb_per_s = 30
"#;

/// [`DEVICE`] with a measured flash model instead: 16 KiB and 1 MiB reads at random offsets
/// at QD 1 and 8 (0.1 / 0.4 and 1 / 2 GB/s), near figures for 16 KiB reads 0-64 KiB apart
/// (0.12 / 0.5 GB/s), then the `[flash]` lines `extra` (each ending in a newline).
pub fn measured_near_device(extra: &str) -> String {
    format!(
        r#"name = "m"

[flash]
model = "measured"
chunk_kib = [16.0, 1024.0]
queue_depths = [1, 8]
throughput_gb_per_s = [[0.1, 0.4], [1.0, 2.0]]
near_gap_kib = 64.0
near_chunk_kib = [16.0]
near_queue_depths = [1, 8]
near_gb_per_s = [[0.12, 0.5]]
{extra}{}"#,
        &DEVICE[DEVICE.find("\n[dram]").unwrap()..]
    )
}
