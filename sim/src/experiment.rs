//! Experiment files (`configs/experiments/*.toml`) and their expansion into points.
//!
//! Any key may hold a list; the experiment is then the Cartesian product of the lists, one
//! result row per point. Policy parameters live in `[policies.NAME]` tables and are expanded only
//! for the points that run that policy, so a list there multiplies only its own policy's points.
//! `zip = [["model", "trace"]]` makes the named lists one axis: they must be of one length and
//! move together (point i takes element i of each), instead of multiplying.
//! The order of points is deterministic: top-level axes in key order (a zip group where its
//! first key sorts), the last varying fastest, then the chosen policy's axes likewise.
//!
//! Random search: with `samples = N` at the top level, a key may hold a range instead of a list,
//! `{ uniform = [a, b] }`, `{ log_uniform = [a, b] }` (a, b > 0) or `{ int = [a, b] }` (both
//! ends included). The samples form one axis, the `sample` column (0 … N − 1), zipped with the
//! top-level ranges; sample j draws every ranged key, top-level or policy, from a hash of (the
//! experiment's `seed`, the key's path, j), so a sample does not change with the thread count,
//! the shard, or the other keys.

use flashsim_policies::policy;
use flashsim_workloads::toml_source::{ConfigError, TomlSource};
use serde::Deserialize;
use std::path::Path;

/// One point of an experiment, every value a scalar.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// Results go to `results/<name>/`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A device in `configs/devices/` (or a path ending in `.toml`, relative to this file).
    pub device: String,
    /// A model shape in `configs/models/` (or a path ending in `.toml`).
    pub model: String,
    /// A registered policy (`flashsim list` shows them).
    pub policy: String,
    /// DRAM the run may use, weights, buffers and KV cache included, GiB (2^30 bytes).
    pub dram_budget_gib: f64,
    /// Tokens to generate (decode steps simulated).
    pub tokens: u32,
    /// Prompt length: the KV cache holds this many tokens before the first decode step.
    pub prompt_tokens: u32,
    /// The first this many decode steps run but are left out of the averages (caches and
    /// windows filling up). Default 0.
    #[serde(default)]
    pub warmup_tokens: u32,
    /// Seed for everything random in the point (token ids, synthetic traces).
    pub seed: u64,
    /// Reads in flight at once. Default 32: LLM in a Flash reads with 32 threads.
    #[serde(default = "default_qd")]
    pub io_queue_depth: u32,
    /// Largest single read, KiB; larger extents are split. Default 1024.
    #[serde(default = "default_max_read")]
    pub max_read_kib: u64,
    /// Bytes per stored K or V value. Default 2 (fp16 KV cache).
    #[serde(default = "default_kv")]
    pub kv_bytes_per_value: u64,
    /// Alignment of each tensor in the weight file, KiB (O_DIRECT needs 4). Default 4.
    #[serde(default = "default_align")]
    pub alignment_kib: u64,
    /// Activation trace: `none`, a bundled trace by name (`workloads/traces/NAME.safetensors`,
    /// e.g. `stories260K`), or a path ending in `.safetensors` relative to this file. Its model
    /// shape must match `model`; its token ids drive the embedding lookups.
    #[serde(default = "default_trace")]
    pub trace: String,
    /// With `trace = "synthetic"`: the generator's parameters (`[synthetic]`; missing keys keep
    /// the published 7B defaults). The trace has `tokens` tokens, seeded by `seed`, and is
    /// cached by content in `results/.trace-cache/` (or `$FLASHSIM_CACHE`).
    #[serde(default)]
    pub synthetic: Option<flashsim_workloads::trace::synth::SynthParams>,
}

fn default_qd() -> u32 {
    32
}
fn default_max_read() -> u64 {
    1024
}
fn default_kv() -> u64 {
    2
}
fn default_align() -> u64 {
    4
}
fn default_trace() -> String {
    "none".into()
}

/// A point: its scalar config, its policy's parameters, and the values of the axes that vary.
#[derive(Debug, Clone)]
pub struct Point {
    pub index: usize,
    pub config: PointConfig,
    pub policy_params: toml::Value,
    /// `(column, value)` for each list-valued key of this point, in axis order.
    pub axis_values: Vec<(String, String)>,
}

/// A parsed and expanded experiment.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub src: TomlSource,
    pub points: Vec<Point>,
    /// Column names of every key that holds a list somewhere, in order of first appearance.
    pub axes: Vec<String>,
}

impl Experiment {
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::from_source(TomlSource::read(path)?)
    }

    pub fn from_source(src: TomlSource) -> Result<Self, ConfigError> {
        let mut top = src.table().clone();
        let policies = match top.remove("policies") {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(_) => {
                return Err(src.invalid("policies", "must be a table of `[policies.NAME]` tables"))
            }
        };
        for (name, v) in &policies {
            if policy::find(name).is_none() {
                return Err(src.invalid(&format!("policies.{name}"), unknown_policy(name)));
            }
            if !v.is_table() {
                return Err(src.invalid(&format!("policies.{name}"), "must be a table"));
            }
        }
        let samples = match top.remove("samples") {
            None => None,
            Some(toml::Value::Integer(n)) if n >= 1 => Some(n as usize),
            Some(_) => {
                return Err(src.invalid("samples", "must be a whole number of samples, at least 1"))
            }
        };
        for key in ["name", "description"] {
            if top.get(key).is_some_and(toml::Value::is_array) {
                return Err(src.invalid(key, "cannot be a list: one experiment has one name"));
            }
        }
        let mut points = Vec::new();
        let mut axes: Vec<String> = Vec::new();
        let add_axis = |axes: &mut Vec<String>, k: &str| {
            if !axes.iter().any(|a| a == k) {
                axes.push(k.to_string());
            }
        };
        if let Some(n) = samples {
            top.insert(
                "sample".into(),
                toml::Value::Array((0..n as i64).map(toml::Value::Integer).collect()),
            );
        }
        for (mut t, top_axes) in product(&src, &top, &[], samples.map(|_| None), None)? {
            let sample = t
                .remove("sample")
                .and_then(|v| v.as_integer())
                .map(|j| j as usize);
            let policy_name = t
                .get("policy")
                .and_then(toml::Value::as_str)
                .unwrap_or_default()
                .to_string();
            let ptable = policies
                .get(&policy_name)
                .cloned()
                .unwrap_or(toml::Value::Table(toml::Table::new()));
            let pkey = ["policies", policy_name.as_str()];
            let ptable = ptable.as_table().cloned().unwrap_or_default();
            let config: PointConfig = src.parse_value(toml::Value::Table(t.clone()), &[])?;
            validate(&src, &config)?;
            let entry = policy::find(&config.policy).expect("validated");
            for (pt, p_axes) in product(&src, &ptable, &pkey, sample.map(Some), Some(config.seed))?
            {
                // Build once to check the parameters now, not when the point runs.
                (entry.build)(&src, toml::Value::Table(pt.clone()), &pkey)?;
                let mut axis_values = Vec::new();
                for (k, v) in top_axes.iter().chain(p_axes.iter()) {
                    add_axis(&mut axes, k);
                    axis_values.push((k.clone(), scalar_text(v)));
                }
                points.push(Point {
                    index: points.len(),
                    config: config.clone(),
                    policy_params: toml::Value::Table(pt),
                    axis_values,
                });
            }
        }
        Ok(Experiment { src, points, axes })
    }

    /// The experiment's name (every point shares it; checked on load).
    pub fn name(&self) -> &str {
        &self.points[0].config.name
    }
}

fn unknown_policy(name: &str) -> String {
    let known: Vec<_> = policy::registry().iter().map(|e| e.name).collect();
    format!("unknown policy `{name}`; known: {}", known.join(", "))
}

fn validate(src: &TomlSource, c: &PointConfig) -> Result<(), ConfigError> {
    if policy::find(&c.policy).is_none() {
        return Err(src.invalid("policy", unknown_policy(&c.policy)));
    }
    if !(c.dram_budget_gib.is_finite() && c.dram_budget_gib > 0.0) {
        return Err(src.invalid(
            "dram_budget_gib",
            format!("must be positive, got {}", c.dram_budget_gib),
        ));
    }
    for (k, v) in [
        ("tokens", c.tokens as u64),
        ("io_queue_depth", c.io_queue_depth as u64),
        ("max_read_kib", c.max_read_kib),
        ("kv_bytes_per_value", c.kv_bytes_per_value),
    ] {
        if v == 0 {
            return Err(src.invalid(k, "must be at least 1"));
        }
    }
    if c.warmup_tokens >= c.tokens {
        return Err(src.invalid(
            "warmup_tokens",
            format!("must be less than `tokens` ({})", c.tokens),
        ));
    }
    if !c.alignment_kib.is_power_of_two() {
        return Err(src.invalid("alignment_kib", "must be a power of two"));
    }
    if let Some(p) = &c.synthetic {
        p.check().map_err(|m| src.invalid("synthetic", m))?;
        if c.trace != "synthetic" {
            return Err(src.invalid(
                "synthetic",
                "a [synthetic] table needs `trace = \"synthetic\"`",
            ));
        }
    }
    if c.name.is_empty() || c.name.contains(['/', '\\']) {
        return Err(src.invalid("name", "must be a non-empty name without path separators"));
    }
    Ok(())
}

/// One combination of axis values: the scalar table and `(key, value)` of each axis.
type Combination = (toml::Table, Vec<(String, toml::Value)>);

/// The Cartesian product of the list-valued keys of `table` (at `prefix` in `src`): each
/// combination as a scalar table plus the `(key, value)` of each axis.
fn product(
    src: &TomlSource,
    table: &toml::Table,
    prefix: &[&str],
    // None: no sampling; Some(None): the top level (ranges drawn for every sample, zipped with
    // the `sample` key); Some(Some(j)): a policy table of sample j (ranges drawn for j only).
    sample: Option<Option<usize>>,
    seed: Option<u64>,
) -> Result<Vec<Combination>, ConfigError> {
    let at = |k: &str| {
        prefix
            .iter()
            .map(|s| s.to_string())
            .chain([k.to_string()])
            .collect::<Vec<_>>()
            .join(".")
    };
    let mut table = table.clone();
    // Ranges become lists of drawn values, zipped into one axis.
    let ranged: Vec<String> = table
        .iter()
        .filter(|(_, v)| {
            v.as_table()
                .is_some_and(|t| t.len() == 1 && RANGES.iter().any(|r| t.contains_key(*r)))
        })
        .map(|(k, _)| k.clone())
        .collect();
    if !ranged.is_empty() {
        let Some(which) = sample else {
            return Err(src.invalid(
                &at(&ranged[0]),
                "a range needs `samples = N` at the top of the experiment",
            ));
        };
        let n = match (which, table.get("sample").and_then(|v| v.as_array())) {
            (None, Some(a)) => a.len(),
            _ => 1,
        };
        // Seeds of the draws: the point's seed (top level: the experiment's, which must be
        // one number when ranges sit beside it).
        let seed = match seed {
            Some(s) => s,
            None => match table.get("seed") {
                Some(toml::Value::Integer(s)) => *s as u64,
                _ => {
                    return Err(
                        src.invalid("seed", "must be one number when top-level keys hold ranges")
                    )
                }
            },
        };
        for k in &ranged {
            let path = at(k);
            let draws = match which {
                None => draw_range(src, &path, &table[k], 0, n, seed)?,
                Some(j) => draw_range(src, &path, &table[k], j, 1, seed)?,
            };
            table.insert(k.clone(), toml::Value::Array(draws));
        }
        if which.is_none() {
            let z = table
                .entry("zip")
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            if let toml::Value::Array(a) = z {
                a.push(toml::Value::Array(
                    std::iter::once("sample".to_string())
                        .chain(ranged.iter().cloned())
                        .map(toml::Value::String)
                        .collect(),
                ));
            }
        }
    }
    // Zip groups: lists of key names that move together.
    let mut groups: Vec<Vec<String>> = Vec::new();
    if let Some(z) = table.remove("zip") {
        let bad = || {
            src.invalid(
                &at("zip"),
                "must be a list of lists of key names, e.g. zip = [[\"model\", \"trace\"]]",
            )
        };
        for g in z.as_array().ok_or_else(bad)? {
            let names: Vec<String> = g
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|n| n.as_str().map(str::to_string).ok_or_else(bad))
                .collect::<Result<_, _>>()?;
            if names.len() < 2 {
                return Err(src.invalid(&at("zip"), "a zip group names at least two keys"));
            }
            for n in &names {
                if groups.iter().flatten().any(|m| m == n) {
                    return Err(src.invalid(&at("zip"), format!("`{n}` is in two zip groups")));
                }
                if !table.get(n).is_some_and(toml::Value::is_array) {
                    return Err(
                        src.invalid(&at("zip"), format!("`{n}` must be a list to be zipped"))
                    );
                }
            }
            groups.push(names);
        }
    }
    let lists: Vec<(&String, &Vec<toml::Value>)> = table
        .iter()
        .filter_map(|(k, v)| v.as_array().map(|a| (k, a)))
        .collect();
    for (k, a) in &lists {
        if a.is_empty() {
            return Err(src.invalid(&at(k), "an empty list gives no points"));
        }
        if a.iter().any(|v| v.is_array() || v.is_table()) {
            return Err(src.invalid(&at(k), "a list of values must hold scalars"));
        }
    }
    // Axes: each zip group at its first key's place, every other list on its own.
    let mut axes: Vec<Vec<(&String, &Vec<toml::Value>)>> = Vec::new();
    let mut placed: Vec<usize> = Vec::new();
    for (k, a) in &lists {
        match groups.iter().position(|g| g.contains(k)) {
            Some(gi) if placed.contains(&gi) => {}
            Some(gi) => {
                placed.push(gi);
                let members: Vec<_> = lists
                    .iter()
                    .filter(|(k2, _)| groups[gi].contains(k2))
                    .cloned()
                    .collect();
                if let Some((k2, a2)) = members.iter().find(|(_, a2)| a2.len() != a.len()) {
                    return Err(src.invalid(
                        &at("zip"),
                        format!(
                            "zipped lists differ in length: `{k}` has {}, `{k2}` has {}",
                            a.len(),
                            a2.len()
                        ),
                    ));
                }
                axes.push(members);
            }
            None => axes.push(vec![(*k, *a)]),
        }
    }
    let mut out = Vec::new();
    let total: usize = axes.iter().map(|ax| ax[0].1.len()).product();
    for n in 0..total {
        let mut t = table.clone();
        let mut vals = Vec::new();
        let mut idx = vec![0; axes.len()];
        let mut rest = n;
        for (i, ax) in axes.iter().enumerate().rev() {
            idx[i] = rest % ax[0].1.len();
            rest /= ax[0].1.len();
        }
        for (i, ax) in axes.iter().enumerate() {
            for (k, a) in ax {
                let v = a[idx[i]].clone();
                t.insert((*k).clone(), v.clone());
                vals.push(((*k).clone(), v));
            }
        }
        out.push((t, vals));
    }
    Ok(out)
}

/// A scalar as it appears in a results column.
pub fn scalar_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The range forms a key may take in a random search.
const RANGES: [&str; 3] = ["uniform", "log_uniform", "int"];

/// The values of samples `first .. first + n` of the range `spec` at `path`, each drawn from
/// (seed, path, sample).
fn draw_range(
    src: &TomlSource,
    path: &str,
    spec: &toml::Value,
    first: usize,
    n: usize,
    seed: u64,
) -> Result<Vec<toml::Value>, ConfigError> {
    let t = spec.as_table().expect("a range table");
    let (kind, ends) = t.iter().next().expect("one entry");
    let bad = |m: &str| src.invalid(path, format!("`{kind}` range {m}"));
    let ends = ends
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or_else(|| bad("must be [low, high]"))?;
    let num = |v: &toml::Value| {
        v.as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .ok_or_else(|| bad("ends must be numbers"))
    };
    let (a, b) = (num(&ends[0])?, num(&ends[1])?);
    if !(a.is_finite() && b.is_finite() && a <= b) {
        return Err(bad("must have low <= high"));
    }
    let key_hash = crate::runner::fnv1a(path.as_bytes());
    let unit = |j: usize| {
        let x = crate::runner::splitmix64(seed ^ crate::runner::splitmix64(key_hash ^ j as u64));
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (first..first + n)
        .map(|j| {
            let u = unit(j);
            Ok(match kind.as_str() {
                "uniform" => toml::Value::Float(a + u * (b - a)),
                "log_uniform" => {
                    if a <= 0.0 {
                        return Err(bad("needs low > 0"));
                    }
                    toml::Value::Float((a.ln() + u * (b.ln() - a.ln())).exp())
                }
                _ => {
                    if a.fract() != 0.0 || b.fract() != 0.0 {
                        return Err(bad("ends must be whole numbers"));
                    }
                    toml::Value::Integer(a as i64 + (u * (b - a + 1.0)).floor().min(b - a) as i64)
                }
            })
        })
        .collect()
}
