//! `llm-in-a-flash` (Alizadeh et al., arXiv 2312.11514): attention resident, FFN neurons
//! predicted per token and read from flash, a sliding window of the last k tokens' neurons kept
//! in DRAM, optional row-column bundling, delete-by-copy DRAM management, compute over the whole
//! window, and no I/O/compute overlap by default.
//!
//! Per token t and layer l, from the trace's `h`:
//! - the true active set A = { i : |h_i| > active_threshold · rms(h) } (a ReLU zeroes the rest);
//! - the predicted set P: `oracle` → P = A; `model` → each i ∈ A kept with probability `recall`
//!   (a missed neuron costs accuracy, not I/O), plus false positives up to `over_prediction`·|A|
//!   taken from the neurons just below the threshold (largest |h| outside A);
//! - the window W_t = P_{t−k+1} ∪ … ∪ P_t: load P_t \ W_{t−1}, evict what leaves the window;
//! - reads: per loaded neuron its bundle (gate row, up row, down column together) or, unbundled,
//!   its rows and column as separate reads; each neuron's read is its own request, as in the
//!   paper (32 threads reading neurons), unless `coalesce` merges adjacent ones;
//! - DRAM management: deleting a neuron copies the last row over it (read + write one neuron),
//!   an op of its own before the FFN;
//! - the FFN computes over all of W_t, so compute grows with the window, not with P_t;
//! - memory: per layer the paper preallocates a matrix of the largest window; setup sizes it
//!   from the run's own predictions, so that a budget it does not fit is refused up front.

use crate::cache::{SlidingWindow, UnitCache};
use crate::decode;
use crate::layout::{coalesce, Major, WeightLayout};
use crate::plan::{
    f16_quanta, index_runs, op_weights, AppliedMask, DramChange, Extent, IssueAfter, Magnitude, Op,
    OpKind, Read, TokenPlan, F16_QUANTUM,
};
use crate::policy::{
    param_key, parse_params, Policy, PolicyContext, PolicyEntry, PolicyError, PolicySetup,
    TokenInfo,
};
use crate::topk::{indices_in_range, top_k_under};
use flashsim_workloads::model::Site;
use flashsim_workloads::shape::{ModelShape, TensorKind};
use flashsim_workloads::toml_source::{ConfigError, TomlSource};
use flashsim_workloads::trace::Act;
use serde::Deserialize;

pub const ENTRY: PolicyEntry = PolicyEntry {
    name: "llm-in-a-flash",
    summary: "predicted FFN neurons, sliding window, bundling (LLM in a Flash)",
    build,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Predictor {
    /// The true active set (an upper bound on any predictor).
    Oracle,
    /// A predictor with recall `recall` and over-prediction `over_prediction`.
    Model,
}

/// Parameters of `[policies.llm-in-a-flash]`, with the paper's values as defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmInAFlashParams {
    /// Default `model`: the paper's low-rank predictor.
    #[serde(default = "default_predictor")]
    pub predictor: Predictor,
    /// Share of truly active neurons the predictor marks. Default 0.95: 5% false negatives on OPT.
    #[serde(default = "default_recall")]
    pub recall: f64,
    /// Predicted set size over the true active set. Default 3.0: on OPT the predictor marks
    /// about 3x the truly active neurons (2x on Phi-2).
    #[serde(default = "default_over")]
    pub over_prediction: f64,
    /// Window k in tokens. Default 4 (OPT/Falcon use 4–5; Llama-2 uses 2). 0 = no window:
    /// every predicted neuron is read each token and dropped after use (Table 2's
    /// "+ predictor" row).
    #[serde(default = "default_window")]
    pub window_tokens: u32,
    /// Store gate row, up row and down column of each neuron together. Default true.
    #[serde(default = "default_true")]
    pub bundling: bool,
    /// |h_i| above this share of rms(h) marks neuron i active in the trace. Default 0.02, far
    /// below any active neuron of a ReLU model and above its zeroed ones (assumed).
    #[serde(default = "default_threshold")]
    pub active_threshold: f64,
    /// Issue a layer's neuron reads when its attention starts instead of when it ends (the
    /// paper does not overlap). Default false.
    #[serde(default)]
    pub overlap: bool,
    /// Charge the delete-by-copy DRAM management. Default true.
    #[serde(default = "default_true")]
    pub dram_management: bool,
    /// Merge reads of adjacent neurons (up to `max_read_kib`). Default false: the paper reads
    /// each neuron (or bundle) as one request.
    #[serde(default)]
    pub coalesce: bool,
    /// Seed of the predictor's misses.
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "crate::policy::default_compute_unit")]
    pub compute_unit: String,
}

fn default_predictor() -> Predictor {
    Predictor::Model
}
fn default_recall() -> f64 {
    0.95
}
fn default_over() -> f64 {
    3.0
}
fn default_window() -> u32 {
    4
}
fn default_true() -> bool {
    true
}
fn default_threshold() -> f64 {
    0.02
}

fn build(
    src: &TomlSource,
    params: toml::Value,
    key: &[&str],
) -> Result<Box<dyn Policy>, ConfigError> {
    let p: LlmInAFlashParams = parse_params(src, params, key)?;
    let at = |k: &str| param_key(key, k);
    if !(0.0..=1.0).contains(&p.recall) {
        return Err(src.invalid(&at("recall"), "must lie in [0, 1]"));
    }
    if !(p.over_prediction >= 1.0 && p.over_prediction.is_finite()) {
        return Err(src.invalid(&at("over_prediction"), "must be at least 1"));
    }
    if !(p.active_threshold >= 0.0 && p.active_threshold.is_finite()) {
        return Err(src.invalid(&at("active_threshold"), "must be zero or positive"));
    }
    Ok(Box::new(LlmInAFlash::new(p)))
}

pub struct LlmInAFlash {
    p: LlmInAFlashParams,
    windows: Vec<SlidingWindow>,
    /// Scratch of `predict`: magnitude keys of h, their L1 mass, and the false positives picked.
    keys: Vec<u16>,
    total_mass: f64,
    picked: Vec<u32>,
}

impl LlmInAFlash {
    pub fn new(p: LlmInAFlashParams) -> Self {
        LlmInAFlash {
            p,
            windows: Vec::new(),
            keys: Vec::new(),
            total_mass: 0.0,
            picked: Vec::new(),
        }
    }

    /// Bytes of one neuron's FFN weights.
    fn neuron_bytes(shape: &ModelShape) -> u64 {
        (if shape.gated { 3 } else { 2 }) * shape.weight_bytes(shape.hidden as u64)
    }

    /// The extents holding neuron `i` of `layer`.
    fn neuron_extents(&self, layout: &WeightLayout, layer: u32, i: u64, out: &mut Vec<Extent>) {
        if let Some(b) = layout.bundles(layer) {
            out.push(b.bundle(i));
            return;
        }
        for t in layout.layer(layer).filter(|t| t.shape.kind.is_ffn()) {
            out.push(t.unit(i));
        }
    }

    /// Predicted set of one layer, sorted, from the f16 magnitude keys of h (|h| exactly; their
    /// L1 mass is left in `self.total_mass`).
    fn predict(&mut self, token: u32, layer: u32) -> Vec<u32> {
        let keys = &self.keys;
        // Keys order like magnitudes up to infinity (0x7c00); above are NaNs, neither active
        // nor below the threshold.
        const INF: u16 = 0x7c00;
        // The L1 mass (for the retained share) as an exact integer sum; the mean square (for
        // the threshold) in four fixed lanes of f64, so that it vectorizes.
        let (mut sum, mut sq, mut max_key) = (0u64, [0f64; 4], 0u16);
        let quads = keys.chunks_exact(4);
        let rest = quads.remainder();
        for q in quads {
            for j in 0..4 {
                let x = f16_quanta(q[j].min(INF - 1));
                sum += x;
                sq[j] += x as f64 * x as f64;
                max_key = max_key.max(q[j]);
            }
        }
        for (j, &k) in rest.iter().enumerate() {
            let x = f16_quanta(k.min(INF - 1));
            sum += x;
            sq[j] += x as f64 * x as f64;
            max_key = max_key.max(k);
        }
        let (total, mean_sq) = if max_key < INF {
            (
                sum as f64 * F16_QUANTUM,
                (sq[0] + sq[1] + sq[2] + sq[3]) * F16_QUANTUM * F16_QUANTUM / keys.len() as f64,
            )
        } else {
            (f64::INFINITY, f64::INFINITY)
        };
        self.total_mass = total;
        let thr = self.p.active_threshold * mean_sq.sqrt();
        // `kmin`: the least key whose magnitude exceeds `thr`.
        let (mut lo, mut hi) = (0u16, INF + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if mid.magnitude() <= thr {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let kmin = lo;
        // The active set: the keys from `kmin` up to infinity.
        let mut active = Vec::new();
        indices_in_range(keys, kmin, INF, &mut active);
        if self.p.predictor == Predictor::Oracle {
            return active;
        }
        let mut p: Vec<u32> = active
            .iter()
            .copied()
            .filter(|&i| unit_hash(self.p.seed, token, layer, i) < self.p.recall)
            .collect();
        let target = (self.p.over_prediction * active.len() as f64).round() as usize;
        let extra = target.saturating_sub(p.len());
        if extra > 0 {
            // False positives: the neurons just below the threshold, the largest first, ties to
            // the lower index.
            top_k_under(keys, kmin, extra, &mut self.picked);
            // Both lists are ascending and disjoint: merge them.
            let mut merged = Vec::with_capacity(p.len() + self.picked.len());
            let (mut a, mut b) = (p.iter().peekable(), self.picked.iter().peekable());
            while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
                if x < y {
                    merged.push(x);
                    a.next();
                } else {
                    merged.push(y);
                    b.next();
                }
            }
            merged.extend(a);
            merged.extend(b);
            p = merged;
        }
        p
    }
}

/// A uniform number in [0, 1) from (seed, token, layer, unit).
pub fn unit_hash(seed: u64, token: u32, layer: u32, unit: u32) -> f64 {
    let mut x = seed ^ ((token as u64) << 40) ^ ((layer as u64) << 24) ^ unit as u64;
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

impl Policy for LlmInAFlash {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn layout(&self, shape: &ModelShape, alignment_bytes: u64) -> WeightLayout {
        if self.p.bundling {
            WeightLayout::bundled(shape, alignment_bytes)
        } else {
            // Neuron i: row i of gate and up, column i of down.
            WeightLayout::oriented(shape, alignment_bytes, |k| {
                if k == TensorKind::Down {
                    Major::Col
                } else {
                    Major::Row
                }
            })
        }
    }

    fn setup(&mut self, ctx: &PolicyContext) -> Result<PolicySetup, PolicyError> {
        let trace = ctx.need_trace(ENTRY.name)?;
        let n = ctx.shape.intermediate as usize;
        // Without a window, a one-token window tells what this token needs; nothing is kept.
        let k = self.p.window_tokens.max(1) as usize;
        // The paper preallocates, per layer, a matrix of the largest window: its size, from the
        // windows this run's predictions will make (a sizing pass; no plan sees it). Without a
        // window, one layer's predicted neurons are read, used and dropped at a time.
        let windowed = self.p.window_tokens > 0;
        let mut neurons = 0usize;
        for l in 0..ctx.shape.layers {
            let mut window = SlidingWindow::new(n, k);
            let mut largest = 0;
            for t in 0..ctx.tokens {
                trace.read_keys(
                    Act::H,
                    t as usize % trace.tokens(),
                    l as usize,
                    &mut self.keys,
                );
                let predicted = self.predict(t, l);
                largest = largest.max(if windowed {
                    window.access(t as u64, &predicted);
                    window.len()
                } else {
                    predicted.len()
                });
            }
            neurons = if windowed {
                neurons + largest
            } else {
                neurons.max(largest)
            };
        }
        self.windows = (0..ctx.shape.layers)
            .map(|_| SlidingWindow::new(n, k))
            .collect();
        Ok(PolicySetup {
            // Everything but the FFN (embeddings, attention, LM head; predictors are small).
            resident: ctx.layout.non_ffn_extents(),
            peak_buffer_bytes: neurons as u64 * Self::neuron_bytes(ctx.shape),
            reserved_bytes: 0,
        })
    }

    fn plan_token(
        &mut self,
        ctx: &PolicyContext,
        token: TokenInfo,
    ) -> Result<TokenPlan, PolicyError> {
        let shape = ctx.shape;
        let dense = ctx.dense_ops(token, &self.p.compute_unit);
        let nb = Self::neuron_bytes(shape);
        let mut plan = TokenPlan::default();
        let mut mass = 0.0;
        let mut extents = Vec::new();
        for l in 0..shape.layers {
            let attn = plan.ops.len() as u32;
            plan.ops
                .push(dense[decode::attention_op(l) as usize].clone());
            let trace = ctx.need_trace(ENTRY.name)?;
            trace.read_keys(
                Act::H,
                token.index as usize % trace.tokens(),
                l as usize,
                &mut self.keys,
            );
            let predicted = self.predict(token.index, l);
            let windowed = self.p.window_tokens > 0;
            let mut access = self.windows[l as usize].access(token.index as u64, &predicted);
            if !windowed {
                // Stream every predicted neuron; the window object only tracks this token's set.
                access.misses = predicted.clone();
                access.hits.clear();
                access.evicted.clear();
            }
            plan.cache_lookups += predicted.len() as u64;
            plan.cache_hits += access.hits.len() as u64;
            plan.evicted_bytes += access.evicted.len() as u64 * nb;
            if ctx.op_weights {
                // What leaves the window goes as the token starts, as the accounting frees it.
                let mut gone = Vec::new();
                for &i in &access.evicted {
                    self.neuron_extents(ctx.layout, l, i as u64, &mut gone);
                }
                plan.dram_changes.extend(
                    gone.into_iter()
                        .map(|e| DramChange::Evict(IssueAfter::TokenStart, e)),
                );
            }
            if self.p.dram_management && !access.evicted.is_empty() {
                plan.ops.push(Op {
                    kind: OpKind::DramManagement,
                    layer: Some(l),
                    unit: self.p.compute_unit.clone(),
                    flops: 0,
                    dram_bytes: 2 * access.evicted.len() as u64 * nb,
                    // A copy within DRAM, not a product with the weights.
                    weights: Vec::new(),
                    pieces: 0,
                });
            }
            let ffn = plan.ops.len() as u32;
            let window = &self.windows[l as usize];
            let w = if windowed {
                window.len() as u64
            } else {
                predicted.len() as u64
            };
            // The neurons the FFN computes, listed when the op's weights or masks are asked for.
            let computed: Vec<u32> = if !(ctx.op_weights || ctx.record_masks) {
                Vec::new()
            } else if windowed {
                (0..self.keys.len() as u32)
                    .filter(|&i| window.contains(i))
                    .collect()
            } else {
                predicted.clone()
            };
            let mut weights = Vec::new();
            if ctx.op_weights {
                for &i in &computed {
                    self.neuron_extents(ctx.layout, l, i as u64, &mut weights);
                }
                weights = op_weights(weights);
            }
            // Runs of adjacent neurons, each as many pieces as a neuron has extents (its bundle,
            // or its row or column of each FFN matrix).
            let runs = if windowed {
                // Neurons in the window whose predecessor is not.
                let n = self.keys.len() as u32;
                (0..n)
                    .filter(|&i| window.contains(i) && (i == 0 || !window.contains(i - 1)))
                    .count() as u64
            } else {
                index_runs(&predicted)
            };
            let per_neuron = if ctx.layout.bundles(l).is_some() {
                1
            } else {
                ctx.layout
                    .layer(l)
                    .filter(|t| t.shape.kind.is_ffn())
                    .count() as u64
            };
            plan.ops.push(Op {
                kind: OpKind::Ffn,
                layer: Some(l),
                unit: self.p.compute_unit.clone(),
                // 2 FLOPs per weight over every neuron in the window.
                flops: 2 * w * (if shape.gated { 3 } else { 2 }) * shape.hidden as u64,
                dram_bytes: w * nb,
                weights,
                pieces: runs * per_neuron,
            });
            extents.clear();
            for &i in &access.misses {
                self.neuron_extents(ctx.layout, l, i as u64, &mut extents);
            }
            let reads = if self.p.coalesce {
                coalesce(extents.clone(), ctx.max_read_bytes)
            } else {
                extents.clone()
            };
            let issue_after = if self.p.overlap {
                IssueAfter::OpStart(attn)
            } else {
                IssueAfter::OpDone(attn)
            };
            plan.reads.extend(
                reads
                    .into_iter()
                    .map(|e| Read::demand(e, ffn, issue_after, windowed)),
            );
            if ctx.record_masks {
                plan.masks.push(AppliedMask {
                    layer: l,
                    site: Site::DownIn,
                    keep: computed,
                });
            }
            // Retained |h| mass of the window, summed exactly.
            mass += if self.total_mass <= 0.0 {
                1.0
            } else {
                let kept: u64 = self
                    .keys
                    .iter()
                    .enumerate()
                    .map(|(i, &k)| f16_quanta(k.min(0x7bff)) * window.contains(i as u32) as u64)
                    .sum();
                kept as f64 * F16_QUANTUM / self.total_mass
            };
        }
        plan.ops
            .push(dense[decode::lm_head_op(shape) as usize].clone());
        plan.retained_mass = Some(mass / shape.layers as f64);
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FnTrace;

    #[test]
    fn window_bundles_and_delete_by_copy_by_hand() {
        // OPT-like (no gate), hidden 4, 6 neurons, fp16: a bundle is an up row and a down column,
        // 2 x 4 x 2 B = 16 B. Bundled layout, 1-byte aligned: embedding 0..32, q/k/v/o to 160,
        // LM head 160..192, neuron i's bundle at 192 + 16 i.
        let shape = ModelShape {
            name: "t".into(),
            source: String::new(),
            layers: 1,
            hidden: 4,
            intermediate: 6,
            heads: 1,
            kv_heads: 1,
            vocab: 4,
            bytes_per_weight: 2.0,
            gated: false,
            tied_embeddings: false,
            head_dim: None,
        };
        let h = [
            [5.0, 0.0, 0.0, 3.0, 0.0, 0.0],
            [0.0, 4.0, 0.0, 3.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 7.0, 0.0],
        ];
        let trace = FnTrace {
            shape: shape.clone(),
            tokens: 3,
            f: |_act: Act, t: usize, _l: usize| h[t].to_vec(),
        };
        let mut p = LlmInAFlash::new(LlmInAFlashParams {
            predictor: Predictor::Oracle,
            recall: 1.0,
            over_prediction: 1.0,
            window_tokens: 2,
            bundling: true,
            active_threshold: 0.02,
            overlap: false,
            dram_management: true,
            coalesce: false,
            seed: 0,
            compute_unit: "cpu".into(),
        });
        let layout = p.layout(&shape, 1);
        assert_eq!(layout.bundles(0).unwrap().offset, 192);
        let ctx = PolicyContext {
            shape: &shape,
            layout: &layout,
            dram_budget_bytes: 1 << 20,
            kv_cache_bytes: 0,
            kv_bytes_per_value: 2,
            prompt_tokens: 0,
            tokens: 3,
            max_read_bytes: 1 << 20,
            trace: Some(&trace),
            record_masks: true,
            op_weights: false,
        };
        let setup = p.setup(&ctx).unwrap();
        assert_eq!(setup.resident_weight_bytes(), 192);
        // The preallocated window: the largest over the run is 3 neurons ({0, 1, 3} at token 1,
        // {1, 3, 4} at token 2, below), 48 B.
        assert_eq!(setup.peak_buffer_bytes, 3 * 16);
        let plan = |p: &mut LlmInAFlash, i: u32| {
            p.plan_token(
                &ctx,
                TokenInfo {
                    index: i,
                    context: i as u64,
                    token_id: 0,
                },
            )
            .unwrap()
        };
        let reads = |t: &TokenPlan| {
            t.reads
                .iter()
                .map(|r| (r.extent.offset, r.extent.bytes, r.needed_by, r.issue_after))
                .collect::<Vec<_>>()
        };
        // Token 0: active {0, 3}, both new; read after attention, for the FFN (op 1).
        let t0 = plan(&mut p, 0);
        assert_eq!(
            reads(&t0),
            vec![
                (192, 16, 1, IssueAfter::OpDone(0)),
                (240, 16, 1, IssueAfter::OpDone(0))
            ]
        );
        assert!(t0.reads.iter().all(|r| r.retain));
        // FFN over the window of 2 neurons: 2 x 2 x (2 x 4) FLOPs, 32 bytes.
        assert_eq!((t0.ops[1].flops, t0.ops[1].dram_bytes), (32, 32));
        // Token 1: {1, 3}: 3 is in the window, 1 is read; the window {0, 1, 3} is computed.
        let t1 = plan(&mut p, 1);
        assert_eq!(reads(&t1), vec![(208, 16, 1, IssueAfter::OpDone(0))]);
        assert_eq!(
            (t1.cache_lookups, t1.cache_hits, t1.ops[1].dram_bytes),
            (2, 1, 48)
        );
        // Token 2: {4} is read; token 0 leaves the window and neuron 0 is deleted by copying the
        // last row over it (read and write one bundle), an op before the FFN, which moves to op 2.
        let t2 = plan(&mut p, 2);
        assert_eq!(t2.evicted_bytes, 16);
        assert_eq!(
            (t2.ops[1].kind, t2.ops[1].dram_bytes),
            (OpKind::DramManagement, 32)
        );
        assert_eq!(reads(&t2), vec![(256, 16, 2, IssueAfter::OpDone(0))]);
        // The computed window {1, 3, 4} holds all of token 2's mass; the mask says so.
        assert_eq!(t2.retained_mass, Some(1.0));
        assert_eq!(t2.masks[0].keep, vec![1, 3, 4]);
    }
}
