//! Model weights in memory (f32), loaded from real checkpoint formats:
//! - [`llama2c`]: llama2.c `.bin` (legacy version-0 layout), as in `../shared/models/README.md`;
//! - [`hf`]: Hugging Face Llama-family `config.json` + `model.safetensors` (or sharded with
//!   `model.safetensors.index.json`), f32/f16/bf16, memory-mapped; and the writer that exports
//!   [`Weights`] in that format.

pub mod hf;
pub mod llama2c;

use crate::shape::ModelShape;
use ndarray::{Array1, Array2};

/// Hyper-parameters of a Llama-architecture model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    /// The classifier is the token-embedding matrix.
    pub shared_classifier: bool,
}

impl ModelConfig {
    pub fn head_size(&self) -> usize {
        self.dim / self.n_heads
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_size()
    }
    pub fn check(&self) -> Result<(), String> {
        let c = self;
        if c.dim == 0
            || c.hidden_dim == 0
            || c.n_layers == 0
            || c.n_heads == 0
            || c.n_kv_heads == 0
            || c.vocab_size == 0
        {
            return Err(format!("every dimension must be positive: {c:?}"));
        }
        if !c.dim.is_multiple_of(c.n_heads)
            || !c.n_heads.is_multiple_of(c.n_kv_heads)
            || !c.head_size().is_multiple_of(2)
        {
            return Err(format!(
                "dim {} must split into {} heads of even size, and heads into {} KV heads",
                c.dim, c.n_heads, c.n_kv_heads
            ));
        }
        Ok(())
    }
}

/// One decoder layer; matrices are `[out][in]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    pub rms_att: Array1<f32>,
    pub wq: Array2<f32>,
    pub wk: Array2<f32>,
    pub wv: Array2<f32>,
    pub wo: Array2<f32>,
    pub rms_ffn: Array1<f32>,
    /// W_gate (llama2.c `w1`), `[hidden_dim][dim]`.
    pub w_gate: Array2<f32>,
    /// W_up (llama2.c `w3`), `[hidden_dim][dim]`.
    pub w_up: Array2<f32>,
    /// W_down (llama2.c `w2`), `[dim][hidden_dim]`.
    pub w_down: Array2<f32>,
}

/// All weights of a model, in f32, with q/k rows in the interleaved-pair RoPE order of llama2.c.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub config: ModelConfig,
    pub token_embedding: Array2<f32>,
    pub layers: Vec<LayerWeights>,
    pub rms_final: Array1<f32>,
    /// The classifier when not shared with the embedding.
    pub wcls: Option<Array2<f32>>,
}

impl Weights {
    /// The classifier matrix `[vocab][dim]`.
    pub fn classifier(&self) -> &Array2<f32> {
        self.wcls.as_ref().unwrap_or(&self.token_embedding)
    }

    /// The model's shape for the simulator (f32 weights).
    pub fn shape(&self, name: &str) -> ModelShape {
        let c = &self.config;
        ModelShape {
            name: name.to_string(),
            source: "checkpoint".into(),
            layers: c.n_layers as u32,
            hidden: c.dim as u32,
            intermediate: c.hidden_dim as u32,
            heads: c.n_heads as u32,
            kv_heads: c.n_kv_heads as u32,
            vocab: c.vocab_size as u32,
            bytes_per_weight: 4.0,
            gated: true,
            tied_embeddings: c.shared_classifier,
            head_dim: None,
        }
    }
}

/// SHA-256 of a file, hex, read in chunks.
pub fn sha256_file(path: &std::path::Path) -> crate::error::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| crate::error::WorkloadError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| crate::error::WorkloadError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
