//! Trace statistics, per layer: the figures the weight-streaming policies depend on.
//!
//! With `k = round(top_frac · width)` (top-k by magnitude, ties to the lower index):
//! - `mass90/95/99`: share of neurons needed to hold 90/95/99% of the L1 mass of `|h|`, mean over
//!   tokens (how sparse the FFN is).
//! - `jaccard_1`, `jaccard_4`: Jaccard index of the top-k sets of `|h|` at t and t+1, and at t
//!   and t+4, within a sequence (temporal locality).
//! - `window_reuse`: share of a token's top-k already in the union of the previous `window`
//!   tokens' top-k sets (what LLM in a Flash's windowing saves).
//! - `hot10_share`: share of all top-k appearances taken by the `hot_frac` most frequent neurons
//!   (popularity skew; what a hot-neuron cache exploits).
//! - `xmlp_cos`, `xmlp_topk_precision`: cosine similarity of `x_mlp` between layers l and l+1,
//!   and the share of layer l+1's top-k channels of `|x_mlp|` already in layer l's (ActiveFlow's
//!   cross-layer observation); absent for the last layer.

use super::format::{Act, Trace};
use crate::shape::ModelShape;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// What the statistics read: a trace file, or a trace held in memory.
pub trait TraceView: Sync {
    fn shape(&self) -> &ModelShape;
    fn tokens(&self) -> usize;
    fn sequences(&self) -> Vec<std::ops::Range<usize>>;
    /// `act` at token `t`, layer `l`, into `out`.
    fn read(&self, act: Act, t: usize, l: usize, out: &mut Vec<f32>);
    /// Magnitude keys of `act` at token `t`, layer `l`: the f16 bits with the sign cleared,
    /// whose order is the order of |value|.
    fn read_keys(&self, act: Act, t: usize, l: usize, out: &mut Vec<u16>) {
        let mut v = Vec::new();
        self.read(act, t, l, &mut v);
        out.clear();
        out.extend(
            v.iter()
                .map(|&x| half::f16::from_f32(x.abs()).to_bits() & 0x7fff),
        );
    }
}

impl TraceView for Trace {
    fn shape(&self) -> &ModelShape {
        &self.shape
    }
    fn tokens(&self) -> usize {
        Trace::tokens(self)
    }
    fn sequences(&self) -> Vec<std::ops::Range<usize>> {
        Trace::sequences(self)
    }
    fn read(&self, act: Act, t: usize, l: usize, out: &mut Vec<f32>) {
        Trace::read(self, act, t, l, out)
    }
    fn read_keys(&self, act: Act, t: usize, l: usize, out: &mut Vec<u16>) {
        out.clear();
        out.extend(
            self.bytes(act, t, l)
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7fff),
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StatsConfig {
    /// Share of the width taken as the top-k set.
    pub top_frac: f64,
    /// Tokens in the window of `window_reuse`.
    pub window: usize,
    /// Share of neurons counted as hot in `hot10_share`.
    pub hot_frac: f64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            top_frac: 0.1,
            window: 5,
            hot_frac: 0.1,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerStats {
    pub mass90: f64,
    pub mass95: f64,
    pub mass99: f64,
    pub jaccard_1: f64,
    pub jaccard_4: f64,
    pub window_reuse: f64,
    pub hot10_share: f64,
    pub xmlp_cos: Option<f64>,
    pub xmlp_topk_precision: Option<f64>,
}

/// Names of [`LayerStats::figures`], in order.
pub const FIGURES: [&str; 9] = [
    "mass90",
    "mass95",
    "mass99",
    "jaccard_1",
    "jaccard_4",
    "window_reuse",
    "hot10_share",
    "xmlp_cos",
    "xmlp_topk_precision",
];

impl LayerStats {
    /// The figures as a vector (NaN where absent).
    pub fn figures(&self) -> [f64; 9] {
        [
            self.mass90,
            self.mass95,
            self.mass99,
            self.jaccard_1,
            self.jaccard_4,
            self.window_reuse,
            self.hot10_share,
            self.xmlp_cos.unwrap_or(f64::NAN),
            self.xmlp_topk_precision.unwrap_or(f64::NAN),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceStats {
    pub config: StatsConfig,
    pub layers: Vec<LayerStats>,
    /// Mean over layers (over the layers that have it, for the cross-layer figures).
    pub mean: LayerStats,
}

fn top_k_of(v: &[f32], k: usize, order: &mut Vec<u32>) -> Vec<u32> {
    order.clear();
    order.extend(0..v.len() as u32);
    let key = |i: &u32| (std::cmp::Reverse(ordered(v[*i as usize].abs())), *i);
    if k < v.len() {
        order.select_nth_unstable_by_key(k, key);
    }
    let mut top: Vec<u32> = order[..k.min(v.len())].to_vec();
    top.sort_unstable();
    top
}

/// f32 as a totally ordered integer (for non-negative values).
fn ordered(x: f32) -> u32 {
    x.to_bits()
}

fn overlap(a: &[u32], b: &[u32]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

fn jaccard(a: &[u32], b: &[u32]) -> f64 {
    let i = overlap(a, b);
    let u = a.len() + b.len() - i;
    if u == 0 {
        1.0
    } else {
        i as f64 / u as f64
    }
}

/// Shares of entries holding 90/95/99% of the L1 mass of `v`.
fn mass_shares(v: &[f32], scratch: &mut Vec<f32>) -> [f64; 3] {
    scratch.clear();
    scratch.extend(v.iter().map(|x| x.abs()));
    scratch.sort_unstable_by(|a, b| b.total_cmp(a));
    let total: f64 = scratch.iter().map(|&x| x as f64).sum();
    let mut out = [1.0; 3];
    if total <= 0.0 {
        return out;
    }
    let targets = [0.9, 0.95, 0.99];
    let mut acc = 0.0;
    let mut ti = 0;
    for (i, &x) in scratch.iter().enumerate() {
        acc += x as f64;
        while ti < 3 && acc >= targets[ti] * total {
            out[ti] = (i + 1) as f64 / v.len() as f64;
            ti += 1;
        }
        if ti == 3 {
            break;
        }
    }
    out
}

fn layer_stats<V: TraceView + ?Sized>(trace: &V, l: usize, cfg: &StatsConfig) -> LayerStats {
    let shape = trace.shape();
    let width = shape.intermediate as usize;
    let k = ((cfg.top_frac * width as f64).round() as usize).clamp(1, width);
    let (mut h, mut order, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
    let mut counts = vec![0u64; width];
    let (mut mass, mut n_mass) = ([0.0; 3], 0usize);
    let (mut j1, mut n1, mut j4, mut n4, mut wr, mut nw) = (0.0, 0, 0.0, 0, 0.0, 0);
    let mut union_mark = vec![u32::MAX; width];
    for seq in trace.sequences() {
        let mut history: Vec<Vec<u32>> = Vec::new();
        for (i, t) in seq.clone().enumerate() {
            trace.read(Act::H, t, l, &mut h);
            let m = mass_shares(&h, &mut scratch);
            for (a, b) in mass.iter_mut().zip(m) {
                *a += b;
            }
            n_mass += 1;
            let top = top_k_of(&h, k, &mut order);
            for &n in &top {
                counts[n as usize] += 1;
            }
            if i >= 1 {
                j1 += jaccard(&history[i - 1], &top);
                n1 += 1;
            }
            if i >= 4 {
                j4 += jaccard(&history[i - 4], &top);
                n4 += 1;
            }
            if cfg.window > 0 && i >= cfg.window {
                let stamp = t as u32;
                for past in &history[i - cfg.window..i] {
                    for &n in past {
                        union_mark[n as usize] = stamp;
                    }
                }
                let reused = top
                    .iter()
                    .filter(|&&n| union_mark[n as usize] == stamp)
                    .count();
                wr += reused as f64 / top.len() as f64;
                nw += 1;
            }
            history.push(top);
        }
    }
    let hot = ((cfg.hot_frac * width as f64).ceil() as usize).clamp(1, width);
    let mut sorted = counts.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let total: u64 = sorted.iter().sum();
    let hot10 = if total > 0 {
        sorted[..hot].iter().sum::<u64>() as f64 / total as f64
    } else {
        0.0
    };

    let (mut cos, mut prec) = (None, None);
    if l + 1 < shape.layers as usize {
        let d = shape.hidden as usize;
        let kx = ((cfg.top_frac * d as f64).round() as usize).clamp(1, d);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let (mut c_sum, mut p_sum) = (0.0, 0.0);
        for t in 0..trace.tokens() {
            trace.read(Act::XMlp, t, l, &mut a);
            trace.read(Act::XMlp, t, l + 1, &mut b);
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            c_sum += if na > 0.0 && nb > 0.0 {
                dot / (na * nb)
            } else {
                0.0
            };
            let ta = top_k_of(&a, kx, &mut order);
            let tb = top_k_of(&b, kx, &mut order);
            p_sum += overlap(&ta, &tb) as f64 / kx as f64;
        }
        let n = trace.tokens().max(1) as f64;
        cos = Some(c_sum / n);
        prec = Some(p_sum / n);
    }
    let div = |x: f64, n: usize| if n > 0 { x / n as f64 } else { f64::NAN };
    LayerStats {
        mass90: div(mass[0], n_mass),
        mass95: div(mass[1], n_mass),
        mass99: div(mass[2], n_mass),
        jaccard_1: div(j1, n1),
        jaccard_4: div(j4, n4),
        window_reuse: div(wr, nw),
        hot10_share: hot10,
        xmlp_cos: cos,
        xmlp_topk_precision: prec,
    }
}

/// Computes the statistics of every layer (layers in parallel; the result does not depend on
/// the thread count).
pub fn compute<V: TraceView + ?Sized>(trace: &V, cfg: &StatsConfig) -> TraceStats {
    let layers: Vec<LayerStats> = (0..trace.shape().layers as usize)
        .into_par_iter()
        .map(|l| layer_stats(trace, l, cfg))
        .collect();
    let n = layers.len() as f64;
    let mean_of = |f: fn(&LayerStats) -> f64| layers.iter().map(f).sum::<f64>() / n;
    let mean_opt = |f: fn(&LayerStats) -> Option<f64>| {
        let v: Vec<f64> = layers.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mean = LayerStats {
        mass90: mean_of(|s| s.mass90),
        mass95: mean_of(|s| s.mass95),
        mass99: mean_of(|s| s.mass99),
        jaccard_1: mean_of(|s| s.jaccard_1),
        jaccard_4: mean_of(|s| s.jaccard_4),
        window_reuse: mean_of(|s| s.window_reuse),
        hot10_share: mean_of(|s| s.hot10_share),
        xmlp_cos: mean_opt(|s| s.xmlp_cos),
        xmlp_topk_precision: mean_opt(|s| s.xmlp_topk_precision),
    };
    TraceStats {
        config: *cfg,
        layers,
        mean,
    }
}

/// The per-layer table `flashsim trace stats` prints.
pub fn table(s: &TraceStats) -> String {
    let mut out = format!(
        "top-k = {:.0}% of the width, window = {} tokens, hot = top {:.0}% of neurons\n",
        s.config.top_frac * 100.0,
        s.config.window,
        s.config.hot_frac * 100.0
    );
    out.push_str(&format!(
        "{:>5} {:>7} {:>7} {:>7} {:>9} {:>9} {:>12} {:>11} {:>8} {:>9}\n",
        "layer",
        "mass90",
        "mass95",
        "mass99",
        "jaccard_1",
        "jaccard_4",
        "window_reuse",
        "hot10_share",
        "xmlp_cos",
        "xmlp_prec"
    ));
    let opt = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
    let row = |name: String, r: &LayerStats| {
        format!(
            "{:>5} {:>7.3} {:>7.3} {:>7.3} {:>9.3} {:>9.3} {:>12.3} {:>11.3} {:>8} {:>9}\n",
            name,
            r.mass90,
            r.mass95,
            r.mass99,
            r.jaccard_1,
            r.jaccard_4,
            r.window_reuse,
            r.hot10_share,
            opt(r.xmlp_cos),
            opt(r.xmlp_topk_precision)
        )
    };
    for (l, r) in s.layers.iter().enumerate() {
        out.push_str(&row(l.to_string(), r));
    }
    out.push_str(&row("mean".into(), &s.mean));
    out
}
