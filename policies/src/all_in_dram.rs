//! `all-in-dram`: every weight resident; no flash reads after loading. The upper bound when
//! memory allows.

use crate::plan::TokenPlan;
use crate::policy::{
    parse_params, Policy, PolicyContext, PolicyEntry, PolicyError, PolicySetup, TokenInfo,
};
use flashsim_workloads::toml_source::{ConfigError, TomlSource};
use serde::Deserialize;

pub const ENTRY: PolicyEntry = PolicyEntry {
    name: "all-in-dram",
    summary: "the whole model resident in DRAM (upper bound)",
    build,
};

/// Parameters of `[policies.all-in-dram]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllInDramParams {
    /// Compute unit of the device that runs every op.
    #[serde(default = "crate::policy::default_compute_unit")]
    pub compute_unit: String,
}

fn build(
    src: &TomlSource,
    params: toml::Value,
    key: &[&str],
) -> Result<Box<dyn Policy>, ConfigError> {
    let p: AllInDramParams = parse_params(src, params, key)?;
    Ok(Box::new(AllInDram { params: p }))
}

#[derive(Debug, Clone)]
pub struct AllInDram {
    params: AllInDramParams,
}

impl Policy for AllInDram {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn setup(&mut self, ctx: &PolicyContext) -> Result<PolicySetup, PolicyError> {
        Ok(PolicySetup {
            resident: ctx.layout.tensors().iter().map(|t| t.whole()).collect(),
            peak_buffer_bytes: 0,
            reserved_bytes: 0,
        })
    }

    fn plan_token(
        &mut self,
        ctx: &PolicyContext,
        token: TokenInfo,
    ) -> Result<TokenPlan, PolicyError> {
        Ok(TokenPlan {
            ops: ctx.dense_ops(token, &self.params.compute_unit),
            reads: Vec::new(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::WeightLayout;
    use flashsim_workloads::ModelShape;

    #[test]
    fn everything_resident_nothing_read() {
        let s = ModelShape {
            name: "t".into(),
            source: String::new(),
            layers: 2,
            hidden: 8,
            intermediate: 16,
            heads: 2,
            kv_heads: 1,
            vocab: 10,
            bytes_per_weight: 0.5,
            gated: true,
            tied_embeddings: true,
            head_dim: None,
        };
        let l = WeightLayout::per_matrix(&s, 4096);
        let c = PolicyContext {
            shape: &s,
            layout: &l,
            dram_budget_bytes: 1 << 20,
            kv_cache_bytes: 0,
            kv_bytes_per_value: 2,
            prompt_tokens: 3,
            tokens: 1,
            max_read_bytes: 4096,
            trace: None,
            record_masks: false,
            op_weights: false,
        };
        let mut p = AllInDram {
            params: AllInDramParams {
                compute_unit: "npu".into(),
            },
        };
        // Embedding 10x8 + per layer (q 8x8, k 4x8, v 4x8, o 8x8, gate/up 16x8, down 8x16) at 4 bits.
        let params = 80 + 2 * (64 + 32 + 32 + 64 + 3 * 128);
        assert_eq!(p.setup(&c).unwrap().resident_weight_bytes(), params / 2);
        let plan = p
            .plan_token(
                &c,
                TokenInfo {
                    index: 0,
                    context: 3,
                    token_id: 0,
                },
            )
            .unwrap();
        assert!(plan.reads.is_empty());
        assert_eq!(plan.ops.len(), 5);
        assert!(plan.ops.iter().all(|o| o.unit == "npu"));
        // Attention over 3 + 1 keys: 4 x q_dim x 4 FLOPs beyond the projections.
        assert_eq!(plan.ops[0].flops, 2 * (64 + 32 + 32 + 64) + 4 * 8 * 4);
    }
}
