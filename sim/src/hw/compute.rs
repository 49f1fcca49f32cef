//! Compute units (CPU, GPU, NPU as named units) with a roofline cost per op:
//! `time = dispatch overhead + max(FLOPs / (peak · efficiency), memory)` where
//! `memory = bytes / (bandwidth · efficiency) + pieces · piece overhead + ramp`, `pieces`
//! counting the separate runs of DRAM the op's weights lie in and `ramp` what the first
//! `piece_ramp_kib` of each run costs beyond the memory rate (streamed at `piece_ramp_gb_per_s`
//! instead: `ramp = min(bytes, pieces · R) · (1 / ramp rate − 1 / memory rate)`). Decode at
//! batch 1 is matrix-vector work, so the memory term usually wins.

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
    /// Time each separate run of weights costs an op beyond its bytes, ns: a kernel gathering
    /// rows or columns restarts its memory stream (the hardware prefetcher's ramp, a TLB walk)
    /// at every run. Default 0 (every op streams at the contiguous rate: the presets' papers
    /// give no such figure); `flashsim calibrate` measures it from ops over 8 and 51 KiB
    /// pieces. On this project's VM it ranged from ~0.15 µs (AMD EPYC host) to ~1.3 µs (Intel
    /// Xeon host) per piece.
    #[serde(default)]
    pub piece_overhead_ns: f64,
    /// The first `piece_ramp_kib` of every run of an op's weights streams at
    /// `piece_ramp_gb_per_s` rather than at the memory rate: the hardware prefetcher ramps up
    /// again at each run, so short runs are slow and long ones pay once. Default 0 (none: the
    /// presets' papers give no such figure); `flashsim calibrate` fits both from ops over 8, 22,
    /// 51 and 256 KiB pieces (on this project's VM, Intel Xeon host: ~60 KiB at ~12.4 GB/s
    /// against 17.3 GB/s contiguous with the backend's earlier kernel, 184 KiB at 15.6 against
    /// 19.1 with its current one). A ramp rate at or above the memory rate costs nothing.
    #[serde(default)]
    pub piece_ramp_kib: f64,
    #[serde(default)]
    pub piece_ramp_gb_per_s: f64,
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
    /// Each run of an op's weights (see [`ComputeConfig::piece_overhead_ns`]), alone and
    /// beside reads.
    piece: Ps,
    beside_piece: Ps,
    /// The ramp at the start of each run (see [`ComputeConfig::piece_ramp_kib`]): its bytes,
    /// and the rate whose time is what those bytes cost beyond the memory rate
    /// (`1 / (1 / ramp rate − 1 / memory rate)`), alone and beside reads; 0: none.
    ramp_bytes: u64,
    ramp_extra_bytes_per_s: u64,
    beside_ramp_extra_bytes_per_s: u64,
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
            piece: Ps::ZERO,
            beside_piece: Ps::ZERO,
            ramp_bytes: 0,
            ramp_extra_bytes_per_s: 0,
            beside_ramp_extra_bytes_per_s: 0,
            free: Ps::ZERO,
        }
    }

    /// The same unit, each run of an op's weights costing `piece` more (slowed beside reads as
    /// the rates are, when [`Self::with_beside_reads_slowdown`] comes after).
    pub fn with_piece_overhead(mut self, piece: Ps) -> Self {
        self.piece = piece;
        self.beside_piece = piece;
        self
    }

    /// The same unit, the first `bytes` of each run of an op's weights streaming at
    /// `bytes_per_s` (nothing extra where that is not below the unit's memory rate; slowed
    /// beside reads as the rates are, when [`Self::with_beside_reads_slowdown`] comes after).
    pub fn with_piece_ramp(mut self, bytes: u64, bytes_per_s: f64) -> Self {
        let b = self.bytes_per_s as f64;
        if bytes > 0 && bytes_per_s > 0.0 && bytes_per_s < b {
            let extra = 1.0 / (1.0 / bytes_per_s - 1.0 / b);
            self.ramp_bytes = bytes;
            self.ramp_extra_bytes_per_s = (extra.round() as u64).max(1);
            self.beside_ramp_extra_bytes_per_s = self.ramp_extra_bytes_per_s;
        }
        self
    }

    /// The same unit, `slowdown` (at least 1) times slower while reads are in flight.
    pub fn with_beside_reads_slowdown(mut self, slowdown: f64) -> Self {
        assert!(slowdown >= 1.0 && slowdown.is_finite());
        let slow = |r: u64| ((r as f64 / slowdown).round() as u64).max(1);
        self.beside_flops_per_s = slow(self.flops_per_s);
        self.beside_bytes_per_s = slow(self.bytes_per_s);
        self.beside_piece = Ps((self.piece.0 as f64 * slowdown).round() as u64);
        if self.ramp_extra_bytes_per_s > 0 {
            self.beside_ramp_extra_bytes_per_s = slow(self.ramp_extra_bytes_per_s);
        }
        self
    }

    /// The unit's own time for an op over `bytes` whose weights lie in `pieces` separate runs,
    /// ignoring contention for the DRAM bus; `reads_beside`: flash reads are in flight as it
    /// starts.
    pub fn op_time(
        &self,
        flops: u64,
        bytes: u64,
        pieces: u64,
        reads_beside: bool,
    ) -> Result<Ps, SimError> {
        let (f, b, piece, ramp) = if reads_beside {
            (
                self.beside_flops_per_s,
                self.beside_bytes_per_s,
                self.beside_piece,
                self.beside_ramp_extra_bytes_per_s,
            )
        } else {
            (
                self.flops_per_s,
                self.bytes_per_s,
                self.piece,
                self.ramp_extra_bytes_per_s,
            )
        };
        let arith = transfer_time(flops, f)?;
        let mut memory = transfer_time(bytes, b)?.checked_add(piece.checked_mul(pieces)?)?;
        if ramp > 0 {
            let ramped = bytes.min(pieces.saturating_mul(self.ramp_bytes));
            memory = memory.checked_add(transfer_time(ramped, ramp)?)?;
        }
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

#[cfg(test)]
mod tests {
    use super::ComputeUnit;
    use crate::time::Ps;

    #[test]
    fn each_piece_of_an_ops_weights_costs_its_overhead_and_beside_reads_more() {
        // 1 GB/s, 10 µs per op, 2 µs per piece, 1.5x beside reads.
        let u = ComputeUnit::new(
            "cpu",
            1_000_000_000,
            1_000_000_000,
            Ps::from_us(10.0).unwrap(),
        )
        .with_piece_overhead(Ps::from_us(2.0).unwrap())
        .with_beside_reads_slowdown(1.5);
        let us = |pieces, beside| u.op_time(0, 1000, pieces, beside).unwrap().as_us();
        assert_eq!(us(0, false), 11.0);
        assert_eq!(us(1, false), 13.0);
        assert_eq!(us(5, false), 21.0);
        assert_eq!(us(5, true), 10.0 + 1.5 + 15.0);
        // The FLOP term does not pay for pieces: at 1 GFLOP/s, 20 kFLOPs take 20 µs, more
        // than 1 µs of bytes and 5 pieces.
        assert_eq!(u.op_time(20_000, 1000, 5, false).unwrap().as_us(), 30.0);
        // A ramp: the first 4 KB of each piece at 0.5 GB/s against 1 GB/s (1 µs more per full
        // ramp); a piece shorter than the ramp pays for what it has.
        let r = ComputeUnit::new("cpu", 1_000_000_000, 1_000_000_000, Ps::ZERO)
            .with_piece_ramp(4000, 0.5e9)
            .with_beside_reads_slowdown(2.0);
        let ramp_us = |bytes, pieces, beside| r.op_time(0, bytes, pieces, beside).unwrap().as_us();
        assert_eq!(ramp_us(40_000, 1, false), 40.0 + 4.0);
        assert_eq!(ramp_us(40_000, 5, false), 40.0 + 20.0);
        assert_eq!(ramp_us(40_000, 20, false), 40.0 + 40.0);
        assert_eq!(ramp_us(40_000, 100, false), 40.0 + 40.0);
        assert_eq!(ramp_us(40_000, 5, true), 80.0 + 40.0);
        // A ramp rate at or above the memory rate costs nothing.
        let fast = ComputeUnit::new("cpu", 1_000_000_000, 1_000_000_000, Ps::ZERO)
            .with_piece_ramp(4000, 1e9);
        assert_eq!(fast.op_time(0, 40_000, 10, false).unwrap().as_us(), 40.0);
        // Without a piece overhead, pieces cost nothing (the presets).
        let plain = ComputeUnit::new("cpu", 1_000_000_000, 1_000_000_000, Ps::ZERO);
        assert_eq!(plain.op_time(0, 1000, 1000, false).unwrap().as_us(), 1.0);
    }
}
