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
    /// How many times longer an op takes (beyond its dispatch overhead) when flash reads are
    /// in flight as it starts: the reader threads and the disk's interrupts share the CPU with
    /// the kernels. Default 1 (no slowdown: a unit that is not the CPU serving the reads);
    /// `flashsim calibrate` measures it for the CPU.
    #[serde(default = "one")]
    pub beside_reads_slowdown: f64,
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
    /// The rates while reads are in flight (see [`ComputeConfig::beside_reads_slowdown`]).
    beside_flops_per_s: u64,
    beside_bytes_per_s: u64,
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
            beside_flops_per_s: flops_per_s,
            beside_bytes_per_s: bytes_per_s,
            free: Ps::ZERO,
        }
    }

    /// The same unit, `slowdown` (at least 1) times slower while reads are in flight.
    pub fn with_beside_reads_slowdown(mut self, slowdown: f64) -> Self {
        assert!(slowdown >= 1.0 && slowdown.is_finite());
        let slow = |r: u64| ((r as f64 / slowdown).round() as u64).max(1);
        self.beside_flops_per_s = slow(self.flops_per_s);
        self.beside_bytes_per_s = slow(self.bytes_per_s);
        self
    }

    /// The unit's own time for an op, ignoring contention for the DRAM bus; `reads_beside`:
    /// flash reads are in flight as it starts.
    pub fn op_time(&self, flops: u64, bytes: u64, reads_beside: bool) -> Result<Ps, SimError> {
        let (f, b) = if reads_beside {
            (self.beside_flops_per_s, self.beside_bytes_per_s)
        } else {
            (self.flops_per_s, self.bytes_per_s)
        };
        let arith = transfer_time(flops, f)?;
        let memory = transfer_time(bytes, b)?;
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
