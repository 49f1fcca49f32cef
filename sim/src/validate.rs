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

use crate::calibrate::quantile;
use crate::executor::{RunStats, TokenStats};
use crate::experiment::Experiment;
use crate::runner::{self, Cache};
use crate::time::Ps;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One row of the validation table.
#[derive(Debug, Clone)]
pub struct Row {
    pub point: usize,
    pub policy: String,
    pub dram_budget_gib: f64,
    pub metric: &'static str,
    pub stat: &'static str,
    pub simulated_ms: f64,
    pub measured_ms: f64,
}

impl Row {
    pub fn diff_pct(&self) -> f64 {
        (self.simulated_ms / self.measured_ms - 1.0) * 100.0
    }
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

/// The comparison rows of one point from its simulated and measured tokens (after warm-up; the
/// measured ones pooled over repeats).
pub fn compare(
    point: usize,
    policy: &str,
    budget: f64,
    st: &[TokenStats],
    rt: &[TokenStats],
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
        let mut stats = vec![("mean", mean(&a), mean(&b))];
        if metric == "ms_per_token" {
            for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
                stats.push((name, quantile(&a, q), quantile(&b, q)));
            }
        }
        for (stat, s, m) in stats {
            rows.push(Row {
                point,
                policy: policy.to_string(),
                dram_budget_gib: budget,
                metric,
                stat,
                simulated_ms: s,
                measured_ms: m,
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
pub fn run(
    exp: &Experiment,
    weights_dir: &Path,
    out_dir: &Path,
    keep_weights: bool,
    repeats: usize,
    file_gib: f64,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<Row>, PathBuf)> {
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
        sim: RunStats,
        pooled: Vec<TokenStats>,
        run_means: Vec<f64>,
        reads: usize,
        bytes: u64,
        busy: u64,
    }
    let mut pending = Vec::new();
    for point in &exp.points {
        let c = &point.config;
        // A point its policy cannot fit in the budget is skipped, as sweeps record it.
        let sim = runner::prepare(exp, point, &mut cache)
            .map_err(anyhow::Error::from)
            .and_then(|mut p| Ok(p.simulate(false)?.0));
        match sim {
            Ok(sim) => pending.push(Pending {
                point,
                sim,
                pooled: Vec::new(),
                run_means: Vec::new(),
                reads: 0,
                bytes: 0,
                busy: 0,
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
            let run = real_p
                .execute_real(&weights, false, Some(copy_bytes))
                .with_context(|| format!("point {} on the real backend", p.point.index))?;
            let (real, r) = (run.stats, run.reads);
            let toks = after_warmup(&real, p.point.config.warmup_tokens as usize);
            p.run_means
                .push(toks.iter().map(|t| ms(t.wall)).sum::<f64>() / toks.len() as f64);
            p.bytes += toks.iter().map(|t| t.read_bytes).sum::<u64>();
            p.busy += toks.iter().map(|t| t.flash_busy.0).sum::<u64>();
            p.reads = r.len();
            p.pooled.extend_from_slice(toks);
        }
    }
    let mut rows = Vec::new();
    for p in &pending {
        let c = &p.point.config;
        let r = compare(
            p.point.index,
            &c.policy,
            c.dram_budget_gib,
            after_warmup(&p.sim, c.warmup_tokens as usize),
            &p.pooled,
        );
        let head = &r[0];
        let runs: Vec<String> = p.run_means.iter().map(|m| format!("{m:.0}")).collect();
        progress(&format!(
            "point {} {} {} GiB: ms/token simulated {:.2}, measured {:.2} ({:+.1}%; runs {} ms), \
             {} reads per run, {:.3} GB/s while reading",
            p.point.index,
            c.policy,
            c.dram_budget_gib,
            head.simulated_ms,
            head.measured_ms,
            head.diff_pct(),
            runs.join(" / "),
            p.reads,
            p.bytes as f64 / (p.busy.max(1) as f64 * 1e-12) / 1e9
        ));
        rows.extend(r);
    }
    if !keep_weights {
        std::fs::remove_file(&weights).ok();
    }
    let dir = crate::sweep::results_dir(exp, out_dir, None);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("validate.csv");
    write_csv(&path, &rows)?;
    Ok((rows, path))
}

/// Writes `rows` as `validate.csv` (simulated and measured to the nanosecond).
pub fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    writeln!(
        f,
        "point,policy,dram_budget_gib,metric,stat,simulated_ms,measured_ms,diff_pct"
    )?;
    for r in rows {
        writeln!(
            f,
            "{},{},{},{},{},{:.6},{:.6},{:.3}",
            r.point,
            r.policy,
            r.dram_budget_gib,
            r.metric,
            r.stat,
            r.simulated_ms,
            r.measured_ms,
            r.diff_pct()
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
            if f.len() != 8 {
                return Err(bad());
            }
            let num = |s: &str| s.parse::<f64>().map_err(|_| bad());
            Ok(Row {
                point: f[0].parse().map_err(|_| bad())?,
                policy: f[1].to_string(),
                dram_budget_gib: num(f[2])?,
                metric: known(f[3], &metrics)?,
                stat: known(f[4], &["mean", "p50", "p90", "p99"])?,
                simulated_ms: num(f[5])?,
                measured_ms: num(f[6])?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_table_reads_back_and_a_bad_row_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("validate.csv");
        let rows = vec![Row {
            point: 3,
            policy: "dip".into(),
            dram_budget_gib: 1.25,
            metric: "flash_busy_ms",
            stat: "p90",
            simulated_ms: 12.5,
            measured_ms: 10.0,
        }];
        write_csv(&path, &rows).unwrap();
        let back = read_csv(&path).unwrap();
        assert_eq!(
            (
                back[0].point,
                back[0].metric,
                back[0].stat,
                back[0].diff_pct()
            ),
            (3, "flash_busy_ms", "p90", 25.0)
        );
        std::fs::write(&path, "header\n1,dip,1,no_such_metric,mean,1,1,0\n").unwrap();
        let e = read_csv(&path).unwrap_err().to_string();
        assert!(e.contains("unknown name `no_such_metric`"), "{e}");
    }
}
