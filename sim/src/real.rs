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
//! What this backend does not do yet: compute on the weights the reads bring in (the kernel
//! reads an arena of the same size), and keep those buffers as the cache's contents; the DRAM
//! figures are the pipeline's accounting, the same as the simulator's.

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

type Done = (Ev, Instant, Option<(usize, u64)>);

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
                    let sum = verify
                        .map(|(skip, len)| (record, checksum(&buf.as_slice()[skip..skip + len])));
                    if tx.send((Ev::IoDone { read }, at, sum)).is_err() {
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
        let (ev, at, sum) = self
            .done
            .recv()
            .map_err(|_| anyhow::anyhow!("the real backend's workers stopped"))?;
        if let Some((record, sum)) = sum {
            self.reads[record].checksum = sum;
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
