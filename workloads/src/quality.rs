//! Scoring a policy's masks for quality: the masked model against the dense one on the same
//! tokens (teacher forcing) — KL divergence of the next-token distribution, top-1 agreement, and
//! perplexity of the text under each.

use crate::checkpoint::Weights;
use crate::model::{argmax, Dense, Masker, Model};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Quality {
    /// Mean KL(p_dense || p_masked) over positions, nats.
    pub kl_mean: f64,
    /// Share of positions where both pick the same most likely token.
    pub top1_agreement: f64,
    pub perplexity_dense: f64,
    pub perplexity_masked: f64,
    /// Positions scored.
    pub positions: usize,
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&l| l as f64 - lse).collect()
}

/// Scores `masker` on `tokens` (BOS first): positions 0..n−1 predict tokens 1..n.
pub fn score(weights: &Weights, tokens: &[u32], masker: &mut dyn Masker) -> Quality {
    let mut dense = Model::new(weights.clone());
    let mut masked = Model::new(weights.clone());
    let n = tokens.len().saturating_sub(1).min(weights.config.seq_len);
    let (mut kl, mut agree, mut nll_d, mut nll_m) = (0.0, 0usize, 0.0, 0.0);
    for pos in 0..n {
        let ld = dense.forward(tokens[pos], pos, &mut Dense, None);
        let lm = masked.forward(tokens[pos], pos, masker, None);
        let (pd, pm) = (log_softmax(&ld), log_softmax(&lm));
        kl += pd
            .iter()
            .zip(&pm)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        agree += (argmax(&ld) == argmax(&lm)) as usize;
        let next = tokens[pos + 1] as usize;
        nll_d -= pd[next];
        nll_m -= pm[next];
    }
    let nf = n.max(1) as f64;
    Quality {
        kl_mean: kl / nf,
        top1_agreement: agree as f64 / nf,
        perplexity_dense: (nll_d / nf).exp(),
        perplexity_masked: (nll_m / nf).exp(),
        positions: n,
    }
}
