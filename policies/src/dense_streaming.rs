//! `dense-streaming`: every weight not pinned in DRAM is read from flash for every token.
//!
//! This is the "naive" first row of LLM in a Flash's Table 2 (nothing pinned: the whole model is
//! read per token) and, with `pinned_fraction = 0.5`, its "hybrid" second row (half of the model
//! stays in DRAM). `pin_attention` keeps the attention weights resident, as LLM in a Flash does
//! for every row after the first.

use crate::decode;
use crate::plan::{chunked, Extent, IssueAfter, Read, TokenPlan};
use crate::policy::{
    param_key, parse_params, Policy, PolicyContext, PolicyEntry, PolicyError, PolicySetup,
    TokenInfo,
};
use flashsim_workloads::shape::TensorKind;
use flashsim_workloads::toml_source::{ConfigError, TomlSource};
use serde::Deserialize;

pub const ENTRY: PolicyEntry = PolicyEntry {
    name: "dense-streaming",
    summary: "stream every weight that is not pinned from flash, every token",
    build,
};

/// Parameters of `[policies.dense-streaming]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseStreamingParams {
    /// Keep the attention weights (Q, K, V, O of every layer) resident in DRAM.
    /// Default `false`: Table 2's first row streams everything.
    #[serde(default)]
    pub pin_attention: bool,
    /// Fraction of the rows of every other matrix kept resident in DRAM (0 = none; 0.5 = LLM in
    /// a Flash's "hybrid" row, half the model in DRAM).
    #[serde(default)]
    pub pinned_fraction: f64,
    /// How many ops may hold their weights in DRAM buffers at once: the reads of op j are
    /// issued once op j − `buffered_ops` has finished and freed its buffer. 1 = no overlap (each
    /// op's weights are read after the previous op has finished, as LLM in a Flash measures its
    /// I/O); 2 = double buffering (op j+1 is read while op j computes), the default of any
    /// streaming runtime; more lets reads run further ahead.
    #[serde(default = "default_two")]
    pub buffered_ops: u32,
    /// Compute unit of the device that runs every op.
    #[serde(default = "crate::policy::default_compute_unit")]
    pub compute_unit: String,
}

fn default_two() -> u32 {
    2
}

fn build(
    src: &TomlSource,
    params: toml::Value,
    key: &[&str],
) -> Result<Box<dyn Policy>, ConfigError> {
    let p: DenseStreamingParams = parse_params(src, params, key)?;
    let at = |k: &str| param_key(key, k);
    if !(0.0..=1.0).contains(&p.pinned_fraction) {
        return Err(src.invalid(&at("pinned_fraction"), "must lie in [0, 1]"));
    }
    if p.buffered_ops == 0 {
        return Err(src.invalid(&at("buffered_ops"), "must be at least 1"));
    }
    Ok(Box::new(DenseStreaming::new(p)))
}

/// The dense-streaming policy.
#[derive(Debug, Clone)]
pub struct DenseStreaming {
    params: DenseStreamingParams,
    /// Per op, the streamed (non-resident) byte ranges of its matrices.
    streamed: Vec<Vec<Extent>>,
    /// Rows of the embedding that are resident (for the per-token embedding lookup).
    embedding_pinned_rows: u64,
}

impl DenseStreaming {
    pub fn new(params: DenseStreamingParams) -> Self {
        DenseStreaming {
            params,
            streamed: Vec::new(),
            embedding_pinned_rows: 0,
        }
    }

    fn pinned_rows(&self, kind: TensorKind, rows: u64) -> u64 {
        if self.params.pin_attention && kind.is_attention() {
            rows
        } else {
            (rows as f64 * self.params.pinned_fraction).floor() as u64
        }
    }

    fn issue_after(&self, op: u32) -> IssueAfter {
        match op.checked_sub(self.params.buffered_ops) {
            None => IssueAfter::TokenStart,
            Some(k) => IssueAfter::OpDone(k),
        }
    }
}

impl Policy for DenseStreaming {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn setup(&mut self, ctx: &PolicyContext) -> Result<PolicySetup, PolicyError> {
        let n_ops = decode::lm_head_op(ctx.shape) + 1;
        let mut pinned_extents = Vec::new();
        self.streamed = vec![Vec::new(); n_ops as usize];
        for op in 0..n_ops {
            for t in decode::op_tensors(ctx.shape, ctx.layout, op) {
                let pinned = self.pinned_rows(t.shape.kind, t.shape.rows);
                if pinned > 0 {
                    pinned_extents.push(t.rows(0, pinned));
                }
                if pinned < t.shape.rows {
                    self.streamed[op as usize].push(t.rows(pinned, t.shape.rows - pinned));
                }
            }
        }
        // The embedding: tied models already counted it as the LM head.
        let emb = ctx
            .layout
            .tensor(TensorKind::Embedding, None)
            .expect("layout has an embedding");
        self.embedding_pinned_rows = self.pinned_rows(TensorKind::Embedding, emb.shape.rows);
        if !ctx.shape.tied_embeddings && self.embedding_pinned_rows > 0 {
            pinned_extents.push(emb.rows(0, self.embedding_pinned_rows));
        }
        // Buffers held at once: `buffered_ops` consecutive ops, plus the embedding row of op 0.
        let window = self.params.buffered_ops as usize;
        let per_op: Vec<u64> = self
            .streamed
            .iter()
            .map(|v| v.iter().map(|e| e.bytes).sum())
            .collect();
        let peak = per_op
            .windows(window.min(per_op.len()))
            .map(|w| w.iter().sum::<u64>())
            .max()
            .unwrap_or(0)
            + emb.row_bytes;
        Ok(PolicySetup {
            resident: pinned_extents,
            peak_buffer_bytes: peak,
            reserved_bytes: 0,
        })
    }

    fn plan_token(
        &mut self,
        ctx: &PolicyContext,
        token: TokenInfo,
    ) -> Result<TokenPlan, PolicyError> {
        let ops = ctx.dense_ops(token, &self.params.compute_unit);
        let mut reads = Vec::new();
        let emb = ctx
            .layout
            .tensor(TensorKind::Embedding, None)
            .expect("layout has an embedding");
        let row = token.token_id as u64 % emb.shape.rows;
        if row >= self.embedding_pinned_rows {
            reads.push(Read::demand(
                emb.rows(row, 1),
                0,
                IssueAfter::TokenStart,
                false,
            ));
        }
        for (op, extents) in self.streamed.iter().enumerate() {
            let op = op as u32;
            for &e in extents {
                chunked(e, ctx.max_read_bytes, op, self.issue_after(op), &mut reads);
            }
        }
        Ok(TokenPlan {
            ops,
            reads,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::WeightLayout;
    use crate::plan::Extent;
    use flashsim_workloads::ModelShape;

    /// One layer, hidden 4, FFN 8, fp16, untied. The file, 1-byte aligned:
    /// emb 0..32 | wq 32..64 | wk 64..96 | wv 96..128 | wo 128..160 | gate 160..224 |
    /// up 224..288 | down 288..352 | lm_head 352..384.
    fn tiny() -> (ModelShape, WeightLayout) {
        let s = ModelShape {
            name: "tiny".into(),
            source: String::new(),
            layers: 1,
            hidden: 4,
            intermediate: 8,
            heads: 1,
            kv_heads: 1,
            vocab: 4,
            bytes_per_weight: 2.0,
            gated: true,
            tied_embeddings: false,
            head_dim: None,
        };
        let l = WeightLayout::per_matrix(&s, 1);
        (s, l)
    }

    fn ctx<'a>(s: &'a ModelShape, l: &'a WeightLayout) -> PolicyContext<'a> {
        PolicyContext {
            shape: s,
            layout: l,
            dram_budget_bytes: 1 << 20,
            kv_cache_bytes: 0,
            kv_bytes_per_value: 2,
            prompt_tokens: 0,
            tokens: 1,
            max_read_bytes: 48,
            trace: None,
            record_masks: false,
            op_weights: false,
        }
    }

    fn params(
        pinned_fraction: f64,
        pin_attention: bool,
        buffered_ops: u32,
    ) -> DenseStreamingParams {
        DenseStreamingParams {
            pin_attention,
            pinned_fraction,
            buffered_ops,
            compute_unit: "cpu".into(),
        }
    }

    fn ext(offset: u64, bytes: u64) -> Extent {
        Extent { offset, bytes }
    }

    #[test]
    fn layout_matches_the_hand_computed_offsets() {
        let (_, l) = tiny();
        let offs: Vec<(u64, u64)> = l.tensors().iter().map(|t| (t.offset, t.bytes)).collect();
        assert_eq!(
            offs,
            vec![
                (0, 32),
                (32, 32),
                (64, 32),
                (96, 32),
                (128, 32),
                (160, 64),
                (224, 64),
                (288, 64),
                (352, 32)
            ]
        );
        assert_eq!(l.file_bytes, 384);
    }

    #[test]
    fn nothing_pinned_reads_every_matrix_in_48_byte_chunks() {
        let (s, l) = tiny();
        let c = ctx(&s, &l);
        let mut p = DenseStreaming::new(params(0.0, false, 2));
        let setup = p.setup(&c).unwrap();
        assert_eq!(setup.resident_weight_bytes(), 0);
        // Two consecutive ops at most: attention 128 + FFN 192, plus one embedding row of 8.
        assert_eq!(setup.peak_buffer_bytes, 328);
        let plan = p
            .plan_token(
                &c,
                TokenInfo {
                    index: 0,
                    context: 0,
                    token_id: 1,
                },
            )
            .unwrap();
        plan.check().unwrap();
        let got: Vec<(Extent, u32, IssueAfter)> = plan
            .reads
            .iter()
            .map(|r| (r.extent, r.needed_by, r.issue_after))
            .collect();
        use IssueAfter::*;
        assert_eq!(
            got,
            vec![
                (ext(8, 8), 0, TokenStart), // embedding row of token 1
                (ext(32, 32), 0, TokenStart),
                (ext(64, 32), 0, TokenStart),
                (ext(96, 32), 0, TokenStart),
                (ext(128, 32), 0, TokenStart),
                (ext(160, 48), 1, TokenStart),
                (ext(208, 16), 1, TokenStart),
                (ext(224, 48), 1, TokenStart),
                (ext(272, 16), 1, TokenStart),
                (ext(288, 48), 1, TokenStart),
                (ext(336, 16), 1, TokenStart),
                (ext(352, 32), 2, OpDone(0)), // LM head, once attention's buffer is free
            ]
        );
        assert_eq!(plan.read_bytes(), 8 + 352);
        assert_eq!(plan.ops.len(), 3);
        // FFN: 2 x (3 x 8 x 4) FLOPs, 192 bytes of weights.
        assert_eq!(plan.ops[1].flops, 192);
        assert_eq!(plan.ops[1].dram_bytes, 192);
    }

    #[test]
    fn half_pinned_and_attention_resident() {
        let (s, l) = tiny();
        let c = ctx(&s, &l);
        let mut p = DenseStreaming::new(params(0.5, true, 1));
        let setup = p.setup(&c).unwrap();
        // Attention 128 B all resident; half the rows of gate, up, down (32 each), LM head (16),
        // embedding (16).
        assert_eq!(setup.resident_weight_bytes(), 128 + 96 + 16 + 16);
        let plan = p
            .plan_token(
                &c,
                TokenInfo {
                    index: 0,
                    context: 0,
                    token_id: 3,
                },
            )
            .unwrap();
        let got: Vec<(Extent, u32, IssueAfter)> = plan
            .reads
            .iter()
            .map(|r| (r.extent, r.needed_by, r.issue_after))
            .collect();
        use IssueAfter::*;
        assert_eq!(
            got,
            vec![
                (ext(24, 8), 0, TokenStart),  // row 3 of the embedding is not pinned
                (ext(192, 32), 1, OpDone(0)), // gate rows 4..8
                (ext(256, 32), 1, OpDone(0)), // up rows 4..8
                (ext(320, 32), 1, OpDone(0)), // down rows 2..4
                (ext(368, 16), 2, OpDone(1)), // LM head rows 2..4
            ]
        );
        // Token 1's embedding row is pinned: no read for it.
        let plan = p
            .plan_token(
                &c,
                TokenInfo {
                    index: 1,
                    context: 1,
                    token_id: 1,
                },
            )
            .unwrap();
        assert_eq!(plan.reads[0].extent, ext(192, 32));
    }
}
