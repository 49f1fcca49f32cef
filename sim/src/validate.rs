//! `flashsim validate`: the simulator against the real backend, point by point.
//!
//! Every point of the experiment runs from a fresh policy simulated on the experiment's device
//! (a calibrated device file, for the comparison to mean anything) and `repeats` times on the
//! real backend (its tokens pooled: storage is noisy from run to run; the runs go in rounds,
//! every point once per round, so that the machine's drift spreads over all points), reading
//! with O_DIRECT a weight file written under `--weights-dir` in the largest layout of the
//! experiment. Per point and metric (ms per token, flash busy, compute, stall) the
//! table gives simulated, measured and the difference in percent at the mean, and for ms per
//! token also at P50, P90 and P99 over the tokens after warm-up. Written to
//! `results/<experiment>/validate.csv`, with a plot of simulated against measured ms per token.
//!
//! Probes: the disk and the CPU of a machine drift (on this project's VM, 1 MiB reads by tens
//! of percent within an hour), so a calibration made before the validation may no longer
//! describe the machine a run meets. Just before each real run, a probe re-measures a few cells
//! of the calibrated table (reads of 16 KiB, 128 KiB and 1 MiB at random offsets and 1 MiB in
//! file order, at the point's queue depth, through the backend's readers into a populated DRAM
//! mapping, as calibrate measures) and the backend's 64 MiB op. After each round, every point
//! is simulated once more on the device file scaled to the round's probes, pooled
//! (`MeasuredConfig::rescaled`; with `probe_compute`, each compute unit's memory rate refitted
//! to the op as well: off by default, see [`Options::probe_compute`]). The table
//! then carries both comparisons: `calibrated` (the device file as written) and `probed` (the
//! device as it was in each round, the simulated tokens pooled over the rounds as the measured
//! ones are). The probed comparison checks the
//! model given the hardware's state; the calibrated one also checks that the state held.
//!
//! Efficiency (`efficiency.csv`): per point, what the real backend's reads delivered while
//! reading against 1 MiB reads in file order at its queue depth, and what its kernels streamed
//! on the bytes they touched against the DRAM read pass: each against the device file's figure
//! and the probes' (see [`Efficiency`]); and the kernels that gathered their weights against
//! those of the same runs that streamed contiguous ones.

use crate::calibrate::{quantile, Engine, BESIDE_READS_OP_BYTES};
use crate::device::Device;
use crate::executor::{RunStats, TokenStats};
use crate::experiment::Experiment;
use crate::hw::compute::ComputeConfig;
use crate::hw::flash_measured::{MeasuredConfig, SEQUENTIAL_BYTES};
use crate::real::{Image, ReadOrder, ReadPattern};
use crate::runner::{self, Cache};
use crate::time::Ps;
use anyhow::{bail, Context, Result};
use flashsim_workloads::TomlSource;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How `validate` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// A directory on the storage the device file was calibrated on; the weight file goes here.
    pub weights_dir: PathBuf,
    pub out_dir: PathBuf,
    pub keep_weights: bool,
    /// Real runs per point.
    pub repeats: usize,
    /// GiB of weight file (copies of the weights; see [`run`]).
    pub file_gib: f64,
    /// Seconds per probe cell before each real run (0: no probes; see the module's comment).
    pub probe_seconds: f64,
    /// Whether the probed device also takes the probes' op time (each compute unit's memory
    /// rate refitted to it), not only their reads. Off by default: on this project's VM the
    /// probes' 64 MiB op ran 10% slower than calibrate's (run Q: median 3860 µs of 3086-5067
    /// against 3518, pooled over a round still 3.6-4.1 ms) while the runs' own kernels ran at
    /// calibrate's rate (LLM in a Flash: 70-73% of the DRAM read, calibrate's fit 71%), so
    /// refitting made the compute-bound points 10-16% slower than measured (runs O and Q).
    pub probe_compute: bool,
}

/// Request sizes a probe reads at random offsets (KiB): the range the validated policies read
/// in, from a DIP down column (8 KiB at a 7B shape) to dense streaming's 1 MiB chunks.
pub const PROBE_SIZES_KIB: [u64; 3] = [16, 128, 1024];

/// What one probe measured just before a real run.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// (bytes, queue depth, bytes/s) of reads at random offsets.
    pub random: Vec<(u64, u32, f64)>,
    /// (queue depth, bytes/s) of 1 MiB reads in file order.
    pub sequential: (u32, f64),
    /// Mean seconds of the backend's [`BESIDE_READS_OP_BYTES`] op.
    pub op_seconds: f64,
    /// Bytes/s of calibrate's DRAM read pass with every hardware thread (the device file's
    /// `[dram]` figure, measured again).
    pub dram_read: f64,
}

/// What the probes read into and DRAM bandwidth is measured on, kept for a whole validation.
pub struct ProbeMemory {
    /// Where the probes' reads land (`calibrate::measurement_dram`).
    pub dram: Arc<Image>,
    /// Calibrate's DRAM read pass buffer ([`crate::calibrate::rate_buffer`]).
    pub rates: crate::real::Mapping,
    /// What the probes' op is timed on, as calibrate times it.
    pub ops: crate::real::OpTimer,
}

/// The DRAM the probes of `weights` read into ([`probe`]): one mapping for a whole validation,
/// as calibrate measures (`calibrate::measurement_dram`), and the buffer of its DRAM
/// read pass.
pub fn probe_memory(weights: &Path, progress: &mut dyn FnMut(&str)) -> Result<ProbeMemory> {
    let file_bytes = std::fs::metadata(weights)?.len();
    if file_bytes < 4 * SEQUENTIAL_BYTES {
        bail!(
            "{}: {file_bytes} B is too small a file to probe (1 MiB reads at random offsets); \
             give a larger --file-gib or --probe-seconds 0",
            weights.display()
        );
    }
    Ok(ProbeMemory {
        dram: crate::calibrate::measurement_dram(file_bytes, SEQUENTIAL_BYTES, progress)?,
        rates: crate::calibrate::rate_buffer()?,
        ops: crate::real::OpTimer::new(BESIDE_READS_OP_BYTES)?,
    })
}

/// Re-measures the cells a [`Probe`] holds on `weights` (reads at depth `qd`, `seconds` each,
/// landing in `mem`'s DRAM, from [`probe_memory`]).
pub fn probe(
    weights: &Path,
    engine: Engine,
    qd: u32,
    seconds: f64,
    seed: u64,
    mem: &mut ProbeMemory,
) -> Result<Probe> {
    let dram = &mem.dram;
    let measure = |size: u64, order: ReadOrder| -> Result<f64> {
        let pattern = ReadPattern { size, qd, order };
        let (secs, lat) =
            crate::real::read_latencies(weights, engine, pattern, seconds, seed, dram)?;
        Ok(crate::calibrate::cell_of(size, qd, secs, lat).throughput_gb_per_s * 1e9)
    };
    let mut random = Vec::new();
    for kib in PROBE_SIZES_KIB {
        random.push((kib * 1024, qd, measure(kib * 1024, ReadOrder::Random)?));
    }
    let sequential = (qd, measure(SEQUENTIAL_BYTES, ReadOrder::InOrder)?);
    let op_seconds = mem.ops.seconds(BESIDE_READS_OP_BYTES, seconds)?;
    let threads = crate::calibrate::hardware_threads();
    let dram_read = crate::calibrate::measure_rates(mem.rates.words(), threads, seconds)
        .dram_read_gb_per_s
        * 1e9;
    Ok(Probe {
        random,
        sequential,
        op_seconds,
        dram_read,
    })
}

/// Probes of the same cells (at least one) pooled: each figure's mean (throughputs over equal
/// windows, so the mean rate is the pooled one).
pub fn pool(probes: &[&Probe]) -> Probe {
    let n = probes.len() as f64;
    let mean = |f: &dyn Fn(&Probe) -> f64| probes.iter().map(|p| f(p)).sum::<f64>() / n;
    let first = probes[0];
    Probe {
        random: (0..first.random.len())
            .map(|k| {
                let (bytes, qd, _) = first.random[k];
                (bytes, qd, mean(&|p| p.random[k].2))
            })
            .collect(),
        sequential: (first.sequential.0, mean(&|p| p.sequential.1)),
        op_seconds: mean(&|p| p.op_seconds),
        dram_read: mean(&|p| p.dram_read),
    }
}

/// The device file at `path` scaled to what `p` measured: its measured flash table by
/// [`MeasuredConfig::rescaled`], and with `compute`, each compute unit's memory rate refitted
/// so that the probed op takes what it took (dispatch overhead kept). Needs a calibrated
/// device file.
pub fn probed_device(path: &Path, p: &Probe, compute: bool) -> Result<Device> {
    let (mut doc, c) = measured_table(path)?;
    let scaled = c
        .rescaled(&p.random, Some(p.sequential))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    doc.insert("flash".into(), toml::Value::try_from(scaled)?);
    let units = doc.get_mut("compute").and_then(|c| c.as_table_mut());
    if let (Some(units), true) = (units, compute) {
        for (name, unit) in units.iter_mut() {
            let c: ComputeConfig = unit
                .clone()
                .try_into()
                .with_context(|| format!("{}: [compute.{name}]", path.display()))?;
            // The probe's op is one run of weights: its memory time as the file has it (the
            // ramp's first bytes at the ramp rate, the rest at the memory rate) against the
            // probe's; both rates scaled by their ratio.
            let beyond =
                p.op_seconds - (c.dispatch_overhead_us + c.piece_overhead_ns * 1e-3) * 1e-6;
            let bytes = BESIDE_READS_OP_BYTES as f64;
            let ramp = (c.piece_ramp_kib * 1024.0).min(bytes);
            let rate = c.mem_bandwidth_gb_per_s * c.mem_efficiency * 1e9;
            let then = if c.piece_ramp_gb_per_s > 0.0 && ramp > 0.0 {
                (bytes - ramp) / rate + ramp / (c.piece_ramp_gb_per_s * 1e9)
            } else {
                bytes / rate
            };
            // A unit deserialized as one is a table.
            if let (Some(unit), true) = (unit.as_table_mut(), beyond > 0.0) {
                let scale = then / beyond;
                unit.insert(
                    "mem_bandwidth_gb_per_s".into(),
                    (c.mem_bandwidth_gb_per_s * scale).into(),
                );
                if c.piece_ramp_gb_per_s > 0.0 {
                    unit.insert(
                        "piece_ramp_gb_per_s".into(),
                        (c.piece_ramp_gb_per_s * scale).into(),
                    );
                }
            }
        }
    }
    let text = toml::to_string(&doc)?;
    Ok(Device::from_source(&TomlSource::from_text(path, text)?)?)
}

/// The device file at `path` and its measured flash table; an error where it has none (a
/// preset), which a probe could not scale.
fn measured_table(path: &Path) -> Result<(toml::Table, MeasuredConfig)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the device file {}", path.display()))?;
    let doc: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not TOML", path.display()))?;
    let not_measured = || {
        anyhow::anyhow!(
            "{}: probing needs a calibrated device file (`[flash] model = \"measured\"`); \
             give --probe-seconds 0 to validate on a preset",
            path.display()
        )
    };
    let flash = doc.get("flash").cloned().ok_or_else(not_measured)?;
    if flash.get("model").and_then(|m| m.as_str()) != Some("measured") {
        return Err(not_measured());
    }
    let c: MeasuredConfig = flash
        .try_into()
        .with_context(|| format!("{}: [flash]", path.display()))?;
    Ok((doc, c))
}

/// One row of the validation table.
#[derive(Debug, Clone)]
pub struct Row {
    pub point: usize,
    pub policy: String,
    pub dram_budget_gib: f64,
    /// What was simulated: `calibrated` (the device file) or `probed` (see the module's
    /// comment).
    pub device: &'static str,
    pub metric: &'static str,
    pub stat: &'static str,
    pub simulated_ms: f64,
    pub measured_ms: f64,
    /// For a mean: the half-width of the 95% confidence interval of the measured mean, from
    /// the real runs' own means (Student's t; none with fewer than two runs). Storage and CPU
    /// drift between runs, so this, not the tokens' spread, says how well the runs pin the
    /// mean down: a simulated mean within it is as close as the runs can tell.
    pub measured_ci95_ms: Option<f64>,
}

impl Row {
    pub fn diff_pct(&self) -> f64 {
        (self.simulated_ms / self.measured_ms - 1.0) * 100.0
    }

    /// The half-width of the measured mean's 95% interval, in percent of the measured mean.
    pub fn measured_ci95_pct(&self) -> Option<f64> {
        self.measured_ci95_ms.map(|h| h / self.measured_ms * 100.0)
    }

    /// Whether the simulated value lies within the measured mean's 95% interval.
    pub fn within_ci95(&self) -> Option<bool> {
        self.measured_ci95_ms
            .map(|h| (self.simulated_ms - self.measured_ms).abs() <= h)
    }
}

/// Two-sided 95% quantiles of Student's t with 1..=30 degrees of freedom.
const T95: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// The half-width of the 95% confidence interval of the mean of `xs` (Student's t, the normal
/// quantile beyond 30 degrees of freedom); none for fewer than two values.
pub fn ci95_half_width(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let t = T95.get(n - 2).copied().unwrap_or(1.960);
    Some(t * (var / n as f64).sqrt())
}

/// Per device (`calibrated`, `probed`), how the simulated mean ms per token compares with the
/// measured one over the points: one line each, for the log.
pub fn summary(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    for device in DEVICES {
        let heads: Vec<&Row> = rows
            .iter()
            .filter(|r| r.device == device && r.metric == "ms_per_token" && r.stat == "mean")
            .collect();
        if heads.is_empty() {
            continue;
        }
        let n = heads.len();
        let within10 = heads.iter().filter(|r| r.diff_pct().abs() < 10.0).count();
        let in_ci = heads
            .iter()
            .filter(|r| r.within_ci95() == Some(true))
            .count();
        let with_ci = heads.iter().filter(|r| r.within_ci95().is_some()).count();
        let mean_abs = heads.iter().map(|r| r.diff_pct().abs()).sum::<f64>() / n as f64;
        let cis: Vec<f64> = heads.iter().filter_map(|r| r.measured_ci95_pct()).collect();
        let mut line = format!(
            "{device}: {within10} of {n} points within 10% of the measured mean ms/token, \
             mean |error| {mean_abs:.1}%"
        );
        if with_ci > 0 {
            line += &format!(
                "; {in_ci} of {with_ci} within the measured mean's 95% interval (its half-width \
                 {:.1}-{:.1}% of the mean)",
                cis.iter().copied().fold(f64::INFINITY, f64::min),
                cis.iter().copied().fold(0.0, f64::max)
            );
        }
        out.push(line);
    }
    out
}

fn ms(p: Ps) -> f64 {
    p.0 as f64 / 1e9
}

/// A per-token figure.
type Metric = fn(&TokenStats) -> Ps;

const METRICS: [(&str, Metric); 4] = [
    ("ms_per_token", |t| t.wall),
    ("flash_busy_ms", |t| t.flash_busy),
    ("compute_ms", |t| t.compute_busy),
    ("stall_ms", |t| t.stall),
];

/// The tokens of `s` after `warmup` (at least one is kept).
pub fn after_warmup(s: &RunStats, warmup: usize) -> &[TokenStats] {
    &s.tokens[warmup.min(s.tokens.len().saturating_sub(1))..]
}

/// The mean of metric `f` over each run's tokens, `runs` giving how many tokens each run
/// added to `rt`, in order; none when they do not add up to `rt`.
fn per_run_means(rt: &[TokenStats], runs: &[usize], f: Metric) -> Option<Vec<f64>> {
    let mut at = 0;
    let mut means = Vec::with_capacity(runs.len());
    for &n in runs {
        let run = rt.get(at..at + n)?;
        means.push(run.iter().map(|t| ms(f(t))).sum::<f64>() / n.max(1) as f64);
        at += n;
    }
    (at == rt.len()).then_some(means)
}

/// The comparison rows of one point from its simulated and measured tokens (after warm-up; the
/// measured ones pooled over repeats: `runs` is how many tokens each run gave, in order).
pub fn compare(
    point: usize,
    policy: &str,
    budget: f64,
    device: &'static str,
    st: &[TokenStats],
    rt: &[TokenStats],
    runs: &[usize],
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (metric, f) in METRICS {
        let series = |ts: &[TokenStats]| {
            let mut v: Vec<f64> = ts.iter().map(|t| ms(f(t))).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (a, b) = (series(st), series(rt));
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        // Each run's own mean, for the interval of the pooled one.
        let ci = per_run_means(rt, runs, f).and_then(|m| ci95_half_width(&m));
        let mut stats = vec![("mean", mean(&a), mean(&b), ci)];
        if metric == "ms_per_token" {
            for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
                stats.push((name, quantile(&a, q), quantile(&b, q), None));
            }
        }
        for (stat, s, m, ci) in stats {
            rows.push(Row {
                point,
                policy: policy.to_string(),
                dram_budget_gib: budget,
                device,
                metric,
                stat,
                simulated_ms: s,
                measured_ms: m,
                measured_ci95_ms: ci,
            });
        }
    }
    rows
}

/// Runs the validation; returns the rows and the CSV written. The weight file holds as many
/// copies of the weights as make up `file_gib` (at least one), and each token of a real run
/// reads the next copy, so that what a run reads spans more than a cache outside this machine
/// could hold (a virtual disk's host may cache a file read again and again), as calibrate's
/// test file does.
pub fn run(exp: &Experiment, o: &Options, progress: &mut dyn FnMut(&str)) -> Result<Validation> {
    let Options {
        ref weights_dir,
        ref out_dir,
        keep_weights,
        repeats,
        file_gib,
        probe_seconds,
        probe_compute,
    } = *o;
    crate::calibrate::refuse_memory_backed(weights_dir)?;
    runner::materialize_traces(exp)?;
    let mut cache = Cache::default();
    let mut file_bytes = 0;
    for point in &exp.points {
        match runner::prepare(exp, point, &mut cache).map_err(anyhow::Error::from) {
            Ok(p) => file_bytes = file_bytes.max(p.layout.file_bytes),
            // Skipped below, as sweeps record it.
            Err(e) if runner::infeasible(&e).is_some() => {}
            Err(e) => return Err(e.context(format!("point {}", point.index))),
        }
    }
    if exp.points.is_empty() {
        bail!("the experiment has no points");
    }
    // A calibrated device file describes the machine it was measured on.
    let mut warnings = Vec::new();
    let device_of = (exp.points.iter())
        .map(|p| crate::paths::resolve(&exp.src, "device", "devices", &p.config.device))
        .collect::<Result<Vec<PathBuf>, _>>()?;
    let mut devices: Vec<PathBuf> = Vec::new();
    for path in &device_of {
        if devices.contains(path) {
            continue;
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let differ = crate::calibrate::differences_from_recorded(&text);
        if !differ.is_empty() {
            let w = format!(
                "warning: {} was calibrated on another machine ({}); its figures need not \
                 describe this one: run `flashsim calibrate` here first",
                path.display(),
                differ.join("; ")
            );
            progress(&w);
            warnings.push(w);
        }
        devices.push(path.clone());
    }
    if probe_seconds > 0.0 {
        // Before minutes of writing the weight file: every device must be one a probe scales.
        for path in &devices {
            measured_table(path)?;
        }
    }
    let weights = weights_dir.join(format!("flashsim-weights-{}.bin", exp.name()));
    let copy_bytes =
        file_bytes.div_ceil(crate::calibrate::ALIGN as u64) * crate::calibrate::ALIGN as u64;
    let copies = ((file_gib * (1u64 << 30) as f64 / copy_bytes as f64).ceil() as u64).max(1);
    progress(&format!(
        "writing {} MiB of random f16 weights ({copies} copies of {} MiB) to {} (O_DIRECT) ...",
        (copies * copy_bytes) >> 20,
        copy_bytes >> 20,
        weights.display()
    ));
    crate::real::write_weight_file(&weights, copies * copy_bytes, 7)?;
    // Simulated first; then the real runs in rounds, every point once per round, so that a slow
    // or fast stretch of the machine (its disk and memory drift by tens of percent over
    // minutes) spreads over all points instead of landing on one.
    struct Pending<'p> {
        point: &'p crate::experiment::Point,
        /// The point's device file.
        device_path: PathBuf,
        sim: RunStats,
        /// Simulated on each run's probed device, pooled.
        probed: Vec<TokenStats>,
        pooled: Vec<TokenStats>,
        /// Tokens each real run added to `pooled`, in order.
        run_tokens: Vec<usize>,
        reads: usize,
        bytes: u64,
        busy: u64,
        /// Kernels after warm-up, every round: `[beside reads][gathered]` (started without
        /// or with reads in flight; on contiguous or gathered weights, see [`gathered`]).
        kernel: [[KernelSum; 2]; 2],
    }
    // Bytes read over the time at least one read was in flight.
    let read_bytes_per_s = |p: &Pending| p.bytes as f64 / (p.busy.max(1) as f64 * 1e-12);
    let mut pending = Vec::new();
    for (point, device_path) in exp.points.iter().zip(device_of) {
        let c = &point.config;
        // A point its policy cannot fit in the budget is skipped, as sweeps record it.
        let sim = runner::prepare(exp, point, &mut cache)
            .map_err(anyhow::Error::from)
            .and_then(|mut p| Ok(p.simulate(false)?.0));
        match sim {
            Ok(sim) => pending.push(Pending {
                point,
                device_path,
                sim,
                probed: Vec::new(),
                pooled: Vec::new(),
                run_tokens: Vec::new(),
                reads: 0,
                bytes: 0,
                busy: 0,
                kernel: Default::default(),
            }),
            Err(e) => match runner::infeasible(&e) {
                Some(why) => progress(&format!(
                    "point {} {}: infeasible ({why})",
                    point.index, c.policy
                )),
                None => return Err(e.context(format!("point {}", point.index))),
            },
        }
    }
    let mut probes = Vec::new();
    // One mapping for every probe: the backend's own DRAM is one copy of the weights, so both
    // fit beside each other (mapping it anew for each probe took ~20 s on this project's VM).
    let mut probe_mem = if probe_seconds > 0.0 {
        Some(probe_memory(&weights, progress)?)
    } else {
        None
    };
    for round in 0..repeats.max(1) {
        progress(&format!(
            "round {} of {}: {} points on the real backend",
            round + 1,
            repeats.max(1),
            pending.len()
        ));
        for p in &mut pending {
            // Each run from a fresh policy; tokens pooled over the rounds.
            let mut real_p = runner::prepare(exp, p.point, &mut cache)?;
            if let Some(mem) = &mut probe_mem {
                let c = &p.point.config;
                let seed = c.seed ^ (round as u64) << 32 ^ p.point.index as u64;
                let m = probe(
                    &weights,
                    real_p.device.read_engine,
                    c.io_queue_depth,
                    probe_seconds,
                    seed,
                    mem,
                )
                .with_context(|| format!("probing before point {}", p.point.index))?;
                probes.push((round, p.point.index, m));
            }
            let run = real_p
                .execute_real(&weights, false, Some(copy_bytes))
                .with_context(|| format!("point {} on the real backend", p.point.index))?;
            let (real, r) = (run.stats, run.reads);
            let toks = after_warmup(&real, p.point.config.warmup_tokens as usize);
            let first = real.tokens.len() - toks.len();
            for k in run.kernels.iter().filter(|k| k.token as usize >= first) {
                p.kernel[k.reads_beside as usize][gathered(k) as usize].add(k);
            }
            p.bytes += toks.iter().map(|t| t.read_bytes).sum::<u64>();
            p.busy += toks.iter().map(|t| t.flash_busy.0).sum::<u64>();
            p.reads = r.len();
            p.pooled.extend_from_slice(toks);
            p.run_tokens.push(toks.len());
        }
        // Each point simulated on the device as this round's probes found it: their figures
        // pooled over the round's runs on the same device and queue depth (one 0.5 s probe
        // is as noisy as the drift it is to correct; a round's eleven are not), the same plan
        // as the real runs' (the policy set up on the calibrated device).
        let this_round: Vec<&(usize, usize, Probe)> =
            probes.iter().filter(|(r, _, _)| *r == round).collect();
        for p in &mut pending {
            let c = &p.point.config;
            let key = |i: usize| {
                let o = &exp.points[i].config;
                (o.device.clone(), o.io_queue_depth)
            };
            let same: Vec<&Probe> = this_round
                .iter()
                .filter(|(_, i, _)| key(*i) == key(p.point.index))
                .map(|(_, _, m)| m)
                .collect();
            if same.is_empty() {
                continue;
            }
            let mut sim_p = runner::prepare(exp, p.point, &mut cache)?;
            sim_p.device = probed_device(&p.device_path, &pool(&same), probe_compute)?;
            let sim = sim_p.simulate(false)?.0;
            p.probed
                .extend_from_slice(after_warmup(&sim, c.warmup_tokens as usize));
        }
    }
    let mut rows = Vec::new();
    for p in &pending {
        let c = &p.point.config;
        let mut r = compare(
            p.point.index,
            &c.policy,
            c.dram_budget_gib,
            "calibrated",
            after_warmup(&p.sim, c.warmup_tokens as usize),
            &p.pooled,
            &p.run_tokens,
        );
        let head = &r[0];
        // METRICS[0] is ms per token.
        let runs: Vec<String> = per_run_means(&p.pooled, &p.run_tokens, METRICS[0].1)
            .unwrap_or_default()
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect();
        let ci = head
            .measured_ci95_ms
            .map_or(String::new(), |h| format!(" ± {h:.2}"));
        let mut line = format!(
            "point {} {} {} GiB: ms/token measured {:.2}{ci} (runs {} ms), simulated {:.2} \
             ({:+.1}%)",
            p.point.index,
            c.policy,
            c.dram_budget_gib,
            head.measured_ms,
            runs.join(" / "),
            head.simulated_ms,
            head.diff_pct(),
        );
        if !p.probed.is_empty() {
            let probed = compare(
                p.point.index,
                &c.policy,
                c.dram_budget_gib,
                "probed",
                &p.probed,
                &p.pooled,
                &p.run_tokens,
            );
            line += &format!(
                ", probed {:.2} ({:+.1}%)",
                probed[0].simulated_ms,
                probed[0].diff_pct()
            );
            r.extend(probed);
        }
        progress(&format!(
            "{line}; {} reads per run, {:.3} GB/s while reading",
            p.reads,
            read_bytes_per_s(p) / 1e9
        ));
        rows.extend(r);
    }
    let mut efficiency = Vec::new();
    for p in &pending {
        let c = &p.point.config;
        let dpath = &p.device_path;
        let device = Device::load(dpath)?;
        let sequential_calibrated = match measured_table(dpath) {
            Ok((_, t)) => Some(
                t.sequential_bytes_per_s(c.io_queue_depth)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", dpath.display()))?,
            ),
            Err(_) => None,
        };
        let mine: Vec<&Probe> = probes
            .iter()
            .filter(|(_, i, _)| *i == p.point.index)
            .map(|(_, _, m)| m)
            .collect();
        let pooled = (!mine.is_empty()).then(|| pool(&mine));
        let [[alone_contiguous, alone_gathered], [beside_contiguous, beside_gathered]] = p.kernel;
        let (alone, beside) = (
            alone_contiguous.plus(&alone_gathered),
            beside_contiguous.plus(&beside_gathered),
        );
        let contiguous = alone_contiguous.plus(&beside_contiguous);
        let gathered = alone_gathered.plus(&beside_gathered);
        let all = alone.plus(&beside);
        let e = Efficiency {
            point: p.point.index,
            policy: c.policy.clone(),
            dram_budget_gib: c.dram_budget_gib,
            queue_depth: c.io_queue_depth,
            read_bytes_per_s: read_bytes_per_s(p),
            sequential_calibrated,
            sequential_probed: pooled.as_ref().map(|m| m.sequential.1),
            kernel_bytes_per_s: all.bytes_per_s().unwrap_or(0.0),
            kernel_alone_bytes_per_s: alone.bytes_per_s(),
            kernel_beside_bytes_per_s: beside.bytes_per_s(),
            kernel_ops: (alone.ops, beside.ops),
            kernel_contiguous_bytes_per_s: contiguous.bytes_per_s(),
            kernel_gathered_bytes_per_s: gathered.bytes_per_s(),
            kernel_shape_ops: (contiguous.ops, gathered.ops),
            kernel_gathered_alone_bytes_per_s: alone_gathered.bytes_per_s(),
            kernel_gathered_beside_bytes_per_s: beside_gathered.bytes_per_s(),
            kernel_gathered_ops: (alone_gathered.ops, beside_gathered.ops),
            mean_piece_bytes: all.bytes as f64 / all.pieces.max(1) as f64,
            dram_calibrated: device.dram_bus_bytes_per_s as f64,
            dram_probed: pooled.as_ref().map(|m| m.dram_read),
        };
        efficiency.push(e);
    }
    if !keep_weights {
        std::fs::remove_file(&weights).ok();
    }
    let dir = crate::sweep::results_dir(exp, out_dir, None);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("validate.csv");
    write_csv(&path, &rows)?;
    write_efficiency(&dir.join("efficiency.csv"), &efficiency)?;
    if !probes.is_empty() {
        write_probes(&dir.join("probes.csv"), exp, &probes)?;
    }
    Ok(Validation {
        rows,
        path,
        efficiency,
        warnings,
    })
}

/// Kernels' work added up (see [`crate::real::KernelTime`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KernelSum {
    pub(crate) bytes: u64,
    pub(crate) seconds: f64,
    pub(crate) pieces: usize,
    pub(crate) ops: usize,
}

/// Bytes per piece from which an op counts as streaming contiguous weights: four times the
/// longest piece ramp calibrate has fitted on this project's VM (132-184 KiB), so that an op
/// so counted streams at the memory rate, not the ramp's (a dense layer, the attention
/// weights, the LM head; no gathering policy's rows, columns or bundles come near it).
pub const CONTIGUOUS_PIECE_BYTES: u64 = 1 << 20;

/// Whether a kernel gathered its weights: fewer bytes per piece than [`CONTIGUOUS_PIECE_BYTES`].
pub(crate) fn gathered(k: &crate::real::KernelTime) -> bool {
    k.bytes < CONTIGUOUS_PIECE_BYTES * k.pieces.max(1) as u64
}

impl KernelSum {
    pub(crate) fn add(&mut self, k: &crate::real::KernelTime) {
        self.bytes += k.bytes;
        self.seconds += k.seconds;
        self.pieces += k.pieces;
        self.ops += 1;
    }
    fn plus(&self, o: &KernelSum) -> KernelSum {
        KernelSum {
            bytes: self.bytes + o.bytes,
            seconds: self.seconds + o.seconds,
            pieces: self.pieces + o.pieces,
            ops: self.ops + o.ops,
        }
    }
    pub(crate) fn bytes_per_s(&self) -> Option<f64> {
        (self.ops > 0 && self.seconds > 0.0).then(|| self.bytes as f64 / self.seconds)
    }
}

/// What [`run`] found and wrote.
#[derive(Debug)]
pub struct Validation {
    /// Simulated against measured, per point, device, metric and statistic.
    pub rows: Vec<Row>,
    /// `validate.csv`.
    pub path: PathBuf,
    /// The real backend against the machine's own figures, per point (`efficiency.csv`).
    pub efficiency: Vec<Efficiency>,
    /// Device files calibrated on another machine than this one.
    pub warnings: Vec<String>,
}

/// How close one point's real runs came to what the machine can do (tokens after warm-up, all
/// rounds): its reads against 1 MiB reads in file order at its queue depth (the streaming
/// target: dense streaming should reach 85% of it), and its kernels, on the bytes they
/// touched, against calibrate's DRAM read pass (the sparse kernels' target: 70%). Each against
/// the device file's figure and, with probes, the same figure measured in the rounds.
#[derive(Debug, Clone)]
pub struct Efficiency {
    pub point: usize,
    pub policy: String,
    pub dram_budget_gib: f64,
    pub queue_depth: u32,
    /// Bytes read over the time at least one read was in flight.
    pub read_bytes_per_s: f64,
    /// The device file's 1 MiB reads in file order at `queue_depth`, bytes/s (none for a
    /// preset without a measured table).
    pub sequential_calibrated: Option<f64>,
    /// The probes' 1 MiB reads in file order before this point's runs, pooled.
    pub sequential_probed: Option<f64>,
    /// Bytes the kernels streamed (op weights where the reads put them, and the rest of each
    /// op's bytes) over the kernels' own time; of the kernels that started with no read in
    /// flight, and of those that started beside reads (the readers and the disk's interrupts
    /// share the CPU with them).
    pub kernel_bytes_per_s: f64,
    pub kernel_alone_bytes_per_s: Option<f64>,
    pub kernel_beside_bytes_per_s: Option<f64>,
    /// Kernels timed: (alone, beside reads).
    pub kernel_ops: (usize, usize),
    /// The same kernels' bytes over their time, of those that streamed contiguous weights
    /// (at least [`CONTIGUOUS_PIECE_BYTES`] a piece) and of those that gathered them: what
    /// gathering costs against the contiguous ops of the same runs, whatever the machine's
    /// memory did meanwhile (on this project's VM it moves by 2-3x from op to op).
    pub kernel_contiguous_bytes_per_s: Option<f64>,
    pub kernel_gathered_bytes_per_s: Option<f64>,
    /// Kernels timed: (contiguous, gathered).
    pub kernel_shape_ops: (usize, usize),
    /// The gathered kernels' bytes over their time, of those that started with no read in
    /// flight and of those that started beside reads: the gathering kernel by itself, and
    /// what reads beside it take from it (the two splits above mix: a policy's ops beside
    /// reads are often all gathered, its ops alone mostly contiguous).
    pub kernel_gathered_alone_bytes_per_s: Option<f64>,
    pub kernel_gathered_beside_bytes_per_s: Option<f64>,
    /// Gathered kernels timed: (alone, beside reads).
    pub kernel_gathered_ops: (usize, usize),
    /// Bytes per piece a kernel streamed (a row, column, bundle or channel run as listed).
    pub mean_piece_bytes: f64,
    /// The device file's DRAM bandwidth and the probes' DRAM read pass (pooled), bytes/s.
    pub dram_calibrated: f64,
    pub dram_probed: Option<f64>,
}

impl Efficiency {
    /// One line for the log.
    pub fn line(&self) -> String {
        // A share, or "-" where either figure is missing.
        let pct = |x: Option<f64>, of: Option<f64>| match (x, of) {
            (Some(x), Some(v)) => format!("{:.1}%", x / v * 100.0),
            _ => "-".into(),
        };
        let gb = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.3}", v / 1e9));
        format!(
            "efficiency, point {} {} {} GiB: reads {:.3} GB/s while reading = {} of the \
             calibrated 1 MiB file-order figure at QD {} ({} GB/s), {} of the probed ({}); \
             kernels {:.2} GB/s on the bytes they touched ({:.1} KiB per piece) = {} of the \
             calibrated DRAM read ({:.2} GB/s), {} of the probed ({}); alone ({} ops) {} GB/s = \
             {} of the probed, beside reads ({} ops) {} GB/s = {} of the probed; on contiguous \
             weights ({} ops) {} GB/s, gathered ({} ops) {} GB/s = {} of contiguous; gathered \
             alone ({} ops) {} GB/s = {} of the probed, gathered beside reads ({} ops) {} GB/s",
            self.point,
            self.policy,
            self.dram_budget_gib,
            self.read_bytes_per_s / 1e9,
            pct(Some(self.read_bytes_per_s), self.sequential_calibrated),
            self.queue_depth,
            gb(self.sequential_calibrated),
            pct(Some(self.read_bytes_per_s), self.sequential_probed),
            gb(self.sequential_probed),
            self.kernel_bytes_per_s / 1e9,
            self.mean_piece_bytes / 1024.0,
            pct(Some(self.kernel_bytes_per_s), Some(self.dram_calibrated)),
            self.dram_calibrated / 1e9,
            pct(Some(self.kernel_bytes_per_s), self.dram_probed),
            gb(self.dram_probed),
            self.kernel_ops.0,
            gb(self.kernel_alone_bytes_per_s),
            pct(self.kernel_alone_bytes_per_s, self.dram_probed),
            self.kernel_ops.1,
            gb(self.kernel_beside_bytes_per_s),
            pct(self.kernel_beside_bytes_per_s, self.dram_probed),
            self.kernel_shape_ops.0,
            gb(self.kernel_contiguous_bytes_per_s),
            self.kernel_shape_ops.1,
            gb(self.kernel_gathered_bytes_per_s),
            pct(
                self.kernel_gathered_bytes_per_s,
                self.kernel_contiguous_bytes_per_s
            ),
            self.kernel_gathered_ops.0,
            gb(self.kernel_gathered_alone_bytes_per_s),
            pct(self.kernel_gathered_alone_bytes_per_s, self.dram_probed),
            self.kernel_gathered_ops.1,
            gb(self.kernel_gathered_beside_bytes_per_s),
        )
    }
}

/// Writes `efficiency.csv` (GB/s and percent; empty where a figure is missing).
fn write_efficiency(path: &Path, rows: &[Efficiency]) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    writeln!(
        f,
        "point,policy,dram_budget_gib,queue_depth,read_gb_per_s,sequential_calibrated_gb_per_s,\
         sequential_probed_gb_per_s,read_pct_of_calibrated,read_pct_of_probed,kernel_gb_per_s,\
         mean_piece_kib,dram_calibrated_gb_per_s,dram_probed_gb_per_s,kernel_pct_of_calibrated,\
         kernel_pct_of_probed,kernel_alone_ops,kernel_alone_gb_per_s,kernel_beside_ops,\
         kernel_beside_gb_per_s,kernel_contiguous_ops,kernel_contiguous_gb_per_s,\
         kernel_gathered_ops,kernel_gathered_gb_per_s,gathered_pct_of_contiguous,\
         kernel_gathered_alone_ops,kernel_gathered_alone_gb_per_s,kernel_gathered_beside_ops,\
         kernel_gathered_beside_gb_per_s"
    )?;
    let gb = |v: Option<f64>| v.map_or(String::new(), |v| format!("{:.6}", v / 1e9));
    let pct =
        |x: f64, of: Option<f64>| of.map_or(String::new(), |v| format!("{:.2}", x / v * 100.0));
    for e in rows {
        writeln!(
            f,
            "{},{},{},{},{},{},{},{},{},{},{:.3},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            e.point,
            e.policy,
            e.dram_budget_gib,
            e.queue_depth,
            gb(Some(e.read_bytes_per_s)),
            gb(e.sequential_calibrated),
            gb(e.sequential_probed),
            pct(e.read_bytes_per_s, e.sequential_calibrated),
            pct(e.read_bytes_per_s, e.sequential_probed),
            gb(Some(e.kernel_bytes_per_s)),
            e.mean_piece_bytes / 1024.0,
            gb(Some(e.dram_calibrated)),
            gb(e.dram_probed),
            pct(e.kernel_bytes_per_s, Some(e.dram_calibrated)),
            pct(e.kernel_bytes_per_s, e.dram_probed),
            e.kernel_ops.0,
            gb(e.kernel_alone_bytes_per_s),
            e.kernel_ops.1,
            gb(e.kernel_beside_bytes_per_s),
            e.kernel_shape_ops.0,
            gb(e.kernel_contiguous_bytes_per_s),
            e.kernel_shape_ops.1,
            gb(e.kernel_gathered_bytes_per_s),
            e.kernel_gathered_bytes_per_s
                .map_or(String::new(), |g| pct(g, e.kernel_contiguous_bytes_per_s)),
            e.kernel_gathered_ops.0,
            gb(e.kernel_gathered_alone_bytes_per_s),
            e.kernel_gathered_ops.1,
            gb(e.kernel_gathered_beside_bytes_per_s),
        )?;
    }
    Ok(())
}

/// Writes what each probe measured, one row per real run (`probes.csv`).
fn write_probes(path: &Path, exp: &Experiment, probes: &[(usize, usize, Probe)]) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    let mut head = "round,point,policy,dram_budget_gib,queue_depth".to_string();
    for kib in PROBE_SIZES_KIB {
        head += &format!(",random_{kib}_kib_gb_per_s");
    }
    writeln!(
        f,
        "{head},sequential_{}_kib_gb_per_s,op_{}_mib_us,dram_read_gb_per_s",
        SEQUENTIAL_BYTES >> 10,
        BESIDE_READS_OP_BYTES >> 20
    )?;
    for (round, point, p) in probes {
        let c = &exp.points[*point].config;
        let mut line = format!(
            "{},{point},{},{},{}",
            round + 1,
            c.policy,
            c.dram_budget_gib,
            p.sequential.0
        );
        for r in &p.random {
            line += &format!(",{:.6}", r.2 / 1e9);
        }
        writeln!(
            f,
            "{line},{:.6},{:.1},{:.3}",
            p.sequential.1 / 1e9,
            p.op_seconds * 1e6,
            p.dram_read / 1e9
        )?;
    }
    Ok(())
}

/// What a row's simulation ran on (see [`Row::device`]).
pub const DEVICES: [&str; 2] = ["calibrated", "probed"];

/// Writes `rows` as `validate.csv` (simulated and measured to the nanosecond).
pub fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    writeln!(
        f,
        "point,policy,dram_budget_gib,device,metric,stat,simulated_ms,measured_ms,diff_pct,\
         measured_ci95_ms"
    )?;
    for r in rows {
        writeln!(
            f,
            "{},{},{},{},{},{},{:.6},{:.6},{:.3},{}",
            r.point,
            r.policy,
            r.dram_budget_gib,
            r.device,
            r.metric,
            r.stat,
            r.simulated_ms,
            r.measured_ms,
            r.diff_pct(),
            r.measured_ci95_ms
                .map_or(String::new(), |h| format!("{h:.6}"))
        )?;
    }
    Ok(())
}

/// The rows of a `validate.csv` this module wrote (to redraw its plot).
pub fn read_csv(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path)?;
    let known = |name: &str, names: &[&'static str]| {
        names
            .iter()
            .copied()
            .find(|n| *n == name)
            .ok_or_else(|| anyhow::anyhow!("{}: unknown name `{name}`", path.display()))
    };
    let metrics: Vec<&'static str> = METRICS.iter().map(|m| m.0).collect();
    text.lines()
        .skip(1)
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split(',').collect();
            let bad = || anyhow::anyhow!("{}:{}: not a validate.csv row", path.display(), i + 2);
            // Tables written before probes have no `device` column (all calibrated), before
            // intervals no `measured_ci95_ms`.
            let (device, f) = match f.len() {
                9 | 10 => (known(f[3], &DEVICES)?, [&f[..3], &f[4..]].concat()),
                8 => ("calibrated", f),
                _ => return Err(bad()),
            };
            let num = |s: &str| s.parse::<f64>().map_err(|_| bad());
            let ci = match f.get(8) {
                Some(&"") | None => None,
                Some(v) => Some(num(v)?),
            };
            Ok(Row {
                point: f[0].parse().map_err(|_| bad())?,
                policy: f[1].to_string(),
                dram_budget_gib: num(f[2])?,
                device,
                metric: known(f[3], &metrics)?,
                stat: known(f[4], &["mean", "p50", "p90", "p99"])?,
                simulated_ms: num(f[5])?,
                measured_ms: num(f[6])?,
                measured_ci95_ms: ci,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> MeasuredConfig {
        MeasuredConfig {
            model: "measured".into(),
            chunk_kib: vec![16.0, 128.0, 1024.0],
            queue_depths: vec![1, 8],
            throughput_gb_per_s: vec![vec![0.1, 0.4], vec![0.5, 1.0], vec![1.0, 1.6]],
            sequential_queue_depths: vec![1, 8],
            sequential_gb_per_s: vec![1.2, 2.0],
            near_gap_kib: 64.0,
            near_chunk_kib: vec![16.0, 64.0],
            near_queue_depths: vec![8],
            near_gb_per_s: vec![vec![0.5], vec![0.9]],
            near_extra_gaps_kib: vec![16.0],
            near_extra_gb_per_s: vec![vec![vec![0.6], vec![1.0]]],
        }
    }

    #[test]
    fn the_efficiency_line_gives_each_share_and_a_dash_where_a_figure_is_missing() {
        let e = Efficiency {
            point: 3,
            policy: "dip".into(),
            dram_budget_gib: 1.0,
            queue_depth: 8,
            read_bytes_per_s: 1.5e9,
            sequential_calibrated: Some(2e9),
            sequential_probed: None,
            kernel_bytes_per_s: 14e9,
            kernel_alone_bytes_per_s: Some(16e9),
            kernel_beside_bytes_per_s: None,
            kernel_ops: (4, 0),
            kernel_contiguous_bytes_per_s: Some(20e9),
            kernel_gathered_bytes_per_s: Some(15e9),
            kernel_shape_ops: (2, 2),
            kernel_gathered_alone_bytes_per_s: None,
            kernel_gathered_beside_bytes_per_s: None,
            kernel_gathered_ops: (0, 0),
            mean_piece_bytes: 8192.0,
            dram_calibrated: 28e9,
            dram_probed: Some(25e9),
        };
        let line = e.line();
        for part in [
            "reads 1.500 GB/s while reading = 75.0% of the calibrated",
            "QD 8 (2.000 GB/s), - of the probed (-)",
            "kernels 14.00 GB/s on the bytes they touched (8.0 KiB per piece) = 50.0% of the \
             calibrated DRAM read (28.00 GB/s), 56.0% of the probed (25.000)",
            "alone (4 ops) 16.000 GB/s = 64.0% of the probed, beside reads (0 ops) - GB/s = -",
            "gathered (2 ops) 15.000 GB/s = 75.0% of contiguous",
            "gathered alone (0 ops) - GB/s = - of the probed",
        ] {
            assert!(line.contains(part), "{part:?} not in {line:?}");
        }
    }

    #[test]
    fn a_probe_scales_each_row_by_its_size_and_the_sequential_figures_by_theirs() {
        // 16 KiB QD 8 at half the table, 1 MiB QD 8 at 1.2x; 128 KiB lies halfway between on
        // log size, so it gets sqrt(0.5 * 1.2). The sequential QD 8 figure fell from 2.0 to 1.5.
        let probe = [(16 << 10, 8, 0.2e9), (1 << 20, 8, 1.92e9)];
        let t = table().rescaled(&probe, Some((8, 1.5e9))).unwrap();
        let f = [0.5, (0.6f64).sqrt(), 1.2];
        for (r, row) in t.throughput_gb_per_s.iter().enumerate() {
            for (j, g) in row.iter().enumerate() {
                let want = table().throughput_gb_per_s[r][j] * f[r];
                assert!(
                    (g / want - 1.0).abs() < 1e-9,
                    "row {r} col {j}: {g} vs {want}"
                );
            }
        }
        for (g, then) in t.sequential_gb_per_s.iter().zip([1.2, 2.0]) {
            assert!((g / (then * 0.75) - 1.0).abs() < 1e-9, "{g}");
        }
        // The near figures as the table's rows of their sizes: 16 KiB by 0.5, 64 KiB (1/3 of
        // the way from 16 KiB to 1 MiB on log size) by 0.5^(2/3) · 1.2^(1/3).
        let f64k = 0.5f64.powf(2.0 / 3.0) * 1.2f64.powf(1.0 / 3.0);
        for (g, want) in t.near_gb_per_s.iter().zip([0.5 * 0.5, 0.9 * f64k]) {
            assert!((g[0] / want - 1.0).abs() < 1e-9, "{g:?} vs {want}");
        }
        // The figures at the other gap alike.
        for (g, want) in t.near_extra_gb_per_s[0].iter().zip([0.6 * 0.5, 1.0 * f64k]) {
            assert!((g[0] / want - 1.0).abs() < 1e-9, "{g:?} vs {want}");
        }
        // One probe size: every row by the same ratio; beyond it, clamped.
        // The table at 64 KiB QD 8: 2/3 of the way from 16 to 128 KiB on log size, so
        // 0.4^(1/3) · 1.0^(2/3) GB/s.
        let t = table().rescaled(&[(64 << 10, 8, 0.5e9)], None).unwrap();
        let ratio = 0.5 / 0.4f64.powf(1.0 / 3.0);
        for (r, row) in t.throughput_gb_per_s.iter().enumerate() {
            for (j, g) in row.iter().enumerate() {
                let want = table().throughput_gb_per_s[r][j] * ratio;
                assert!((g / want - 1.0).abs() < 1e-9, "row {r} col {j}");
            }
        }
        assert_eq!(t.sequential_gb_per_s, table().sequential_gb_per_s);
        assert!(table().rescaled(&[(1 << 20, 8, 0.0)], None).is_err());
    }

    #[test]
    fn pooled_probes_average_each_figure() {
        let a = Probe {
            random: vec![(16 << 10, 8, 0.2e9), (1 << 20, 8, 1.0e9)],
            sequential: (8, 1.0e9),
            op_seconds: 0.004,
            dram_read: 20e9,
        };
        let b = Probe {
            random: vec![(16 << 10, 8, 0.4e9), (1 << 20, 8, 2.0e9)],
            sequential: (8, 2.0e9),
            op_seconds: 0.002,
            dram_read: 30e9,
        };
        let p = pool(&[&a, &b]);
        assert_eq!(p.random, vec![(16 << 10, 8, 0.3e9), (1 << 20, 8, 1.5e9)]);
        assert_eq!(p.sequential, (8, 1.5e9));
        assert!((p.op_seconds - 0.003).abs() < 1e-15);
        assert_eq!(p.dram_read, 25e9);
        assert_eq!(pool(&[&a]), a);
    }

    #[test]
    fn a_probed_device_takes_what_the_probe_measured() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/devices/vm-ext4-virtio.toml");
        let calibrated = Device::load(&path).unwrap();
        let cpu = |d: &Device| d.units.iter().find(|u| u.name == "cpu").unwrap().clone();
        let op = |d: &Device| {
            cpu(d)
                .op_time(BESIDE_READS_OP_BYTES, BESIDE_READS_OP_BYTES, 1, false)
                .unwrap()
                .as_s()
        };
        // The probe timed the 64 MiB op 25% slower than the device file says it takes.
        let probe = Probe {
            random: vec![(16 << 10, 8, 0.2e9), (1 << 20, 8, 1.0e9)],
            sequential: (8, 1.1e9),
            op_seconds: 1.25 * op(&calibrated),
            dram_read: 25e9,
        };
        let probed = probed_device(&path, &probe, true).unwrap();
        // The 64 MiB op takes what the probe timed (to the picosecond's rounding of the rate),
        // and what the device file says without `compute`.
        let t = op(&probed);
        assert!((t / probe.op_seconds - 1.0).abs() < 1e-6, "{t}");
        let reads_only = probed_device(&path, &probe, false).unwrap();
        assert_eq!(op(&reads_only), op(&calibrated));
        // A 1 MiB read alone: the table's 1 MiB row was scaled by the probe's ratio at QD 8.
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: toml::Table = text.parse().unwrap();
        let c: MeasuredConfig = doc["flash"].clone().try_into().unwrap();
        let mib = c.chunk_kib.iter().position(|&k| k == 1024.0).unwrap();
        let qd8 = c.queue_depths.iter().position(|&q| q == 8).unwrap();
        let f = 1.0 / c.throughput_gb_per_s[mib][qd8];
        let (mut a, mut b) = (calibrated.flash.fresh(), probed.flash.fresh());
        let alone = |fl: &mut Box<dyn crate::hw::flash::Flash>| {
            fl.submit(Ps::ZERO, 0, 1 << 20).unwrap().as_s()
        };
        let (ta, tb) = (alone(&mut a), alone(&mut b));
        assert!((ta / tb / f - 1.0).abs() < 1e-6, "{ta} {tb} {f}");
        // A preset has no table to scale.
        let preset = path.with_file_name("ufs40-phone.toml");
        let e = probed_device(&preset, &probe, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a calibrated device file"), "{e}");
    }

    #[test]
    fn the_measured_mean_gets_the_interval_of_its_runs_means() {
        // 1, 2, 3, 4: mean 2.5, s = 1.291, t(3) = 3.182: 3.182 * 1.291 / 2.
        let h = ci95_half_width(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!(
            (h - 3.182 * (5.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12,
            "{h}"
        );
        assert_eq!(ci95_half_width(&[7.0]), None);
        assert_eq!(ci95_half_width(&[7.0, 7.0]), Some(0.0));
        let tok = |ms: u64| TokenStats {
            wall: Ps(ms * 1_000_000_000),
            ..Default::default()
        };
        // Simulated 10 ms; measured: a run of tokens 8, 10 (mean 9) and one of 11, 13, 12 (12).
        let sim = [tok(10); 3];
        let real = [tok(8), tok(10), tok(11), tok(13), tok(12)];
        let rows = compare(0, "dip", 1.0, "calibrated", &sim, &real, &[2, 3]);
        let head = &rows[0];
        assert_eq!((head.metric, head.stat), ("ms_per_token", "mean"));
        // The pooled mean is the tokens' (10.8), the interval the two runs' means' (9, 12).
        assert!((head.measured_ms - 10.8).abs() < 1e-12);
        let want = 12.706 * (4.5f64 / 2.0).sqrt();
        assert!((head.measured_ci95_ms.unwrap() - want).abs() < 1e-9);
        assert_eq!(head.within_ci95(), Some(true));
        // Quantile rows carry none; one run gives none; runs that do not add up give none.
        assert!(rows
            .iter()
            .filter(|r| r.stat != "mean")
            .all(|r| r.measured_ci95_ms.is_none()));
        assert_eq!(
            compare(0, "dip", 1.0, "calibrated", &sim, &real, &[5])[0].measured_ci95_ms,
            None
        );
        assert_eq!(
            compare(0, "dip", 1.0, "calibrated", &sim, &real, &[2, 2])[0].measured_ci95_ms,
            None
        );
        // The summary counts it within 10% (-7.4%) and within its interval.
        let lines = summary(&rows);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("calibrated: 1 of 1 points within 10%"),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains("1 of 1 within the measured mean's 95% interval"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn a_written_table_reads_back_and_a_bad_row_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("validate.csv");
        let rows = vec![Row {
            point: 3,
            policy: "dip".into(),
            dram_budget_gib: 1.25,
            device: "probed",
            metric: "flash_busy_ms",
            stat: "p90",
            simulated_ms: 12.5,
            measured_ms: 10.0,
            measured_ci95_ms: Some(3.0),
        }];
        write_csv(&path, &rows).unwrap();
        let back = read_csv(&path).unwrap();
        assert_eq!(
            (
                back[0].point,
                back[0].device,
                back[0].metric,
                back[0].stat,
                back[0].diff_pct()
            ),
            (3, "probed", "flash_busy_ms", "p90", 25.0)
        );
        assert_eq!(back[0].measured_ci95_ms, Some(3.0));
        assert_eq!(back[0].within_ci95(), Some(true));
        // A table from before intervals (9 columns) and one from before probes (8).
        std::fs::write(&path, "header\n1,dip,1,probed,ms_per_token,mean,1,2,-50\n").unwrap();
        let back = read_csv(&path).unwrap();
        assert_eq!((back[0].device, back[0].measured_ci95_ms), ("probed", None));
        std::fs::write(&path, "header\n1,dip,1,ms_per_token,mean,1,2,-50\n").unwrap();
        assert_eq!(read_csv(&path).unwrap()[0].device, "calibrated");
        std::fs::write(&path, "header\n1,dip,1,no_such_metric,mean,1,1,0\n").unwrap();
        let e = read_csv(&path).unwrap_err().to_string();
        assert!(e.contains("unknown name `no_such_metric`"), "{e}");
    }
}
