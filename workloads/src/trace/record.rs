//! Recording a trace: the reference model runs over each prompt (one sequence per prompt) for a
//! number of positions, and every position's activations are streamed to the trace file.

use super::format::TraceWriter;
use crate::checkpoint::Weights;
use crate::error::Result;
use crate::model::{generate, Dense, Model, Sampler, Sampling};
use crate::tokenizer::Tokenizer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub prompts: Vec<String>,
    /// Positions per sequence, prompt included (fewer if the model emits BOS).
    pub positions: usize,
    pub sampling: Sampling,
    /// Sequence i samples with seed `seed + i`.
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct RecordSummary {
    pub path: PathBuf,
    pub tokens: usize,
    pub sequences: usize,
    /// The generated text of each sequence.
    pub texts: Vec<String>,
}

/// Records a trace of `weights` (from the checkpoint whose SHA-256 is `checkpoint_sha256`).
pub fn record(
    weights: &Weights,
    name: &str,
    checkpoint_sha256: &str,
    tokenizer: &Tokenizer,
    cfg: &RecordConfig,
    out: &Path,
) -> Result<RecordSummary> {
    let shape = weights.shape(name);
    let mut meta = BTreeMap::new();
    meta.insert("source".into(), "recorded".into());
    meta.insert("checkpoint_sha256".into(), checkpoint_sha256.into());
    meta.insert(
        "prompts".into(),
        serde_json::to_string(&cfg.prompts).expect("json"),
    );
    meta.insert(
        "sampling".into(),
        match cfg.sampling {
            Sampling::Greedy => "greedy".into(),
            Sampling::Temperature(t) => format!("temperature={t}"),
        },
    );
    meta.insert("seed".into(), cfg.seed.to_string());
    meta.insert("positions".into(), cfg.positions.to_string());
    let mut w = TraceWriter::create(out, &shape, meta)?;
    let mut texts = Vec::new();
    let mut err = None;
    for (seq, prompt) in cfg.prompts.iter().enumerate() {
        let ids = tokenizer.encode(prompt, true, false);
        let mut model = Model::new(weights.clone());
        let mut sampler = Sampler::new(cfg.sampling, cfg.seed.wrapping_add(seq as u64));
        let g = generate(
            &mut model,
            &ids,
            cfg.positions,
            &mut sampler,
            &mut Dense,
            |pos, token, acts| {
                if err.is_none() {
                    if let Err(e) = w.push(token, pos as u32, seq as u32, acts) {
                        err = Some(e);
                    }
                }
            },
        );
        if let Some(e) = err.take() {
            return Err(e);
        }
        texts.push(tokenizer.decode_all(&g.tokens));
    }
    let tokens = w.tokens();
    let path = w.finish()?;
    Ok(RecordSummary {
        path,
        tokens,
        sequences: cfg.prompts.len(),
        texts,
    })
}
