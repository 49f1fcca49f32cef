//! `activeflow` (Jia et al., arXiv 2504.08378): top-K magnitude sparsity on the input channels of
//! every linear, cross-layer preloading of the next N layers' channels chosen from the current
//! layer's activations, on-demand loading of what the preload missed, and a per-tensor hot cache
//! with count-based admission.
//!
//! Per token, layers run in groups of N (`preload_layers`). While group g computes, the channels
//! of every layer of group g+1 are read, chosen as the top-K of the first layer of group g:
//! `x_attn` for Q/K/V and `x_mlp` for gate/up (the residual stream makes them similar across
//! layers). O and down have no residual-stream input: `o_down = "on-demand"` loads them only once
//! the real activation is known; `"predict"` preloads them from the same operator's activation in
//! the first layer of group g. Each layer's true top-K mask is then compared with what is cached
//! or preloaded, and the misses load on demand before its op runs. N = 0 is serial loading:
//! every channel on demand.
//!
//! Memory (the paper's M = M_cl + M_cache + M_kv ≤ M_max): embeddings and LM head resident; the
//! preload buffers of one group, M_cl = S_l·(1 − sp)·N; the rest is hot cache, split over the
//! tensors of every layer in proportion to their size. Sparsity defaults to the paper's
//! sp = 1 − M_max / S_model.
//!
//! Flash layout: ActiveFlow's cross-layer interleave ([`WeightLayout::interleaved`]) with groups
//! of N layers, so a preload of channel c is one read of N layers' columns; on-demand reads take
//! one layer's columns. Preloads are prefetches: on-demand reads are issued first.
//!
//! N defaults to the paper's memory split (`preload_layers = "auto"`, [`ActiveFlow::solve_depth`]):
//! fix sp, raise N until the preload hides under compute (T_preload ≤ T_comp) or one more layer
//! gains less than `min_gain`, using the device's flash throughput at the preload's read size
//! and the compute unit's time for a sparse layer. A fixed N is a number.

use crate::cache::{LfuAdmit, UnitCache};
use crate::decode;
use crate::layout::{coalesce, InterleaveRegion, WeightLayout};
use crate::plan::{
    index_runs, kept_share, op_weights, AppliedMask, DramChange, Extent, IssueAfter, Op, OpKind,
    Read, TokenPlan,
};
use crate::policy::{
    param_key, parse_params, Policy, PolicyContext, PolicyEntry, PolicyError, PolicySetup,
    SizingContext, TokenInfo,
};
use crate::topk::top_k;
use flashsim_workloads::model::Site;
use flashsim_workloads::shape::{ModelShape, TensorKind};
use flashsim_workloads::toml_source::{ConfigError, TomlSource};
use flashsim_workloads::trace::Act;
use serde::Deserialize;

pub const ENTRY: PolicyEntry = PolicyEntry {
    name: "activeflow",
    summary: "top-K sparsity on every linear, cross-layer preload, hot cache (ActiveFlow)",
    build,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ODown {
    OnDemand,
    Predict,
}

/// Parameters of `[policies.activeflow]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveFlowParams {
    /// Share of input channels dropped in every linear. Default: 1 − M_max / S_model (paper).
    #[serde(default)]
    pub sparsity: Option<f64>,
    /// N: layers preloaded ahead (the group size); 0 = serial loading. Default `"auto"`, the
    /// paper's memory split (N = 4 is what it chose on their phones).
    #[serde(default)]
    pub preload_layers: Depth,
    /// The split stops raising N when one more layer shortens the estimated layer time by less
    /// than this share. Default 0.02 (assumed: the paper says "until the gain is small").
    #[serde(default = "min_gain")]
    pub min_gain: f64,
    /// How O and down are loaded. Default `on-demand`.
    #[serde(default = "on_demand")]
    pub o_down: ODown,
    /// Keep a hot cache with the rest of the budget. Default true.
    #[serde(default = "yes")]
    pub hot_cache: bool,
    #[serde(default = "crate::policy::default_compute_unit")]
    pub compute_unit: String,
}

fn min_gain() -> f64 {
    0.02
}

fn on_demand() -> ODown {
    ODown::OnDemand
}
fn yes() -> bool {
    true
}

/// `preload_layers`: a number, or `"auto"` for the paper's memory split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "a whole number of layers (0 = serial loading) or \"auto\""
)]
pub enum Depth {
    Fixed(u32),
    Auto(AutoWord),
}

/// The word `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoWord {
    Auto,
}

impl Default for Depth {
    fn default() -> Self {
        Depth::Auto(AutoWord::Auto)
    }
}

fn build(
    src: &TomlSource,
    params: toml::Value,
    key: &[&str],
) -> Result<Box<dyn Policy>, ConfigError> {
    let p: ActiveFlowParams = parse_params(src, params, key)?;
    if let Some(sp) = p.sparsity {
        if !(0.0..1.0).contains(&sp) {
            return Err(src.invalid(&param_key(key, "sparsity"), "must lie in [0, 1)"));
        }
    }
    if !(0.0..1.0).contains(&p.min_gain) {
        return Err(src.invalid(&param_key(key, "min_gain"), "must lie in [0, 1)"));
    }
    Ok(Box::new(ActiveFlow::new(p)))
}

/// The four sparsified operators of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Oper {
    Qkv,
    O,
    GateUp,
    Down,
}

const OPERS: [Oper; 4] = [Oper::Qkv, Oper::O, Oper::GateUp, Oper::Down];

impl Oper {
    fn act(self) -> Act {
        match self {
            Oper::Qkv => Act::XAttn,
            Oper::O => Act::XO,
            Oper::GateUp => Act::XMlp,
            Oper::Down => Act::H,
        }
    }
    fn kinds(self, gated: bool) -> &'static [TensorKind] {
        match self {
            Oper::Qkv => &[TensorKind::Wq, TensorKind::Wk, TensorKind::Wv],
            Oper::O => &[TensorKind::Wo],
            Oper::GateUp if gated => &[TensorKind::Gate, TensorKind::Up],
            Oper::GateUp => &[TensorKind::Up],
            Oper::Down => &[TensorKind::Down],
        }
    }
    fn residual(self) -> bool {
        matches!(self, Oper::Qkv | Oper::GateUp)
    }
}

pub struct ActiveFlow {
    p: ActiveFlowParams,
    /// N, fixed or solved in `size`.
    n: u32,
    sparsity: f64,
    /// caches[layer][oper]
    caches: Vec<Vec<LfuAdmit>>,
    keys: Vec<u16>,
    sel: Vec<u32>,
}

impl ActiveFlow {
    pub fn new(p: ActiveFlowParams) -> Self {
        let n = match p.preload_layers {
            Depth::Fixed(n) => n,
            Depth::Auto(_) => 1,
        };
        ActiveFlow {
            p,
            n,
            sparsity: 0.0,
            caches: Vec::new(),
            keys: Vec::new(),
            sel: Vec::new(),
        }
    }

    /// Layers per group: N, or 1 for serial loading.
    fn group(&self) -> u32 {
        self.n.max(1)
    }

    /// N in use (after `size`).
    pub fn preload_layers(&self) -> u32 {
        self.n
    }

    /// sp: the parameter, or the paper's 1 − M_max / S_model (the budget without the KV cache).
    fn sparsity_for(&self, shape: &ModelShape, dram_budget_bytes: u64, kv_cache_bytes: u64) -> f64 {
        let budget = dram_budget_bytes.saturating_sub(kv_cache_bytes);
        match self.p.sparsity {
            Some(sp) => sp,
            None => (1.0 - budget as f64 / shape.total_weight_bytes() as f64).clamp(0.0, 0.99),
        }
    }

    /// Rows of one input channel's columns of operator `o` (all its matrices together).
    fn column_rows(shape: &ModelShape, o: Oper) -> u64 {
        match o {
            Oper::Qkv => shape.q_dim() + 2 * shape.kv_dim(),
            Oper::O | Oper::Down => shape.hidden as u64,
            Oper::GateUp => shape.intermediate as u64 * if shape.gated { 2 } else { 1 },
        }
    }

    /// Bytes of the four sparsified operators of one layer (dense).
    fn layer_linear_bytes(shape: &ModelShape) -> u64 {
        OPERS
            .iter()
            .map(|&o| {
                shape.weight_bytes(Self::width(shape, o) as u64 * Self::column_rows(shape, o))
            })
            .sum()
    }

    /// The paper's memory split (§ cost model): with sp fixed, per group of N layers
    /// T_preload = Σ_o N·k_o·c_o·(1 − hr) / BW(N·c_o) over the preloaded operators (one read is
    /// one channel of N layers, c_o bytes per layer), T_onload = the same for the operators
    /// loaded on demand, at BW(c_o), and T_comp = N · (the compute unit's time for one sparse
    /// layer). Each N is costed as T_onload + max(T_preload, T_comp) per layer, with the hot-cache
    /// hit rate hr estimated as the cache's share of the active channels (the cache shrinks as
    /// the preload buffers S_l·(1 − sp)·(2N + 1) grow). N rises from 1 while the preload is not
    /// hidden, the buffers fit, and N + 1 shortens the layer time by at least `min_gain`.
    pub fn solve_depth(&self, ctx: &SizingContext, sparsity: f64) -> Result<u32, PolicyError> {
        let rates = ctx.rates.ok_or_else(|| {
            PolicyError::Invalid(
                "activeflow: preload_layers = \"auto\" needs the device's rates; give a number"
                    .into(),
            )
        })?;
        let shape = ctx.shape;
        let density = 1.0 - sparsity;
        let layer_bytes = Self::layer_linear_bytes(shape);
        let resident = shape.total_weight_bytes() - layer_bytes * shape.layers as u64;
        let active_bytes = layer_bytes as f64 * density;
        let flops: f64 = OPERS
            .iter()
            .map(|&o| {
                2.0 * density * (Self::width(shape, o) as u64 * Self::column_rows(shape, o)) as f64
            })
            .sum();
        let t_layer = rates
            .op_seconds(&self.p.compute_unit, flops as u64, active_bytes as u64)
            .ok_or_else(|| {
                PolicyError::Invalid(format!(
                    "activeflow: the device has no compute unit `{}`",
                    self.p.compute_unit
                ))
            })?;
        let preloaded = |o: Oper| o.residual() || self.p.o_down == ODown::Predict;
        // (estimated seconds per layer, preload hidden) at depth n, or None when it does not fit.
        let cost = |n: u32| -> Option<(f64, bool)> {
            let m_cl = (active_bytes * (2 * n + 1) as f64) as u64;
            let needed = resident + m_cl + ctx.kv_cache_bytes;
            if needed > ctx.dram_budget_bytes {
                return None;
            }
            let cache = if self.p.hot_cache {
                (ctx.dram_budget_bytes - needed) as f64
            } else {
                0.0
            };
            let hr = (cache / (active_bytes * shape.layers as f64)).min(1.0);
            let (mut pre, mut on) = (0.0, 0.0);
            for o in OPERS {
                let c = shape.weight_bytes(Self::column_rows(shape, o));
                let bytes =
                    n as f64 * density * Self::width(shape, o) as f64 * c as f64 * (1.0 - hr);
                if preloaded(o) {
                    pre += bytes / rates.flash_read_bytes_per_s(n as u64 * c);
                } else {
                    on += bytes / rates.flash_read_bytes_per_s(c);
                }
            }
            let comp = n as f64 * t_layer;
            Some(((on + pre.max(comp)) / n as f64, pre <= comp))
        };
        let mut n = 1;
        let Some((mut t, mut hidden)) = cost(1) else {
            return Ok(1); // Nothing fits: `setup` reports the budget.
        };
        while !hidden && n < shape.layers {
            match cost(n + 1) {
                Some((t2, h2)) if t2 < t * (1.0 - self.p.min_gain) => {
                    (n, t, hidden) = (n + 1, t2, h2);
                }
                _ => break,
            }
        }
        Ok(n)
    }

    fn width(shape: &ModelShape, o: Oper) -> usize {
        match o {
            Oper::Qkv | Oper::GateUp => shape.hidden as usize,
            Oper::O => shape.q_dim() as usize,
            Oper::Down => shape.intermediate as usize,
        }
    }

    fn k(&self, shape: &ModelShape, o: Oper) -> usize {
        let w = Self::width(shape, o);
        (((1.0 - self.sparsity) * w as f64).round() as usize).clamp(1, w)
    }

    fn region(layout: &WeightLayout, l: u32, o: Oper) -> &InterleaveRegion {
        layout
            .interleave_region(l, o as usize)
            .expect("activeflow's layout interleaves every linear")
    }

    fn mask(
        &mut self,
        ctx: &PolicyContext,
        o: Oper,
        index: u32,
        l: u32,
    ) -> Result<Vec<u32>, PolicyError> {
        let t = ctx.need_trace(ENTRY.name)?;
        t.read_keys(
            o.act(),
            index as usize % t.tokens(),
            l as usize,
            &mut self.keys,
        );
        top_k(&self.keys, self.k(ctx.shape, o), &mut self.sel);
        Ok(self.sel.clone())
    }
}

impl Policy for ActiveFlow {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn layout(&self, shape: &ModelShape, alignment_bytes: u64) -> WeightLayout {
        let gated = shape.gated;
        let opers: Vec<&[TensorKind]> = OPERS.iter().map(|o| o.kinds(gated)).collect();
        WeightLayout::interleaved(shape, alignment_bytes, self.group(), &opers)
    }

    fn derived(&self) -> Vec<(&'static str, String)> {
        vec![
            ("preload_layers", self.n.to_string()),
            ("sparsity", format!("{:.4}", self.sparsity)),
        ]
    }

    fn size(&mut self, ctx: &SizingContext) -> Result<(), PolicyError> {
        if matches!(self.p.preload_layers, Depth::Auto(_)) {
            let sp = self.sparsity_for(ctx.shape, ctx.dram_budget_bytes, ctx.kv_cache_bytes);
            self.n = self.solve_depth(ctx, sp)?;
        }
        Ok(())
    }

    fn setup(&mut self, ctx: &PolicyContext) -> Result<PolicySetup, PolicyError> {
        ctx.need_trace(ENTRY.name)?;
        let shape = ctx.shape;
        let total = shape.total_weight_bytes();
        let resident: u64 = ctx.layout.tensors().iter().map(|t| t.bytes).sum();
        self.sparsity = self.sparsity_for(shape, ctx.dram_budget_bytes, ctx.kv_cache_bytes);
        // Preload buffers: the paper's M_cl = S_l (1 − sp) N, doubled because the next group's
        // preload is read while this group's preloaded weights are still in use, plus one layer
        // of on-demand loads: S_l (1 − sp) (2N + 1).
        let layer_bytes = (total - resident) / shape.layers as u64;
        let m_cl = ((layer_bytes as f64 * (1.0 - self.sparsity)) * (2 * self.n + 1) as f64) as u64;
        let needed = resident + m_cl + ctx.kv_cache_bytes;
        if needed > ctx.dram_budget_bytes {
            return Err(PolicyError::DramBudget {
                needed_bytes: needed,
                budget_bytes: ctx.dram_budget_bytes,
                what: format!(
                    "embeddings, KV cache and the preload buffers of {} layers at sparsity {:.2}",
                    2 * self.n + 1,
                    self.sparsity
                ),
            });
        }
        let cache_bytes = if self.p.hot_cache {
            ctx.dram_budget_bytes - needed
        } else {
            0
        };
        // Split over every tensor in proportion to its size.
        let share = cache_bytes as f64 / (total - resident) as f64;
        self.caches = (0..shape.layers)
            .map(|l| {
                OPERS
                    .iter()
                    .map(|&o| {
                        let w = Self::width(shape, o);
                        let cap = (share * w as f64).floor() as usize;
                        let _ = Self::region(ctx.layout, l, o);
                        LfuAdmit::new(w, cap.min(w))
                    })
                    .collect()
            })
            .collect();
        Ok(PolicySetup {
            resident: ctx.layout.tensors().iter().map(|t| t.whole()).collect(),
            peak_buffer_bytes: m_cl,
            reserved_bytes: cache_bytes,
        })
    }

    fn plan_token(
        &mut self,
        ctx: &PolicyContext,
        token: TokenInfo,
    ) -> Result<TokenPlan, PolicyError> {
        let shape = ctx.shape;
        let trace = ctx.need_trace(ENTRY.name)?;
        let tt = token.index as usize % trace.tokens();
        if trace.sequences().iter().any(|s| s.start == tt) {
            // Counts are per context: a new sequence starts afresh.
            self.caches
                .iter_mut()
                .flatten()
                .for_each(LfuAdmit::reset_counts);
        }
        let dense = ctx.dense_ops(token, &self.p.compute_unit);
        let n = self.n;
        let g = self.group();
        let mut plan = TokenPlan::default();
        let mut mass = 0.0;
        let layers = shape.layers as usize;
        let mut preloaded: Vec<[Vec<u32>; 4]> = vec![Default::default(); layers];
        // Op indices: 4 per layer (Q/K/V + attention, O, gate/up, down), then the LM head.
        let op_of = |l: u32, o: Oper| 4 * l + o as u32;
        let kv = decode::kv_bytes_per_layer(shape, token.context, ctx.kv_bytes_per_value);
        let attn_flops = 4 * shape.q_dim() * (token.context + 1);
        for l in 0..shape.layers {
            // The next group's preload, issued when this group's first layer starts, chosen from
            // this layer's activations; prefetches, so on-demand reads go first.
            if n > 0 && l % g == 0 && l + g < shape.layers {
                let (first, last) = (l + g, (l + 2 * g).min(shape.layers) - 1);
                for o in OPERS {
                    if !o.residual() && self.p.o_down == ODown::OnDemand {
                        continue;
                    }
                    let predicted = self.mask(ctx, o, token.index, l)?;
                    let region = Self::region(ctx.layout, first, o);
                    // Per channel, the layers of the group that do not cache it: adjacent in the
                    // interleaved layout, so runs of them are single reads.
                    let mut ext = Vec::new();
                    for &c in &predicted {
                        for nl in first..=last {
                            if !self.caches[nl as usize][o as usize].contains(c) {
                                ext.push(region.channel(nl, c as u64));
                            }
                        }
                    }
                    for e in coalesce(ext, ctx.max_read_bytes) {
                        plan.reads.push(Read {
                            extent: e,
                            needed_by: op_of(first, o),
                            issue_after: IssueAfter::OpStart(op_of(l, Oper::Qkv)),
                            retain: false,
                            free_after: op_of(last, o),
                            prefetch: true,
                        });
                    }
                    for nl in first..=last {
                        preloaded[nl as usize][o as usize] = predicted.clone();
                    }
                }
            }
            for o in OPERS {
                let mask = self.mask(ctx, o, token.index, l)?;
                if ctx.record_masks {
                    let site = match o {
                        Oper::Qkv => Site::AttnIn,
                        Oper::O => Site::OIn,
                        Oper::GateUp => Site::MlpIn,
                        Oper::Down => Site::DownIn,
                    };
                    plan.masks.push(AppliedMask {
                        layer: l,
                        site,
                        keep: mask.clone(),
                    });
                }
                let pre = &preloaded[l as usize][o as usize];
                let region = Self::region(ctx.layout, l, o);
                let cache = &mut self.caches[l as usize][o as usize];
                let access = cache.access(token.index as u64, &mask);
                plan.cache_lookups += mask.len() as u64;
                plan.cache_hits += access.hits.len() as u64;
                // Missed by both the cache and the preload: on demand, once the input is known.
                let op = op_of(l, o);
                let after = if op == 0 {
                    IssueAfter::TokenStart
                } else {
                    IssueAfter::OpDone(op - 1)
                };
                if ctx.op_weights {
                    // The hot cache's victims (outside this mask) go and its fills (this
                    // token's on-demand or preloaded channels) are kept as the op starts.
                    let at = IssueAfter::OpStart(op);
                    let unit = |c: &u32| region.channel(l, *c as u64);
                    plan.dram_changes
                        .extend((access.evicted.iter()).map(|c| DramChange::Evict(at, unit(c))));
                    plan.dram_changes
                        .extend((access.admitted.iter()).map(|c| DramChange::Admit(at, unit(c))));
                }
                let demand: Vec<Extent> = access
                    .misses
                    .iter()
                    .filter(|c| pre.binary_search(c).is_err())
                    .map(|&c| region.channel(l, c as u64))
                    .collect();
                for e in coalesce(demand, ctx.max_read_bytes) {
                    plan.reads.push(Read::demand(e, op, after, false));
                }
                // Cache fills live in the reserved cache budget; the fetched bytes are buffers.
                let k = mask.len() as u64;
                let ub = region.unit_bytes;
                let out_rows = ub / shape.weight_bytes(1).max(1);
                let (kind, flops, bytes) = match o {
                    Oper::Qkv => (
                        OpKind::Attention,
                        2 * out_rows * k + attn_flops,
                        k * ub + kv,
                    ),
                    Oper::O => (OpKind::AttentionOut, 2 * out_rows * k, k * ub),
                    Oper::GateUp => (OpKind::Ffn, 2 * out_rows * k, k * ub),
                    Oper::Down => (OpKind::FfnDown, 2 * out_rows * k, k * ub),
                };
                let weights = if ctx.op_weights {
                    op_weights(mask.iter().map(|&c| region.channel(l, c as u64)).collect())
                } else {
                    Vec::new()
                };
                // Channel c of a layer lies next to channel c + 1 only where the region holds
                // one layer; interleaved with others, every channel is a run of its own.
                let pieces = if region.layers == 1 {
                    index_runs(&mask)
                } else {
                    mask.len() as u64
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
                if o == Oper::Down {
                    // `self.keys` holds the magnitudes of h this mask was chosen from.
                    mass += kept_share(&self.keys, &mask);
                }
            }
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

    /// Two layers, width 4, sparsity 0.5, N = 1, no hot cache: token 0's layout and plan.
    fn two_layer_plan(o_down: ODown) -> (WeightLayout, TokenPlan) {
        let shape = ModelShape {
            name: "t".into(),
            source: String::new(),
            layers: 2,
            hidden: 4,
            intermediate: 4,
            heads: 1,
            kv_heads: 1,
            vocab: 4,
            bytes_per_weight: 2.0,
            gated: true,
            tied_embeddings: true,
            head_dim: None,
        };
        let trace = FnTrace {
            shape: shape.clone(),
            tokens: 1,
            f: |act: Act, _t: usize, l: usize| {
                let v: [[f32; 4]; 2] = match act {
                    Act::XAttn => [[5.0, 0.0, 3.0, 1.0], [4.0, 0.5, 6.0, 0.0]],
                    Act::XO => [[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]],
                    Act::XMlp => [[0.0, 2.0, 0.0, 7.0], [3.0, 0.0, 0.0, 9.0]],
                    Act::H => [[1.0, 0.0, 0.0, 2.0], [0.0, 5.0, 6.0, 0.0]],
                };
                v[l].to_vec()
            },
        };
        let mut p = ActiveFlow::new(ActiveFlowParams {
            sparsity: Some(0.5),
            preload_layers: Depth::Fixed(1),
            min_gain: 0.02,
            o_down,
            hot_cache: false,
            compute_unit: "cpu".into(),
        });
        let layout = p.layout(&shape, 1);
        let ctx = PolicyContext {
            shape: &shape,
            layout: &layout,
            dram_budget_bytes: 1 << 20,
            kv_cache_bytes: 0,
            kv_bytes_per_value: 2,
            prompt_tokens: 0,
            tokens: 1,
            max_read_bytes: 1 << 20,
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
        plan.check().unwrap();
        (layout, plan)
    }

    #[test]
    fn preload_from_the_current_layer_and_load_the_misses_on_demand() {
        let (layout, plan) = two_layer_plan(ODown::OnDemand);
        let region = |l, o: Oper| *layout.interleave_region(l, o as usize).unwrap();
        // Preloads for layer 1, chosen from layer 0: Q/K/V channels {0, 2} (top-2 of x_attn),
        // gate/up channels {1, 3} (top-2 of x_mlp); O and down are on demand only.
        let pre: Vec<(Extent, u32)> = plan
            .reads
            .iter()
            .filter(|r| r.prefetch)
            .map(|r| (r.extent, r.needed_by))
            .collect();
        let (q1, g1) = (region(1, Oper::Qkv), region(1, Oper::GateUp));
        assert_eq!(
            pre,
            vec![
                (q1.group_channel(0), 4),
                (q1.group_channel(2), 4),
                (g1.group_channel(1), 6),
                (g1.group_channel(3), 6)
            ]
        );
        assert!(plan
            .reads
            .iter()
            .filter(|r| r.prefetch)
            .all(|r| r.issue_after == IssueAfter::OpStart(0)));
        // On demand: all of layer 0 (2 Q/K/V channels, O {2, 3} merged, gate/up 2, down 2), and in
        // layer 1 what the preload missed: O {0, 1} merged, gate/up channel 0, down {1, 2} merged.
        let demand: Vec<(u32, Extent)> = plan
            .reads
            .iter()
            .filter(|r| !r.prefetch)
            .map(|r| (r.needed_by, r.extent))
            .collect();
        assert_eq!(demand.len(), 7 + 3);
        let o1 = region(1, Oper::O);
        assert!(demand.contains(&(
            5,
            Extent {
                offset: o1.channel(1, 0).offset,
                bytes: 2 * o1.unit_bytes
            }
        )));
        assert!(demand.contains(&(6, g1.channel(1, 0))));
        assert!(
            !demand.iter().any(|&(op, _)| op == 4),
            "layer 1's Q/K/V was fully preloaded"
        );
        // Q/K/V of a layer: 3 columns of 4 fp16 weights per channel.
        assert_eq!(q1.unit_bytes, 24);
        assert_eq!(plan.ops.len(), 2 * 4 + 1);
    }

    #[test]
    fn o_and_down_predicted_from_the_same_operator_of_the_group_s_first_layer() {
        let (layout, plan) = two_layer_plan(ODown::Predict);
        plan.check().unwrap();
        let region = |l, o: Oper| *layout.interleave_region(l, o as usize).unwrap();
        let (o1, d1) = (region(1, Oper::O), region(1, Oper::Down));
        // Layer 0's x_o = [1, 2, 3, 4] predicts O channels {2, 3} (one merged read); its
        // h = [1, 0, 0, 2] predicts down channels {0, 3}.
        let pre: Vec<(u32, Extent)> = plan
            .reads
            .iter()
            .filter(|r| r.prefetch)
            .map(|r| (r.needed_by, r.extent))
            .collect();
        let merged = |r: InterleaveRegion, c: u64| Extent {
            offset: r.group_channel(c).offset,
            bytes: 2 * r.group_channel(c).bytes,
        };
        assert!(pre.contains(&(5, merged(o1, 2))), "{pre:?}");
        assert!(pre.contains(&(7, d1.group_channel(0))), "{pre:?}");
        assert!(pre.contains(&(7, d1.group_channel(3))), "{pre:?}");
        assert_eq!(pre.len(), 4 + 3);
        // Layer 1 really needs O {0, 1} and down {1, 2}: the prediction missed both, so both
        // still load on demand (one merged read each), as in the on-demand mode.
        let demand: Vec<(u32, Extent)> = plan
            .reads
            .iter()
            .filter(|r| !r.prefetch && r.needed_by >= 4)
            .map(|r| (r.needed_by, r.extent))
            .collect();
        assert!(demand.contains(&(5, merged(o1, 0))), "{demand:?}");
        assert!(demand.contains(&(7, merged(d1, 1))), "{demand:?}");
        assert_eq!(demand.len(), 3);
    }

    /// Flash with a fixed latency per request in front of a 2 GB/s link (throughput rises with
    /// the request size), compute at `compute_bytes_per_s` over the weights a layer touches.
    struct Rates {
        latency_s: f64,
        compute_bytes_per_s: f64,
    }

    impl crate::policy::DeviceRates for Rates {
        fn flash_read_bytes_per_s(&self, request_bytes: u64) -> f64 {
            request_bytes as f64 / (self.latency_s + request_bytes as f64 / 2e9)
        }
        fn op_seconds(&self, unit: &str, _flops: u64, dram_bytes: u64) -> Option<f64> {
            (unit == "cpu").then(|| dram_bytes as f64 / self.compute_bytes_per_s)
        }
    }

    /// N chosen by the memory split for Llama-2-7B at sp = 0.6 with the hot cache, or the
    /// sizing error (`rates: None`).
    fn solve(
        rates: Option<&dyn crate::policy::DeviceRates>,
        budget_gib: f64,
    ) -> Result<u32, PolicyError> {
        let shape = ModelShape::load(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs/models/llama-2-7b.toml"),
        )
        .unwrap();
        let mut p = ActiveFlow::new(ActiveFlowParams {
            sparsity: Some(0.6),
            preload_layers: Depth::default(),
            min_gain: 0.02,
            o_down: ODown::OnDemand,
            hot_cache: true,
            compute_unit: "cpu".into(),
        });
        p.size(&SizingContext {
            shape: &shape,
            dram_budget_bytes: (budget_gib * (1u64 << 30) as f64) as u64,
            kv_cache_bytes: 0,
            rates,
        })?;
        Ok(p.preload_layers())
    }

    fn solved(rates: &Rates, budget_gib: f64) -> u32 {
        solve(Some(rates), budget_gib).unwrap()
    }

    #[test]
    fn the_memory_split_raises_n_only_while_it_pays_and_fits() {
        // Compute slower than any read: the preload hides at N = 1.
        let slow_compute = Rates {
            latency_s: 100e-6,
            compute_bytes_per_s: 1e8,
        };
        assert_eq!(solved(&slow_compute, 3.0), 1);
        // Latency-bound flash and fast compute: longer reads pay, so N rises past 1 ...
        let latency_bound = Rates {
            latency_s: 2e-3,
            compute_bytes_per_s: 5e10,
        };
        let n = solved(&latency_bound, 3.0);
        assert!(n > 1, "n = {n}");
        // ... more when requests cost more, and never past what the budget holds (each layer's
        // active weights take 0.4 x 386 MiB; 2N + 1 of them must fit beside 0.5 GiB resident:
        // at 1.5 GiB, N <= 2). With 3 GiB the hot cache holds about 40% of the active weights.
        let worse = Rates {
            latency_s: 8e-3,
            ..latency_bound
        };
        assert!(solved(&worse, 3.0) >= n);
        let tight = solved(&worse, 1.5);
        assert!((1..=2).contains(&tight), "tight budget: {tight}");
        // Without the device's rates "auto" is an error, not a guess.
        assert!(solve(None, 8.0).is_err());
    }
}
