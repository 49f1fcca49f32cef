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
//! Not yet built: the solver that raises N until T_preload ≤ T_comp (N is a parameter, default
//! 4 as on the paper's phones), which needs device figures a policy does not see.

use crate::cache::{LfuAdmit, UnitCache};
use crate::decode;
use crate::layout::{coalesce, InterleaveRegion, WeightLayout};
use crate::plan::{kept_share, AppliedMask, Extent, IssueAfter, Op, OpKind, Read, TokenPlan};
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
    /// N: layers preloaded ahead (the group size). Default 4 (hides loading on their phones);
    /// 0 = serial loading.
    #[serde(default = "four")]
    pub preload_layers: u32,
    /// How O and down are loaded. Default `on-demand`.
    #[serde(default = "on_demand")]
    pub o_down: ODown,
    /// Keep a hot cache with the rest of the budget. Default true.
    #[serde(default = "yes")]
    pub hot_cache: bool,
    #[serde(default = "crate::policy::default_compute_unit")]
    pub compute_unit: String,
}

fn four() -> u32 {
    4
}
fn on_demand() -> ODown {
    ODown::OnDemand
}
fn yes() -> bool {
    true
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
    sparsity: f64,
    /// caches[layer][oper]
    caches: Vec<Vec<LfuAdmit>>,
    keys: Vec<u16>,
    sel: Vec<u32>,
}

impl ActiveFlow {
    pub fn new(p: ActiveFlowParams) -> Self {
        ActiveFlow {
            p,
            sparsity: 0.0,
            caches: Vec::new(),
            keys: Vec::new(),
            sel: Vec::new(),
        }
    }

    /// Layers per group: N, or 1 for serial loading.
    fn group(&self) -> u32 {
        self.p.preload_layers.max(1)
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

    fn setup(&mut self, ctx: &PolicyContext) -> Result<PolicySetup, PolicyError> {
        ctx.need_trace(ENTRY.name)?;
        let shape = ctx.shape;
        let total = shape.total_weight_bytes();
        let resident: u64 = ctx.layout.tensors().iter().map(|t| t.bytes).sum();
        let budget = ctx.dram_budget_bytes.saturating_sub(ctx.kv_cache_bytes);
        self.sparsity = match self.p.sparsity {
            Some(sp) => sp,
            // sp = 1 − M_max / S_model, the paper's rule (the budget without the KV cache).
            None => (1.0 - budget as f64 / total as f64).clamp(0.0, 0.99),
        };
        // Preload buffers: the paper's M_cl = S_l (1 − sp) N, doubled because the next group's
        // preload is read while this group's preloaded weights are still in use, plus one layer
        // of on-demand loads: S_l (1 − sp) (2N + 1).
        let layer_bytes = (total - resident) / shape.layers as u64;
        let m_cl = ((layer_bytes as f64 * (1.0 - self.sparsity))
            * (2 * self.p.preload_layers + 1) as f64) as u64;
        let needed = resident + m_cl + ctx.kv_cache_bytes;
        if needed > ctx.dram_budget_bytes {
            return Err(PolicyError::DramBudget {
                needed_bytes: needed,
                budget_bytes: ctx.dram_budget_bytes,
                what: format!(
                    "embeddings, KV cache and the preload buffers of {} layers at sparsity {:.2}",
                    2 * self.p.preload_layers + 1,
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
            resident_weight_bytes: resident,
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
        let n = self.p.preload_layers;
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
                plan.ops.push(Op {
                    kind,
                    layer: Some(l),
                    unit: self.p.compute_unit.clone(),
                    flops,
                    dram_bytes: bytes,
                });
                if o == Oper::Down {
                    // `self.keys` holds the magnitudes of h this mask was chosen from.
                    mass += kept_share(&self.keys, mask.iter().copied());
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

    #[test]
    fn preload_from_the_current_layer_and_load_the_misses_on_demand() {
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
            preload_layers: 1,
            o_down: ODown::OnDemand,
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
}
