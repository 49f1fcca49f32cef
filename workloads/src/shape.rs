//! Model shapes: the numbers that decide how many bytes stream from flash and how many FLOPs a
//! decode step costs. Loaded from `configs/models/*.toml`.

use crate::toml_source::{ConfigError, TomlSource};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The shape of a decoder-only transformer (Llama/OPT family).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    /// Name used in experiments (`model = "llama-2-7b"`).
    pub name: String,
    /// Where the numbers come from (a config.json, a paper).
    #[serde(default)]
    pub source: String,
    /// Number of decoder layers.
    pub layers: u32,
    /// Width of the residual stream (d_model).
    pub hidden: u32,
    /// Width of the FFN (number of neurons per layer).
    pub intermediate: u32,
    /// Query heads.
    pub heads: u32,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: u32,
    /// Vocabulary size (rows of the embedding and of the LM head).
    pub vocab: u32,
    /// Storage size of one weight in bytes: 4 (f32), 2 (fp16/bf16), 1 (int8), 0.5 (int4).
    pub bytes_per_weight: f64,
    /// SwiGLU FFN with gate, up and down (Llama); `false` for a two-matrix FFN (OPT's fc1/fc2).
    pub gated: bool,
    /// The LM head shares the token-embedding matrix.
    #[serde(default)]
    pub tied_embeddings: bool,
    /// Per-head width; `hidden / heads` when absent.
    #[serde(default)]
    pub head_dim: Option<u32>,
}

/// Which matrix of a layer (or of the model) a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorKind {
    Embedding,
    Wq,
    Wk,
    Wv,
    Wo,
    /// W_gate (SwiGLU only): `[intermediate][hidden]`.
    Gate,
    /// W_up (or OPT's fc1): `[intermediate][hidden]`.
    Up,
    /// W_down (or OPT's fc2): `[hidden][intermediate]`.
    Down,
    /// The classifier, when not tied to the embedding.
    LmHead,
}

impl TensorKind {
    pub fn is_attention(self) -> bool {
        matches!(
            self,
            TensorKind::Wq | TensorKind::Wk | TensorKind::Wv | TensorKind::Wo
        )
    }
    pub fn is_ffn(self) -> bool {
        matches!(self, TensorKind::Gate | TensorKind::Up | TensorKind::Down)
    }
}

/// One weight matrix, stored row-major as `[rows][cols]` (`[out][in]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorShape {
    pub kind: TensorKind,
    /// Layer index, `None` for the embedding and the LM head.
    pub layer: Option<u32>,
    pub rows: u64,
    pub cols: u64,
}

impl TensorShape {
    pub fn params(&self) -> u64 {
        self.rows * self.cols
    }
}

impl ModelShape {
    /// Reads and validates a model shape file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let src = TomlSource::read(path)?;
        let shape: ModelShape = src.parse()?;
        shape.validate(&src)?;
        Ok(shape)
    }

    fn validate(&self, src: &TomlSource) -> Result<(), ConfigError> {
        for (key, v) in [
            ("layers", self.layers),
            ("hidden", self.hidden),
            ("intermediate", self.intermediate),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("vocab", self.vocab),
        ] {
            if v == 0 {
                return Err(src.invalid(key, "must be positive"));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(src.invalid("kv_heads", "must divide `heads` (grouped-query attention)"));
        }
        if self.head_dim.is_none() && !self.hidden.is_multiple_of(self.heads) {
            return Err(src.invalid("heads", "must divide `hidden` unless `head_dim` is given"));
        }
        let bits = self.bytes_per_weight * 8.0;
        if !((1.0..=64.0).contains(&bits) && bits.fract() == 0.0) {
            return Err(src.invalid(
                "bytes_per_weight",
                format!(
                    "{} is not a whole number of bits between 1 and 64 (use 4, 2, 1 or 0.5)",
                    self.bytes_per_weight
                ),
            ));
        }
        Ok(())
    }

    /// Bits per stored weight.
    pub fn bits_per_weight(&self) -> u64 {
        (self.bytes_per_weight * 8.0).round() as u64
    }

    /// Bytes of `params` weights, rounded up to whole bytes.
    pub fn weight_bytes(&self, params: u64) -> u64 {
        (params * self.bits_per_weight()).div_ceil(8)
    }

    pub fn head_dim(&self) -> u32 {
        self.head_dim.unwrap_or(self.hidden / self.heads)
    }
    /// Width of the query projection output.
    pub fn q_dim(&self) -> u64 {
        self.heads as u64 * self.head_dim() as u64
    }
    /// Width of the key (and value) projection output.
    pub fn kv_dim(&self) -> u64 {
        self.kv_heads as u64 * self.head_dim() as u64
    }

    /// The weight matrices of layer `layer`, in the order a forward pass uses them.
    pub fn layer_tensors(&self, layer: u32) -> Vec<TensorShape> {
        let h = self.hidden as u64;
        let i = self.intermediate as u64;
        let t = |kind, rows, cols| TensorShape {
            kind,
            layer: Some(layer),
            rows,
            cols,
        };
        let mut v = vec![
            t(TensorKind::Wq, self.q_dim(), h),
            t(TensorKind::Wk, self.kv_dim(), h),
            t(TensorKind::Wv, self.kv_dim(), h),
            t(TensorKind::Wo, h, self.q_dim()),
        ];
        if self.gated {
            v.push(t(TensorKind::Gate, i, h));
        }
        v.push(t(TensorKind::Up, i, h));
        v.push(t(TensorKind::Down, h, i));
        v
    }

    /// Every weight matrix of the model: embedding, the layers in order, the LM head if untied.
    pub fn tensors(&self) -> Vec<TensorShape> {
        let mut v = vec![TensorShape {
            kind: TensorKind::Embedding,
            layer: None,
            rows: self.vocab as u64,
            cols: self.hidden as u64,
        }];
        for l in 0..self.layers {
            v.extend(self.layer_tensors(l));
        }
        if !self.tied_embeddings {
            v.push(TensorShape {
                kind: TensorKind::LmHead,
                layer: None,
                rows: self.vocab as u64,
                cols: self.hidden as u64,
            });
        }
        v
    }

    /// Total parameters in weight matrices (norm weights and biases are negligible and left out).
    pub fn params(&self) -> u64 {
        self.tensors().iter().map(TensorShape::params).sum()
    }

    /// Total bytes of all weight matrices.
    pub fn total_weight_bytes(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|t| self.weight_bytes(t.params()))
            .sum()
    }

    /// Bytes of one token's key and value vectors over all layers, at `bytes_per_value`.
    pub fn kv_bytes_per_token(&self, bytes_per_value: u64) -> u64 {
        2 * self.layers as u64 * self.kv_dim() * bytes_per_value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama7b() -> ModelShape {
        ModelShape {
            name: "llama-2-7b".into(),
            source: String::new(),
            layers: 32,
            hidden: 4096,
            intermediate: 11008,
            heads: 32,
            kv_heads: 32,
            vocab: 32000,
            bytes_per_weight: 2.0,
            gated: true,
            tied_embeddings: false,
            head_dim: None,
        }
    }

    #[test]
    fn llama2_7b_has_6_74b_parameters() {
        // Meta reports 6.74B parameters for Llama-2-7B; norms are ~0.3M of them.
        let p = llama7b().params();
        assert!((p as f64 - 6.738e9).abs() / 6.738e9 < 0.001, "{p}");
    }

    #[test]
    fn int4_bytes_round_up() {
        let mut m = llama7b();
        m.bytes_per_weight = 0.5;
        assert_eq!(m.weight_bytes(3), 2);
        assert_eq!(m.weight_bytes(4096), 2048);
    }
}
