//! Hugging Face Llama-family checkpoints: `config.json` plus `model.safetensors`, or shards
//! listed in `model.safetensors.index.json`; tensors in f32, f16 or bf16, memory-mapped.
//!
//! HF stores W_q and W_k with the rows of each head permuted for the "rotate half" form of RoPE
//! (the `permute` of the Llama conversion script: pair element j of pair i moves to row
//! `j·hs/2 + i` of its head). The loader undoes it, so [`Weights`] always holds llama2.c's
//! interleaved-pair order and one forward pass serves both formats; the writer applies it.

use super::{LayerWeights, ModelConfig, Weights};
use crate::error::{Result, WorkloadError};
use memmap2::Mmap;
use ndarray::{Array1, Array2};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The fields of `config.json` flashsim reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

fn default_positions() -> usize {
    2048
}
fn default_eps() -> f32 {
    1e-6
}
fn default_theta() -> f32 {
    10000.0
}

/// Loads the checkpoint in `dir` (`config.json` and `model.safetensors` or its index).
pub fn load(dir: impl AsRef<Path>) -> Result<Weights> {
    let dir = dir.as_ref();
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| WorkloadError::io(&cfg_path, e))?;
    let hc: HfConfig =
        serde_json::from_str(&text).map_err(|e| WorkloadError::format(&cfg_path, e.to_string()))?;
    let config = ModelConfig {
        dim: hc.hidden_size,
        hidden_dim: hc.intermediate_size,
        n_layers: hc.num_hidden_layers,
        n_heads: hc.num_attention_heads,
        n_kv_heads: hc.num_key_value_heads.unwrap_or(hc.num_attention_heads),
        vocab_size: hc.vocab_size,
        seq_len: hc.max_position_embeddings,
        norm_eps: hc.rms_norm_eps,
        rope_theta: hc.rope_theta,
        shared_classifier: hc.tie_word_embeddings,
    };
    config
        .check()
        .map_err(|m| WorkloadError::format(&cfg_path, m))?;
    let store = Store::open(dir)?;
    let c = &config;
    let (d, hd, kv, hs) = (c.dim, c.hidden_dim, c.kv_dim(), c.head_size());
    let mut layers = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        layers.push(LayerWeights {
            rms_att: store.vector(&p("input_layernorm.weight"), d)?,
            wq: unpermute(&store.matrix(&p("self_attn.q_proj.weight"), d, d)?, hs),
            wk: unpermute(&store.matrix(&p("self_attn.k_proj.weight"), kv, d)?, hs),
            wv: store.matrix(&p("self_attn.v_proj.weight"), kv, d)?,
            wo: store.matrix(&p("self_attn.o_proj.weight"), d, d)?,
            rms_ffn: store.vector(&p("post_attention_layernorm.weight"), d)?,
            w_gate: store.matrix(&p("mlp.gate_proj.weight"), hd, d)?,
            w_up: store.matrix(&p("mlp.up_proj.weight"), hd, d)?,
            w_down: store.matrix(&p("mlp.down_proj.weight"), d, hd)?,
        });
    }
    let token_embedding = store.matrix("model.embed_tokens.weight", c.vocab_size, d)?;
    let wcls = if c.shared_classifier {
        None
    } else {
        Some(store.matrix("lm_head.weight", c.vocab_size, d)?)
    };
    Ok(Weights {
        rms_final: store.vector("model.norm.weight", d)?,
        config,
        token_embedding,
        layers,
        wcls,
    })
}

/// Memory-mapped safetensors files and which holds each tensor.
struct Store {
    maps: Vec<(PathBuf, Mmap)>,
    index: BTreeMap<String, usize>,
}

impl Store {
    fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index_path.is_file() {
            #[derive(Deserialize)]
            struct Index {
                weight_map: BTreeMap<String, String>,
            }
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| WorkloadError::io(&index_path, e))?;
            let idx: Index = serde_json::from_str(&text)
                .map_err(|e| WorkloadError::format(&index_path, e.to_string()))?;
            let mut f: Vec<PathBuf> = idx.weight_map.values().map(|f| dir.join(f)).collect();
            f.sort();
            f.dedup();
            f
        } else {
            return Err(WorkloadError::format(
                dir,
                "no model.safetensors nor model.safetensors.index.json",
            ));
        };
        let mut maps = Vec::new();
        let mut index = BTreeMap::new();
        for (i, f) in files.into_iter().enumerate() {
            let file = std::fs::File::open(&f).map_err(|e| WorkloadError::io(&f, e))?;
            // SAFETY: the map is read-only and dropped with the Store; a file changed underneath
            // would give wrong numbers, not undefined behaviour in safe code reading bytes.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| WorkloadError::io(&f, e))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                WorkloadError::format(&f, format!("not a valid safetensors file: {e}"))
            })?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            maps.push((f, map));
        }
        Ok(Store { maps, index })
    }

    fn floats(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let &i = self.index.get(name).ok_or_else(|| {
            WorkloadError::Invalid(format!("tensor `{name}` is missing from the checkpoint"))
        })?;
        let (path, map) = &self.maps[i];
        let st = SafeTensors::deserialize(map)
            .map_err(|e| WorkloadError::format(path, e.to_string()))?;
        let t = st
            .tensor(name)
            .map_err(|e| WorkloadError::format(path, e.to_string()))?;
        if t.shape() != shape {
            return Err(WorkloadError::format(
                path,
                format!(
                    "tensor `{name}` has shape {:?}, config.json implies {shape:?}",
                    t.shape()
                ),
            ));
        }
        let data = t.data();
        Ok(match t.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(c.try_into().expect("2")).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes(c.try_into().expect("2")).to_f32())
                .collect(),
            other => {
                return Err(WorkloadError::format(
                    path,
                    format!("tensor `{name}` is {other:?}; flashsim reads F32, F16 and BF16"),
                ))
            }
        })
    }

    fn vector(&self, name: &str, n: usize) -> Result<Array1<f32>> {
        Ok(Array1::from(self.floats(name, &[n])?))
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>> {
        Ok(Array2::from_shape_vec((rows, cols), self.floats(name, &[rows, cols])?).expect("sized"))
    }
}

/// Row `r` of an interleaved-order matrix goes to this row in HF's rotate-half order.
fn hf_row(r: usize, hs: usize) -> usize {
    let (head, within) = (r / hs, r % hs);
    let (pair, j) = (within / 2, within % 2);
    head * hs + j * (hs / 2) + pair
}

/// HF (rotate-half) row order to interleaved pairs.
fn unpermute(w: &Array2<f32>, hs: usize) -> Array2<f32> {
    let mut out = Array2::zeros(w.raw_dim());
    for r in 0..w.nrows() {
        out.row_mut(r).assign(&w.row(hf_row(r, hs)));
    }
    out
}

/// Interleaved pairs to HF (rotate-half) row order.
fn permute(w: &Array2<f32>, hs: usize) -> Array2<f32> {
    let mut out = Array2::zeros(w.raw_dim());
    for r in 0..w.nrows() {
        out.row_mut(hf_row(r, hs)).assign(&w.row(r));
    }
    out
}

/// A tensor ready to write: name, shape, little-endian bytes.
type Encoded = (String, Vec<usize>, Vec<u8>);

/// Tensor element type for [`write()`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteDtype {
    F32,
    F16,
    BF16,
}

/// Writes `w` to `dir` as `config.json` + `model.safetensors` with HF tensor names; with
/// `shard_params = Some(n)`, as shards of about `n` parameters plus the index file.
pub fn write(
    w: &Weights,
    dir: impl AsRef<Path>,
    dtype: WriteDtype,
    shard_params: Option<usize>,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| WorkloadError::io(dir, e))?;
    let c = &w.config;
    let hc = HfConfig {
        hidden_size: c.dim,
        intermediate_size: c.hidden_dim,
        num_hidden_layers: c.n_layers,
        num_attention_heads: c.n_heads,
        num_key_value_heads: Some(c.n_kv_heads),
        vocab_size: c.vocab_size,
        max_position_embeddings: c.seq_len,
        rms_norm_eps: c.norm_eps,
        rope_theta: c.rope_theta,
        tie_word_embeddings: c.shared_classifier,
        architectures: vec!["LlamaForCausalLM".into()],
        model_type: Some("llama".into()),
        torch_dtype: Some(
            match dtype {
                WriteDtype::F32 => "float32",
                WriteDtype::F16 => "float16",
                WriteDtype::BF16 => "bfloat16",
            }
            .into(),
        ),
    };
    let cfg_path = dir.join("config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_string_pretty(&hc).expect("serializable"),
    )
    .map_err(|e| WorkloadError::io(&cfg_path, e))?;
    let hs = c.head_size();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut add = |name: String, a: ndarray::ArrayViewD<f32>| {
        tensors.push((name, a.shape().to_vec(), a.iter().copied().collect()));
    };
    add(
        "model.embed_tokens.weight".into(),
        w.token_embedding.view().into_dyn(),
    );
    for (l, lw) in w.layers.iter().enumerate() {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        add(p("input_layernorm.weight"), lw.rms_att.view().into_dyn());
        add(
            p("self_attn.q_proj.weight"),
            permute(&lw.wq, hs).view().into_dyn(),
        );
        add(
            p("self_attn.k_proj.weight"),
            permute(&lw.wk, hs).view().into_dyn(),
        );
        add(p("self_attn.v_proj.weight"), lw.wv.view().into_dyn());
        add(p("self_attn.o_proj.weight"), lw.wo.view().into_dyn());
        add(
            p("post_attention_layernorm.weight"),
            lw.rms_ffn.view().into_dyn(),
        );
        add(p("mlp.gate_proj.weight"), lw.w_gate.view().into_dyn());
        add(p("mlp.up_proj.weight"), lw.w_up.view().into_dyn());
        add(p("mlp.down_proj.weight"), lw.w_down.view().into_dyn());
    }
    add("model.norm.weight".into(), w.rms_final.view().into_dyn());
    if let Some(cls) = &w.wcls {
        add("lm_head.weight".into(), cls.view().into_dyn());
    }
    let (st_dtype, encode): (Dtype, fn(f32) -> Vec<u8>) = match dtype {
        WriteDtype::F32 => (Dtype::F32, |x| x.to_le_bytes().to_vec()),
        WriteDtype::F16 => (Dtype::F16, |x| {
            half::f16::from_f32(x).to_le_bytes().to_vec()
        }),
        WriteDtype::BF16 => (Dtype::BF16, |x| {
            half::bf16::from_f32(x).to_le_bytes().to_vec()
        }),
    };
    let encoded: Vec<Encoded> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, v.into_iter().flat_map(encode).collect()))
        .collect();
    let mut shards: Vec<Vec<&Encoded>> = vec![Vec::new()];
    let mut in_shard = 0usize;
    for t in &encoded {
        let n: usize = t.1.iter().product();
        if let Some(limit) = shard_params {
            if in_shard > 0 && in_shard + n > limit {
                shards.push(Vec::new());
                in_shard = 0;
            }
        }
        in_shard += n;
        shards.last_mut().expect("non-empty").push(t);
    }
    let count = shards.len();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = if shard_params.is_none() {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", i + 1)
        };
        let views: Vec<(String, safetensors::tensor::TensorView)> = shard
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(st_dtype, s.clone(), b)
                        .expect("consistent"),
                )
            })
            .collect();
        for (n, _) in &views {
            weight_map.insert(n.clone(), file.clone());
        }
        let path = dir.join(&file);
        safetensors::serialize_to_file(views, None, &path)
            .map_err(|e| WorkloadError::format(&path, e.to_string()))?;
    }
    if shard_params.is_some() {
        let path = dir.join("model.safetensors.index.json");
        let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
        std::fs::write(&path, serde_json::to_string_pretty(&index).expect("json"))
            .map_err(|e| WorkloadError::io(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_and_unpermute_are_inverse_and_match_the_conversion_script() {
        // Head size 4: interleaved rows [a0 b0 a1 b1] become [a0 a1 b0 b1] in HF order.
        let w = Array2::from_shape_fn((8, 1), |(r, _)| r as f32);
        let p = permute(&w, 4);
        assert_eq!(
            p.column(0).to_vec(),
            vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
        );
        assert_eq!(unpermute(&p, 4), w);
    }
}
