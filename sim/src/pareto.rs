//! Pareto fronts over a results table, and the regression check against a committed baseline.
//!
//! Objectives are columns of `results.csv` with a direction: by default maximize
//! `tokens_per_s`, minimize `dram_peak_bytes`, and minimize `kl_divergence` when the column has
//! values. A point is on the front when no other point is at least as good in every objective
//! and better in one; it is within ε of the front when, improved by a factor (1 + ε) in every
//! objective (× (1 + ε) for a maximized one, × (1 − ε) for a minimized one), no point dominates
//! it. Infeasible rows and rows missing an objective take no part.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// A results table as read from CSV: the header and the rows as text.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn read(path: &Path) -> Result<Self> {
        let mut r = csv::Reader::from_path(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let header = r.headers()?.iter().map(str::to_string).collect();
        let rows = r
            .records()
            .map(|rec| rec.map(|r| r.iter().map(str::to_string).collect()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: malformed CSV", path.display()))?;
        Ok(Table { header, rows })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&self.header)?;
        for r in &self.rows {
            w.write_record(r)?;
        }
        crate::sweep::write_atomic(path, &w.into_inner()?)
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// The number in column `c` of row `r`, if any.
    pub fn num(&self, r: usize, c: usize) -> Option<f64> {
        self.rows[r][c].parse().ok()
    }
}

/// One objective: a column and whether larger is better.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    pub column: String,
    pub maximize: bool,
}

impl std::str::FromStr for Objective {
    type Err = anyhow::Error;
    /// `max:COLUMN` or `min:COLUMN`.
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some(("max", c)) => Ok(Objective {
                column: c.into(),
                maximize: true,
            }),
            Some(("min", c)) => Ok(Objective {
                column: c.into(),
                maximize: false,
            }),
            _ => bail!("objective `{s}`: write max:COLUMN or min:COLUMN"),
        }
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let d = if self.maximize { "max" } else { "min" };
        write!(f, "{d}:{}", self.column)
    }
}

/// Throughput up and DRAM peak down: the two objectives every front has.
pub fn throughput_and_dram() -> [Objective; 2] {
    [
        Objective {
            column: "tokens_per_s".into(),
            maximize: true,
        },
        Objective {
            column: "dram_peak_bytes".into(),
            maximize: false,
        },
    ]
}

/// The default objectives for `t`: tokens/s up, DRAM peak down, KL down where present.
pub fn default_objectives(t: &Table) -> Vec<Objective> {
    let mut o = throughput_and_dram().to_vec();
    if let Some(c) = t.column("kl_divergence") {
        if (0..t.rows.len()).any(|r| t.num(r, c).is_some()) {
            o.push(Objective {
                column: "kl_divergence".into(),
                maximize: false,
            });
        }
    }
    o
}

/// Each row's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    OnFront,
    /// Within ε of the front.
    Near,
    Behind,
    /// Infeasible or missing an objective.
    Excluded,
}

/// `a` dominates `b`: at least as good everywhere, better somewhere (values oriented so that
/// larger is better).
fn dominates(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x >= y) && a.iter().zip(b).any(|(x, y)| x > y)
}

/// The standing of every row of `t`.
pub fn front(t: &Table, objectives: &[Objective], epsilon: f64) -> Result<Vec<Standing>> {
    let cols: Vec<usize> = objectives
        .iter()
        .map(|o| {
            t.column(&o.column)
                .with_context(|| format!("no column `{}` in the results", o.column))
        })
        .collect::<Result<_>>()?;
    let infeasible = t.column(crate::output::INFEASIBLE);
    // Oriented values: larger is better.
    let vals: Vec<Option<Vec<f64>>> = (0..t.rows.len())
        .map(|r| {
            if infeasible.is_some_and(|c| !t.rows[r][c].is_empty()) {
                return None;
            }
            cols.iter()
                .zip(objectives)
                .map(|(&c, o)| t.num(r, c).map(|v| if o.maximize { v } else { -v }))
                .collect()
        })
        .collect();
    let improved = |v: &[f64]| -> Vec<f64> { v.iter().map(|&x| x + x.abs() * epsilon).collect() };
    Ok(vals
        .iter()
        .map(|v| match v {
            None => Standing::Excluded,
            Some(v) => {
                let others = vals.iter().flatten();
                if !others.clone().any(|o| dominates(o, v)) {
                    Standing::OnFront
                } else if !others.clone().any(|o| dominates(o, &improved(v))) {
                    Standing::Near
                } else {
                    Standing::Behind
                }
            }
        })
        .collect())
}

/// The rows on or near the front, with an `on_front` column (true / false = within ε).
pub fn front_table(t: &Table, standing: &[Standing]) -> Table {
    let mut header = t.header.clone();
    header.push("on_front".into());
    let rows = t
        .rows
        .iter()
        .zip(standing)
        .filter(|(_, s)| matches!(s, Standing::OnFront | Standing::Near))
        .map(|(r, s)| {
            let mut r = r.clone();
            r.push((*s == Standing::OnFront).to_string());
            r
        })
        .collect();
    Table { header, rows }
}

/// Reads `dir/results.csv`, writes `dir/pareto.csv`; returns the front table.
pub fn write_front(dir: &Path, objectives: Option<&[Objective]>, epsilon: f64) -> Result<Table> {
    let t = Table::read(&dir.join("results.csv"))?;
    let objectives = objectives
        .map(<[Objective]>::to_vec)
        .unwrap_or_else(|| default_objectives(&t));
    let s = front(&t, &objectives, epsilon)?;
    let f = front_table(&t, &s);
    f.write(&dir.join("pareto.csv"))?;
    Ok(f)
}

/// The columns that name a configuration (everything before the metrics).
fn identity_columns(t: &Table) -> Vec<usize> {
    let first_metric = t
        .column(crate::output::METRICS[0])
        .unwrap_or(t.header.len());
    (0..first_metric).collect()
}

/// One objective of one point that moved past the tolerance.
#[derive(Debug, Clone)]
pub struct Moved {
    pub point: String,
    pub what: String,
    pub objective: String,
    pub baseline: f64,
    pub now: f64,
    /// Relative change, signed so that positive is better.
    pub better_by: f64,
}

/// The outcome of comparing a run's front with a baseline's.
#[derive(Debug, Default)]
pub struct Comparison {
    pub regressions: Vec<Moved>,
    pub improvements: Vec<Moved>,
    /// Baseline front points the new run does not have at all.
    pub missing: Vec<String>,
    /// Points on the new front that the baseline front did not hold.
    pub new_on_front: Vec<String>,
}

impl Comparison {
    pub fn passed(&self) -> bool {
        self.regressions.is_empty() && self.missing.is_empty()
    }

    /// A readable report: what moved and by how much.
    pub fn report(&self, tolerance: f64) -> String {
        let mut s = String::new();
        let table = |s: &mut String, title: &str, v: &[Moved]| {
            if v.is_empty() {
                return;
            }
            s.push_str(&format!("{title}\n"));
            s.push_str(&format!(
                "{:<6} {:<40} {:<22} {:>14} {:>14} {:>9}\n",
                "point", "configuration", "objective", "baseline", "now", "change"
            ));
            for m in v {
                s.push_str(&format!(
                    "{:<6} {:<40} {:<22} {:>14.6} {:>14.6} {:>+8.2}%\n",
                    m.point,
                    m.what,
                    m.objective,
                    m.baseline,
                    m.now,
                    100.0 * m.better_by
                ));
            }
        };
        table(
            &mut s,
            &format!(
                "REGRESSIONS (worse than the baseline by more than {:.1}%):",
                tolerance * 100.0
            ),
            &self.regressions,
        );
        table(
            &mut s,
            &format!(
                "improvements (better by more than {:.1}%):",
                tolerance * 100.0
            ),
            &self.improvements,
        );
        for m in &self.missing {
            s.push_str(&format!(
                "MISSING: baseline front point {m} is not in this run\n"
            ));
        }
        for m in &self.new_on_front {
            s.push_str(&format!("new on the front: {m}\n"));
        }
        s
    }
}

/// Compares the front of `now` (a results table) with `baseline_front` (a `pareto.csv`):
/// every baseline front point is looked up in `now` by its configuration columns, and each
/// objective compared; worse by more than `tolerance` is a regression.
pub fn compare(
    now: &Table,
    baseline_front: &Table,
    objectives: &[Objective],
    epsilon: f64,
    tolerance: f64,
) -> Result<Comparison> {
    let ids = identity_columns(now);
    let key_of = |t: &Table, r: &[String]| -> Vec<String> {
        ids.iter()
            .map(|&c| {
                let name = &now.header[c];
                t.column(name).map(|i| r[i].clone()).unwrap_or_default()
            })
            .collect()
    };
    let describe = |t: &Table, r: &[String]| -> (String, String) {
        let point = t.column("point").map(|c| r[c].clone()).unwrap_or_default();
        let what = ids
            .iter()
            .filter_map(|&c| {
                let name = &now.header[c];
                (name != "point").then(|| t.column(name).map(|i| r[i].clone()))?
            })
            .collect::<Vec<_>>()
            .join(" ");
        (point, what)
    };
    let mut out = Comparison::default();
    for b in &baseline_front.rows {
        let key = key_of(baseline_front, b);
        let (point, what) = describe(baseline_front, b);
        let Some(n) = now.rows.iter().position(|r| key_of(now, r) == key) else {
            out.missing.push(format!("{point} ({what})"));
            continue;
        };
        for o in objectives {
            let (Some(bc), Some(nc)) = (baseline_front.column(&o.column), now.column(&o.column))
            else {
                bail!("objective column `{}` missing from a table", o.column);
            };
            let (Ok(bv), Some(nv)) = (b[bc].parse::<f64>(), now.num(n, nc)) else {
                out.missing
                    .push(format!("{point} ({what}): no `{}` now", o.column));
                continue;
            };
            let rel = if bv == 0.0 {
                if nv == 0.0 {
                    0.0
                } else {
                    f64::INFINITY.copysign(nv)
                }
            } else {
                (nv - bv) / bv.abs()
            };
            let better_by = if o.maximize { rel } else { -rel };
            let m = Moved {
                point: point.clone(),
                what: what.clone(),
                objective: o.to_string(),
                baseline: bv,
                now: nv,
                better_by,
            };
            if better_by < -tolerance {
                out.regressions.push(m);
            } else if better_by > tolerance {
                out.improvements.push(m);
            }
        }
    }
    let standing = front(now, objectives, epsilon)?;
    let base_keys: Vec<Vec<String>> = baseline_front
        .rows
        .iter()
        .map(|r| key_of(baseline_front, r))
        .collect();
    for (r, s) in now.rows.iter().zip(&standing) {
        if *s == Standing::OnFront && !base_keys.contains(&key_of(now, r)) {
            let (point, what) = describe(now, r);
            out.new_on_front.push(format!("{point} ({what})"));
        }
    }
    Ok(out)
}
