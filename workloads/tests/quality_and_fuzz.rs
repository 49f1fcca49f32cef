//! Quality scoring of masks, and fuzz-style robustness of the file readers.

use flashsim_workloads::checkpoint::llama2c;
use flashsim_workloads::model::{Dense, Masker, Site};
use flashsim_workloads::quality::score;
use flashsim_workloads::shared_models_for_test;
use flashsim_workloads::tokenizer::Tokenizer;
use flashsim_workloads::trace::Trace;
use proptest::prelude::*;
use std::path::Path;

/// Keeps the `keep` largest |h| neurons (by magnitude) or, with `random`, a seeded random set.
struct TopK {
    keep: usize,
    random: bool,
    state: u64,
}

impl Masker for TopK {
    fn mask(&mut self, _: usize, _: usize, site: Site, x: &[f32]) -> Option<Vec<bool>> {
        if site != Site::DownIn {
            return None;
        }
        let mut idx: Vec<usize> = (0..x.len()).collect();
        if self.random {
            for i in (1..idx.len()).rev() {
                self.state = self
                    .state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                idx.swap(i, (self.state >> 33) as usize % (i + 1));
            }
        } else {
            idx.sort_by(|&a, &b| x[b].abs().total_cmp(&x[a].abs()));
        }
        let mut m = vec![false; x.len()];
        for &i in &idx[..self.keep] {
            m[i] = true;
        }
        Some(m)
    }
}

#[test]
fn quality_scores_dense_perfectly_and_ranks_masks() {
    let Some(dir) = shared_models_for_test() else {
        return;
    };
    let w = llama2c::load(dir.join("stories260K.bin")).unwrap();
    let tok = Tokenizer::load(dir.join("tok512.bin"), 512).unwrap();
    let text = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.";
    let tokens = tok.encode(text, true, false);
    let d = score(&w, &tokens, &mut Dense);
    println!("dense: {d:?}");
    assert_eq!(d.kl_mean, 0.0);
    assert_eq!(d.top1_agreement, 1.0);
    assert_eq!(d.perplexity_dense, d.perplexity_masked);
    // On the text it was trained on, the model is far better than uniform over 512 tokens.
    assert!(d.perplexity_dense < 10.0, "{d:?}");
    // Keeping the strongest half of the neurons costs less than keeping a random half.
    let top = score(
        &w,
        &tokens,
        &mut TopK {
            keep: 86,
            random: false,
            state: 0,
        },
    );
    let rnd = score(
        &w,
        &tokens,
        &mut TopK {
            keep: 86,
            random: true,
            state: 7,
        },
    );
    println!("top-k half: {top:?}\nrandom half: {rnd:?}");
    assert!(top.kl_mean > 0.0 && top.kl_mean < rnd.kl_mean);
    assert!(top.top1_agreement >= rnd.top1_agreement);
    assert!(top.perplexity_masked < rnd.perplexity_masked);
}

fn bundled() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/stories260K.safetensors"))
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any truncation or corruption of a trace is an error or a consistent trace, never a panic.
    #[test]
    fn corrupted_traces_never_panic(cut in 0usize..1_500_000, flips in proptest::collection::vec((0usize..4096, any::<u8>()), 0..4)) {
        let mut b = bundled();
        b.truncate(cut.min(b.len()));
        for (at, v) in flips {
            if at < b.len() {
                b[at] ^= v;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        std::fs::write(&p, &b).unwrap();
        if let Ok(t) = Trace::open(&p) {
            // Whatever opened must be readable end to end.
            let mut v = Vec::new();
            for tok in 0..t.tokens() {
                t.read(flashsim_workloads::trace::Act::H, tok, 0, &mut v);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any truncation or header corruption of a checkpoint is an error, never a panic.
    #[test]
    fn corrupted_checkpoints_never_panic(cut in 0usize..1_056_540, header in proptest::collection::vec(any::<i32>(), 7)) {
        let Some(dir) = shared_models_for_test() else { return Ok(()) };
        let mut b = std::fs::read(dir.join("stories260K.bin")).unwrap();
        b.truncate(cut);
        let _ = llama2c::parse(Path::new("x.bin"), &b);
        let mut h = std::fs::read(dir.join("stories260K.bin")).unwrap();
        for (i, v) in header.iter().enumerate() {
            h[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        let _ = llama2c::parse(Path::new("x.bin"), &h);
    }
}
