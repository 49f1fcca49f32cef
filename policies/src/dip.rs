//! `dip`: Dynamic Input Pruning with cache-aware masking (Federici et al., arXiv 2412.01380).
//!
//! No predictor. Per token and layer: the top `up_keep` share of |x_mlp| selects the input
//! channels (columns) of W_gate and W_up that are read and computed; then the top `down_keep`
//! share of |h| selects the input channels (columns) of W_down. Columns are cached in DRAM
//! (LRU, LFU "mask-first", or the Belady oracle); a miss streams from flash.
//!
//! Cache-aware masking (`cache_aware = true`): score_i = |a_i|, multiplied by γ when channel i
//! is not cached and not among the `fixed_top_frac`·k highest scores; then top-k on the new
//! scores. Variants: `warmup` (γ_t = 1 − (1 − γ)(1 − γ^(t/4))), `alpha` (score' = γ·score/max
//! plus (1 − γ)·\[cached\]) and `approximate` (fill the k slots with: fixed top-n, then
//! top-k ∩ cached, then top-m ∩ cached with m = `approx_m`·k, then top-k \ cached).
//!
//! Memory: attention, embeddings and LM head resident; the rest of the budget is cache, split
//! equally among the masked matrices as DIP's own simulator does (gate and up share one channel
//! cache of two thirds of a layer's share, down has one third).

use crate::cache::{Belady, Lfu, Lru, UnitCache};
use crate::decode;
use crate::layout::{coalesce, Major, WeightLayout};
use crate::plan::{
    index_runs, kept_share, op_weights, AppliedMask, DramChange, Extent, IssueAfter, Op, OpKind,
    Read, TokenPlan,
};
use crate::policy::{
    param_key, parse_params, Policy, PolicyContext, PolicyEntry, PolicyError, PolicySetup,
    TokenInfo,
};
use crate::topk::top_k;
use flashsim_workloads::model::Site;
use flashsim_workloads::shape::{ModelShape, TensorKind};
use flashsim_workloads::toml_source::{ConfigError, TomlSource};
use flashsim_workloads::trace::Act;
use serde::Deserialize;

pub const ENTRY: PolicyEntry = PolicyEntry {
    name: "dip",
    summary: "dynamic input pruning with a column cache and cache-aware masking (DIP)",
    build,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CachePolicy {
    Lru,
    Lfu,
    /// Offline oracle (plain DIP masks only: it must know every future mask).
    Belady,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    Scale,
    Warmup,
    Alpha,
    Approximate,
}

/// Parameters of `[policies.dip]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DipParams {
    /// Overall MLP density kept. Default 0.5 (assumed; DIP sweeps it).
    #[serde(default = "half")]
    pub keep: f64,
    /// Share of gate/up input channels kept. Default: equal to `keep`. `down_keep` follows the
    /// paper's tie down_keep = 3·(keep − 2/3·up_keep) unless given.
    #[serde(default)]
    pub up_keep: Option<f64>,
    #[serde(default)]
    pub down_keep: Option<f64>,
    /// Default `lfu` (the paper's mask-first LFU).
    #[serde(default = "lfu")]
    pub cache: CachePolicy,
    /// Cache-aware masking. Default false (plain DIP); DIP-CA sets it.
    #[serde(default)]
    pub cache_aware: bool,
    /// γ. Default 0.1 (the value of DIP's own tests).
    #[serde(default = "gamma")]
    pub gamma: f64,
    /// Share of k always kept by score. Default 0.5 (fixed_top_n = k/2, DIP's tests).
    #[serde(default = "half")]
    pub fixed_top_frac: f64,
    #[serde(default = "scale")]
    pub variant: Variant,
    /// m/k of the approximate variant. Default 2 (m = 2k, DIP's tests).
    #[serde(default = "two")]
    pub approx_m: f64,
    #[serde(default = "crate::policy::default_compute_unit")]
    pub compute_unit: String,
}

fn half() -> f64 {
    0.5
}
fn lfu() -> CachePolicy {
    CachePolicy::Lfu
}
fn gamma() -> f64 {
    0.1
}
fn scale() -> Variant {
    Variant::Scale
}
fn two() -> f64 {
    2.0
}

impl DipParams {
    fn ratios(&self) -> (f64, f64) {
        let up = self.up_keep.unwrap_or(self.keep);
        let down = self.down_keep.unwrap_or(3.0 * (self.keep - 2.0 / 3.0 * up));
        (up, down)
    }
}

fn build(
    src: &TomlSource,
    params: toml::Value,
    key: &[&str],
) -> Result<Box<dyn Policy>, ConfigError> {
    let p: DipParams = parse_params(src, params, key)?;
    let at = |k: &str| param_key(key, k);
    let (up, down) = p.ratios();
    for (k, v) in [
        ("keep", p.keep),
        ("up_keep", up),
        ("gamma", p.gamma),
        ("fixed_top_frac", p.fixed_top_frac),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(src.invalid(&at(k), format!("must lie in [0, 1], got {v}")));
        }
    }
    if !(down > 0.0 && down <= 1.0) {
        return Err(src.invalid(
            &at(if p.down_keep.is_some() { "down_keep" } else { "keep" }),
            format!("down_keep = {down:.3} (from 3·(keep − 2/3·up_keep) unless given) must lie in (0, 1]"),
        ));
    }
    if p.approx_m < 1.0 {
        return Err(src.invalid(&at("approx_m"), "must be at least 1"));
    }
    if p.cache == CachePolicy::Belady && p.cache_aware {
        return Err(src.invalid(&at("cache"), "belady needs every future mask, which cache-aware masking makes depend on the cache: use lru or lfu"));
    }
    Ok(Box::new(Dip::new(p)))
}

/// One layer's two caches.
struct LayerCaches {
    up: Box<dyn UnitCache>,
    down: Box<dyn UnitCache>,
}

pub struct Dip {
    p: DipParams,
    caches: Vec<LayerCaches>,
    keys: Vec<u16>,
    sel: Vec<u32>,
    scratch: Vec<u32>,
}

impl Dip {
    pub fn new(p: DipParams) -> Self {
        Dip {
            p,
            caches: Vec::new(),
            keys: Vec::new(),
            sel: Vec::new(),
            scratch: Vec::new(),
        }
    }

    fn ks(&self, shape: &ModelShape) -> (usize, usize) {
        let (up, down) = self.p.ratios();
        let ku = ((up * shape.hidden as f64).round() as usize).clamp(1, shape.hidden as usize);
        let kd = ((down * shape.intermediate as f64).round() as usize)
            .clamp(1, shape.intermediate as usize);
        (ku, kd)
    }

    /// Bytes of one gate/up channel (both matrices' columns) and of one down channel.
    fn unit_bytes(shape: &ModelShape) -> (u64, u64) {
        let mats = if shape.gated { 2 } else { 1 };
        (
            mats * shape.weight_bytes(shape.intermediate as u64),
            shape.weight_bytes(shape.hidden as u64),
        )
    }

    /// The plain DIP mask (top-k by magnitude) of `act` for token `index`, layer `l`.
    fn plain_mask(
        ctx: &PolicyContext,
        act: Act,
        index: u32,
        l: u32,
        k: usize,
        keys: &mut Vec<u16>,
        out: &mut Vec<u32>,
    ) -> Result<(), PolicyError> {
        let t = ctx.need_trace(ENTRY.name)?;
        t.read_keys(act, index as usize % t.tokens(), l as usize, keys);
        top_k(keys, k, out);
        Ok(())
    }

    /// The cache-aware mask: `keys` are the magnitudes, `cache` tells what is cached.
    fn aware_mask(
        &self,
        keys: &[u16],
        k: usize,
        t: u32,
        cache: &dyn UnitCache,
        out: &mut Vec<u32>,
        scratch: &mut Vec<u32>,
    ) {
        let n = keys.len();
        let fixed = ((self.p.fixed_top_frac * k as f64).round() as usize).min(k);
        top_k(keys, fixed, scratch);
        let mut is_fixed = vec![false; n];
        for &i in scratch.iter() {
            is_fixed[i as usize] = true;
        }
        let mag = |i: usize| half::f16::from_bits(keys[i]).to_f32() as f64;
        match self.p.variant {
            Variant::Scale | Variant::Warmup | Variant::Alpha => {
                let g = self.p.gamma;
                let gamma_t = match self.p.variant {
                    Variant::Warmup => 1.0 - (1.0 - g) * (1.0 - g.powf(t as f64 / 4.0)),
                    _ => g,
                };
                let max = (0..n).map(mag).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
                let score: Vec<f64> = (0..n)
                    .map(|i| {
                        let cached = cache.contains(i as u32);
                        match self.p.variant {
                            Variant::Alpha if !is_fixed[i] => {
                                g * mag(i) / max + (1.0 - g) * cached as u8 as f64
                            }
                            Variant::Alpha => 1.0 + mag(i) / max,
                            _ if is_fixed[i] || cached => mag(i),
                            _ => gamma_t * mag(i),
                        }
                    })
                    .collect();
                let mut idx: Vec<u32> = (0..n as u32).collect();
                let key = |i: &u32| (std::cmp::Reverse(score[*i as usize].to_bits()), *i);
                if k < n {
                    idx.select_nth_unstable_by_key(k, key);
                    idx.truncate(k);
                }
                idx.sort_unstable();
                *out = idx;
            }
            Variant::Approximate => {
                let m = ((self.p.approx_m * k as f64).round() as usize).min(n);
                let mut chosen = vec![false; n];
                let mut count = 0;
                let mut take = |i: u32, chosen: &mut Vec<bool>| {
                    if count < k && !chosen[i as usize] {
                        chosen[i as usize] = true;
                        count += 1;
                    }
                };
                for &i in scratch.iter() {
                    take(i, &mut chosen);
                }
                let mut topk = Vec::new();
                top_k(keys, k, &mut topk);
                for &i in topk.iter().filter(|&&i| cache.contains(i)) {
                    take(i, &mut chosen);
                }
                let mut topm = Vec::new();
                top_k(keys, m, &mut topm);
                // Within top-m, the largest cached first.
                topm.sort_by_key(|&i| (std::cmp::Reverse(keys[i as usize]), i));
                for &i in topm.iter().filter(|&&i| cache.contains(i)) {
                    take(i, &mut chosen);
                }
                let mut rest: Vec<u32> = topk
                    .iter()
                    .copied()
                    .filter(|&i| !cache.contains(i))
                    .collect();
                rest.sort_by_key(|&i| (std::cmp::Reverse(keys[i as usize]), i));
                for i in rest {
                    take(i, &mut chosen);
                }
                *out = (0..n as u32).filter(|&i| chosen[i as usize]).collect();
            }
        }
    }
}

impl Policy for Dip {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn layout(&self, shape: &ModelShape, alignment_bytes: u64) -> WeightLayout {
        // Input channels contiguous: columns of gate, up and down.
        WeightLayout::oriented(shape, alignment_bytes, |k| {
            if k.is_ffn() {
                Major::Col
            } else {
                Major::Row
            }
        })
    }

    fn setup(&mut self, ctx: &PolicyContext) -> Result<PolicySetup, PolicyError> {
        let trace = ctx.need_trace(ENTRY.name)?;
        let shape = ctx.shape;
        let resident: u64 = ctx.layout.non_ffn_bytes();
        let (ku, kd) = self.ks(shape);
        let (ub, db) = Self::unit_bytes(shape);
        let mask_bytes = ku as u64 * ub + kd as u64 * db;
        let free = ctx
            .dram_budget_bytes
            .saturating_sub(resident + ctx.kv_cache_bytes);
        let per_layer = free / shape.layers as u64;
        if per_layer < mask_bytes {
            return Err(PolicyError::DramBudget {
                needed_bytes: resident + ctx.kv_cache_bytes + mask_bytes * shape.layers as u64,
                budget_bytes: ctx.dram_budget_bytes,
                what: format!("resident weights, KV cache and one mask per layer ({ku} gate/up and {kd} down channels)"),
            });
        }
        // DIP's simulator: equal shares for the masked matrices (gate + up: 2/3, down: 1/3).
        let cap_up = ((per_layer * 2 / 3) / ub).max(ku as u64) as usize;
        let cap_down = ((per_layer / 3) / db).max(kd as u64) as usize;
        let (d, i) = (shape.hidden as usize, shape.intermediate as usize);
        self.caches.clear();
        for l in 0..shape.layers {
            let (up, down): (Box<dyn UnitCache>, Box<dyn UnitCache>) = match self.p.cache {
                CachePolicy::Lru => (
                    Box::new(Lru::new(d, cap_up)),
                    Box::new(Lru::new(i, cap_down)),
                ),
                CachePolicy::Lfu => (
                    Box::new(Lfu::new(d, cap_up)),
                    Box::new(Lfu::new(i, cap_down)),
                ),
                CachePolicy::Belady => {
                    let (mut fu, mut fd) = (Vec::new(), Vec::new());
                    let (mut keys, mut sel) = (Vec::new(), Vec::new());
                    for t in 0..ctx.tokens {
                        let tt = t as usize % trace.tokens();
                        trace.read_keys(Act::XMlp, tt, l as usize, &mut keys);
                        top_k(&keys, ku, &mut sel);
                        fu.push(sel.clone());
                        trace.read_keys(Act::H, tt, l as usize, &mut keys);
                        top_k(&keys, kd, &mut sel);
                        fd.push(sel.clone());
                    }
                    (
                        Box::new(Belady::new(d, cap_up, &fu)),
                        Box::new(Belady::new(i, cap_down, &fd)),
                    )
                }
            };
            self.caches.push(LayerCaches { up, down });
        }
        let cache_bytes = (cap_up as u64 * ub + cap_down as u64 * db) * shape.layers as u64;
        Ok(PolicySetup {
            resident: ctx.layout.non_ffn_extents(),
            peak_buffer_bytes: cache_bytes,
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
        let (ku, kd) = self.ks(shape);
        let (ub, db) = Self::unit_bytes(shape);
        let bpw = |n: u64| shape.weight_bytes(n);
        let mut plan = TokenPlan::default();
        let mut mass = 0.0;
        let mut extents: Vec<Extent> = Vec::new();
        let (gate, up, down) = (TensorKind::Gate, TensorKind::Up, TensorKind::Down);
        for l in 0..shape.layers {
            let attn = plan.ops.len() as u32;
            plan.ops
                .push(dense[decode::attention_op(l) as usize].clone());
            for (act, k, unit_bytes) in [(Act::XMlp, ku, ub), (Act::H, kd, db)] {
                let mut keys = std::mem::take(&mut self.keys);
                let mut sel = std::mem::take(&mut self.sel);
                let mut scratch = std::mem::take(&mut self.scratch);
                if self.p.cache_aware {
                    let t = ctx.need_trace(ENTRY.name)?;
                    t.read_keys(
                        act,
                        token.index as usize % t.tokens(),
                        l as usize,
                        &mut keys,
                    );
                    let cache = if act == Act::XMlp {
                        &*self.caches[l as usize].up
                    } else {
                        &*self.caches[l as usize].down
                    };
                    self.aware_mask(&keys, k, token.index, cache, &mut sel, &mut scratch);
                } else {
                    Self::plain_mask(ctx, act, token.index, l, k, &mut keys, &mut sel)?;
                }
                let lc = &mut self.caches[l as usize];
                let cache = if act == Act::XMlp {
                    &mut lc.up
                } else {
                    &mut lc.down
                };
                let access = cache.access(token.index as u64, &sel);
                plan.cache_lookups += sel.len() as u64;
                plan.cache_hits += access.hits.len() as u64;
                plan.evicted_bytes += access.evicted.len() as u64 * unit_bytes;
                // The op that consumes these channels, and when its reads may start.
                let (kind, issue_after) = if act == Act::XMlp {
                    (OpKind::Ffn, IssueAfter::OpDone(attn))
                } else {
                    (OpKind::FfnDown, IssueAfter::OpDone(attn + 1))
                };
                let op = plan.ops.len() as u32;
                let kinds: &[TensorKind] = if act == Act::XMlp {
                    if shape.gated {
                        &[gate, up]
                    } else {
                        &[up]
                    }
                } else {
                    &[down]
                };
                let tensor = |kind| {
                    ctx.layout
                        .tensor(kind, Some(l))
                        .expect("layout has the FFN")
                };
                let weights = if ctx.op_weights {
                    op_weights(
                        kinds
                            .iter()
                            .flat_map(|&k| sel.iter().map(move |&c| tensor(k).unit(c as u64)))
                            .collect(),
                    )
                } else {
                    Vec::new()
                };
                // A tensor's units (columns here) lie back to back: each run of kept channels
                // is one run of bytes in each tensor.
                let pieces = index_runs(&sel) * kinds.len() as u64;
                let (flops, bytes) = if act == Act::XMlp {
                    let mats = if shape.gated { 2 } else { 1 };
                    (
                        2 * mats * shape.intermediate as u64 * k as u64,
                        bpw(mats * shape.intermediate as u64 * k as u64),
                    )
                } else {
                    (
                        2 * shape.hidden as u64 * k as u64,
                        bpw(shape.hidden as u64 * k as u64),
                    )
                };
                plan.ops.push(Op {
                    kind,
                    layer: Some(l),
                    unit: self.p.compute_unit.clone(),
                    flops,
                    dram_bytes: bytes,
                    weights,
                    pieces,
                });
                extents.clear();
                for &kind in kinds {
                    let t = tensor(kind);
                    extents.extend(access.misses.iter().map(|&c| t.unit(c as u64)));
                }
                let admitted_all = access.admitted.len() == access.misses.len();
                for e in coalesce(std::mem::take(&mut extents), ctx.max_read_bytes) {
                    plan.reads
                        .push(Read::demand(e, op, issue_after, admitted_all));
                }
                if ctx.op_weights {
                    // Victims go as the token starts (the accounting frees their bytes then);
                    // when not every miss is admitted the reads are buffers, and the admitted
                    // columns are kept out of them as the op starts.
                    for &kind in kinds {
                        let t = tensor(kind);
                        plan.dram_changes.extend(
                            access.evicted.iter().map(|&c| {
                                DramChange::Evict(IssueAfter::TokenStart, t.unit(c as u64))
                            }),
                        );
                        if !admitted_all {
                            plan.dram_changes.extend(access.admitted.iter().map(|&c| {
                                DramChange::Admit(IssueAfter::OpStart(op), t.unit(c as u64))
                            }));
                        }
                    }
                }
                if ctx.record_masks {
                    let site = if act == Act::XMlp {
                        Site::MlpIn
                    } else {
                        Site::DownIn
                    };
                    plan.masks.push(AppliedMask {
                        layer: l,
                        site,
                        keep: sel.clone(),
                    });
                }
                // Retained mass of this mask, from the magnitudes the mask was chosen from.
                mass += kept_share(&keys, &sel);
                self.keys = keys;
                self.sel = sel;
                self.scratch = scratch;
            }
        }
        plan.ops
            .push(dense[decode::lm_head_op(shape) as usize].clone());
        plan.retained_mass = Some(mass / (2.0 * shape.layers as f64));
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FnTrace;

    fn ext(offset: u64, bytes: u64) -> Extent {
        Extent { offset, bytes }
    }

    /// One layer, hidden 4, FFN 6, fp16, 1-byte alignment. Column-major FFN layout:
    /// gate 160..208 (4 columns of 12 B), up 208..256, down 256..304 (6 columns of 8 B).
    #[test]
    fn masks_reads_and_hits_by_hand() {
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
            gated: true,
            tied_embeddings: false,
            head_dim: None,
        };
        // Values exact in f16, the precision traces store.
        let x = [[0.125, 3.0, -2.0, 0.5], [3.0, 0.125, 2.5, 0.0]];
        let h = [
            [1.0, 0.0, 0.0, 5.0, -4.0, 0.25],
            [0.0, 6.0, 0.0, 5.0, 0.0, 0.0],
        ];
        let trace = FnTrace {
            shape: shape.clone(),
            tokens: 2,
            f: |act: Act, t: usize, _l: usize| match act {
                Act::XMlp => x[t].to_vec(),
                Act::H => h[t].to_vec(),
                _ => vec![0.0; 4],
            },
        };
        // keep 0.5 with up_keep 0.5: down_keep = 3·(0.5 − 1/3) = 0.5 → k_up = 2, k_down = 3.
        let mut p = Dip::new(DipParams {
            keep: 0.5,
            up_keep: Some(0.5),
            down_keep: None,
            cache: CachePolicy::Lfu,
            cache_aware: false,
            gamma: 0.1,
            fixed_top_frac: 0.5,
            variant: Variant::Scale,
            approx_m: 2.0,
            compute_unit: "cpu".into(),
        });
        let layout = p.layout(&shape, 1);
        assert_eq!(
            layout.tensor(TensorKind::Gate, Some(0)).unwrap().offset,
            160
        );
        let ctx = PolicyContext {
            shape: &shape,
            layout: &layout,
            dram_budget_bytes: 1 << 20,
            kv_cache_bytes: 0,
            kv_bytes_per_value: 2,
            prompt_tokens: 0,
            tokens: 2,
            max_read_bytes: 1024,
            trace: Some(&trace),
            record_masks: false,
            op_weights: false,
        };
        p.setup(&ctx).unwrap();
        let plan = p
            .plan_token(
                &ctx,
                TokenInfo {
                    index: 0,
                    context: 0,
                    token_id: 0,
                },
            )
            .unwrap();
        let kinds: Vec<OpKind> = plan.ops.iter().map(|o| o.kind).collect();
        assert_eq!(
            kinds,
            vec![
                OpKind::Attention,
                OpKind::Ffn,
                OpKind::FfnDown,
                OpKind::LmHead
            ]
        );
        let reads: Vec<(Extent, u32, IssueAfter)> = plan
            .reads
            .iter()
            .map(|r| (r.extent, r.needed_by, r.issue_after))
            .collect();
        // Up mask {1, 2}: gate columns 1-2 (172..196) and up columns 1-2 (220..244), merged per
        // matrix; down mask {0, 3, 4}: column 0 (256..264) and columns 3-4 (280..296).
        assert_eq!(
            reads,
            vec![
                (ext(172, 24), 1, IssueAfter::OpDone(0)),
                (ext(220, 24), 1, IssueAfter::OpDone(0)),
                (ext(256, 8), 2, IssueAfter::OpDone(1)),
                (ext(280, 16), 2, IssueAfter::OpDone(1)),
            ]
        );
        // Retained mass: x (3 + 2) / 5.625, h (5 + 4 + 1) / 10.25, averaged.
        let want = (5.0 / 5.625 + 10.0 / 10.25) / 2.0;
        assert!((plan.retained_mass.unwrap() - want).abs() < 1e-6);
        // FFN FLOPs: gate and up over 2 channels (2 x 2 x 6 x 2), down over 3 (2 x 4 x 3).
        assert_eq!((plan.ops[1].flops, plan.ops[2].flops), (48, 24));
        // Token 1: up mask {0, 2} hits 2, reads column 0 of gate (160..172) and up (208..220);
        // down mask {1, 3} plus the lowest-index tie {0}: hits 0 and 3, reads column 1 (264..272).
        let plan = p
            .plan_token(
                &ctx,
                TokenInfo {
                    index: 1,
                    context: 1,
                    token_id: 0,
                },
            )
            .unwrap();
        let reads: Vec<Extent> = plan.reads.iter().map(|r| r.extent).collect();
        assert_eq!(reads, vec![ext(160, 12), ext(208, 12), ext(264, 8)]);
        assert_eq!((plan.cache_lookups, plan.cache_hits), (5, 3));
    }
}
