//! The reference model: a Llama-architecture (SwiGLU) decoder in f32 on ndarray, as llama2.c's
//! `run.c` computes it — RMSNorm, RoPE on interleaved pairs, grouped-query attention with a KV
//! cache, SwiGLU MLP, tied or untied classifier — plus masked execution and activation capture.
//!
//! Masks act on the inputs of linears: a [`Masker`] sees each input vector and may zero some of
//! its channels. Zeroing input channel j of W_gate/W_up is the same as skipping column j; zeroing
//! channel i of `h` is the same as skipping neuron i (row i of gate/up, column i of down). A mask
//! of all ones multiplies nothing away, so the masked run is the dense run bit for bit.

use crate::checkpoint::Weights;
use ndarray::{Array1, Array2, ArrayView1};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Where a mask applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    /// `x_attn`: the normed input of Q, K and V.
    AttnIn,
    /// `x_o`: the input of O (the attention output).
    OIn,
    /// `x_mlp`: the normed input of gate and up.
    MlpIn,
    /// `h = silu(gate)·up`: the input of down (the neurons).
    DownIn,
}

/// Chooses masks during a forward pass.
pub trait Masker {
    /// The mask for the input `x` of `site` in `layer` at position `pos`; `None` keeps all.
    fn mask(&mut self, pos: usize, layer: usize, site: Site, x: &[f32]) -> Option<Vec<bool>>;
}

/// No masking: the dense model.
pub struct Dense;
impl Masker for Dense {
    fn mask(&mut self, _: usize, _: usize, _: Site, _: &[f32]) -> Option<Vec<bool>> {
        None
    }
}

/// The activations of one token, per layer: what a trace stores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activations {
    pub x_attn: Vec<Vec<f32>>,
    pub x_o: Vec<Vec<f32>>,
    pub x_mlp: Vec<Vec<f32>>,
    pub h: Vec<Vec<f32>>,
}

/// The model with its KV cache.
pub struct Model {
    pub weights: Weights,
    key_cache: Vec<Array2<f32>>,
    value_cache: Vec<Array2<f32>>,
}

fn rmsnorm(x: &Array1<f32>, w: &Array1<f32>, eps: f32) -> Array1<f32> {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + eps;
    let s = 1.0 / ss.sqrt();
    Array1::from_iter(x.iter().zip(w.iter()).map(|(xi, wi)| wi * (s * xi)))
}

/// Asks `masker` for the mask of input `x` and zeroes the channels it drops.
fn mask_input(x: &mut Array1<f32>, masker: &mut dyn Masker, pos: usize, layer: usize, site: Site) {
    let mask = masker.mask(pos, layer, site, x.as_slice().expect("contiguous"));
    if let Some(m) = mask {
        assert_eq!(m.len(), x.len(), "mask length");
        for (v, keep) in x.iter_mut().zip(m) {
            if !keep {
                *v = 0.0;
            }
        }
    }
}

fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

impl Model {
    pub fn new(weights: Weights) -> Self {
        let c = &weights.config;
        let cache = || {
            (0..c.n_layers)
                .map(|_| Array2::zeros((c.seq_len, c.kv_dim())))
                .collect()
        };
        Model {
            key_cache: cache(),
            value_cache: cache(),
            weights,
        }
    }

    /// Logits for `token` at position `pos` (positions must come in order from 0 for a
    /// sequence); activations are stored in `record` when given.
    pub fn forward(
        &mut self,
        token: u32,
        pos: usize,
        masker: &mut dyn Masker,
        mut record: Option<&mut Activations>,
    ) -> Vec<f32> {
        let w = &self.weights;
        let c = &w.config;
        assert!(
            pos < c.seq_len,
            "position {pos} beyond seq_len {}",
            c.seq_len
        );
        let (hs, kv_dim, kv_mul) = (c.head_size(), c.kv_dim(), c.n_heads / c.n_kv_heads);
        if let Some(r) = record.as_deref_mut() {
            *r = Activations::default();
        }
        let mut x = w.token_embedding.row(token as usize).to_owned();
        for (l, lw) in w.layers.iter().enumerate() {
            // Attention.
            let mut xb = rmsnorm(&x, &lw.rms_att, c.norm_eps);
            mask_input(&mut xb, masker, pos, l, Site::AttnIn);
            let mut q = lw.wq.dot(&xb);
            let mut k = lw.wk.dot(&xb);
            let v = lw.wv.dot(&xb);
            for i in (0..c.dim).step_by(2) {
                let head_dim = (i % hs) as f32;
                let freq = 1.0 / c.rope_theta.powf(head_dim / hs as f32);
                let val = pos as f32 * freq;
                let (fci, fcr) = val.sin_cos();
                let rot = |vec: &mut Array1<f32>| {
                    let (v0, v1) = (vec[i], vec[i + 1]);
                    vec[i] = v0 * fcr - v1 * fci;
                    vec[i + 1] = v0 * fci + v1 * fcr;
                };
                rot(&mut q);
                if i < kv_dim {
                    rot(&mut k);
                }
            }
            self.key_cache[l].row_mut(pos).assign(&k);
            self.value_cache[l].row_mut(pos).assign(&v);
            let mut att_out = Array1::<f32>::zeros(c.dim);
            let scale = 1.0 / (hs as f32).sqrt();
            let mut att = vec![0f32; pos + 1];
            for h in 0..c.n_heads {
                let qh = q.slice(ndarray::s![h * hs..(h + 1) * hs]);
                let kvh = (h / kv_mul) * hs;
                for (t, a) in att.iter_mut().enumerate() {
                    let kt = self.key_cache[l].slice(ndarray::s![t, kvh..kvh + hs]);
                    *a = qh.dot(&kt) * scale;
                }
                softmax_in_place(&mut att);
                let mut out = att_out.slice_mut(ndarray::s![h * hs..(h + 1) * hs]);
                for (t, &a) in att.iter().enumerate() {
                    let vt: ArrayView1<f32> =
                        self.value_cache[l].slice(ndarray::s![t, kvh..kvh + hs]);
                    out.scaled_add(a, &vt);
                }
            }
            if let Some(r) = record.as_deref_mut() {
                r.x_attn.push(xb.to_vec());
            }
            mask_input(&mut att_out, masker, pos, l, Site::OIn);
            if let Some(r) = record.as_deref_mut() {
                r.x_o.push(att_out.to_vec());
            }
            x += &lw.wo.dot(&att_out);
            // SwiGLU MLP.
            let mut xm = rmsnorm(&x, &lw.rms_ffn, c.norm_eps);
            if let Some(r) = record.as_deref_mut() {
                r.x_mlp.push(xm.to_vec());
            }
            mask_input(&mut xm, masker, pos, l, Site::MlpIn);
            let gate = lw.w_gate.dot(&xm);
            let up = lw.w_up.dot(&xm);
            let mut h = Array1::from_iter(
                gate.iter()
                    .zip(up.iter())
                    .map(|(&g, &u)| g * (1.0 / (1.0 + (-g).exp())) * u),
            );
            if let Some(r) = record.as_deref_mut() {
                r.h.push(h.to_vec());
            }
            mask_input(&mut h, masker, pos, l, Site::DownIn);
            x += &lw.w_down.dot(&h);
        }
        let xf = rmsnorm(&x, &w.rms_final, c.norm_eps);
        w.classifier().dot(&xf).to_vec()
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    Temperature(f32),
}

/// A seeded sampler (ChaCha8: the same stream on every platform).
pub struct Sampler {
    pub sampling: Sampling,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(sampling: Sampling, seed: u64) -> Self {
        Sampler {
            sampling,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::Temperature(t) if t <= 0.0 => argmax(logits),
            Sampling::Temperature(t) => {
                let mut p: Vec<f32> = logits.iter().map(|l| l / t).collect();
                softmax_in_place(&mut p);
                let coin: f32 = self.rng.gen();
                let mut cdf = 0.0;
                for (i, pi) in p.iter().enumerate() {
                    cdf += pi;
                    if coin < cdf {
                        return i as u32;
                    }
                }
                (p.len() - 1) as u32
            }
        }
    }
}

/// Index of the largest value (the first, on ties).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// One generated sequence: the prompt and the sampled tokens (BOS first), positions in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
}

/// Runs `run.c`'s generation loop: feed the prompt, then sample until `steps` positions or BOS.
/// `on_token(pos, token, activations)` sees every position's input token and activations.
pub fn generate(
    model: &mut Model,
    prompt: &[u32],
    steps: usize,
    sampler: &mut Sampler,
    masker: &mut dyn Masker,
    mut on_token: impl FnMut(usize, u32, &Activations),
) -> Generation {
    assert!(!prompt.is_empty(), "the prompt holds at least BOS");
    let steps = steps.min(model.weights.config.seq_len);
    let mut tokens = vec![prompt[0]];
    let mut acts = Activations::default();
    let mut token = prompt[0];
    for pos in 0..steps {
        let logits = model.forward(token, pos, masker, Some(&mut acts));
        on_token(pos, token, &acts);
        let next = if pos + 1 < prompt.len() {
            prompt[pos + 1]
        } else {
            sampler.sample(&logits)
        };
        if next == crate::tokenizer::BOS {
            break;
        }
        tokens.push(next);
        token = next;
        if pos + 1 == steps {
            break;
        }
    }
    Generation {
        tokens,
        prompt_len: prompt.len(),
    }
}
