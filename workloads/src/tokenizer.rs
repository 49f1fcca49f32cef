//! llama2.c tokenizers (`tok512.bin`, `tokenizer.bin`): a vocabulary of byte strings with merge
//! scores, encoded as `run.c` does it (dummy-prefix space, one id per UTF-8 character with byte
//! fallback at id = byte + 3, then greedy merging of the best-scoring adjacent pair).

use crate::error::{Result, WorkloadError};
use std::collections::HashMap;
use std::path::Path;

pub const BOS: u32 = 1;
pub const EOS: u32 = 2;

#[derive(Debug, Clone)]
pub struct Tokenizer {
    pub vocab: Vec<Vec<u8>>,
    pub scores: Vec<f32>,
    pub max_token_length: u32,
    lookup: HashMap<Vec<u8>, u32>,
}

impl Tokenizer {
    /// Loads a tokenizer file; `vocab_size` comes from the checkpoint's header.
    pub fn load(path: impl AsRef<Path>, vocab_size: usize) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| WorkloadError::io(path, e))?;
        let mut pos = 0usize;
        let mut take = |n: usize, what: &str| -> Result<&[u8]> {
            let s = bytes.get(pos..pos + n).ok_or_else(|| {
                WorkloadError::format(path, format!("truncated at byte {pos}, reading {what}"))
            })?;
            pos += n;
            Ok(s)
        };
        let max_token_length =
            u32::from_le_bytes(take(4, "max_token_length")?.try_into().expect("4"));
        let mut vocab = Vec::with_capacity(vocab_size);
        let mut scores = Vec::with_capacity(vocab_size);
        for i in 0..vocab_size {
            let score = f32::from_le_bytes(
                take(4, &format!("the score of token {i}"))?
                    .try_into()
                    .expect("4"),
            );
            let len = i32::from_le_bytes(
                take(4, &format!("the length of token {i}"))?
                    .try_into()
                    .expect("4"),
            );
            if len < 0 || len as u32 > max_token_length.max(64) {
                return Err(WorkloadError::format(
                    path,
                    format!("token {i} has length {len}: not a llama2.c tokenizer"),
                ));
            }
            vocab.push(take(len as usize, &format!("token {i}"))?.to_vec());
            scores.push(score);
        }
        if pos != bytes.len() {
            return Err(WorkloadError::format(
                path,
                format!("{} bytes after {vocab_size} tokens: the tokenizer does not match the model's vocabulary", bytes.len() - pos),
            ));
        }
        let lookup = vocab
            .iter()
            .enumerate()
            .map(|(i, v)| (v.clone(), i as u32))
            .rev()
            .collect();
        Ok(Tokenizer {
            vocab,
            scores,
            max_token_length,
            lookup,
        })
    }

    /// Encodes `text` as `run.c`'s `encode` does, with BOS first when `bos` is set.
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Vec<u32> {
        let mut tokens = Vec::new();
        if bos {
            tokens.push(BOS);
        }
        if !text.is_empty() {
            if let Some(&id) = self.lookup.get(b" ".as_slice()) {
                tokens.push(id);
            }
        }
        for ch in text.chars() {
            let mut buf = [0u8; 4];
            let s = ch.encode_utf8(&mut buf).as_bytes();
            match self.lookup.get(s) {
                Some(&id) => tokens.push(id),
                None => tokens.extend(s.iter().map(|&b| b as u32 + 3)),
            }
        }
        let start = bos as usize;
        loop {
            let mut best: Option<(f32, usize, u32)> = None;
            for i in start..tokens.len().saturating_sub(1) {
                let mut merged = self.vocab[tokens[i] as usize].clone();
                merged.extend_from_slice(&self.vocab[tokens[i + 1] as usize]);
                if let Some(&id) = self.lookup.get(&merged) {
                    let score = self.scores[id as usize];
                    if best.is_none_or(|(s, _, _)| score > s) {
                        best = Some((score, i, id));
                    }
                }
            }
            let Some((_, i, id)) = best else { break };
            tokens[i] = id;
            tokens.remove(i + 1);
        }
        if eos {
            tokens.push(EOS);
        }
        tokens
    }

    /// The bytes of `token` following `prev`: a leading space after BOS is dropped and
    /// `<0xXX>` pieces become their byte.
    pub fn decode(&self, prev: u32, token: u32) -> Vec<u8> {
        let piece = &self.vocab[token as usize];
        let piece = if prev == BOS && piece.first() == Some(&b' ') {
            &piece[1..]
        } else {
            &piece[..]
        };
        if piece.len() == 6 && piece.starts_with(b"<0x") && piece.ends_with(b">") {
            if let Ok(b) = u8::from_str_radix(std::str::from_utf8(&piece[3..5]).unwrap_or("zz"), 16)
            {
                return vec![b];
            }
        }
        piece.to_vec()
    }

    /// Decodes a whole sequence (the first token is taken as following BOS when it is BOS).
    pub fn decode_all(&self, tokens: &[u32]) -> String {
        let mut out = Vec::new();
        let mut prev = BOS;
        for &t in tokens {
            if t == BOS {
                prev = BOS;
                continue;
            }
            out.extend(self.decode(prev, t));
            prev = t;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
