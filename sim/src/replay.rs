//! `flashsim replay EXPERIMENT`: each point's simulated reads replayed on this machine's disk,
//! against the flash model fed the same reads. Where `validate` compares whole tokens (reads,
//! kernels and how they overlap), this isolates the flash model: the reads a point issues,
//! in its order and sizes, kept at its queue depth and issued back to back through the real
//! backend's readers (the device file's `read_engine`), and the same sizes at random offsets.
//! Disk over model near 1 for both says the model prices these reads as the disk serves them;
//! a gap in the random stream alone points at the table (a mix of sizes), one in the point's
//! order at the sequential and near figures. On this project's VM it found that the model
//! completed reads in submission order (see `hw::flash_measured`).
//!
//! Each point's first `reads` simulated reads (on a fresh policy, from its first token) are
//! replayed `rounds` times, the two streams alternating first, each round on another copy of
//! the weights' span in a test file of `file_gib` (so that no cache outside the machine holds
//! what an earlier round read); the reads land in one populated DRAM mapping, as calibrate's
//! do. Written to `results/<experiment>/replay.csv`.

use crate::experiment::Experiment;
use crate::hw::flash::Flash;
use crate::runner::{self, Cache, Prepared};
use crate::time::Ps;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How `replay` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// A directory on the storage the device file was calibrated on; the test file goes here.
    pub weights_dir: PathBuf,
    pub out_dir: PathBuf,
    /// GiB of test file (copies of the largest point's span of reads).
    pub file_gib: f64,
    /// Simulated reads replayed per point (the first ones).
    pub reads: usize,
    /// Replays of each stream, alternating which goes first.
    pub rounds: usize,
}

/// One stream of one point.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub point: usize,
    pub policy: String,
    pub dram_budget_gib: f64,
    /// `order`: the point's reads as simulated; `random`: the same sizes at random offsets.
    pub stream: &'static str,
    pub queue_depth: u32,
    pub reads: usize,
    pub mean_read_kib: f64,
    /// Bytes over time, mean over the rounds.
    pub model_gb_per_s: f64,
    pub disk_gb_per_s: f64,
}

impl Row {
    pub fn disk_over_model(&self) -> f64 {
        self.disk_gb_per_s / self.model_gb_per_s
    }

    /// The row as a line of text.
    pub fn line(&self) -> String {
        format!(
            "point {} {} {} GiB, {} ({} reads, {:.1} KiB mean, QD {}): model {:.3} GB/s, disk \
             {:.3} GB/s, disk/model {:.3}",
            self.point,
            self.policy,
            self.dram_budget_gib,
            self.stream,
            self.reads,
            self.mean_read_kib,
            self.queue_depth,
            self.model_gb_per_s,
            self.disk_gb_per_s,
            self.disk_over_model()
        )
    }
}

/// A flash model that records every read it is given, in order.
#[derive(Debug)]
struct Recording {
    inner: Box<dyn Flash>,
    reads: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl Flash for Recording {
    fn submit(&mut self, now: Ps, offset: u64, bytes: u64) -> Result<Ps, crate::error::SimError> {
        self.reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((offset, bytes));
        self.inner.submit(now, offset, bytes)
    }
    fn min_latency(&self, bytes: u64) -> Result<Ps, crate::error::SimError> {
        self.inner.min_latency(bytes)
    }
    fn max_bytes_per_s(&self) -> u64 {
        self.inner.max_bytes_per_s()
    }
    fn fresh(&self) -> Box<dyn Flash> {
        Box::new(Recording {
            inner: self.inner.fresh(),
            reads: self.reads.clone(),
        })
    }
}

/// The reads (file offset, bytes) a prepared point issues to flash when simulated, in order.
pub fn simulated_reads(p: &mut Prepared) -> Result<Vec<(u64, u64)>> {
    let reads = Arc::new(Mutex::new(Vec::new()));
    let inner = p.device.flash.fresh();
    p.device.flash = Box::new(Recording {
        inner: inner.fresh(),
        reads: reads.clone(),
    });
    let run = p.simulate(false);
    p.device.flash = inner;
    run?;
    let out = reads.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(out)
}

/// Reads are widened to this boundary, as the backend reads them (O_DIRECT).
const ALIGN: u64 = crate::calibrate::ALIGN as u64;

/// A point ready to replay.
struct Pending {
    point: usize,
    policy: String,
    dram_budget_gib: f64,
    qd: u32,
    engine: crate::calibrate::Engine,
    flash: Box<dyn Flash>,
    reads: Vec<(u64, u64)>,
}

/// Replays every feasible point of `exp` (see the module's comment); returns the rows and the
/// CSV's path.
pub fn run(
    exp: &Experiment,
    o: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<Row>, PathBuf)> {
    if o.reads == 0 || o.rounds == 0 {
        bail!("--reads and --rounds must be at least 1");
    }
    crate::calibrate::refuse_memory_backed(&o.weights_dir)?;
    runner::materialize_traces(exp)?;
    let mut cache = Cache::default();
    let mut pending = Vec::new();
    for point in &exp.points {
        let Some(mut p) = runner::prepare_or_skip(exp, point, &mut cache, progress)? else {
            continue;
        };
        let mut reads =
            simulated_reads(&mut p).with_context(|| format!("simulating point {}", point.index))?;
        reads.truncate(o.reads);
        if reads.is_empty() {
            progress(&format!("point {} skipped: it reads nothing", point.index));
            continue;
        }
        pending.push(Pending {
            point: point.index,
            policy: point.config.policy.clone(),
            dram_budget_gib: point.config.dram_budget_gib,
            qd: point.config.io_queue_depth,
            engine: p.device.read_engine,
            flash: p.device.flash.fresh(),
            reads,
        });
    }
    if pending.is_empty() {
        bail!("no point of the experiment reads from flash");
    }
    const CHUNK: u64 = 4 << 20;
    // The span of offsets the reads cover (aligned as the backend reads), and copies of it.
    let span = pending
        .iter()
        .flat_map(|p| &p.reads)
        .map(|&(o, b)| (o + b).div_ceil(ALIGN) * ALIGN)
        .max()
        .unwrap_or(ALIGN)
        .next_multiple_of(CHUNK);
    let wanted = (o.file_gib * (1u64 << 30) as f64) as u64;
    let file_bytes = wanted.max(span).next_multiple_of(CHUNK);
    let copies = file_bytes / span;
    let path = o
        .weights_dir
        .join(format!("flashsim-replay-{}.bin", exp.name()));
    progress(&format!(
        "writing {} MiB of test file ({copies} copies of the reads' span) ...",
        file_bytes >> 20
    ));
    crate::calibrate::prepare_file(&path, file_bytes, 0x9e1a)?;
    let result = replay_all(&path, file_bytes, span, copies, &pending, o, progress);
    std::fs::remove_file(&path).ok();
    let rows = result?;
    let dir = o.out_dir.join(exp.name());
    std::fs::create_dir_all(&dir)?;
    let csv = dir.join("replay.csv");
    write_csv(&csv, &rows)?;
    Ok((rows, csv))
}

fn replay_all(
    path: &Path,
    file_bytes: u64,
    span: u64,
    copies: u64,
    pending: &[Pending],
    o: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Row>> {
    let dram = crate::calibrate::measurement_dram(file_bytes, 4 << 20, progress)?;
    let mut rows = Vec::new();
    for p in pending {
        let mut state = 0x7e91a7 ^ p.point as u64;
        let (mut model, mut disk) = ([0.0; 2], [0.0; 2]);
        for round in 0..o.rounds {
            let shift = (round as u64 % copies) * span;
            let order: Vec<(u64, u64)> = p.reads.iter().map(|&(at, b)| (at + shift, b)).collect();
            let random: Vec<(u64, u64)> = p
                .reads
                .iter()
                .map(|&(_, b)| {
                    let room = (file_bytes - b.div_ceil(ALIGN) * ALIGN) / ALIGN + 1;
                    (crate::calibrate::splitmix(&mut state) % room * ALIGN, b)
                })
                .collect();
            let streams = [&order, &random];
            for k in crate::calibrate::alternating(streams.len(), round as u32) {
                let s = streams[k];
                let bytes = s.iter().map(|r| r.1).sum::<u64>() as f64;
                let secs = crate::real::replay_reads(path, p.engine, p.qd, s, &dram)?;
                disk[k] += bytes / secs / o.rounds as f64;
                let x =
                    crate::device::reads_bytes_per_s(p.flash.as_ref(), s.iter().copied(), p.qd)?;
                model[k] += x / o.rounds as f64;
            }
        }
        let mean_read_kib =
            p.reads.iter().map(|r| r.1).sum::<u64>() as f64 / p.reads.len() as f64 / 1024.0;
        for (k, stream) in ["order", "random"].into_iter().enumerate() {
            let row = Row {
                point: p.point,
                policy: p.policy.clone(),
                dram_budget_gib: p.dram_budget_gib,
                stream,
                queue_depth: p.qd,
                reads: p.reads.len(),
                mean_read_kib,
                model_gb_per_s: model[k] / 1e9,
                disk_gb_per_s: disk[k] / 1e9,
            };
            progress(&row.line());
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Writes `rows` as CSV.
pub fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    writeln!(
        f,
        "point,policy,dram_budget_gib,stream,queue_depth,reads,mean_read_kib,model_gb_per_s,\
         disk_gb_per_s,disk_over_model"
    )?;
    for r in rows {
        writeln!(
            f,
            "{},{},{},{},{},{},{:.3},{:.6},{:.6},{:.4}",
            r.point,
            r.policy,
            r.dram_budget_gib,
            r.stream,
            r.queue_depth,
            r.reads,
            r.mean_read_kib,
            r.model_gb_per_s,
            r.disk_gb_per_s,
            r.disk_over_model()
        )?;
    }
    Ok(())
}
