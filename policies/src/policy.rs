//! The policy interface and the registry that builds a policy by name from its TOML table.

use crate::layout::WeightLayout;
use crate::plan::TokenPlan;
use flashsim_workloads::shape::ModelShape;
use flashsim_workloads::toml_source::{ConfigError, TomlSource};
use flashsim_workloads::trace::stats::TraceView;
use flashsim_workloads::trace::Act;

/// What every policy may know about the run.
#[derive(Clone, Copy)]
pub struct PolicyContext<'a> {
    pub shape: &'a ModelShape,
    pub layout: &'a WeightLayout,
    /// The DRAM the policy may use, KV cache included.
    pub dram_budget_bytes: u64,
    /// Bytes of the KV cache the run will reach (the simulator reserves it; policies plan
    /// around it).
    pub kv_cache_bytes: u64,
    /// Bytes per stored K or V value.
    pub kv_bytes_per_value: u64,
    pub prompt_tokens: u32,
    pub tokens: u32,
    /// Largest single read the policy should issue (adjacent extents coalesce up to this).
    pub max_read_bytes: u64,
    /// The activation trace, when the experiment has one. Generated token `i` is trace token
    /// `i mod T`. A policy reads only the current token's activations (and earlier ones); only
    /// oracles, which say so in their name, look ahead.
    pub trace: Option<&'a dyn TraceView>,
    /// Put the applied masks in each plan (for quality scoring); off for speed otherwise.
    pub record_masks: bool,
    /// List each op's weight extents ([`crate::plan::Op::weights`]) for a backend that computes
    /// on them; off for speed otherwise.
    pub op_weights: bool,
}

impl PolicyContext<'_> {
    /// The trace, or an error naming the policy that needs one.
    pub fn need_trace(&self, policy: &str) -> Result<&dyn TraceView, PolicyError> {
        self.trace.ok_or_else(|| {
            PolicyError::Invalid(format!(
                "policy `{policy}` decides from activations: give the experiment a `trace`"
            ))
        })
    }

    /// The dense decode step of `token` on `unit` (attention with its KV cache, FFN, LM head),
    /// which policies start from.
    pub fn dense_ops(&self, token: TokenInfo, unit: &str) -> Vec<crate::plan::Op> {
        crate::decode::dense_ops(
            self.shape,
            self.layout,
            token.context,
            self.kv_bytes_per_value,
            unit,
            self.op_weights,
        )
    }

    /// Trace token of generated token `index`.
    pub fn trace_token(&self, index: u32) -> Option<usize> {
        self.trace.map(|t| index as usize % t.tokens())
    }

    /// Reads `act` of layer `layer` for generated token `index` into `out`.
    pub fn read(
        &self,
        act: Act,
        index: u32,
        layer: u32,
        out: &mut Vec<f32>,
    ) -> Result<(), PolicyError> {
        let t = self.need_trace("this policy")?;
        t.read(act, index as usize % t.tokens(), layer as usize, out);
        Ok(())
    }
}

/// What a policy holds once set up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicySetup {
    /// Weights kept in DRAM for the whole run: where they sit in the weight file (a backend
    /// that keeps the bytes loads them before it runs).
    pub resident: Vec<crate::plan::Extent>,
    /// The most streaming-buffer bytes the policy's plans hold at once.
    pub peak_buffer_bytes: u64,
    /// DRAM set aside for the whole run beyond the weights (e.g. a fixed-size cache whose fills
    /// the plans do not allocate one by one).
    pub reserved_bytes: u64,
}

impl PolicySetup {
    /// Bytes of the resident weights.
    pub fn resident_weight_bytes(&self) -> u64 {
        self.resident.iter().map(|e| e.bytes).sum()
    }
}

/// The token being planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenInfo {
    /// 0-based index among the generated tokens.
    pub index: u32,
    /// Tokens already in the KV cache (prompt plus earlier generated tokens).
    pub context: u64,
    /// The input token id (selects the embedding row).
    pub token_id: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("DRAM budget of {budget_bytes} bytes is too small: {what} need {needed_bytes} bytes")]
    DramBudget {
        needed_bytes: u64,
        budget_bytes: u64,
        what: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A weight-streaming policy: no clock, no I/O; a trace in, a plan out.
/// What a policy may know of the hardware to size itself before it runs (ActiveFlow's memory
/// split picks its preload depth from them): rates of the device model, never a clock.
pub trait DeviceRates {
    /// Sustained throughput, bytes per second, of back-to-back reads of `request_bytes` each at
    /// the experiment's I/O queue depth.
    fn flash_read_bytes_per_s(&self, request_bytes: u64) -> f64;
    /// Seconds compute unit `unit` takes for an op of `flops` touching `dram_bytes`; `None` when
    /// the device has no such unit.
    fn op_seconds(&self, unit: &str, flops: u64, dram_bytes: u64) -> Option<f64>;
}

/// What a policy sees when it sizes itself, before it picks its layout.
pub struct SizingContext<'a> {
    pub shape: &'a ModelShape,
    pub dram_budget_bytes: u64,
    pub kv_cache_bytes: u64,
    /// The device's rates (absent in unit tests that build a policy without a device).
    pub rates: Option<&'a dyn DeviceRates>,
}

pub trait Policy: Send {
    /// The registered name.
    fn name(&self) -> &'static str;
    /// Fixes whatever the policy derives from the model, budget and device before anything
    /// else (called first, once). Default: nothing to fix.
    fn size(&mut self, _ctx: &SizingContext) -> Result<(), PolicyError> {
        Ok(())
    }
    /// How the policy wants the weights laid out in flash (default: every matrix row-major).
    fn layout(&self, shape: &ModelShape, alignment_bytes: u64) -> WeightLayout {
        WeightLayout::per_matrix(shape, alignment_bytes)
    }
    /// Decides what stays resident. Called once before the first token.
    fn setup(&mut self, ctx: &PolicyContext) -> Result<PolicySetup, PolicyError>;
    /// Values the policy derived rather than read from its parameters (e.g. ActiveFlow's N and
    /// sparsity), as `(name, value)`, reported beside the results. Default: none.
    fn derived(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// The plan for one token.
    fn plan_token(
        &mut self,
        ctx: &PolicyContext,
        token: TokenInfo,
    ) -> Result<TokenPlan, PolicyError>;
}

/// Builds a policy from its parameter table (`[policies.NAME]`), which sits at `key` in `src`.
pub type BuildFn =
    fn(src: &TomlSource, params: toml::Value, key: &[&str]) -> Result<Box<dyn Policy>, ConfigError>;

/// A registered policy.
pub struct PolicyEntry {
    pub name: &'static str,
    pub summary: &'static str,
    pub build: BuildFn,
}

/// Every policy flashsim knows. A new policy is one file plus one line here.
pub fn registry() -> &'static [PolicyEntry] {
    &[
        crate::dense_streaming::ENTRY,
        crate::all_in_dram::ENTRY,
        crate::llm_in_a_flash::ENTRY,
        crate::dip::ENTRY,
        crate::activeflow::ENTRY,
        crate::mmap::ENTRY,
    ]
}

/// The policy registered as `name`.
pub fn find(name: &str) -> Option<&'static PolicyEntry> {
    registry().iter().find(|e| e.name == name)
}

/// The compute unit a policy runs on unless its table says otherwise.
pub fn default_compute_unit() -> String {
    "cpu".into()
}

/// The dotted key of parameter `name` in a policy table at `key` (for error messages).
pub fn param_key(key: &[&str], name: &str) -> String {
    [key.join("."), name.to_string()].join(".")
}

/// Deserializes a policy's parameters; the helper every policy's `build` uses.
pub fn parse_params<P: serde::de::DeserializeOwned>(
    src: &TomlSource,
    params: toml::Value,
    key: &[&str],
) -> Result<P, ConfigError> {
    src.parse_value(params, key)
}

#[cfg(test)]
mod op_weight_tests {
    use super::*;
    use crate::plan::{DramChange, OpKind};
    use crate::testing::FnTrace;
    use flashsim_workloads::trace::Act;

    /// Every registered policy, asked for op weights, plans exactly as without them, and each
    /// op lists the weights its `dram_bytes` counts: all of them but the KV cache for
    /// attention, none for DRAM bookkeeping, every byte otherwise.
    #[test]
    fn ops_list_the_weights_they_count() {
        let shape = ModelShape {
            name: "t".into(),
            source: String::new(),
            layers: 3,
            hidden: 8,
            intermediate: 24,
            heads: 2,
            kv_heads: 2,
            vocab: 16,
            bytes_per_weight: 2.0,
            gated: true,
            tied_embeddings: false,
            head_dim: None,
        };
        let trace = FnTrace {
            shape: shape.clone(),
            tokens: 5,
            f: |act: Act, t: usize, l: usize| {
                let n = if act == Act::H { 24 } else { 8 };
                (0..n)
                    .map(|i| (((i * 7 + t * 5 + l * 3 + act as usize) % 11) as f32 - 5.0) / 4.0)
                    .collect()
            },
        };
        let params = |name: &str| -> toml::Value {
            let text = match name {
                "activeflow" => "preload_layers = 1\nsparsity = 0.5",
                "llm-in-a-flash" => "bundling = false",
                _ => "",
            };
            toml::Value::Table(text.parse().unwrap())
        };
        for entry in registry() {
            let src = TomlSource::from_text("t.toml", "").unwrap();
            let build = || (entry.build)(&src, params(entry.name), &["policies", entry.name]);
            let (mut plain, mut listing) = (build().unwrap(), build().unwrap());
            let layout = plain.layout(&shape, 2);
            let ctx = PolicyContext {
                shape: &shape,
                layout: &layout,
                // 70% of the file; mmap's page cache needs room for its pages and readahead.
                dram_budget_bytes: if entry.name == "mmap" {
                    1 << 20
                } else {
                    layout.file_bytes / 10 * 7 + 4096
                },
                kv_cache_bytes: 0,
                kv_bytes_per_value: 2,
                prompt_tokens: 2,
                tokens: 5,
                max_read_bytes: 64,
                trace: Some(&trace),
                record_masks: false,
                op_weights: false,
            };
            let with = PolicyContext {
                op_weights: true,
                ..ctx
            };
            plain.setup(&ctx).unwrap();
            listing.setup(&with).unwrap();
            for index in 0..5 {
                let info = TokenInfo {
                    index,
                    context: 2 + index as u64,
                    token_id: index,
                };
                let a = plain.plan_token(&ctx, info).unwrap();
                let mut b = listing.plan_token(&with, info).unwrap();
                b.check().unwrap();
                let kv = crate::decode::kv_bytes_per_layer(&shape, info.context, 2);
                for (j, op) in b.ops.iter_mut().enumerate() {
                    let what = format!("{} token {index} op {j} ({:?})", entry.name, op.kind);
                    assert!(op.weights.is_sorted(), "{what}");
                    assert!(op.weights.windows(2).all(|w| w[0].end() < w[1].offset));
                    assert!(op.weights.iter().all(|e| e.end() <= layout.file_bytes));
                    let want = match op.kind {
                        OpKind::Attention => op.dram_bytes - kv,
                        OpKind::DramManagement => 0,
                        _ => op.dram_bytes,
                    };
                    assert_eq!(op.weight_bytes(), want, "{what}");
                    assert!(op.weight_bytes() > 0 || op.kind == OpKind::DramManagement);
                    // The runs counted without the list (the plans are equal below) are the
                    // listed runs, or a few more where runs of two tensors meet.
                    let merged = op.weights.len() as u64;
                    assert!(
                        merged <= op.pieces && op.pieces <= merged + 3,
                        "{what}: {} pieces, {merged} merged runs",
                        op.pieces
                    );
                    op.weights.clear();
                }
                // The extents a cache lets go of are the bytes the accounting frees (ActiveFlow's
                // hot cache lives in its reservation, so it frees none).
                let (mut evicted, mut admitted) = (0, 0);
                for c in &b.dram_changes {
                    match *c {
                        DramChange::Evict(_, e) => evicted += e.bytes,
                        DramChange::Admit(_, e) => admitted += e.bytes,
                    }
                }
                let freed = b.evicted_bytes + b.evictions.iter().map(|e| e.1).sum::<u64>();
                if entry.name != "activeflow" {
                    assert_eq!(evicted, freed, "{} token {index}", entry.name);
                    assert_eq!(admitted, 0, "{} token {index}", entry.name);
                }
                b.dram_changes.clear();
                assert_eq!(a, b, "{} token {index}", entry.name);
            }
        }
    }
}
