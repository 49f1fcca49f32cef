//! The ops every decode step has, whatever the policy: per layer the attention block (its four
//! projections and attention over the KV cache, which grows with the context) and the FFN, then
//! the LM head. A policy starts from these and changes what it sparsifies.

use crate::layout::{TensorExtent, WeightLayout};
use crate::plan::{extent_runs, op_weights, Op, OpKind};
use flashsim_workloads::shape::{ModelShape, TensorKind};

/// Index of layer `l`'s attention op in [`dense_ops`].
pub fn attention_op(layer: u32) -> u32 {
    2 * layer
}
/// Index of the LM head op in [`dense_ops`].
pub fn lm_head_op(shape: &ModelShape) -> u32 {
    2 * shape.layers
}

/// Bytes of the KV cache read by one layer's attention when `context` tokens precede the
/// current one (the current token's K and V are written and read too).
pub fn kv_bytes_per_layer(shape: &ModelShape, context: u64, kv_bytes_per_value: u64) -> u64 {
    2 * shape.kv_dim() * (context + 1) * kv_bytes_per_value
}

/// The dense decode step for a token whose KV cache holds `context` earlier tokens:
/// `[attn 0, ffn 0, attn 1, ffn 1, …, lm_head]`, all on `unit`; with `weights`, each op lists
/// the whole matrices it multiplies by.
pub fn dense_ops(
    shape: &ModelShape,
    layout: &WeightLayout,
    context: u64,
    kv_bytes_per_value: u64,
    unit: &str,
    weights: bool,
) -> Vec<Op> {
    let mut ops = Vec::with_capacity(2 * shape.layers as usize + 1);
    let kv = kv_bytes_per_layer(shape, context, kv_bytes_per_value);
    // Scores q·k over context+1 keys and the weighted sum of as many values, all heads.
    let attn_flops = 4 * shape.q_dim() * (context + 1);
    for l in 0..shape.layers {
        let (mut params, mut bytes) = (0, 0);
        let (mut ffn_params, mut ffn_bytes) = (0, 0);
        let (mut attn_w, mut ffn_w) = (Vec::new(), Vec::new());
        for t in layout.layer(l) {
            if t.shape.kind.is_attention() {
                params += t.shape.params();
                bytes += t.bytes;
                attn_w.push(t.whole());
            } else {
                ffn_params += t.shape.params();
                ffn_bytes += t.bytes;
                ffn_w.push(t.whole());
            }
        }
        // Whole matrices: one run each, or one for several that lie back to back.
        let (attn_p, ffn_p) = (extent_runs(&attn_w), extent_runs(&ffn_w));
        let listed = |v: Vec<_>| if weights { op_weights(v) } else { Vec::new() };
        ops.push(Op {
            kind: OpKind::Attention,
            layer: Some(l),
            unit: unit.to_string(),
            flops: 2 * params + attn_flops,
            dram_bytes: bytes + kv,
            weights: listed(attn_w),
            pieces: attn_p,
        });
        ops.push(Op {
            kind: OpKind::Ffn,
            layer: Some(l),
            unit: unit.to_string(),
            flops: 2 * ffn_params,
            dram_bytes: ffn_bytes,
            weights: listed(ffn_w),
            pieces: ffn_p,
        });
    }
    let head = lm_head(layout);
    ops.push(Op {
        kind: OpKind::LmHead,
        layer: None,
        unit: unit.to_string(),
        flops: 2 * head.shape.params(),
        dram_bytes: head.bytes,
        weights: if weights {
            vec![head.whole()]
        } else {
            Vec::new()
        },
        pieces: 1,
    });
    ops
}

/// The classifier matrix (the embedding when tied).
pub fn lm_head(layout: &WeightLayout) -> &TensorExtent {
    layout
        .tensor(TensorKind::LmHead, None)
        .expect("every layout has an embedding")
}

/// The weight matrices op `op` of [`dense_ops`] multiplies by.
pub fn op_tensors<'a>(
    shape: &ModelShape,
    layout: &'a WeightLayout,
    op: u32,
) -> Vec<&'a TensorExtent> {
    if op == lm_head_op(shape) {
        return vec![lm_head(layout)];
    }
    let layer = op / 2;
    let attention = op.is_multiple_of(2);
    layout
        .layer(layer)
        .filter(|t| t.shape.kind.is_attention() == attention)
        .collect()
}
