//! The trace file: safetensors with these tensors (T tokens, L layers):
//!
//! | tensor | dtype | shape | meaning |
//! |---|---|---|---|
//! | `token` | I32 | `[T]` | input token id at this position |
//! | `position` | I32 | `[T]` | position in its sequence |
//! | `sequence` | I32 | `[T]` | which sequence (prompt run) the token belongs to |
//! | `x_attn` | F16 | `[T, L, hidden]` | normed input of Q/K/V |
//! | `x_o` | F16 | `[T, L, heads·head_dim]` | input of O |
//! | `x_mlp` | F16 | `[T, L, hidden]` | normed input of gate/up |
//! | `h` | F16 | `[T, L, intermediate]` | `silu(gate)·up`, the input of down |
//!
//! and string metadata: `format` (`flashsim-trace/1`), `model` (the [`ModelShape`] as JSON),
//! `source` (`recorded` or `synthetic`), `checkpoint_sha256`, `prompts` (JSON), `sampling`,
//! `seed`, `flashsim_version`, `synthetic` (generator parameters, JSON), `tokens`.
//!
//! Writing streams: each tensor goes to its own part file as tokens arrive, and `finish`
//! writes the header and concatenates the parts, so memory stays at one token's activations.
//! Reading memory-maps the file; a truncated or inconsistent file is an error, never a panic.

use crate::error::{Result, WorkloadError};
use crate::model::Activations;
use crate::shape::ModelShape;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "flashsim-trace/1";

/// One of the four recorded activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Act {
    XAttn,
    XO,
    XMlp,
    H,
}

impl Act {
    pub const ALL: [Act; 4] = [Act::XAttn, Act::XO, Act::XMlp, Act::H];

    pub fn name(self) -> &'static str {
        match self {
            Act::XAttn => "x_attn",
            Act::XO => "x_o",
            Act::XMlp => "x_mlp",
            Act::H => "h",
        }
    }

    /// Values per token and layer for `shape`.
    pub fn width(self, shape: &ModelShape) -> usize {
        match self {
            Act::XAttn | Act::XMlp => shape.hidden as usize,
            Act::XO => shape.q_dim() as usize,
            Act::H => shape.intermediate as usize,
        }
    }

    fn of(self, a: &Activations) -> &Vec<Vec<f32>> {
        match self {
            Act::XAttn => &a.x_attn,
            Act::XO => &a.x_o,
            Act::XMlp => &a.x_mlp,
            Act::H => &a.h,
        }
    }
}

const INDEX: [&str; 3] = ["token", "position", "sequence"];

/// Writes a trace token by token.
pub struct TraceWriter {
    path: PathBuf,
    parts_dir: PathBuf,
    shape: ModelShape,
    meta: BTreeMap<String, String>,
    index: [BufWriter<File>; 3],
    acts: [BufWriter<File>; 4],
    tokens: usize,
    scratch: Vec<u8>,
}

impl TraceWriter {
    /// Starts a trace at `path` for a model of `shape`; `meta` adds to the standard metadata.
    pub fn create(
        path: impl AsRef<Path>,
        shape: &ModelShape,
        meta: BTreeMap<String, String>,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut parts_dir = path.clone().into_os_string();
        parts_dir.push(".parts");
        let parts_dir = PathBuf::from(parts_dir);
        std::fs::create_dir_all(&parts_dir).map_err(|e| WorkloadError::io(&parts_dir, e))?;
        let open = |name: &str| -> Result<BufWriter<File>> {
            let p = parts_dir.join(name);
            Ok(BufWriter::with_capacity(
                1 << 20,
                File::create(&p).map_err(|e| WorkloadError::io(&p, e))?,
            ))
        };
        Ok(TraceWriter {
            index: [open(INDEX[0])?, open(INDEX[1])?, open(INDEX[2])?],
            acts: [open("x_attn")?, open("x_o")?, open("x_mlp")?, open("h")?],
            path,
            parts_dir,
            shape: shape.clone(),
            meta,
            tokens: 0,
            scratch: Vec::new(),
        })
    }

    /// Appends one token's record.
    pub fn push(
        &mut self,
        token: u32,
        position: u32,
        sequence: u32,
        acts: &Activations,
    ) -> Result<()> {
        let l = self.shape.layers as usize;
        for (w, v) in self.index.iter_mut().zip([token, position, sequence]) {
            w.write_all(&(v as i32).to_le_bytes())
                .map_err(|e| WorkloadError::io(&self.parts_dir, e))?;
        }
        for (i, act) in Act::ALL.into_iter().enumerate() {
            let per_layer = act.of(acts);
            let width = act.width(&self.shape);
            if per_layer.len() != l || per_layer.iter().any(|v| v.len() != width) {
                return Err(WorkloadError::Invalid(format!(
                    "token {}: `{}` must be {l} layers of {width} values",
                    self.tokens,
                    act.name()
                )));
            }
            self.scratch.clear();
            for v in per_layer {
                self.scratch
                    .extend(v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()));
            }
            self.acts[i]
                .write_all(&self.scratch)
                .map_err(|e| WorkloadError::io(&self.parts_dir, e))?;
        }
        self.tokens += 1;
        Ok(())
    }

    /// Tokens written so far.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Writes the file (via a temporary name, renamed when complete) and removes the parts.
    pub fn finish(self) -> Result<PathBuf> {
        let TraceWriter {
            path,
            parts_dir,
            shape,
            mut meta,
            index,
            acts,
            tokens,
            ..
        } = self;
        for w in index.into_iter().chain(acts) {
            w.into_inner()
                .map_err(|e| WorkloadError::io(&parts_dir, e.into_error()))?;
        }
        let (t, l) = (tokens, shape.layers as usize);
        meta.insert("format".into(), FORMAT.into());
        meta.insert("model".into(), serde_json::to_string(&shape).expect("json"));
        meta.insert("tokens".into(), t.to_string());
        meta.entry("flashsim_version".into())
            .or_insert_with(|| env!("CARGO_PKG_VERSION").into());
        let mut header = serde_json::Map::new();
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(&meta).expect("json"),
        );
        let mut offset = 0usize;
        let mut order: Vec<(String, usize)> = Vec::new();
        for name in INDEX {
            let bytes = 4 * t;
            header.insert(name.into(), serde_json::json!({"dtype": "I32", "shape": [t], "data_offsets": [offset, offset + bytes]}));
            offset += bytes;
            order.push((name.into(), bytes));
        }
        for act in Act::ALL {
            let w = act.width(&shape);
            let bytes = 2 * t * l * w;
            header.insert(act.name().into(), serde_json::json!({"dtype": "F16", "shape": [t, l, w], "data_offsets": [offset, offset + bytes]}));
            offset += bytes;
            order.push((act.name().into(), bytes));
        }
        let mut hjson = serde_json::to_vec(&serde_json::Value::Object(header)).expect("json");
        hjson.resize(hjson.len().next_multiple_of(8), b' ');
        let tmp = path.with_extension("safetensors.tmp");
        let mut out = BufWriter::with_capacity(
            1 << 20,
            File::create(&tmp).map_err(|e| WorkloadError::io(&tmp, e))?,
        );
        let io = |e| WorkloadError::io(&tmp, e);
        out.write_all(&(hjson.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&hjson).map_err(io)?;
        for (name, bytes) in order {
            let p = parts_dir.join(&name);
            let mut f = File::open(&p).map_err(|e| WorkloadError::io(&p, e))?;
            let copied = std::io::copy(&mut f, &mut out).map_err(io)?;
            if copied as usize != bytes {
                return Err(WorkloadError::format(
                    &p,
                    format!("part holds {copied} bytes, expected {bytes}"),
                ));
            }
        }
        let f = out
            .into_inner()
            .map_err(|e| WorkloadError::io(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| WorkloadError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| WorkloadError::io(&path, e))?;
        std::fs::remove_dir_all(&parts_dir).map_err(|e| WorkloadError::io(&parts_dir, e))?;
        Ok(path)
    }
}

/// A trace opened for reading (memory-mapped).
pub struct Trace {
    pub path: PathBuf,
    map: Mmap,
    pub shape: ModelShape,
    pub meta: BTreeMap<String, String>,
    tokens: usize,
    /// Byte offset in the map of each tensor's data: token, position, sequence, then Act::ALL.
    starts: [usize; 7],
}

impl Trace {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| WorkloadError::io(&path, e))?;
        // SAFETY: read-only map; a file changed underneath gives wrong numbers, never UB here
        // because every access is a bounds-checked byte slice.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| WorkloadError::io(&path, e))?;
        let bad = |m: String| WorkloadError::format(&path, m);
        let (n, metadata) = SafeTensors::read_metadata(&map).map_err(|e| {
            bad(format!(
                "not a complete safetensors trace (truncated or corrupt header): {e}"
            ))
        })?;
        let meta: BTreeMap<String, String> = metadata
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!(
                "metadata `format` is {:?}, expected `{FORMAT}`",
                meta.get("format")
            )));
        }
        let shape: ModelShape = serde_json::from_str(
            meta.get("model")
                .ok_or_else(|| bad("no `model` metadata".into()))?,
        )
        .map_err(|e| bad(format!("metadata `model` is not a model shape: {e}")))?;
        let data_start = 8 + n;
        let info = |name: &str| {
            metadata
                .info(name)
                .ok_or_else(|| bad(format!("tensor `{name}` is missing")))
        };
        let t = info("token")?.shape.first().copied().unwrap_or(0);
        let mut starts = [0usize; 7];
        for (i, name) in INDEX.iter().enumerate() {
            let ti = info(name)?;
            if ti.dtype != Dtype::I32 || ti.shape != [t] {
                return Err(bad(format!(
                    "tensor `{name}` is {:?} {:?}, expected I32 [{t}]",
                    ti.dtype, ti.shape
                )));
            }
            starts[i] = data_start + ti.data_offsets.0;
        }
        let l = shape.layers as usize;
        for (i, act) in Act::ALL.into_iter().enumerate() {
            let ti = info(act.name())?;
            let want = [t, l, act.width(&shape)];
            if ti.dtype != Dtype::F16 || ti.shape != want {
                return Err(bad(format!(
                    "tensor `{}` is {:?} {:?}, but the model shape in the metadata implies F16 {want:?}",
                    act.name(),
                    ti.dtype,
                    ti.shape
                )));
            }
            starts[3 + i] = data_start + ti.data_offsets.0;
        }
        if let Some(tokens) = meta.get("tokens") {
            if tokens.parse::<usize>().ok() != Some(t) {
                return Err(bad(format!(
                    "metadata says {tokens} tokens, the tensors hold {t}"
                )));
            }
        }
        let trace = Trace {
            path,
            map,
            shape,
            meta,
            tokens: t,
            starts,
        };
        // Positions must count up from 0 within each sequence.
        for i in 0..t {
            let ok = if i > 0 && trace.sequence(i) == trace.sequence(i - 1) {
                trace.position(i) == trace.position(i - 1) + 1
            } else {
                trace.position(i) == 0
            };
            if !ok {
                return Err(WorkloadError::format(
                    &trace.path,
                    format!("token {i}: positions must count up from 0 in each sequence"),
                ));
            }
        }
        Ok(trace)
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    fn int(&self, which: usize, t: usize) -> u32 {
        let o = self.starts[which] + 4 * t;
        i32::from_le_bytes(self.map[o..o + 4].try_into().expect("4")) as u32
    }
    pub fn token(&self, t: usize) -> u32 {
        self.int(0, t)
    }
    pub fn position(&self, t: usize) -> u32 {
        self.int(1, t)
    }
    pub fn sequence(&self, t: usize) -> u32 {
        self.int(2, t)
    }

    /// Token ranges of each sequence, in order.
    pub fn sequences(&self) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut start = 0;
        for t in 1..=self.tokens {
            if t == self.tokens || self.sequence(t) != self.sequence(t - 1) {
                out.push(start..t);
                start = t;
            }
        }
        out
    }

    /// The raw f16 bytes of `act` at token `t`, layer `l`.
    pub fn bytes(&self, act: Act, t: usize, l: usize) -> &[u8] {
        let w = act.width(&self.shape);
        let li = Act::ALL.iter().position(|a| *a == act).expect("known");
        let o = self.starts[3 + li] + 2 * ((t * self.shape.layers as usize + l) * w);
        &self.map[o..o + 2 * w]
    }

    /// `act` at token `t`, layer `l`, into `out` (resized to the width).
    pub fn read(&self, act: Act, t: usize, l: usize, out: &mut Vec<f32>) {
        out.clear();
        out.extend(
            self.bytes(act, t, l)
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        );
    }
}
