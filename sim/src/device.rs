//! A device file (`configs/devices/NAME.toml`): flash, DRAM and compute units, each number with
//! its source beside it.

use crate::hw::compute::{ComputeConfig, ComputeUnit};
use crate::hw::dram::DramConfig;
use crate::hw::flash::{self, positive, Flash};
use crate::time::{gb_per_s_to_bytes, Ps};
use flashsim_workloads::toml_source::{ConfigError, TomlSource};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFile {
    name: String,
    #[serde(default)]
    description: String,
    flash: toml::Value,
    dram: DramConfig,
    compute: BTreeMap<String, ComputeConfig>,
    /// Free-form facts about where the numbers were measured (written by `calibrate`).
    #[serde(default)]
    #[allow(dead_code)]
    environment: Option<toml::Table>,
    #[serde(default)]
    read_engine: ReadEngine,
}

/// How reads are kept in flight on real hardware: by `calibrate` when it measures a device, and
/// by the real backend when it runs on one. A calibrated device file names the engine its table
/// was measured with (`read_engine = "io_uring"`), so that validation reads the same way; the
/// presets, measured by others, keep the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ReadEngine {
    /// `qd` threads, each with one blocking `pread` in flight.
    #[default]
    Pread,
    /// One thread with an io_uring of `qd` entries kept full.
    IoUring,
}

impl ReadEngine {
    /// The name a device file uses.
    pub fn key(self) -> &'static str {
        match self {
            ReadEngine::Pread => "pread",
            ReadEngine::IoUring => "io_uring",
        }
    }
}

/// A loaded device: its models are idle at time zero.
#[derive(Debug)]
pub struct Device {
    pub name: String,
    pub description: String,
    pub flash: Box<dyn Flash>,
    pub dram_capacity_bytes: u64,
    pub dram_bus_bytes_per_s: u64,
    /// Compute units, sorted by name.
    pub units: Vec<ComputeUnit>,
    /// How the real backend reads on this device.
    pub read_engine: ReadEngine,
}

impl Clone for Device {
    fn clone(&self) -> Self {
        Device {
            name: self.name.clone(),
            description: self.description.clone(),
            flash: self.flash.fresh(),
            dram_capacity_bytes: self.dram_capacity_bytes,
            dram_bus_bytes_per_s: self.dram_bus_bytes_per_s,
            read_engine: self.read_engine,
            units: self
                .units
                .iter()
                .cloned()
                .map(|mut u| {
                    u.reset();
                    u
                })
                .collect(),
        }
    }
}

pub const GIB: f64 = (1u64 << 30) as f64;

impl Device {
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::from_source(&TomlSource::read(path)?)
    }

    pub fn from_source(src: &TomlSource) -> Result<Self, ConfigError> {
        let f: DeviceFile = src.parse()?;
        let flash = flash::build(src, &f.flash)?;
        let cap = positive(src, "dram.capacity_gib", f.dram.capacity_gib)?;
        let bus = positive(src, "dram.bandwidth_gb_per_s", f.dram.bandwidth_gb_per_s)?;
        if f.compute.is_empty() {
            return Err(src.invalid(
                "compute",
                "a device needs at least one compute unit ([compute.cpu])",
            ));
        }
        let mut units = Vec::new();
        for (name, c) in &f.compute {
            let key = |k: &str| format!("compute.{name}.{k}");
            let peak = positive(src, &key("peak_gflops"), c.peak_gflops)?;
            let bw = positive(
                src,
                &key("mem_bandwidth_gb_per_s"),
                c.mem_bandwidth_gb_per_s,
            )?;
            for (k, v) in [
                ("flops_efficiency", c.flops_efficiency),
                ("mem_efficiency", c.mem_efficiency),
            ] {
                if !(v > 0.0 && v <= 1.0) {
                    return Err(src.invalid(&key(k), format!("must lie in (0, 1], got {v}")));
                }
            }
            if !(c.dispatch_overhead_us >= 0.0 && c.dispatch_overhead_us.is_finite()) {
                return Err(src.invalid(&key("dispatch_overhead_us"), "must be zero or positive"));
            }
            let overhead = Ps::from_us(c.dispatch_overhead_us)
                .map_err(|e| src.invalid(&key("dispatch_overhead_us"), e.to_string()))?;
            if !(c.beside_reads_slowdown >= 1.0 && c.beside_reads_slowdown.is_finite()) {
                return Err(src.invalid(
                    &key("beside_reads_slowdown"),
                    format!("must be at least 1, got {}", c.beside_reads_slowdown),
                ));
            }
            if !(c.piece_overhead_ns >= 0.0 && c.piece_overhead_ns.is_finite()) {
                return Err(src.invalid(&key("piece_overhead_ns"), "must be zero or positive"));
            }
            let piece = Ps::from_us(c.piece_overhead_ns / 1e3)
                .map_err(|e| src.invalid(&key("piece_overhead_ns"), e.to_string()))?;
            for (k, v) in [
                ("piece_ramp_kib", c.piece_ramp_kib),
                ("piece_ramp_gb_per_s", c.piece_ramp_gb_per_s),
            ] {
                if !(v >= 0.0 && v.is_finite()) {
                    return Err(src.invalid(&key(k), format!("must be zero or positive, got {v}")));
                }
            }
            if (c.piece_ramp_kib > 0.0) != (c.piece_ramp_gb_per_s > 0.0) {
                return Err(src.invalid(
                    &key(if c.piece_ramp_kib > 0.0 {
                        "piece_ramp_kib"
                    } else {
                        "piece_ramp_gb_per_s"
                    }),
                    "piece_ramp_kib and piece_ramp_gb_per_s go together: give both or neither",
                ));
            }
            units.push(
                ComputeUnit::new(
                    name,
                    (peak * c.flops_efficiency * 1e9).round() as u64,
                    gb_per_s_to_bytes(bw * c.mem_efficiency),
                    overhead,
                )
                .with_piece_overhead(piece)
                .with_piece_ramp(
                    (c.piece_ramp_kib * 1024.0).round() as u64,
                    c.piece_ramp_gb_per_s * 1e9,
                )
                .with_beside_reads_slowdown(c.beside_reads_slowdown),
            );
        }
        Ok(Device {
            name: f.name,
            description: f.description,
            flash,
            dram_capacity_bytes: (cap * GIB).round() as u64,
            dram_bus_bytes_per_s: gb_per_s_to_bytes(bus),
            units,
            read_engine: f.read_engine,
        })
    }

    /// Index of the compute unit called `name`.
    pub fn unit_index(&self, name: &str) -> Option<usize> {
        self.units.iter().position(|u| u.name == name)
    }
}

/// The device's rates as a policy may see them when it sizes itself
/// ([`flashsim_policies::DeviceRates`]): measured on fresh copies of its models, at the
/// experiment's I/O queue depth.
pub struct Rates<'a> {
    pub device: &'a Device,
    pub io_queue_depth: u32,
}

/// Space between one read's end and the next one's start that no flash model takes for
/// sequential or near reads.
pub const APART_BYTES: u64 = 1 << 30;

/// Throughput (bytes/s) of `flash` (a fresh copy) running 8 x `depth` reads of
/// `request_bytes`, a new one issued as each completes, each starting `apart_bytes` after the
/// end of the one before (0: in file order), as the bytes over the time the last one ends.
pub fn stream_bytes_per_s(
    flash: &dyn Flash,
    depth: u32,
    request_bytes: u64,
    apart_bytes: u64,
) -> f64 {
    let n = 8 * depth.max(1) as u64;
    let reads = (0..n).map(|i| (i * (request_bytes + apart_bytes), request_bytes));
    reads_bytes_per_s(flash, reads, depth).unwrap_or(0.0)
}

/// Throughput (bytes/s) of `flash` (a fresh copy) running `reads` (offset, bytes) in their
/// order, `depth` in flight, a new one issued as each completes: the bytes over the time the
/// last one ends (infinite where none took any time).
pub fn reads_bytes_per_s(
    flash: &dyn Flash,
    reads: impl IntoIterator<Item = (u64, u64)>,
    depth: u32,
) -> Result<f64, crate::error::SimError> {
    use std::cmp::Reverse;
    let depth = depth.max(1) as usize;
    let mut flash = flash.fresh();
    let mut in_flight = std::collections::BinaryHeap::new();
    let (mut now, mut end, mut bytes) = (Ps::ZERO, Ps::ZERO, 0u64);
    for (offset, size) in reads {
        if in_flight.len() == depth {
            if let Some(Reverse(t)) = in_flight.pop() {
                now = t;
            }
        }
        let done = flash.submit(now, offset, size)?;
        end = end.max(done);
        bytes += size;
        in_flight.push(Reverse(done));
    }
    let s = end.as_s();
    Ok(if s > 0.0 {
        bytes as f64 / s
    } else {
        f64::INFINITY
    })
}

impl flashsim_policies::DeviceRates for Rates<'_> {
    /// [`stream_bytes_per_s`] at the experiment's depth, the reads [`APART_BYTES`] apart: a
    /// model that prices reads by where they lie (the measured model's sequential and near
    /// figures) prices them as the random reads its table was measured with, as a device's
    /// curve is drawn. (Reads in file order got the measured model's sequential ratio, taken at
    /// 1 MiB, at every size.)
    fn flash_read_bytes_per_s(&self, request_bytes: u64) -> f64 {
        stream_bytes_per_s(
            self.device.flash.as_ref(),
            self.io_queue_depth,
            request_bytes,
            APART_BYTES,
        )
    }

    fn op_seconds(&self, unit: &str, flops: u64, dram_bytes: u64) -> Option<f64> {
        let u = self.device.units.iter().find(|u| u.name == unit)?;
        // One run: the policy asks before it knows which weights the op will gather.
        let own = u.op_time(flops, dram_bytes, 1, false).ok()?.as_s();
        let bus = dram_bytes as f64 / self.device.dram_bus_bytes_per_s as f64;
        Some(own.max(bus))
    }
}
