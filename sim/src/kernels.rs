//! `flashsim kernels`: the real backend's kernels alone, on each point's own ops.
//!
//! `validate` measures the kernels inside real runs, where reads run beside them and the
//! pipeline idles between ops while it waits for reads; on this project's VM both cost the
//! kernels 10-20% each (see `results/validate-vm/README.md`). This benchmark takes those away
//! and keeps everything else: every op each point's policy plans for the tokens after warm-up
//! (the weight-file extents it lists, its FLOPs and its other bytes, as the real backend
//! receives them), run back to back through the backend's compute thread and kernel on a
//! mapping of the weight file's span (huge pages, as the backend's DRAM), so each piece lies
//! where the reads would have put it. Each op runs twice per round: **as planned**, and
//! **packed**: the same bytes as one contiguous run starting at its first piece: what LLM in a
//! Flash's preallocated matrix of kept rows streams (its op computes every row it keeps), and
//! for DIP and ActiveFlow, whose ops compute this token's active channels, a subset of the
//! ones DRAM holds, a bound: packing what they keep still leaves the active ones scattered
//! among the inactive ones kept, so one run per op would take copying the active set every
//! token (itself a pass over those bytes). Between points, calibrate's DRAM read pass measures
//! the rate the target is against (the sparse kernels should reach 70% of it) in the
//! same minute.
//! Rounds alternate which variant goes first; every figure is the median over rounds, each
//! percentage the median of the rounds' own ratios.

use crate::experiment::Experiment;
use crate::real::{OpTimer, TimedOp};
use crate::runner::{self, Cache};
use crate::validate::KernelSum;
use anyhow::{bail, Context, Result};
use flashsim_policies::Extent;
use std::io::Write;
use std::path::PathBuf;

/// `flashsim kernels`' options.
#[derive(Debug, Clone)]
pub struct Options {
    pub out_dir: PathBuf,
    /// Rounds over every point.
    pub rounds: usize,
    /// Seconds of calibrate's DRAM read pass before each point in each round.
    pub dram_seconds: f64,
}

/// The median of `xs` (none when empty).
fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    Some(crate::calibrate::quantile(&xs, 0.5))
}

/// One point's figures (bytes per second; medians over rounds).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub point: usize,
    pub policy: String,
    pub dram_budget_gib: f64,
    /// Ops timed per round (tokens after warm-up), and how many gathered their weights
    /// (fewer than [`crate::validate::CONTIGUOUS_PIECE_BYTES`] a piece, as `validate` splits).
    pub ops: usize,
    pub gathered_ops: usize,
    /// Bytes the kernels streamed per round, and in how many pieces (each op's weights as
    /// listed, plus its other bytes as one piece).
    pub bytes: u64,
    pub pieces: usize,
    pub planned: f64,
    pub packed: f64,
    /// The gathered ops alone (none when the point has none).
    pub gathered_planned: Option<f64>,
    pub gathered_packed: Option<f64>,
    /// Calibrate's DRAM read pass, before the point in each round.
    pub dram_read: f64,
    /// Percent of the same round's DRAM read.
    pub planned_pct: f64,
    pub packed_pct: f64,
    pub gathered_planned_pct: Option<f64>,
    pub gathered_packed_pct: Option<f64>,
}

impl Row {
    /// The row as a line of text.
    pub fn line(&self) -> String {
        let opt = |r: Option<f64>, p: Option<f64>| match (r, p) {
            (Some(r), Some(p)) => format!("{:.2} GB/s ({p:.0}%)", r / 1e9),
            _ => "-".into(),
        };
        format!(
            "point {} {} {} GiB: {} ops ({} gathered), {:.0} MiB in {} pieces a round; as planned \
             {:.2} GB/s ({:.0}% of DRAM read {:.2}), packed {:.2} GB/s ({:.0}%); gathered ops \
             as planned {}, packed {}",
            self.point,
            self.policy,
            self.dram_budget_gib,
            self.ops,
            self.gathered_ops,
            self.bytes as f64 / (1u64 << 20) as f64,
            self.pieces,
            self.planned / 1e9,
            self.planned_pct,
            self.dram_read / 1e9,
            self.packed / 1e9,
            self.packed_pct,
            opt(self.gathered_planned, self.gathered_planned_pct),
            opt(self.gathered_packed, self.gathered_packed_pct),
        )
    }
}

/// The target for the sparse kernels: this percentage of the measured DRAM bandwidth
/// on the bytes they touch.
pub const SPARSE_TARGET_PCT: f64 = 70.0;

/// How many of the points whose ops gather their weights (the sparse kernels: DIP's columns,
/// ActiveFlow's channels, LLM in a Flash's bundles where its plan gathers them) reach
/// [`SPARSE_TARGET_PCT`] of the same minute's DRAM read, as planned and packed; none when no
/// point gathers.
pub fn target_line(rows: &[Row]) -> Option<String> {
    let sparse: Vec<&Row> = rows.iter().filter(|r| r.gathered_ops > 0).collect();
    if sparse.is_empty() {
        return None;
    }
    let met = |pct: &dyn Fn(&Row) -> f64| {
        sparse
            .iter()
            .filter(|r| pct(r) >= SPARSE_TARGET_PCT)
            .count()
    };
    let (lo, hi) = sparse.iter().fold((f64::INFINITY, 0f64), |(lo, hi), r| {
        (lo.min(r.planned_pct), hi.max(r.planned_pct))
    });
    Some(format!(
        "sparse kernels (the {} points whose ops gather weights): {} at or above {SPARSE_TARGET_PCT}% \
         of the DRAM read as planned ({lo:.1}-{hi:.1}%), {} packed",
        sparse.len(),
        met(&|r| r.planned_pct),
        met(&|r| r.packed_pct),
    ))
}

/// `ops` with each op's weights as one contiguous run of the same bytes, starting at its first
/// piece (earlier where that run would pass the end of `span_bytes`), on a 4 KiB boundary.
pub fn packed(ops: &[TimedOp], span_bytes: u64) -> Vec<TimedOp> {
    ops.iter()
        .map(|op| {
            let bytes: u64 = op.weights.iter().map(|e| e.bytes).sum();
            let weights = match op.weights.first() {
                None => Vec::new(),
                Some(first) => {
                    let align = crate::calibrate::ALIGN as u64;
                    let offset = first.offset.min(span_bytes.saturating_sub(bytes)) / align * align;
                    vec![Extent { offset, bytes }]
                }
            };
            TimedOp {
                weights,
                ..op.clone()
            }
        })
        .collect()
}

/// A point ready to time.
struct Pending {
    point: usize,
    policy: String,
    dram_budget_gib: f64,
    planned: Vec<TimedOp>,
}

/// Times every feasible point of `exp` (see the module's comment); returns the rows and the
/// CSV's path (`<out_dir>/<experiment>/kernels.csv`).
pub fn run(
    exp: &Experiment,
    o: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<Row>, PathBuf)> {
    if o.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    runner::materialize_traces(exp)?;
    let mut cache = Cache::default();
    let mut pending = Vec::new();
    let mut span = 0u64;
    for point in &exp.points {
        let Some(mut p) = runner::prepare_or_skip(exp, point, &mut cache, progress)? else {
            continue;
        };
        span = span.max(p.layout.file_bytes);
        let tokens = p
            .token_ops()
            .with_context(|| format!("planning point {}", point.index))?;
        let warmup = point.config.warmup_tokens as usize;
        let planned: Vec<TimedOp> = tokens
            .into_iter()
            .enumerate()
            .skip(warmup)
            .flat_map(|(t, ops)| {
                ops.into_iter().map(move |op| TimedOp {
                    token: t as u32,
                    flops: op.flops,
                    bytes: op.dram_bytes,
                    weights: op.weights,
                })
            })
            .collect();
        if planned.is_empty() {
            progress(&format!(
                "point {} skipped: no op after the warm-up tokens",
                point.index
            ));
            continue;
        }
        pending.push(Pending {
            point: point.index,
            policy: point.config.policy.clone(),
            dram_budget_gib: point.config.dram_budget_gib,
            planned,
        });
    }
    if pending.is_empty() {
        bail!("no point of the experiment has ops to time");
    }
    progress(&format!(
        "mapping {} MiB of DRAM (the weight file's span) ...",
        span >> 20
    ));
    let mut timer = OpTimer::over(span.max(4096))?;
    let packed: Vec<Vec<TimedOp>> = pending
        .iter()
        .map(|p| packed(&p.planned, timer.span_bytes()))
        .collect();
    let buf = crate::calibrate::rate_buffer()?;
    let threads = crate::calibrate::hardware_threads();
    // Once untimed: the kernel's arena is mapped at its first use and every page is touched.
    for p in &pending {
        timer.run_ops(&p.planned)?;
    }
    // Per point, per round: the DRAM read, and per variant (as planned, packed) the kernels,
    // all and gathered ones (split as `validate` splits, by the ops as planned).
    type Round = (f64, [[KernelSum; 2]; 2]);
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); pending.len()];
    for round in 0..o.rounds {
        for (i, p) in pending.iter().enumerate() {
            let dram = crate::calibrate::measure_rates(buf.words(), threads, o.dram_seconds)
                .dram_read_gb_per_s
                * 1e9;
            let mut got = [Vec::new(), Vec::new()];
            let order = if (round + i) % 2 == 0 { [0, 1] } else { [1, 0] };
            for v in order {
                got[v] = timer.run_ops(if v == 0 { &p.planned } else { &packed[i] })?;
            }
            let mut sums = [[KernelSum::default(); 2]; 2];
            for (v, sum) in sums.iter_mut().enumerate() {
                for (k, as_planned) in got[v].iter().zip(&got[0]) {
                    sum[0].add(k);
                    if crate::validate::gathered(as_planned) {
                        sum[1].add(k);
                    }
                }
            }
            rounds[i].push((dram, sums));
        }
        progress(&format!("round {} of {} done", round + 1, o.rounds));
    }
    let mut rows = Vec::new();
    for (i, p) in pending.iter().enumerate() {
        let r = &rounds[i];
        let fig = |f: &dyn Fn(&Round) -> Option<f64>| median(r.iter().filter_map(f).collect());
        let pct = |f: &dyn Fn(&Round) -> Option<f64>| {
            median(
                r.iter()
                    .filter_map(|x| f(x).map(|v| v / x.0 * 100.0))
                    .collect(),
            )
        };
        // What was timed is the same every round.
        let [all, gathered] = r[0].1[0];
        let row = Row {
            point: p.point,
            policy: p.policy.clone(),
            dram_budget_gib: p.dram_budget_gib,
            ops: all.ops,
            gathered_ops: gathered.ops,
            bytes: all.bytes,
            pieces: all.pieces,
            planned: fig(&|x| x.1[0][0].bytes_per_s()).context("no kernel ran")?,
            packed: fig(&|x| x.1[1][0].bytes_per_s()).context("no kernel ran")?,
            gathered_planned: fig(&|x| x.1[0][1].bytes_per_s()),
            gathered_packed: fig(&|x| x.1[1][1].bytes_per_s()),
            dram_read: fig(&|x| Some(x.0)).context("no DRAM pass")?,
            planned_pct: pct(&|x| x.1[0][0].bytes_per_s()).context("no kernel ran")?,
            packed_pct: pct(&|x| x.1[1][0].bytes_per_s()).context("no kernel ran")?,
            gathered_planned_pct: pct(&|x| x.1[0][1].bytes_per_s()),
            gathered_packed_pct: pct(&|x| x.1[1][1].bytes_per_s()),
        };
        progress(&row.line());
        rows.push(row);
    }
    if let Some(line) = target_line(&rows) {
        progress(&line);
    }
    let dir = o.out_dir.join(exp.name());
    std::fs::create_dir_all(&dir)?;
    let csv = dir.join("kernels.csv");
    write_csv(&csv, &rows)?;
    Ok((rows, csv))
}

fn write_csv(path: &std::path::Path, rows: &[Row]) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    writeln!(
        f,
        "point,policy,dram_budget_gib,ops,gathered_ops,mib_per_round,pieces_per_round,\
         planned_gb_per_s,packed_gb_per_s,dram_read_gb_per_s,planned_pct_of_dram,\
         packed_pct_of_dram,gathered_planned_gb_per_s,gathered_packed_gb_per_s,\
         gathered_planned_pct_of_dram,gathered_packed_pct_of_dram"
    )?;
    let gb = |v: Option<f64>| v.map_or(String::new(), |v| format!("{:.3}", v / 1e9));
    let pc = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.1}"));
    for r in rows {
        writeln!(
            f,
            "{},{},{},{},{},{:.1},{},{},{},{},{},{},{},{},{},{}",
            r.point,
            r.policy,
            r.dram_budget_gib,
            r.ops,
            r.gathered_ops,
            r.bytes as f64 / (1u64 << 20) as f64,
            r.pieces,
            gb(Some(r.planned)),
            gb(Some(r.packed)),
            gb(Some(r.dram_read)),
            pc(Some(r.planned_pct)),
            pc(Some(r.packed_pct)),
            gb(r.gathered_planned),
            gb(r.gathered_packed),
            pc(r.gathered_planned_pct),
            pc(r.gathered_packed_pct),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(weights: &[(u64, u64)], bytes: u64) -> TimedOp {
        TimedOp {
            token: 0,
            flops: 2 * bytes,
            bytes,
            weights: weights
                .iter()
                .map(|&(offset, bytes)| Extent { offset, bytes })
                .collect(),
        }
    }

    fn row(policy: &str, gathered_ops: usize, planned_pct: f64, packed_pct: f64) -> Row {
        Row {
            point: 0,
            policy: policy.into(),
            dram_budget_gib: 1.0,
            ops: 4,
            gathered_ops,
            bytes: 1 << 30,
            pieces: 8,
            planned: 1e10,
            packed: 1e10,
            gathered_planned: None,
            gathered_packed: None,
            dram_read: 2e10,
            planned_pct,
            packed_pct,
            gathered_planned_pct: None,
            gathered_packed_pct: None,
        }
    }

    #[test]
    fn the_target_counts_only_points_that_gather() {
        let rows = [
            row("dense-streaming", 0, 50.0, 50.0),
            row("dip", 3, 69.9, 71.0),
            row("activeflow", 4, 70.0, 80.0),
        ];
        let line = target_line(&rows).expect("two points gather");
        assert!(line.contains("the 2 points"), "{line}");
        assert!(line.contains(": 1 at or above 70%"), "{line}");
        assert!(line.contains("(69.9-70.0%), 2 packed"), "{line}");
        assert_eq!(target_line(&rows[..1]), None);
    }

    #[test]
    fn packing_keeps_each_ops_bytes_in_one_run_within_the_span() {
        let ops = [
            op(&[(8192, 4096), (40960, 8192)], 12288 + 100),
            op(&[(3 << 20, 4096), (1 << 20, 4096)], 8192),
            op(&[], 4096),
        ];
        let p = packed(&ops, (3 << 20) + 4096);
        assert_eq!(
            p[0].weights,
            vec![Extent {
                offset: 8192,
                bytes: 12288
            }]
        );
        // Would pass the span's end at its first piece: moved back within it.
        assert_eq!(
            p[1].weights,
            vec![Extent {
                offset: (3 << 20) - 4096,
                bytes: 8192
            }]
        );
        assert!(p[2].weights.is_empty());
        for (a, b) in ops.iter().zip(&p) {
            assert_eq!((a.bytes, a.flops, a.token), (b.bytes, b.flops, b.token));
        }
    }
}
