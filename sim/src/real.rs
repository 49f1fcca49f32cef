//! The real backend: the same plans, executed on this machine.
//!
//! The [`Pipeline`](crate::executor::Pipeline) that drives the simulator drives this backend
//! too, so reads are issued in the same order under the same conditions and queue depth, ops
//! run as the same chain, DRAM is accounted the same way against the same budget, and the
//! metrics (wall, flash busy, compute, stall) come from the same code — only the clock is the
//! wall clock and the work is real:
//! - **reads**: `io_queue_depth` threads, each with one O_DIRECT `pread` in flight, from the
//!   weight file written in the policy's layout ([`write_weight_file`]); an extent that is not
//!   4 KiB-aligned is widened to the aligned range around it (both sizes are recorded); the
//!   bytes land in aligned buffers;
//! - **ops**: a compute thread runs each op as a GEMV-shaped kernel (rayon over all cores) that
//!   streams the op's `dram_bytes` of 16-bit weights from a DRAM arena and performs its
//!   `flops`, so each op costs what its memory traffic and arithmetic cost on this machine.
//!
//! Correctness ([`crate::runner::Prepared::check_real_logits`]): with `verify`, what each read
//! brings in lands in a DRAM image of the file; after every token the model is evaluated on the
//! weights as they stand in that image (bytes never read are zero) under the token's masks and
//! compared with the reference model: identical logits mean every weight the masks use was
//! read (f32 checkpoints, per-matrix and bundled layouts).
//!
//! What this backend does not do yet: time the compute on the weights the reads bring in (the
//! timed kernel streams an arena of the same size), and drop evicted bytes from the image (so a
//! policy that used a row it had evicted would go unnoticed); the DRAM figures are the
//! pipeline's accounting, the same as the simulator's.

use crate::calibrate::{open_direct, AlignedBuf, ALIGN};
use crate::error::SimError;
use crate::executor::{Backend, Ev};
use crate::hw::dram::Dram;
use crate::time::Ps;
use anyhow::{Context, Result};
use flashsim_policies::{Extent, Op};
use rayon::prelude::*;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Writes a weight file of `bytes` (rounded up to [`ALIGN`]) of seeded random f16 values in
/// [-1, 1) through O_DIRECT, or reuses one of that size.
pub fn write_weight_file(path: &Path, bytes: u64, seed: u64) -> Result<u64> {
    let bytes = bytes.div_ceil(ALIGN as u64) * ALIGN as u64;
    if std::fs::metadata(path)
        .map(|m| m.len() == bytes)
        .unwrap_or(false)
    {
        return Ok(bytes);
    }
    let f = open_direct(path, true)?;
    f.set_len(0)?;
    let chunk = 4u64 << 20;
    let mut buf = AlignedBuf::zeroed(chunk as usize);
    let mut state = seed;
    let mut off = 0;
    while off < bytes {
        for w in buf.as_mut_slice().chunks_exact_mut(2) {
            state = crate::runner::splitmix64(state);
            // An f16 in [-1, 1): sign, exponent 0..14, random mantissa.
            let v = ((state >> 48) as u16 & 0x83ff) | (((state >> 40) % 15) as u16) << 10;
            w.copy_from_slice(&v.to_le_bytes());
        }
        let n = chunk.min(bytes - off) as usize;
        f.write_all_at(&buf.as_slice()[..n], off)
            .with_context(|| format!("writing {}", path.display()))?;
        off += n as u64;
    }
    f.sync_all()?;
    Ok(bytes)
}

/// The aligned range around `e`.
pub fn aligned(e: Extent) -> Extent {
    let a = ALIGN as u64;
    let start = e.offset / a * a;
    let end = (e.offset + e.bytes).div_ceil(a) * a;
    Extent {
        offset: start,
        bytes: end - start,
    }
}

/// One read, as issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRecord {
    pub planned: Extent,
    pub issued: Extent,
    /// [`checksum`] of the planned bytes as read (with `verify`; 0 otherwise).
    pub checksum: u64,
}

/// A cheap checksum of `bytes` (wrapping sum of little-endian u64 words, then the tail bytes,
/// then the length), to check that reads brought in the bytes the plan named.
pub fn checksum(bytes: &[u8]) -> u64 {
    let words = bytes.chunks_exact(8);
    let tail = words.remainder();
    let mut s = words.fold(0u64, |a, w| {
        a.wrapping_mul(31)
            .wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")))
    });
    for &b in tail {
        s = s.wrapping_mul(31).wrapping_add(b as u64);
    }
    s ^ bytes.len() as u64
}

enum Job {
    Read {
        read: u32,
        extent: Extent,
        record: usize,
        /// The planned bytes within the aligned read, when verifying.
        verify: Option<(usize, usize)>,
    },
    Op {
        j: u32,
        flops: u64,
        bytes: u64,
    },
}

/// A completion: the event, when it happened, and (when verifying) the read's record and the
/// planned bytes it brought in.
type Done = (Ev, Instant, Option<(usize, Vec<u8>)>);

/// Real reads and kernels behind the pipeline.
pub struct Real {
    units: Vec<String>,
    jobs_io: Option<Sender<Job>>,
    jobs_op: Option<Sender<Job>>,
    done: Receiver<Done>,
    verify: bool,
    start: Instant,
    last: Ps,
    workers: Vec<std::thread::JoinHandle<Result<()>>>,
    /// Every read issued, in issue order.
    pub reads: Vec<ReadRecord>,
    /// With `verify`, a DRAM image of the weight file: what the reads have brought in so far.
    pub image: Option<Vec<u8>>,
}

impl Real {
    /// Opens `weights` (O_DIRECT) with `io_threads` reader threads and one compute thread that
    /// runs kernels on rayon's pool; `units` are the device's compute unit names. With `verify`,
    /// each read's planned bytes are checksummed (a pass over the data: for tests, not timing).
    pub fn new(weights: &Path, io_threads: u32, units: Vec<String>, verify: bool) -> Result<Self> {
        let file = Arc::new(open_direct(weights, false)?);
        let file_bytes = file.metadata()?.len();
        let (done_tx, done) = channel();
        let (io_tx, io_rx) = channel::<Job>();
        let io_rx = Arc::new(Mutex::new(io_rx));
        let mut workers = Vec::new();
        for _ in 0..io_threads.max(1) {
            let (file, rx, tx) = (file.clone(), io_rx.clone(), done_tx.clone());
            workers.push(std::thread::spawn(move || -> Result<()> {
                let mut buf = AlignedBuf::zeroed(ALIGN);
                loop {
                    let job = rx.lock().expect("job queue").recv();
                    let Ok(Job::Read {
                        read,
                        extent,
                        record,
                        verify,
                    }) = job
                    else {
                        return Ok(());
                    };
                    if extent.offset + extent.bytes > file_bytes {
                        anyhow::bail!("read {extent:?} beyond the weight file ({file_bytes} B)");
                    }
                    if buf.as_slice().len() < extent.bytes as usize {
                        buf = AlignedBuf::zeroed(extent.bytes as usize);
                    }
                    file.read_exact_at(
                        &mut buf.as_mut_slice()[..extent.bytes as usize],
                        extent.offset,
                    )
                    .with_context(|| format!("O_DIRECT read {extent:?}"))?;
                    let at = Instant::now();
                    let data = verify
                        .map(|(skip, len)| (record, buf.as_slice()[skip..skip + len].to_vec()));
                    if tx.send((Ev::IoDone { read }, at, data)).is_err() {
                        return Ok(());
                    }
                }
            }));
        }
        let (op_tx, op_rx) = channel::<Job>();
        workers.push(std::thread::spawn(move || -> Result<()> {
            let mut arena: Vec<i16> = Vec::new();
            while let Ok(Job::Op { j, flops, bytes }) = op_rx.recv() {
                kernel(&mut arena, flops, bytes);
                if done_tx
                    .send((Ev::OpDone { op: j }, Instant::now(), None))
                    .is_err()
                {
                    break;
                }
            }
            Ok(())
        }));
        Ok(Real {
            units,
            jobs_io: Some(io_tx),
            jobs_op: Some(op_tx),
            done,
            verify,
            start: Instant::now(),
            last: Ps::ZERO,
            workers,
            reads: Vec::new(),
            image: None,
        })
    }

    fn now_of(&mut self, at: Instant) -> Ps {
        let ps = Ps(at.saturating_duration_since(self.start).as_nanos() as u64 * 1000);
        self.last = self.last.max(ps);
        self.last
    }

    /// The clock now, and the start of the run's time axis.
    pub fn start_clock(&mut self) {
        self.start = Instant::now();
        self.last = Ps::ZERO;
    }

    /// Waits for the next completion.
    pub fn next_completion(&mut self) -> Result<(Ps, Ev)> {
        let (ev, at, data) = self
            .done
            .recv()
            .map_err(|_| anyhow::anyhow!("the real backend's workers stopped"))?;
        if let Some((record, bytes)) = data {
            let r = &mut self.reads[record];
            r.checksum = checksum(&bytes);
            if let Some(img) = self.image.as_mut() {
                let at = r.planned.offset as usize;
                img[at..at + bytes.len()].copy_from_slice(&bytes);
            }
        }
        Ok((self.now_of(at), ev))
    }

    /// Stops the workers and reports the first error any of them met.
    pub fn shutdown(&mut self) -> Result<()> {
        self.jobs_io = None;
        self.jobs_op = None;
        for w in self.workers.drain(..) {
            w.join()
                .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
        }
        Ok(())
    }
}

impl Drop for Real {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// An op's real work, shaped like a decode GEMV over 16-bit weights: one multiply-add per
/// 2-byte weight streamed from the arena (`bytes / 2` of them), repeated until the op's `flops`
/// are done, split over rayon's threads. The weights are read as i16 (converted to f32 in
/// registers, as a dequantizing kernel does), so the pass runs at memory speed.
fn kernel(arena: &mut Vec<i16>, flops: u64, bytes: u64) {
    let n = (bytes / 2).max(1) as usize;
    if arena.len() < n {
        arena.resize(n, 3);
    }
    let passes = (flops / 2).div_ceil(n as u64).max(1);
    let data = &arena[..n];
    let s: f32 = (0..passes)
        .map(|p| {
            data.par_chunks(1 << 16)
                .map(|c| {
                    // Plain multiply and add (not `mul_add`, which without an FMA target
                    // feature is a libm call per element), eight lanes so it vectorizes.
                    let x = 1.0001 + p as f32 * 1e-9;
                    let mut acc = [0f32; 8];
                    for w in c.chunks_exact(8) {
                        for k in 0..8 {
                            acc[k] += w[k] as f32 * x;
                        }
                    }
                    acc.iter().sum::<f32>()
                })
                .sum::<f32>()
        })
        .sum();
    std::hint::black_box(s);
}

/// The rate (bytes/s) at which [`kernel`] streams a GEMV-shaped op of `bytes` (one
/// multiply-add per 16-bit weight) on rayon's pool: what `calibrate` writes as the compute
/// unit's memory rate, so that simulated ops cost what the real backend's ops cost. The best of
/// `repeats` runs after a warm-up.
pub fn kernel_bytes_per_s(bytes: u64, repeats: usize) -> f64 {
    let mut arena = Vec::new();
    kernel(&mut arena, bytes, bytes);
    (0..repeats.max(1))
        .map(|_| {
            let t = Instant::now();
            kernel(&mut arena, bytes, bytes);
            bytes as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn stopped() -> SimError {
    SimError::Plan("the real backend's workers stopped".into())
}

impl Backend for Real {
    fn unit_index(&self, name: &str) -> Option<usize> {
        self.units.iter().position(|u| u == name)
    }
    fn submit(&mut self, _now: Ps, read: u32, e: Extent) -> Result<Option<Ps>, SimError> {
        let issued = aligned(e);
        let record = self.reads.len();
        self.reads.push(ReadRecord {
            planned: e,
            issued,
            checksum: 0,
        });
        let verify = self
            .verify
            .then_some(((e.offset - issued.offset) as usize, e.bytes as usize));
        self.jobs_io
            .as_ref()
            .ok_or_else(stopped)?
            .send(Job::Read {
                read,
                extent: issued,
                record,
                verify,
            })
            .map_err(|_| stopped())?;
        Ok(None)
    }
    fn start_op(
        &mut self,
        now: Ps,
        j: u32,
        op: &Op,
        _unit: usize,
        _dram: &mut Dram,
    ) -> Result<(Ps, Option<Ps>), SimError> {
        self.jobs_op
            .as_ref()
            .ok_or_else(stopped)?
            .send(Job::Op {
                j,
                flops: op.flops,
                bytes: op.dram_bytes,
            })
            .map_err(|_| stopped())?;
        Ok((now, None))
    }
}

/// The matrix of `kind` (layer `layer`) in `w`, `[rows][cols]` as the layout names it.
fn matrix_of(
    w: &flashsim_workloads::checkpoint::Weights,
    kind: flashsim_workloads::shape::TensorKind,
    layer: Option<u32>,
) -> Option<&ndarray::Array2<f32>> {
    use flashsim_workloads::shape::TensorKind as K;
    let l = layer.map(|l| &w.layers[l as usize]);
    Some(match kind {
        K::Embedding => &w.token_embedding,
        K::LmHead => w.wcls.as_ref()?,
        K::Wq => &l?.wq,
        K::Wk => &l?.wk,
        K::Wv => &l?.wv,
        K::Wo => &l?.wo,
        K::Gate => &l?.w_gate,
        K::Up => &l?.w_up,
        K::Down => &l?.w_down,
    })
}

fn matrix_of_mut(
    w: &mut flashsim_workloads::checkpoint::Weights,
    kind: flashsim_workloads::shape::TensorKind,
    layer: Option<u32>,
) -> Option<&mut ndarray::Array2<f32>> {
    use flashsim_workloads::shape::TensorKind as K;
    let l = match layer {
        Some(l) => Some(&mut w.layers[l as usize]),
        None => None,
    };
    Some(match kind {
        K::Embedding => &mut w.token_embedding,
        K::LmHead => w.wcls.as_mut()?,
        K::Wq => &mut l?.wq,
        K::Wk => &mut l?.wk,
        K::Wv => &mut l?.wv,
        K::Wo => &mut l?.wo,
        K::Gate => &mut l?.w_gate,
        K::Up => &mut l?.w_up,
        K::Down => &mut l?.w_down,
    })
}

/// Where weight (r, c) of each matrix sits in the file, for every matrix of `layout`: calls
/// `f(kind, layer, r, c, offset)`. f32 weights only (the checkpoints flashsim runs); ActiveFlow's
/// interleaved layout is not mapped yet.
fn for_each_weight(
    layout: &flashsim_policies::layout::WeightLayout,
    shape: &flashsim_workloads::ModelShape,
    mut f: impl FnMut(flashsim_workloads::shape::TensorKind, Option<u32>, usize, usize, u64),
) -> Result<()> {
    use flashsim_policies::layout::Major;
    use flashsim_workloads::shape::TensorKind as K;
    if shape.bytes_per_weight != 4.0 {
        anyhow::bail!(
            "weights of real models are f32 here; {} has {} B per weight",
            shape.name,
            shape.bytes_per_weight
        );
    }
    if (0..shape.layers).any(|l| (0..3).any(|o| layout.interleave_region(l, o).is_some())) {
        anyhow::bail!("the interleaved (ActiveFlow) layout is not mapped to real weights yet");
    }
    for t in layout.tensors() {
        let (rows, cols) = (t.shape.rows as usize, t.shape.cols as usize);
        for r in 0..rows {
            for c in 0..cols {
                let at = match t.major {
                    Major::Row => (r * cols + c) as u64,
                    Major::Col => (c * rows + r) as u64,
                };
                f(t.shape.kind, t.shape.layer, r, c, t.offset + 4 * at);
            }
        }
    }
    let (d, gated) = (shape.hidden as usize, shape.gated);
    for l in 0..shape.layers {
        let Some(b) = layout.bundles(l) else { continue };
        for i in 0..b.neurons as usize {
            let base = b.offset + i as u64 * b.bundle_bytes;
            let mut part = 0u64;
            if gated {
                for c in 0..d {
                    f(K::Gate, Some(l), i, c, base + 4 * c as u64);
                }
                part = 1;
            }
            for c in 0..d {
                f(
                    K::Up,
                    Some(l),
                    i,
                    c,
                    base + 4 * (part * d as u64 + c as u64),
                );
            }
            for r in 0..d {
                f(
                    K::Down,
                    Some(l),
                    r,
                    i,
                    base + 4 * ((part + 1) * d as u64 + r as u64),
                );
            }
        }
    }
    Ok(())
}

/// The file image of the f32 weights `w` in `layout` (padded to [`ALIGN`]).
pub fn model_image(
    layout: &flashsim_policies::layout::WeightLayout,
    shape: &flashsim_workloads::ModelShape,
    w: &flashsim_workloads::checkpoint::Weights,
) -> Result<Vec<u8>> {
    let mut img = vec![0u8; layout.file_bytes.div_ceil(ALIGN as u64) as usize * ALIGN];
    let mut missing = None;
    for_each_weight(layout, shape, |kind, layer, r, c, off| {
        match matrix_of(w, kind, layer) {
            Some(m) => {
                img[off as usize..off as usize + 4].copy_from_slice(&m[[r, c]].to_le_bytes())
            }
            None => missing = Some(kind),
        }
    })?;
    if let Some(k) = missing {
        anyhow::bail!("the layout has a {k:?} matrix the checkpoint lacks");
    }
    Ok(img)
}

/// The weights as they stand in a DRAM image of the file (bytes never read are zero), with the
/// norms (not in the file) from `reference`.
pub fn weights_from_image(
    layout: &flashsim_policies::layout::WeightLayout,
    shape: &flashsim_workloads::ModelShape,
    image: &[u8],
    reference: &flashsim_workloads::checkpoint::Weights,
) -> Result<flashsim_workloads::checkpoint::Weights> {
    let mut w = reference.clone();
    for_each_weight(layout, shape, |kind, layer, r, c, off| {
        if let Some(m) = matrix_of_mut(&mut w, kind, layer) {
            let b: [u8; 4] = image[off as usize..off as usize + 4]
                .try_into()
                .expect("4 bytes");
            m[[r, c]] = f32::from_le_bytes(b);
        }
    })?;
    Ok(w)
}

/// Writes `image` (a multiple of [`ALIGN`] bytes) to `path` through O_DIRECT.
pub fn write_image(path: &Path, image: &[u8]) -> Result<()> {
    if !image.len().is_multiple_of(ALIGN) {
        anyhow::bail!("an O_DIRECT image must be a multiple of {ALIGN} bytes");
    }
    let f = open_direct(path, true)?;
    f.set_len(0)?;
    let chunk = 4 << 20;
    let mut buf = AlignedBuf::zeroed(chunk);
    for (i, part) in image.chunks(chunk).enumerate() {
        buf.as_mut_slice()[..part.len()].copy_from_slice(part);
        f.write_all_at(&buf.as_slice()[..part.len()], (i * chunk) as u64)?;
    }
    f.sync_all()?;
    Ok(())
}
