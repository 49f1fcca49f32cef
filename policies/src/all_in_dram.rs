//! `all-in-dram`: every weight resident; no flash reads after loading. The upper bound when
//! memory allows.

use crate::decode;
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
    #[serde(default = "default_cpu")]
    pub compute_unit: String,
}

fn default_cpu() -> String {
    "cpu".into()
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
            resident_weight_bytes: ctx.shape.total_weight_bytes(),
            peak_buffer_bytes: 0,
        })
    }

    fn plan_token(
        &mut self,
        ctx: &PolicyContext,
        token: TokenInfo,
    ) -> Result<TokenPlan, PolicyError> {
        Ok(TokenPlan {
            ops: decode::dense_ops(
                ctx.shape,
                ctx.layout,
                token.context,
                ctx.kv_bytes_per_value,
                &self.params.compute_unit,
            ),
            reads: Vec::new(),
            evicted_bytes: 0,
        })
    }
}
