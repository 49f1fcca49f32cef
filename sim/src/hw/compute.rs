//! Compute units (CPU, GPU, NPU as named units) with a roofline cost per op:
//! `time = dispatch overhead + max(FLOPs / (peak · efficiency), bytes / (bandwidth · efficiency))`.
//! Decode at batch 1 is matrix-vector work, so the bytes term usually wins.

use crate::error::SimError;
use crate::time::{transfer_time, Ps};
use serde::Deserialize;

/// `[compute.NAME]` of a device file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeConfig {
    /// Peak arithmetic rate, GFLOP/s.
    pub peak_gflops: f64,
    /// Share of the peak that matrix-vector kernels achieve.
    #[serde(default = "one")]
    pub flops_efficiency: f64,
    /// Memory bandwidth this unit's kernels can draw, GB/s.
    pub mem_bandwidth_gb_per_s: f64,
    /// Share of that bandwidth the kernels achieve.
    #[serde(default = "one")]
    pub mem_efficiency: f64,
    /// Fixed cost of launching one op, µs.
    #[serde(default)]
    pub dispatch_overhead_us: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone)]
pub struct ComputeUnit {
    pub name: String,
    flops_per_s: u64,
    bytes_per_s: u64,
    overhead: Ps,
    free: Ps,
}

impl ComputeUnit {
    pub fn new(name: &str, flops_per_s: u64, bytes_per_s: u64, overhead: Ps) -> Self {
        assert!(flops_per_s > 0 && bytes_per_s > 0);
        ComputeUnit {
            name: name.to_string(),
            flops_per_s,
            bytes_per_s,
            overhead,
            free: Ps::ZERO,
        }
    }

    /// The unit's own time for an op, ignoring contention for the DRAM bus.
    pub fn op_time(&self, flops: u64, bytes: u64) -> Result<Ps, SimError> {
        let arith = transfer_time(flops, self.flops_per_s)?;
        let memory = transfer_time(bytes, self.bytes_per_s)?;
        self.overhead.checked_add(arith.max(memory))
    }

    /// When the unit is next free.
    pub fn free_at(&self) -> Ps {
        self.free
    }

    /// Books the unit from `start` to `done`.
    pub fn occupy(&mut self, done: Ps) {
        self.free = self.free.max(done);
    }

    pub fn reset(&mut self) {
        self.free = Ps::ZERO;
    }
}
