//! Sweeps: an experiment's points run in parallel, each finished point written durably as it
//! goes, so that a killed sweep resumes where it stopped; shards of a sweep for a cluster, and
//! their merge; the results files and the manifest of a run.
//!
//! Results folder `DIR = <out_dir>/<experiment name>` (a shard: `DIR/shards/<i>-of-<N>`):
//! - `points.jsonl`: one JSON line per finished point (index, hash of its resolved config,
//!   metrics or why it was infeasible), appended and synced as each point ends. A rerun reads
//!   it, drops a torn last line, keeps the lines whose config hash still matches, and runs only
//!   the rest: no row lost, none twice.
//! - `results.csv`, `results.parquet`: every point in index order (rewritten from
//!   `points.jsonl` at the end, so 1 or N threads, resumed or not, sharded and merged or not
//!   give the same bytes).
//! - `resolved.jsonl`: each point's full configuration, defaults filled in.
//! - `manifest.json`: flashsim version, git commit, host, threads, trace hashes, wall time.

use crate::experiment::{Experiment, Point};
use crate::output;
use crate::runner::{self, Cache, Metrics, PointResult};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How to run a sweep.
#[derive(Debug, Clone, Default)]
pub struct SweepOptions {
    /// Worker threads; `None` = every core.
    pub threads: Option<usize>,
    /// Run only slice `i` of `n` (points whose index is `i` mod `n`).
    pub shard: Option<(usize, usize)>,
    /// Ignore earlier results in the folder and start afresh.
    pub fresh: bool,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
}

/// One line of `points.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub index: usize,
    /// Hash of the point's resolved configuration: a line is reused only for the same point.
    pub config_hash: String,
    pub metrics: Option<Metrics>,
    pub derived: String,
    pub infeasible: Option<String>,
}

/// What a sweep did.
#[derive(Debug)]
pub struct SweepOutcome {
    /// Every point of the (shard of the) experiment, in index order.
    pub results: Vec<PointResult>,
    pub dir: PathBuf,
    pub ran: usize,
    pub resumed: usize,
    pub wall_s: f64,
}

/// The results folder of `exp` under `out_dir` (of one shard when given).
pub fn results_dir(exp: &Experiment, out_dir: &Path, shard: Option<(usize, usize)>) -> PathBuf {
    let base = out_dir.join(exp.name());
    match shard {
        Some((i, n)) => base.join("shards").join(format!("{i}-of-{n}")),
        None => base,
    }
}

/// The resolved configuration of a point, as JSON.
fn resolved(point: &Point) -> serde_json::Value {
    serde_json::json!({
        "index": point.index,
        "config": point.config,
        "policy_params": point.policy_params,
        "axes": point.axis_values,
    })
}

/// FNV-1a of the point's resolved configuration, in hex.
pub fn config_hash(point: &Point) -> String {
    format!(
        "{:016x}",
        runner::fnv1a(resolved(point).to_string().as_bytes())
    )
}

/// Reads `points.jsonl`, cutting a torn last line off the file so later appends start clean.
/// Returns the records, first line per index.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut good_len = 0usize;
    let mut pos = 0usize;
    while pos < bytes.len() {
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            break; // a line the kill cut short
        };
        let line = &bytes[pos..pos + nl];
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => out.push(r),
            Err(e) => bail!(
                "{}: line {} is not a result record ({e}); move the file away to start afresh",
                path.display(),
                out.len() + 1
            ),
        }
        pos += nl + 1;
        good_len = pos;
    }
    if good_len < bytes.len() {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(good_len as u64)?;
        f.sync_all()?;
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|r| seen.insert(r.index));
    Ok(out)
}

fn to_record(r: &PointResult) -> Record {
    Record {
        index: r.point.index,
        config_hash: config_hash(&r.point),
        metrics: r.infeasible.is_none().then_some(r.metrics),
        derived: r.derived.clone(),
        infeasible: r.infeasible.clone(),
    }
}

fn from_record(point: &Point, r: &Record) -> PointResult {
    PointResult {
        point: point.clone(),
        metrics: r.metrics.unwrap_or_default(),
        derived: r.derived.clone(),
        infeasible: r.infeasible.clone(),
    }
}

/// Appends records to `points.jsonl`, each synced before the next point is reported done.
struct Journal {
    file: std::fs::File,
}

impl Journal {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Journal { file })
    }
    fn append(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(r)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        Ok(())
    }
}

/// Runs (or resumes) the sweep of `exp` into `out_dir`, then writes the results files.
pub fn run_sweep(exp: &Experiment, out_dir: &Path, opts: &SweepOptions) -> Result<SweepOutcome> {
    let started = std::time::Instant::now();
    if let Some((i, n)) = opts.shard {
        if n == 0 || i >= n {
            bail!("--shard {i}/{n}: need 0 <= i < N");
        }
    }
    let dir = results_dir(exp, out_dir, opts.shard);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let journal_path = dir.join("points.jsonl");
    if opts.fresh {
        let _ = std::fs::remove_file(&journal_path);
    }
    let mine: Vec<&Point> = exp
        .points
        .iter()
        .filter(|p| opts.shard.is_none_or(|(i, n)| p.index % n == i))
        .collect();
    let hashes: BTreeMap<usize, String> = mine.iter().map(|p| (p.index, config_hash(p))).collect();
    let mut done: BTreeMap<usize, Record> = read_records(&journal_path)?
        .into_iter()
        .filter(|r| hashes.get(&r.index) == Some(&r.config_hash))
        .map(|r| (r.index, r))
        .collect();
    let resumed = done.len();
    let todo: Vec<&Point> = mine
        .iter()
        .copied()
        .filter(|p| !done.contains_key(&p.index))
        .collect();
    let traces = runner::materialize_traces(exp)?;

    let journal = Mutex::new(Journal::open(&journal_path)?);
    let bar = progress_bar(opts.progress, mine.len() as u64, resumed as u64);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.unwrap_or(0))
        .build()?;
    let threads = pool.current_num_threads();
    let fresh: Vec<Record> = pool.install(|| {
        todo.par_iter()
            .map_init(Cache::default, |cache, p| -> Result<Record> {
                let r = runner::run_point_or_infeasible(exp, p, cache)?;
                let rec = to_record(&r);
                journal
                    .lock()
                    .map_err(|_| anyhow::anyhow!("journal lock poisoned"))?
                    .append(&rec)?;
                if let Some(b) = &bar {
                    if let Some(why) = &rec.infeasible {
                        b.println(format!("point {} infeasible: {why}", p.index));
                    }
                    b.inc(1);
                }
                Ok(rec)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let ran = fresh.len();
    done.extend(fresh.into_iter().map(|r| (r.index, r)));
    let results: Vec<PointResult> = mine
        .iter()
        .map(|p| from_record(p, &done[&p.index]))
        .collect();
    if !results.is_empty() && results.iter().all(|r| r.infeasible.is_some()) {
        bail!(
            "no point of {} fits its DRAM budget; the first: {}",
            exp.src.path.display(),
            results[0].infeasible.as_deref().unwrap_or_default()
        );
    }
    let wall_s = started.elapsed().as_secs_f64();
    write_outputs(exp, &results, &dir)?;
    write_manifest(
        exp, &dir, &traces, threads, opts.shard, ran, resumed, wall_s,
    )?;
    Ok(SweepOutcome {
        results,
        dir,
        ran,
        resumed,
        wall_s,
    })
}

/// results.csv, results.parquet and resolved.jsonl for `results` (index order).
pub fn write_outputs(exp: &Experiment, results: &[PointResult], dir: &Path) -> Result<()> {
    output::write_csv(exp, results, dir)?;
    output::write_parquet(exp, results, dir)?;
    let mut text = String::new();
    for r in results {
        text.push_str(&resolved(&r.point).to_string());
        text.push('\n');
    }
    write_atomic(&dir.join("resolved.jsonl"), text.as_bytes())
}

/// Writes `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn progress_bar(want: bool, total: u64, done: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !want || !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} points  {per_sec}  ETA {eta}  {elapsed} elapsed",
        )
        .expect("valid template"),
    );
    b.set_position(done);
    Some(b)
}

#[allow(clippy::too_many_arguments)]
fn write_manifest(
    exp: &Experiment,
    dir: &Path,
    traces: &[PathBuf],
    threads: usize,
    shard: Option<(usize, usize)>,
    ran: usize,
    resumed: usize,
    wall_s: f64,
) -> Result<()> {
    let trace_hashes: BTreeMap<String, String> = traces
        .iter()
        .map(|p| {
            let h = flashsim_workloads::checkpoint::sha256_file(p)
                .unwrap_or_else(|e| format!("unreadable: {e}"));
            (p.display().to_string(), h)
        })
        .collect();
    let exp_dir = exp.src.path.parent().unwrap_or(Path::new("."));
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(exp_dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let m = serde_json::json!({
        "flashsim_version": env!("CARGO_PKG_VERSION"),
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_dirty": git(&["status", "--porcelain"]).map(|s| !s.is_empty()),
        "host": host,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "threads": threads,
        "experiment": exp.src.path.display().to_string(),
        "experiment_sha256": sha256_hex(exp.src.text.as_bytes()),
        "shard": shard.map(|(i, n)| format!("{i}/{n}")),
        "points": exp.points.len(),
        "points_run": ran,
        "points_resumed": resumed,
        "traces_sha256": trace_hashes,
        "wall_s": wall_s,
        "finished_unix_s": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    write_atomic(
        &dir.join("manifest.json"),
        serde_json::to_string_pretty(&m)?.as_bytes(),
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Combines the shards of `exp` under `out_dir` into the files an unsharded run writes.
pub fn merge(exp: &Experiment, out_dir: &Path) -> Result<Vec<PointResult>> {
    let base = results_dir(exp, out_dir, None);
    let shards_dir = base.join("shards");
    let mut records: BTreeMap<usize, Record> = BTreeMap::new();
    let mut shard_dirs: Vec<PathBuf> = std::fs::read_dir(&shards_dir)
        .with_context(|| format!("no shards in {}", shards_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("points.jsonl").is_file())
        .collect();
    shard_dirs.sort();
    for d in &shard_dirs {
        for r in read_records(&d.join("points.jsonl"))? {
            records.entry(r.index).or_insert(r);
        }
    }
    let mut missing = Vec::new();
    let mut results = Vec::new();
    for p in &exp.points {
        match records.get(&p.index) {
            Some(r) if r.config_hash == config_hash(p) => results.push(from_record(p, r)),
            _ => missing.push(p.index),
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} of {} points are missing from the shards in {} (first: {:?}); run the missing shards",
            missing.len(),
            exp.points.len(),
            shards_dir.display(),
            &missing[..missing.len().min(10)]
        );
    }
    let mut text = Vec::new();
    for r in &results {
        text.extend(serde_json::to_vec(&to_record(r))?);
        text.push(b'\n');
    }
    write_atomic(&base.join("points.jsonl"), &text)?;
    write_outputs(exp, &results, &base)?;
    Ok(results)
}
