//! llama2.c checkpoints, legacy version-0 layout (`run.c`'s format).
//!
//! Header: 7 little-endian `i32` (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
//! seq_len); a negative vocab_size means an unshared classifier follows the body. Body: f32
//! tensors, row-major `[out][in]`: token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1 (gate),
//! w2 (down), w3 (up), rms_final, freq_cis_real, freq_cis_imag (unused), then wcls if unshared.

use super::{LayerWeights, ModelConfig, Weights};
use crate::error::{Result, WorkloadError};
use ndarray::{Array1, Array2};
use std::path::Path;

const HEADER_BYTES: usize = 7 * 4;

/// Loads a llama2.c `.bin` checkpoint.
pub fn load(path: impl AsRef<Path>) -> Result<Weights> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| WorkloadError::io(path, e))?;
    parse(path, &bytes)
}

/// Parses checkpoint bytes (named `path` in errors).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Weights> {
    if bytes.len() < HEADER_BYTES {
        return Err(WorkloadError::format(
            path,
            format!(
                "truncated: {} bytes, shorter than the 28-byte llama2.c header",
                bytes.len()
            ),
        ));
    }
    let h: Vec<i32> = bytes[..HEADER_BYTES]
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    if h[..5].iter().any(|&v| v <= 0) || h[6] <= 0 || h[5] == 0 {
        return Err(WorkloadError::format(
            path,
            format!("wrong header: (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len) = {h:?} is not a llama2.c v0 checkpoint"),
        ));
    }
    let config = ModelConfig {
        dim: h[0] as usize,
        hidden_dim: h[1] as usize,
        n_layers: h[2] as usize,
        n_heads: h[3] as usize,
        n_kv_heads: h[4] as usize,
        vocab_size: h[5].unsigned_abs() as usize,
        seq_len: h[6] as usize,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        shared_classifier: h[5] > 0,
    };
    config
        .check()
        .map_err(|m| WorkloadError::format(path, format!("wrong header: {m}")))?;
    let c = &config;
    let (d, hd, l, v, kv, hs) = (
        c.dim,
        c.hidden_dim,
        c.n_layers,
        c.vocab_size,
        c.kv_dim(),
        c.head_size(),
    );
    // In 128 bits: a corrupt header can describe a model too large for 64-bit sizes.
    let (d, hd, l, v, kv, hs) = (
        d as u128, hd as u128, l as u128, v as u128, kv as u128, hs as u128,
    );
    let floats = v * d
        + l * d
        + l * d * d
        + 2 * l * kv * d
        + l * d * d
        + l * d
        + 3 * l * hd * d
        + d
        + c.seq_len as u128 * hs
        + if c.shared_classifier { 0 } else { v * d };
    let expected = HEADER_BYTES as u128 + 4 * floats;
    if expected > bytes.len() as u128 {
        return Err(WorkloadError::format(
            path,
            format!(
                "truncated: the header promises {expected} bytes, the file has {}",
                bytes.len()
            ),
        ));
    }
    let expected = expected as usize;
    let (d, hd, l, v, kv) = (d as usize, hd as usize, l as usize, v as usize, kv as usize);
    if bytes.len() < expected {
        return Err(WorkloadError::format(
            path,
            format!(
                "truncated: the header promises {expected} bytes, the file has {}",
                bytes.len()
            ),
        ));
    }
    if bytes.len() > expected {
        return Err(WorkloadError::format(
            path,
            format!("{} bytes beyond the {expected} the header describes: not a v0 checkpoint of this shape", bytes.len() - expected),
        ));
    }
    let mut r = Reader {
        bytes,
        pos: HEADER_BYTES,
    };
    let token_embedding = r.matrix(v, d);
    let rms_att: Vec<_> = (0..l).map(|_| r.vector(d)).collect();
    let wq: Vec<_> = (0..l).map(|_| r.matrix(d, d)).collect();
    let wk: Vec<_> = (0..l).map(|_| r.matrix(kv, d)).collect();
    let wv: Vec<_> = (0..l).map(|_| r.matrix(kv, d)).collect();
    let wo: Vec<_> = (0..l).map(|_| r.matrix(d, d)).collect();
    let rms_ffn: Vec<_> = (0..l).map(|_| r.vector(d)).collect();
    let w1: Vec<_> = (0..l).map(|_| r.matrix(hd, d)).collect();
    let w2: Vec<_> = (0..l).map(|_| r.matrix(d, hd)).collect();
    let w3: Vec<_> = (0..l).map(|_| r.matrix(hd, d)).collect();
    let rms_final = r.vector(d);
    r.skip(c.seq_len * c.head_size()); // freq_cis_real and freq_cis_imag (legacy, unused)
    let wcls = (!c.shared_classifier).then(|| r.matrix(v, d));
    debug_assert_eq!(r.pos, expected);
    let layers = (0..l)
        .map(|i| LayerWeights {
            rms_att: rms_att[i].clone(),
            wq: wq[i].clone(),
            wk: wk[i].clone(),
            wv: wv[i].clone(),
            wo: wo[i].clone(),
            rms_ffn: rms_ffn[i].clone(),
            w_gate: w1[i].clone(),
            w_up: w3[i].clone(),
            w_down: w2[i].clone(),
        })
        .collect();
    Ok(Weights {
        config,
        token_embedding,
        layers,
        rms_final,
        wcls,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn floats(&mut self, n: usize) -> Vec<f32> {
        let out = self.bytes[self.pos..self.pos + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        self.pos += 4 * n;
        out
    }
    fn vector(&mut self, n: usize) -> Array1<f32> {
        Array1::from(self.floats(n))
    }
    fn matrix(&mut self, rows: usize, cols: usize) -> Array2<f32> {
        Array2::from_shape_vec((rows, cols), self.floats(rows * cols)).expect("sized")
    }
    fn skip(&mut self, floats: usize) {
        self.pos += 4 * floats;
    }
}
