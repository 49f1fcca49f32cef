//! Results: `results/<experiment>/results.csv` (one row per point, units in every column name)
//! and the short table printed at the end of a run.

use crate::device::GIB;
use crate::experiment::Experiment;
use crate::runner::PointResult;
use std::path::{Path, PathBuf};

/// Columns every results file starts with.
pub const IDENTITY: [&str; 7] = [
    "point",
    "policy",
    "device",
    "model",
    "dram_budget_gib",
    "tokens",
    "prompt_tokens",
];

/// Metric columns, in order.
pub const METRICS: [&str; 15] = [
    "tokens_per_s",
    "ms_per_token",
    "flash_io_ms_per_token",
    "compute_ms_per_token",
    "stall_ms_per_token",
    "flash_bytes_per_token",
    "flash_reads_per_token",
    "mean_read_bytes",
    "flash_throughput_gb_per_s",
    "dram_peak_bytes",
    "dram_resident_weight_bytes",
    "retained_mass",
    "cache_hit_rate",
    "kl_divergence",
    "top1_agreement",
];

/// Header of the results table: identity, then each varying key not already there, then metrics.
pub fn header(exp: &Experiment) -> Vec<String> {
    let mut h: Vec<String> = IDENTITY.iter().map(|s| s.to_string()).collect();
    for a in &exp.axes {
        if !h.contains(a) {
            h.push(a.clone());
        }
    }
    h.extend(METRICS.iter().map(|s| s.to_string()));
    h.push(DERIVED.to_string());
    h.push(INFEASIBLE.to_string());
    h
}

/// The column that says why a point could not run (empty when it ran).
pub const INFEASIBLE: &str = "infeasible";

/// The last column: values the policy derived (`name=value name=value`), e.g. ActiveFlow's
/// solved preload depth.
pub const DERIVED: &str = "policy_derived";

fn fmt(x: f64) -> String {
    format!("{x:.6}")
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map(fmt).unwrap_or_default()
}

/// One row of values, matching [`header`].
pub fn row(exp: &Experiment, r: &PointResult) -> Vec<String> {
    let c = &r.point.config;
    let m = &r.metrics;
    let mut v = vec![
        r.point.index.to_string(),
        c.policy.clone(),
        c.device.clone(),
        c.model.clone(),
        c.dram_budget_gib.to_string(),
        c.tokens.to_string(),
        c.prompt_tokens.to_string(),
    ];
    for a in &exp.axes {
        if IDENTITY.contains(&a.as_str()) {
            continue;
        }
        v.push(
            r.point
                .axis_values
                .iter()
                .find(|(k, _)| k == a)
                .map(|(_, x)| x.clone())
                .unwrap_or_default(),
        );
    }
    if let Some(why) = &r.infeasible {
        v.extend(std::iter::repeat_n(String::new(), METRICS.len() + 1));
        v.push(why.clone());
        return v;
    }
    v.extend([
        fmt(m.tokens_per_s),
        fmt(m.ms_per_token),
        fmt(m.flash_io_ms_per_token),
        fmt(m.compute_ms_per_token),
        fmt(m.stall_ms_per_token),
        fmt(m.flash_bytes_per_token),
        fmt(m.flash_reads_per_token),
        fmt(m.mean_read_bytes),
        fmt(m.flash_throughput_gb_per_s),
        m.dram_peak_bytes.to_string(),
        m.dram_resident_weight_bytes.to_string(),
        fmt_opt(m.retained_mass),
        fmt_opt(m.cache_hit_rate),
        fmt_opt(m.kl_divergence),
        fmt_opt(m.top1_agreement),
        r.derived.clone(),
        String::new(),
    ]);
    v
}

/// Writes `dir/results.csv`; returns its path.
pub fn write_csv(exp: &Experiment, results: &[PointResult], dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("results.csv");
    let tmp = dir.join("results.csv.tmp");
    {
        let mut w = csv::Writer::from_path(&tmp)?;
        w.write_record(header(exp))?;
        for r in results {
            w.write_record(row(exp, r))?;
        }
        w.flush()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The short table printed after a run.
pub fn table(exp: &Experiment, results: &[PointResult]) -> String {
    let mut cols: Vec<String> = vec!["point".into(), "policy".into()];
    for a in &exp.axes {
        if a != "policy" {
            cols.push(a.clone());
        }
    }
    cols.extend(
        [
            "tok/s",
            "ms/tok",
            "io ms",
            "compute ms",
            "stall ms",
            "GB/tok",
            "DRAM peak GiB",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut rows = vec![cols];
    for r in results {
        let m = &r.metrics;
        let mut v = vec![r.point.index.to_string(), r.point.config.policy.clone()];
        let ncols = rows[0].len();
        for a in &exp.axes {
            if a != "policy" {
                v.push(
                    r.point
                        .axis_values
                        .iter()
                        .find(|(k, _)| k == a)
                        .map(|(_, x)| x.clone())
                        .unwrap_or_else(|| "-".into()),
                );
            }
        }
        if r.infeasible.is_some() {
            v.push("infeasible: DRAM budget too small".into());
            v.resize(ncols, String::new());
            rows.push(v);
            continue;
        }
        v.extend([
            format!("{:.3}", m.tokens_per_s),
            format!("{:.1}", m.ms_per_token),
            format!("{:.1}", m.flash_io_ms_per_token),
            format!("{:.1}", m.compute_ms_per_token),
            format!("{:.1}", m.stall_ms_per_token),
            format!("{:.3}", m.flash_bytes_per_token / 1e9),
            format!("{:.2}", m.dram_peak_bytes as f64 / GIB),
        ]);
        rows.push(v);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for (n, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, x)| {
                if i < 2 {
                    format!("{x:<w$}", w = widths[i])
                } else {
                    format!("{x:>w$}", w = widths[i])
                }
            })
            .collect();
        s.push_str(line.join("  ").trim_end());
        s.push('\n');
        if n == 0 {
            s.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
            s.push('\n');
        }
    }
    s
}

/// Writes `dir/results.parquet`: the same rows and columns as `results.csv`, each column typed
/// by its values (whole numbers INT64, other numbers DOUBLE, text UTF8), empty cells null.
pub fn write_parquet(
    exp: &Experiment,
    results: &[PointResult],
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    use parquet::basic::{LogicalType, Repetition, Type as Physical};
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::types::Type;
    use std::sync::Arc;

    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Int,
        Float,
        Text,
    }
    let head = header(exp);
    let rows: Vec<Vec<String>> = results.iter().map(|r| row(exp, r)).collect();
    let kinds: Vec<Kind> = (0..head.len())
        .map(|c| {
            let vals = rows.iter().map(|r| r[c].as_str()).filter(|v| !v.is_empty());
            let mut k = Kind::Int;
            for v in vals {
                if k == Kind::Int && v.parse::<i64>().is_err() {
                    k = Kind::Float;
                }
                if k == Kind::Float && v.parse::<f64>().is_err() {
                    k = Kind::Text;
                    break;
                }
            }
            k
        })
        .collect();
    let fields = head
        .iter()
        .zip(&kinds)
        .map(|(name, k)| {
            let b = match k {
                Kind::Int => Type::primitive_type_builder(name, Physical::INT64),
                Kind::Float => Type::primitive_type_builder(name, Physical::DOUBLE),
                Kind::Text => Type::primitive_type_builder(name, Physical::BYTE_ARRAY)
                    .with_logical_type(Some(LogicalType::String)),
            };
            Ok(Arc::new(b.with_repetition(Repetition::OPTIONAL).build()?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let schema = Arc::new(
        Type::group_type_builder("results")
            .with_fields(fields)
            .build()?,
    );
    std::fs::create_dir_all(dir)?;
    let path = dir.join("results.parquet");
    let tmp = dir.join("results.parquet.tmp");
    {
        let file = std::fs::File::create(&tmp)?;
        let props = Arc::new(
            WriterProperties::builder()
                .set_created_by("flashsim".into())
                .build(),
        );
        let mut w = SerializedFileWriter::new(file, schema, props)?;
        let mut rg = w.next_row_group()?;
        for (c, k) in kinds.iter().enumerate() {
            let mut col = rg.next_column()?.expect("one writer per column");
            let present: Vec<&str> = rows
                .iter()
                .map(|r| r[c].as_str())
                .filter(|v| !v.is_empty())
                .collect();
            let defs: Vec<i16> = rows.iter().map(|r| (!r[c].is_empty()) as i16).collect();
            match k {
                Kind::Int => {
                    let v: Vec<i64> = present.iter().map(|x| x.parse().expect("typed")).collect();
                    col.typed::<Int64Type>()
                        .write_batch(&v, Some(&defs), None)?;
                }
                Kind::Float => {
                    let v: Vec<f64> = present.iter().map(|x| x.parse().expect("typed")).collect();
                    col.typed::<DoubleType>()
                        .write_batch(&v, Some(&defs), None)?;
                }
                Kind::Text => {
                    let v: Vec<ByteArray> = present.iter().map(|x| ByteArray::from(*x)).collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&v, Some(&defs), None)?;
                }
            }
            col.close()?;
        }
        rg.close()?;
        w.close()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
