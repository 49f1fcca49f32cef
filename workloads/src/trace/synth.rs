//! Synthetic traces for any model shape, seeded, whose knobs are the trace statistics
//! themselves; and `fit`, which sets the knobs from a real trace.
//!
//! The generator, per layer and token:
//! - `h`: an *active set* of `active_share · width` neurons. Each neuron active at the previous
//!   token stays active with probability `temporal_reuse`; the rest are drawn without
//!   replacement with weights `1 / rank^popularity_skew` (a fixed random ranking per layer).
//!   Active neurons get `|h| = exp(σ·m)` with `m` an AR(1) series of persistence
//!   `value_persistence` while the neuron stays active, plus a fixed per-neuron offset
//!   `magnitude_skew · g_i` (g_i ~ N(0, 1) drawn once: some neurons are strong whenever they
//!   fire); inactive ones get Gaussian noise of scale `inactive_scale · exp(g_i·magnitude_skew)`
//!   (a neuron's pre-activation scale is its own, so the same neurons sit just below the
//!   threshold token after token); signs are random.
//! - `x_attn(l)`, `x_mlp(l)` follow one residual-like chain per token,
//!   x_attn(0) → x_mlp(0) → x_attn(1) → …, each step `x ← ρ·x + √(1−ρ²)·(c ⊙ z)` with
//!   `ρ = √layer_cosine` (so consecutive `x_mlp` have cosine ≈ `layer_cosine`) and channel scales
//!   `c_j = 1 / rank_j^channel_skew` (persistent outlier channels, which make top-K precision).
//! - `x_o(l)`: independent `c ⊙ z` per layer.
//!
//! Generation streams token by token into a [`TraceWriter`]: memory is one token's record.

use super::format::{Act, TraceWriter};
use super::stats::{self, StatsConfig, TraceStats, TraceView};
use crate::error::Result;
use crate::model::Activations;
use crate::shape::ModelShape;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The generator's knobs. Defaults follow published figures for 7B models.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthParams {
    /// Share of neurons active per token and layer. Default 0.033: LLM in a Flash measures about
    /// 3.3% active FFN neurons in ReLU OPT models.
    pub active_share: f64,
    /// σ of log|h| among active neurons. Default 1.0 (assumed; `fit` sets it from a real trace).
    pub active_sigma: f64,
    /// Scale of inactive neurons' |h| relative to the median active one. Default 0.001: a ReLU
    /// zeroes them, so the ~3.3% active neurons hold about 90% of the mass or more; the small
    /// floor keeps a ranking among the rest (assumed).
    pub inactive_scale: f64,
    /// Zipf exponent of neuron popularity. Default 0.6 (assumed; `fit` sets it).
    pub popularity_skew: f64,
    /// Probability that an active neuron stays active at the next token. Default 0.7: with
    /// windowing over k = 4 tokens LLM in a Flash loads 2.4% of the FFN of the 10% it predicts,
    /// i.e. about 76% of a token's neurons are already in the window (derived, approximately).
    pub temporal_reuse: f64,
    /// AR(1) persistence of an active neuron's log-magnitude. Default 0.5 (assumed).
    pub value_persistence: f64,
    /// Spread of the fixed per-neuron log-magnitude offsets. Default 0.5 (assumed; `fit` sets it).
    pub magnitude_skew: f64,
    /// Cosine similarity of `x_mlp` between consecutive layers. Default 0.95: ActiveFlow
    /// measures > 0.95 on Llama-2-7B from layer 3 on.
    pub layer_cosine: f64,
    /// Zipf exponent of the residual stream's channel scales. Default 0.5 (assumed), which gives
    /// a top-10% precision near ActiveFlow's > 80% at cosine 0.95.
    pub channel_skew: f64,
}

impl Default for SynthParams {
    fn default() -> Self {
        SynthParams {
            active_share: 0.033,
            active_sigma: 1.0,
            inactive_scale: 0.001,
            popularity_skew: 0.6,
            temporal_reuse: 0.7,
            value_persistence: 0.5,
            magnitude_skew: 0.5,
            layer_cosine: 0.95,
            channel_skew: 0.5,
        }
    }
}

impl SynthParams {
    pub fn check(&self) -> std::result::Result<(), String> {
        let unit = |n: &str, v: f64, lo: f64| {
            if v.is_finite() && v >= lo && v <= 1.0 {
                Ok(())
            } else {
                Err(format!("{n} = {v} must lie in [{lo}, 1]"))
            }
        };
        unit("active_share", self.active_share, 1e-6)?;
        unit("temporal_reuse", self.temporal_reuse, 0.0)?;
        unit("value_persistence", self.value_persistence, 0.0)?;
        unit("layer_cosine", self.layer_cosine, 0.0)?;
        for (n, v) in [
            ("active_sigma", self.active_sigma),
            ("inactive_scale", self.inactive_scale),
            ("popularity_skew", self.popularity_skew),
            ("channel_skew", self.channel_skew),
            ("magnitude_skew", self.magnitude_skew),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{n} = {v} must be zero or positive"));
            }
        }
        Ok(())
    }
}

struct LayerState {
    /// Popularity weight of each neuron.
    weight: Vec<f64>,
    active: Vec<bool>,
    /// Log-magnitude state of each neuron while active.
    m: Vec<f64>,
    /// Fixed log-magnitude offset of each neuron.
    offset: Vec<f64>,
    /// Vose alias table of the popularity weights.
    alias: Alias,
    list: Vec<u32>,
}

/// Vose's alias table: O(1) draws from a discrete distribution.
#[derive(Debug, Clone, Default)]
struct Alias {
    prob: Vec<f64>,
    alias: Vec<u32>,
}

impl Alias {
    fn new(w: &[f64]) -> Self {
        let n = w.len();
        let total: f64 = w.iter().sum();
        let mut prob: Vec<f64> = w.iter().map(|x| x * n as f64 / total).collect();
        let mut alias = vec![0u32; n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| prob[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            alias[s] = l as u32;
            prob[l] -= 1.0 - prob[s];
            if prob[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        for i in small.into_iter().chain(large) {
            prob[i] = 1.0;
        }
        Alias { prob, alias }
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> usize {
        let i = rng.gen_range(0..self.prob.len());
        if rng.gen::<f64>() < self.prob[i] {
            i
        } else {
            self.alias[i] as usize
        }
    }
}

/// Streams synthetic token records.
pub struct Generator {
    params: SynthParams,
    shape: ModelShape,
    rng: ChaCha8Rng,
    layers: Vec<LayerState>,
    chan: Vec<f32>,
    chan_o: Vec<f32>,
    keys: Vec<(f64, u32)>,
}

fn zipf_scales(n: usize, skew: f64, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut rank: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.gen_range(0..=i);
        rank.swap(i, j);
    }
    rank.iter()
        .map(|&r| 1.0 / ((r + 1) as f64).powf(skew))
        .collect()
}

fn rms_normalized(v: Vec<f64>) -> Vec<f32> {
    let rms = (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    v.iter().map(|x| (x / rms) as f32).collect()
}

impl Generator {
    pub fn new(params: SynthParams, shape: &ModelShape, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let width = shape.intermediate as usize;
        let layers = (0..shape.layers)
            .map(|_| LayerState {
                weight: zipf_scales(width, params.popularity_skew, &mut rng),
                active: vec![false; width],
                m: vec![0.0; width],
                offset: (0..width)
                    .map(|_| params.magnitude_skew * rng.sample::<f64, _>(StandardNormal))
                    .collect(),
                list: Vec::new(),
                alias: Alias::default(),
            })
            .map(|mut st: LayerState| {
                st.alias = Alias::new(&st.weight);
                st
            })
            .collect();
        let chan = rms_normalized(zipf_scales(
            shape.hidden as usize,
            params.channel_skew,
            &mut rng,
        ));
        let chan_o = rms_normalized(zipf_scales(
            shape.q_dim() as usize,
            params.channel_skew,
            &mut rng,
        ));
        Generator {
            params,
            shape: shape.clone(),
            rng,
            layers,
            chan,
            chan_o,
            keys: Vec::new(),
        }
    }

    fn normal(&mut self) -> f64 {
        self.rng.sample::<f64, _>(StandardNormal)
    }

    /// The next token's activations; `new_sequence` forgets the previous token.
    pub fn next(&mut self, new_sequence: bool, acts: &mut Activations) {
        let p = self.params;
        let l_n = self.shape.layers as usize;
        let width = self.shape.intermediate as usize;
        let n_active = ((p.active_share * width as f64).round() as usize).clamp(1, width);
        *acts = Activations::default();
        let rho = p.layer_cosine.sqrt();
        let fresh = (1.0 - rho * rho).max(0.0).sqrt();
        let d = self.shape.hidden as usize;
        let mut x: Vec<f64> = (0..d)
            .map(|j| self.chan[j] as f64 * self.normal())
            .collect();
        for l in 0..l_n {
            // The residual-like chain: x_attn(l), then x_mlp(l).
            if l > 0 {
                residual_step(&mut x, &self.chan, rho, fresh, &mut self.rng);
            }
            acts.x_attn.push(x.iter().map(|&v| v as f32).collect());
            let xo: Vec<f32> = (0..self.chan_o.len())
                .map(|j| self.chan_o[j] * self.normal() as f32)
                .collect();
            acts.x_o.push(xo);
            residual_step(&mut x, &self.chan, rho, fresh, &mut self.rng);
            acts.x_mlp.push(x.iter().map(|&v| v as f32).collect());

            // The active set.
            let mut st = std::mem::replace(
                &mut self.layers[l],
                LayerState {
                    weight: Vec::new(),
                    active: Vec::new(),
                    m: Vec::new(),
                    offset: Vec::new(),
                    list: Vec::new(),
                    alias: Alias::default(),
                },
            );
            let mut kept = Vec::with_capacity(n_active);
            if !new_sequence {
                for &i in &st.list {
                    if self.rng.gen::<f64>() < p.temporal_reuse {
                        kept.push(i);
                    } else {
                        st.active[i as usize] = false;
                    }
                }
            } else {
                for &i in &st.list {
                    st.active[i as usize] = false;
                }
            }
            let need = n_active - kept.len();
            let inactive = width - kept.len();
            if need > 0 && 2 * need <= inactive {
                // Few to draw: sample the popularity distribution (alias table) and reject the
                // neurons already active — the same law as weighted sampling without replacement.
                let mut got = 0;
                while got < need {
                    let i = st.alias.sample(&mut self.rng);
                    if !st.active[i] {
                        st.active[i] = true;
                        st.m[i] = self.rng.sample::<f64, _>(StandardNormal);
                        kept.push(i as u32);
                        got += 1;
                    }
                }
            } else if need > 0 {
                // Many to draw: Efraimidis–Spirakis, the `need` largest keys ln(u)/w among the
                // inactive neurons.
                self.keys.clear();
                for i in 0..width {
                    if !st.active[i] {
                        let u: f64 = self.rng.gen::<f64>().max(1e-300);
                        self.keys.push((u.ln() / st.weight[i], i as u32));
                    }
                }
                if need < self.keys.len() {
                    self.keys.select_nth_unstable_by(need - 1, |a, b| {
                        b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
                    });
                }
                for &(_, i) in self.keys.iter().take(need) {
                    st.active[i as usize] = true;
                    st.m[i as usize] = self.rng.sample::<f64, _>(StandardNormal);
                    kept.push(i);
                }
            }
            let persist = p.value_persistence;
            let innov = (1.0 - persist * persist).max(0.0).sqrt();
            let mut h = vec![0f32; width];
            let mut bits = 0u64;
            for (i, hv) in h.iter_mut().enumerate() {
                if i % 64 == 0 {
                    bits = self.rng.gen();
                }
                let sign = if (bits >> (i % 64)) & 1 == 1 {
                    1.0
                } else {
                    -1.0
                };
                *hv = if st.active[i] {
                    sign * (p.active_sigma * st.m[i] + st.offset[i]).exp() as f32
                } else {
                    (p.inactive_scale * st.offset[i].exp() * self.normal()) as f32
                };
            }
            // Evolve the magnitudes of the neurons that stay active for the next token.
            for &i in &kept {
                let z: f64 = self.rng.sample(StandardNormal);
                st.m[i as usize] = persist * st.m[i as usize] + innov * z;
            }
            kept.sort_unstable();
            st.list = kept;
            self.layers[l] = st;
            acts.h.push(h);
        }
    }
}

/// One step of the residual-like chain: `x ← ρ·x + fresh·(c ⊙ z)`.
fn residual_step(x: &mut [f64], chan: &[f32], rho: f64, fresh: f64, rng: &mut ChaCha8Rng) {
    for (xj, &c) in x.iter_mut().zip(chan) {
        *xj = rho * *xj + fresh * c as f64 * rng.sample::<f64, _>(StandardNormal);
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub params: SynthParams,
    pub shape: ModelShape,
    pub sequences: usize,
    pub tokens_per_sequence: usize,
    pub seed: u64,
}

/// Generates a synthetic trace file at `out`, streaming.
pub fn generate(cfg: &SynthConfig, out: &Path) -> Result<PathBuf> {
    cfg.params
        .check()
        .map_err(crate::error::WorkloadError::Invalid)?;
    let mut meta = BTreeMap::new();
    meta.insert("source".into(), "synthetic".into());
    meta.insert(
        "synthetic".into(),
        serde_json::to_string(&cfg.params).expect("json"),
    );
    meta.insert("seed".into(), cfg.seed.to_string());
    let mut w = TraceWriter::create(out, &cfg.shape, meta)?;
    let mut g = Generator::new(cfg.params, &cfg.shape, cfg.seed);
    let mut acts = Activations::default();
    for s in 0..cfg.sequences {
        for pos in 0..cfg.tokens_per_sequence {
            g.next(pos == 0, &mut acts);
            // Synthetic token ids: a seeded hash, so policies that key on ids see variety.
            let token =
                (crate::trace::synth::mix(cfg.seed ^ ((s * cfg.tokens_per_sequence + pos) as u64))
                    % cfg.shape.vocab as u64) as u32;
            w.push(token, pos as u32, s as u32, &acts)?;
        }
    }
    w.finish()
}

/// SplitMix64 finalizer.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A synthetic trace held in memory (for fitting).
pub struct MemTrace {
    shape: ModelShape,
    seqs: Vec<std::ops::Range<usize>>,
    tokens: usize,
    data: [Vec<f32>; 4],
}

impl MemTrace {
    pub fn generate(
        params: SynthParams,
        shape: &ModelShape,
        seqs: &[std::ops::Range<usize>],
        seed: u64,
    ) -> Self {
        let mut g = Generator::new(params, shape, seed);
        let mut acts = Activations::default();
        let mut data: [Vec<f32>; 4] = Default::default();
        let tokens = seqs.last().map_or(0, |r| r.end);
        for s in seqs {
            for t in s.clone() {
                g.next(t == s.start, &mut acts);
                for (i, act) in Act::ALL.into_iter().enumerate() {
                    let v = match act {
                        Act::XAttn => &acts.x_attn,
                        Act::XO => &acts.x_o,
                        Act::XMlp => &acts.x_mlp,
                        Act::H => &acts.h,
                    };
                    for layer in v {
                        data[i].extend(layer.iter().map(|&x| half::f16::from_f32(x).to_f32()));
                    }
                }
            }
        }
        MemTrace {
            shape: shape.clone(),
            seqs: seqs.to_vec(),
            tokens,
            data,
        }
    }
}

impl TraceView for MemTrace {
    fn shape(&self) -> &ModelShape {
        &self.shape
    }
    fn tokens(&self) -> usize {
        self.tokens
    }
    fn sequences(&self) -> Vec<std::ops::Range<usize>> {
        self.seqs.clone()
    }
    fn read(&self, act: Act, t: usize, l: usize, out: &mut Vec<f32>) {
        let w = act.width(&self.shape);
        let i = Act::ALL.iter().position(|a| *a == act).expect("known");
        let o = (t * self.shape.layers as usize + l) * w;
        out.clear();
        out.extend_from_slice(&self.data[i][o..o + w]);
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

fn to_params(th: &[f64]) -> SynthParams {
    SynthParams {
        active_share: sigmoid(th[0]),
        active_sigma: th[1].exp(),
        inactive_scale: th[2].exp(),
        popularity_skew: th[3].exp(),
        temporal_reuse: sigmoid(th[4]),
        value_persistence: sigmoid(th[5]),
        layer_cosine: sigmoid(th[6]),
        channel_skew: th[7].exp(),
        magnitude_skew: th[8].exp(),
    }
}

fn from_params(p: &SynthParams) -> Vec<f64> {
    vec![
        logit(p.active_share),
        p.active_sigma.max(1e-6).ln(),
        p.inactive_scale.max(1e-6).ln(),
        p.popularity_skew.max(1e-6).ln(),
        logit(p.temporal_reuse),
        logit(p.value_persistence),
        logit(p.layer_cosine),
        p.channel_skew.max(1e-6).ln(),
        p.magnitude_skew.max(1e-6).ln(),
    ]
}

/// The result of [`fit`].
#[derive(Debug, Clone)]
pub struct Fit {
    pub params: SynthParams,
    pub target: TraceStats,
    pub achieved: TraceStats,
    /// Largest |synthetic − real| over the mean figures.
    pub max_abs_error: f64,
    pub evaluations: usize,
}

fn distance(a: &TraceStats, b: &TraceStats) -> (f64, f64) {
    let (fa, fb) = (a.mean.figures(), b.mean.figures());
    let mut sq = 0.0;
    let mut worst = 0.0f64;
    for (x, y) in fa.iter().zip(fb.iter()) {
        if x.is_nan() || y.is_nan() {
            continue;
        }
        sq += (x - y) * (x - y);
        worst = worst.max((x - y).abs());
    }
    (sq, worst)
}

/// Sets the knobs so that the statistics of a synthetic trace with the real trace's shape and
/// sequence lengths match `real`'s mean figures: Nelder–Mead on the squared error, in a
/// transformed space where every knob is unconstrained; the same `seed` throughout, so the
/// objective is deterministic.
pub fn fit<V: TraceView + ?Sized>(
    real: &V,
    cfg: &StatsConfig,
    seed: u64,
    max_evaluations: usize,
) -> Fit {
    let target = stats::compute(real, cfg);
    let shape = real.shape().clone();
    let seqs = real.sequences();
    let mut evals = 0usize;
    let mut eval = |th: &[f64]| -> f64 {
        evals += 1;
        let m = MemTrace::generate(to_params(th), &shape, &seqs, seed);
        distance(&stats::compute(&m, cfg), &target).0
    };
    // Start from a guess read off the target: the active share from the 90%-mass share, the
    // reuse from the window figure, the cosine from the cosine.
    let mut start = SynthParams::default();
    let t = &target.mean;
    start.active_share = t.mass90.clamp(0.01, 0.95);
    start.temporal_reuse = t.window_reuse.clamp(0.05, 0.95);
    if let Some(c) = t.xmlp_cos {
        start.layer_cosine = c.clamp(0.05, 0.999);
    }
    let mut best = from_params(&start);
    let mut best_f = eval(&best);
    for round in 0..3 {
        let step = [1.0, 0.5, 0.25][round];
        let (x, f) = nelder_mead(&mut eval, &best, step, max_evaluations / 3);
        if f < best_f {
            best = x;
            best_f = f;
        }
    }
    let params = to_params(&best);
    let achieved = stats::compute(&MemTrace::generate(params, &shape, &seqs, seed), cfg);
    let (_, worst) = distance(&achieved, &target);
    Fit {
        params,
        target,
        achieved,
        max_abs_error: worst,
        evaluations: evals,
    }
}

/// Minimizes `f` from `x0` with simplex steps of `step`; at most `max_evals` evaluations.
fn nelder_mead(
    f: &mut dyn FnMut(&[f64]) -> f64,
    x0: &[f64],
    step: f64,
    max_evals: usize,
) -> (Vec<f64>, f64) {
    let n = x0.len();
    let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n + 1);
    simplex.push((x0.to_vec(), f(x0)));
    for i in 0..n {
        let mut x = x0.to_vec();
        x[i] += step;
        let fx = f(&x);
        simplex.push((x, fx));
    }
    let mut used = n + 1;
    while used < max_evals {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        if simplex[n].1 - simplex[0].1 < 1e-9 {
            break;
        }
        let centroid: Vec<f64> = (0..n)
            .map(|j| simplex[..n].iter().map(|s| s.0[j]).sum::<f64>() / n as f64)
            .collect();
        let along = |t: f64| -> Vec<f64> {
            (0..n)
                .map(|j| centroid[j] + t * (simplex[n].0[j] - centroid[j]))
                .collect()
        };
        let xr = along(-1.0);
        let fr = f(&xr);
        used += 1;
        if fr < simplex[0].1 {
            let xe = along(-2.0);
            let fe = f(&xe);
            used += 1;
            simplex[n] = if fe < fr { (xe, fe) } else { (xr, fr) };
        } else if fr < simplex[n - 1].1 {
            simplex[n] = (xr, fr);
        } else {
            let xc = along(0.5);
            let fc = f(&xc);
            used += 1;
            if fc < simplex[n].1 {
                simplex[n] = (xc, fc);
            } else {
                let x0 = simplex[0].0.clone();
                for s in simplex.iter_mut().skip(1) {
                    s.0 = (0..n).map(|j| x0[j] + 0.5 * (s.0[j] - x0[j])).collect();
                    s.1 = f(&s.0);
                    used += 1;
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex.swap_remove(0)
}
