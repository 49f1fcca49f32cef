//! The real backend: the same plans, executed on this machine.
//!
//! The [`Pipeline`](crate::executor::Pipeline) that drives the simulator drives this backend
//! too, so reads are issued in the same order under the same conditions and queue depth, ops
//! run as the same chain, DRAM is accounted the same way against the same budget, and the
//! metrics (wall, flash busy, compute, stall) come from the same code — only the clock is the
//! wall clock and the work is real:
//! - **reads**: `io_queue_depth` O_DIRECT reads in flight, issued the way the device file says
//!   its table was measured (`read_engine`): a pool of threads each with one `pread` in flight,
//!   or one io_uring (ActiveFlow's loader) that the pipeline's own thread drives, from the
//!   weight file written in the policy's layout ([`write_weight_file`]); an extent that is not
//!   4 KiB-aligned is widened to the aligned range around it (both sizes are recorded); the
//!   bytes land in the backend's DRAM ([`Image`]) at their file offset, straight from the disk;
//! - **ops**: a compute thread runs each op as a GEMV-shaped kernel (rayon over all cores) on
//!   the weights the op lists ([`Op::weights`]: the rows, columns or channels its mask keeps),
//!   read where the reads put them in DRAM, plus the rest of its `dram_bytes` (KV cache,
//!   activations) from an arena, performing its `flops`: each op costs what its memory
//!   traffic and arithmetic cost on this machine, on the bytes it really uses. A weight page no
//!   read has brought in is one of the policy's resident weights: the compute thread loads it
//!   the first time an op needs it (inside that op: the warm-up tokens pay for it).
//!
//! Correctness ([`crate::runner::Prepared::check_real_logits`]): with `verify`, the readers
//! read into their own buffers and only the planned bytes are copied into DRAM (the rest stays
//! zero, nothing is loaded on demand); after every token the model is evaluated on the weights
//! as they stand there under the token's masks and compared with the reference model:
//! identical logits mean every weight the masks use was read (f32 checkpoints, per-matrix and
//! bundled layouts).
//!
//! DRAM held: with `verify`, the backend holds byte by byte what the plans hold ([`Held`]): a
//! read's bytes until its buffer is freed or, retained, until evicted; a cache's fills and
//! victims as the plan's `dram_changes` list them. Bytes whose last hold goes are zeroed, so a
//! policy that computed on a row it had let go of would show in the logits, and the peak held
//! is checked against the budget. A timed run does not drop freed bytes (the mapping keeps
//! every byte read so far: zeroing them would be work no real runtime does); its DRAM figures
//! are the pipeline's accounting, the same as the simulator's.

use crate::calibrate::{open_direct, AlignedBuf, Engine, ALIGN};
use crate::error::SimError;
use crate::executor::{Backend, Ev};
use crate::hw::dram::Dram;
use crate::time::Ps;
use anyhow::{Context, Result};
use flashsim_policies::{Extent, Op};
use rayon::prelude::*;
use std::fs::File;
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

/// The backend's DRAM: one anonymous mapping the size of the weight file, in which every byte
/// sits at its file offset. Reads land there straight from the disk (O_DIRECT into the slot, as
/// a runtime reads into its buffers) and ops compute from there. The mapping is populated when
/// created, as a runtime allocates its buffers before it runs, so that page faults are not
/// timed. It is shared by the readers (which write it) and the compute thread (which reads
/// it) through raw pointers: the pipeline orders them (an op starts only after its reads have
/// completed), and the only bytes two of them may touch at once are the edges of 4 KiB pages
/// that two widened reads share, which both fill with the same file bytes.
pub struct Image {
    map: Mapping,
    /// Per 4 KiB page, whether it holds the file's bytes (a read or a load brought them in).
    valid: Vec<std::sync::atomic::AtomicU64>,
}

// The mapping is plain memory owned by this value; see the type's comment for who touches it.
unsafe impl Send for Image {}
unsafe impl Sync for Image {}

impl Image {
    /// A zeroed, populated mapping of at least `bytes` (rounded up to [`ALIGN`]).
    pub fn new(bytes: u64) -> Result<Self> {
        let map = Mapping::new(bytes as usize)
            .with_context(|| format!("mapping {bytes} B of DRAM for the weights"))?;
        let pages = map.len / ALIGN;
        Ok(Image {
            map,
            valid: (0..pages.div_ceil(64))
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        })
    }

    fn check(&self, e: Extent) -> Result<()> {
        if e.offset + e.bytes > self.map.len as u64 {
            anyhow::bail!("{e:?} lies beyond DRAM's {} B", self.map.len);
        }
        Ok(())
    }

    /// Where byte `offset` of the file sits.
    fn at(&self, offset: u64) -> *mut u8 {
        debug_assert!(offset <= self.map.len as u64);
        // SAFETY: within the mapping (checked by the callers).
        unsafe { self.map.ptr.as_ptr().add(offset as usize) }
    }

    /// The pages `e` touches.
    fn pages(e: Extent) -> std::ops::Range<usize> {
        let a = aligned(e);
        (a.offset / ALIGN as u64) as usize..(a.end() / ALIGN as u64) as usize
    }

    /// Marks the pages of `e` (an aligned extent) as holding the file's bytes.
    fn mark(&self, e: Extent) {
        use std::sync::atomic::Ordering;
        for p in Self::pages(e) {
            self.valid[p / 64].fetch_or(1 << (p % 64), Ordering::Release);
        }
    }

    /// The aligned runs of pages of `e` that do not hold the file's bytes yet.
    fn missing(&self, e: Extent) -> Vec<Extent> {
        use std::sync::atomic::Ordering;
        let mut out: Vec<Extent> = Vec::new();
        for p in Self::pages(e) {
            if self.valid[p / 64].load(Ordering::Acquire) & (1 << (p % 64)) != 0 {
                continue;
            }
            let at = (p * ALIGN) as u64;
            match out.last_mut() {
                Some(last) if last.end() == at => last.bytes += ALIGN as u64,
                _ => out.push(Extent {
                    offset: at,
                    bytes: ALIGN as u64,
                }),
            }
        }
        out
    }

    /// Copies `bytes` in at file offset `offset`.
    fn write(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.check(Extent {
            offset,
            bytes: bytes.len() as u64,
        })?;
        // SAFETY: within the mapping; the source is a live buffer that cannot overlap it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.at(offset), bytes.len()) };
        Ok(())
    }

    /// Zeroes the bytes of `e`.
    fn zero(&self, e: Extent) -> Result<()> {
        self.check(e)?;
        // SAFETY: within the mapping; see the type's comment for who touches it when.
        unsafe { std::ptr::write_bytes(self.at(e.offset), 0, e.bytes as usize) };
        Ok(())
    }

    /// Reads the aligned extent `e` into its place from `from` (the same size, in `file`;
    /// O_DIRECT) and marks its pages.
    fn read_from(&self, file: &File, e: Extent, from: Extent) -> Result<()> {
        self.check(e)?;
        pread_into(file, self.at(e.offset), from)?;
        self.mark(e);
        Ok(())
    }

    /// The whole mapping as bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.map.bytes()
    }
}

/// Anonymous DRAM, zeroed and populated when made (page faults are not timed), starting on a
/// 2 MiB boundary and advised for transparent huge pages (`MADV_HUGEPAGE`: honoured where
/// `/sys/kernel/mm/transparent_hugepage/enabled` is `always` or `madvise`, as a runtime that
/// allocates its weight buffers that way gets them). The kernels gather 8-50 KiB pieces
/// scattered over hundreds of MiB: with 4 KiB pages each piece is one or more TLB misses. On
/// this project's VM, alternating both kinds of mapping in one process (12 rounds, medians):
/// 8 KiB pieces 16 KiB apart 17.1 -> 19.2 GB/s, 8 KiB every 24 KiB 17.8 -> 19.7, 44 KiB every
/// 110 KiB 22.7 -> 25.2, one contiguous run 25.2 -> 26.1, calibrate's DRAM read pass 25.1 ->
/// 25.9; the same benchmark an hour later: 19.9 -> 20.2, 19.2 -> 19.6, 23.7 -> 24.7, 25.5 ->
/// 27.2, 24.6 -> 28.2 (the VM's memory rate drifts by more than that from minute to minute;
/// `validate` showed no change beyond it). The DRAM read pass reads the same kind of mapping
/// ([`crate::calibrate::rate_buffer`]), so the kernels are measured against the same memory
/// they run on.
pub struct Mapping {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// Plain memory owned by this value; its users order who writes and reads it (see [`Image`]).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// The boundary the mapping starts on: one x86-64 huge page.
    const HUGE: usize = 2 << 20;

    /// At least `bytes` (rounded up to [`ALIGN`]) of zeroed, populated DRAM.
    pub fn new(bytes: usize) -> Result<Self> {
        let len = bytes.max(1).next_multiple_of(ALIGN);
        let span = len
            .checked_add(Self::HUGE)
            .context("a mapping larger than the address space")?;
        // SAFETY: an anonymous private mapping; no file, no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mapping {len} B of DRAM"));
        }
        let base = p as usize;
        let head = base.next_multiple_of(Self::HUGE) - base;
        // SAFETY: the unused head and tail of the mapping just made, each unmapped once; the
        // advice only concerns this mapping (where the kernel has no huge pages it fails, and
        // the mapping stays as it is); every write is within it.
        let start = unsafe {
            if head > 0 {
                libc::munmap(p, head);
            }
            let start = p.cast::<u8>().add(head);
            let tail = span - head - len;
            if tail > 0 {
                libc::munmap(start.add(len).cast(), tail);
            }
            libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE);
            // Populate now (the first write to each page faults it in, a huge page where
            // granted): a runtime allocates its buffers before it runs.
            for at in (0..len).step_by(ALIGN) {
                std::ptr::write_volatile(start.add(at), 0);
            }
            start
        };
        Ok(Mapping {
            ptr: std::ptr::NonNull::new(start).expect("mmap returned a non-null address"),
            len,
        })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never: a mapping has at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole mapping as bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the whole mapping, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The whole mapping as 64-bit words, to write.
    pub fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: the whole mapping, alive as long as `self`, 2 MiB-aligned, borrowed
        // exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast(), self.len / 8) }
    }

    /// The whole mapping as 64-bit words.
    pub fn words(&self) -> &[u64] {
        // SAFETY: as `words_mut`, shared.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len / 8) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Which bytes of the weight file the plans hold in DRAM, byte by byte (a count of holds:
/// a buffer and a cache may hold the same bytes), with the peak of bytes held. Kept when
/// verifying (tests, small files), where DRAM has only the bytes the plans brought in: the
/// bytes whose last hold goes are zeroed, so that a policy computing on bytes it let go of
/// computes on zeros, and letting go of bytes not held is an error.
pub struct Held {
    count: Vec<u16>,
    bytes: u64,
    peak_bytes: u64,
}

impl Held {
    pub fn new(bytes: u64) -> Self {
        Held {
            count: vec![0; bytes as usize],
            bytes: 0,
            peak_bytes: 0,
        }
    }

    fn range(&self, e: Extent) -> Result<std::ops::Range<usize>, SimError> {
        if e.end() > self.count.len() as u64 {
            return Err(SimError::Plan(format!(
                "{e:?} lies beyond DRAM's {} B",
                self.count.len()
            )));
        }
        Ok(e.offset as usize..e.end() as usize)
    }

    pub fn hold(&mut self, e: Extent) -> Result<(), SimError> {
        let r = self.range(e)?;
        for c in &mut self.count[r] {
            self.bytes += (*c == 0) as u64;
            *c = c
                .checked_add(1)
                .ok_or_else(|| SimError::Plan(format!("{e:?} held 65535 times")))?;
        }
        self.peak_bytes = self.peak_bytes.max(self.bytes);
        Ok(())
    }

    /// Lets go of one hold of `e`; returns the runs of bytes no longer held.
    pub fn let_go(&mut self, e: Extent) -> Result<Vec<Extent>, SimError> {
        let r = self.range(e)?;
        let mut gone: Vec<Extent> = Vec::new();
        for (i, c) in self.count[r.clone()].iter_mut().enumerate() {
            if *c == 0 {
                return Err(SimError::Plan(format!(
                    "the plan lets go of {e:?}, whose byte {} DRAM does not hold",
                    r.start + i
                )));
            }
            *c -= 1;
            if *c == 0 {
                let at = (r.start + i) as u64;
                match gone.last_mut() {
                    Some(g) if g.end() == at => g.bytes += 1,
                    _ => gone.push(Extent {
                        offset: at,
                        bytes: 1,
                    }),
                }
            }
        }
        self.bytes -= gone.iter().map(|g| g.bytes).sum::<u64>();
        Ok(gone)
    }

    /// Bytes held now, and at most so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes, self.peak_bytes)
    }
}

/// Reads the bytes of `e` from `file` to `dst` with `pread` (repeated on short reads); through
/// a raw pointer, since the destination is DRAM that the compute thread may read beside it.
fn pread_into(file: &File, dst: *mut u8, e: Extent) -> Result<()> {
    use std::os::fd::AsRawFd;
    let mut done = 0usize;
    while done < e.bytes as usize {
        // SAFETY: `dst` has `e.bytes` writable bytes (the caller's mapping or buffer).
        let r = unsafe {
            libc::pread(
                file.as_raw_fd(),
                dst.add(done).cast(),
                e.bytes as usize - done,
                (e.offset + done as u64) as libc::off_t,
            )
        };
        if r < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err).with_context(|| format!("O_DIRECT read {e:?}"));
        }
        if r == 0 {
            anyhow::bail!("O_DIRECT read {e:?}: the file ends early");
        }
        done += r as usize;
    }
    Ok(())
}

/// One read, as issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRecord {
    pub planned: Extent,
    pub issued: Extent,
    /// How much further on in the file it was read (the copy of the weights its token reads).
    pub base: u64,
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

/// A read handed to the readers.
#[derive(Clone, Copy)]
struct ReadJob {
    read: u32,
    /// The (aligned) extent, as DRAM places it; the file is read `base` bytes further on.
    extent: Extent,
    base: u64,
    record: usize,
    /// The planned bytes within the aligned read, when verifying.
    verify: Option<(usize, usize)>,
}

impl ReadJob {
    /// Where in the file the read is: `extent`, `base` bytes further on.
    fn in_file(&self) -> Extent {
        Extent {
            offset: self.extent.offset + self.base,
            ..self.extent
        }
    }

    /// The completion to report once `buf` holds the read's bytes.
    fn done(&self, buf: &[u8], at: Instant) -> Done {
        let data = self
            .verify
            .map(|(skip, len)| (self.record, buf[skip..skip + len].to_vec()));
        (Ev::IoDone { read: self.read }, at, data)
    }
}

enum Job {
    Read(ReadJob),
    Op {
        j: u32,
        /// The token the op belongs to and whether reads were in flight as it started (for
        /// [`KernelTime`]).
        token: u32,
        reads_beside: bool,
        flops: u64,
        bytes: u64,
        weights: Vec<Extent>,
    },
}

/// What the compute thread has done with DRAM, in bytes: the op weights its kernels computed
/// on (one pass each), and the resident weight pages it loaded because no read had; and how
/// long each op's kernel took.
#[derive(Debug, Default)]
pub struct KernelCounters {
    pub computed: std::sync::atomic::AtomicU64,
    pub loaded: std::sync::atomic::AtomicU64,
    pub times: Mutex<Vec<KernelTime>>,
}

/// One op's kernel as it ran: the bytes it streamed (its weights where they sit in DRAM, each
/// piece as the op listed it, and the rest of its bytes; every pass), in how many pieces, and
/// its wall-clock time from the first multiply to the last (not the loads of resident pages
/// before it, nor the hand-off to and from the compute thread).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelTime {
    pub token: u32,
    /// Reads were in flight as the op started (the simulator's `reads_beside`).
    pub reads_beside: bool,
    pub bytes: u64,
    pub pieces: usize,
    pub seconds: f64,
}

/// The DRAM the compute thread works in, the file it loads resident pages from (when it
/// loads them: a timed run; not when verifying, nor when timing ops), and its counters.
struct OpMemory {
    image: Arc<Image>,
    loads_from: Option<Arc<File>>,
    counters: Arc<KernelCounters>,
}

/// A completion: the event, when it happened, and (when verifying) the read's record and the
/// planned bytes it brought in.
type Done = (Ev, Instant, Option<(usize, Vec<u8>)>);

/// Real reads and kernels behind the pipeline.
pub struct Real {
    units: Vec<String>,
    /// With pread, the readers' queue.
    jobs_io: Option<Sender<Job>>,
    /// With io_uring, the ring this thread drives.
    ring: Option<Ring>,
    jobs_op: Option<Sender<Job>>,
    done: Receiver<Done>,
    verify: bool,
    start: Instant,
    last: Ps,
    workers: Vec<std::thread::JoinHandle<Result<()>>>,
    /// Every read issued, in issue order.
    pub reads: Vec<ReadRecord>,
    /// DRAM: what the reads (and resident loads) have brought in so far, at file offsets.
    image: Arc<Image>,
    /// When verifying, the bytes the plans hold (see [`Held`]).
    held: Option<Held>,
    /// When verifying, this token's op weights as each op found them in DRAM as it started
    /// (at file offsets; zero elsewhere): what the token computed on.
    seen: Option<Vec<u8>>,
    file: Arc<File>,
    counters: Arc<KernelCounters>,
    /// Bytes of one copy of the weights in the file and how many copies it holds; token `t`
    /// reads copy `t mod copies`, `base` bytes into the file (see [`Memory::Weights`]).
    copy_bytes: u64,
    copies: u64,
    base: u64,
    /// The token under way.
    token: u32,
}

/// The DRAM a [`Real`] backend's reads land in.
pub enum Memory {
    /// A mapping of its own holding one copy of the weights, each byte at its offset in the
    /// layout. The file holds copies of the weights `copy_bytes` apart (`None`: the whole file
    /// is one copy) and token `t` reads copy `t mod copies`, where every copy's bytes land: so
    /// that the bytes read over a run span more than any cache outside this machine could keep
    /// (a virtual disk's host may cache what is read again and again), as the calibration's
    /// test file does, while DRAM holds one copy.
    Weights { copy_bytes: Option<u64> },
    /// A measurement of the readers alone, over a file that may be larger than DRAM: the
    /// mapping the measurements share, possibly smaller than the file, where reads land as
    /// the pipeline's do (see [`read_latencies`]); ops may list no weights.
    Measurement(Arc<Image>),
}

impl Real {
    /// Opens `weights` (O_DIRECT) with `io_threads` reader threads and one compute thread that
    /// runs kernels on rayon's pool, with reads landing in `memory`; `units` are the device's
    /// compute unit names. With `verify`, reads go through the readers' own buffers, only each
    /// read's planned bytes reach DRAM and are checksummed (a pass over the data: for tests,
    /// not timing), DRAM holds only what the plans hold ([`Held`]) and no resident page is
    /// loaded on demand.
    pub fn new(
        weights: &Path,
        io_threads: u32,
        engine: Engine,
        units: Vec<String>,
        verify: bool,
        memory: Memory,
    ) -> Result<Self> {
        let file = Arc::new(open_direct(weights, false)?);
        let file_bytes = file.metadata()?.len();
        let (image, copy_bytes) = match memory {
            Memory::Measurement(dram) => (dram, file_bytes),
            Memory::Weights { copy_bytes: None } => (Arc::new(Image::new(file_bytes)?), file_bytes),
            Memory::Weights {
                copy_bytes: Some(copy),
            } => {
                if copy == 0 || !copy.is_multiple_of(ALIGN as u64) || copy > file_bytes {
                    anyhow::bail!("copies of {copy} B do not tile a file of {file_bytes} B");
                }
                (Arc::new(Image::new(copy)?), copy)
            }
        };
        // Without `verify`, reads land straight in DRAM.
        let direct = (!verify).then(|| image.clone());
        let (done_tx, done) = channel();
        let mut workers = Vec::new();
        let (jobs_io, ring) = match engine {
            Engine::Pread => {
                let (io_tx, io_rx) = channel::<Job>();
                let io_rx = Arc::new(Mutex::new(io_rx));
                for _ in 0..io_threads.max(1) {
                    let (file, rx, tx) = (file.clone(), io_rx.clone(), done_tx.clone());
                    let direct = direct.clone();
                    workers.push(std::thread::spawn(move || {
                        pread_worker(&file, file_bytes, &rx, &tx, direct.as_deref())
                    }));
                }
                (Some(io_tx), None)
            }
            Engine::IoUring => {
                let ring = Ring::new(file.clone(), file_bytes, io_threads.max(1), direct)?;
                (None, Some(ring))
            }
        };
        let (op_tx, op_rx) = channel::<Job>();
        let counters = Arc::new(KernelCounters::default());
        workers.push(spawn_op_worker(
            op_rx,
            done_tx,
            ring.as_ref().map(|r| r.wake.clone()),
            Some(OpMemory {
                image: image.clone(),
                loads_from: (!verify).then(|| file.clone()),
                counters: counters.clone(),
            }),
        ));
        Ok(Real {
            units,
            jobs_io,
            ring,
            jobs_op: Some(op_tx),
            done,
            verify,
            start: Instant::now(),
            last: Ps::ZERO,
            workers,
            reads: Vec::new(),
            held: verify.then(|| Held::new(image.map.len() as u64)),
            seen: verify.then(|| vec![0; image.map.len()]),
            image,
            file,
            counters,
            copy_bytes,
            copies: file_bytes / copy_bytes,
            base: 0,
            token: 0,
        })
    }

    /// Readers alone (`qd` of them, no compute units), their reads landing in `dram`: what
    /// calibrate's and replay's read measurements run on.
    fn measuring(path: &Path, qd: u32, engine: Engine, dram: &Arc<Image>) -> Result<Self> {
        let memory = Memory::Measurement(dram.clone());
        Real::new(path, qd, engine, Vec::new(), false, memory)
    }

    /// DRAM as it stands.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// When verifying, the current token's op weights as its ops found them in DRAM when
    /// they started, at file offsets (zero where no op of the token listed weights).
    pub fn seen(&self) -> Option<&[u8]> {
        self.seen.as_deref()
    }

    /// When verifying, the bytes the plans hold in DRAM now and at most so far.
    pub fn held_bytes(&self) -> Option<(u64, u64)> {
        self.held.as_ref().map(Held::bytes)
    }

    /// What the kernels have computed on and loaded so far.
    pub fn kernel_counters(&self) -> &KernelCounters {
        &self.counters
    }

    /// Brings exactly the bytes of `e` into DRAM from the file, as a runtime loads its
    /// resident weights before it runs (the logits check loads the non-FFN matrices so).
    pub fn load(&mut self, e: Extent) -> Result<()> {
        if let Some(h) = &mut self.held {
            h.hold(e)?;
        }
        let a = aligned(e);
        let mut buf = AlignedBuf::zeroed(a.bytes as usize);
        pread_into(&self.file, buf.as_mut_slice().as_mut_ptr(), a)?;
        let skip = (e.offset - a.offset) as usize;
        self.image
            .write(e.offset, &buf.as_slice()[skip..skip + e.bytes as usize])
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
        use std::sync::mpsc::TryRecvError;
        let stopped = || anyhow::anyhow!("the real backend's workers stopped");
        let (ev, at, data) = loop {
            let Some(ring) = &mut self.ring else {
                break self.done.recv().map_err(|_| stopped())?;
            };
            match self.done.try_recv() {
                Ok(d) => break d,
                Err(TryRecvError::Disconnected) => return Err(stopped()),
                Err(TryRecvError::Empty) => {}
            }
            match ring.ready.pop_front() {
                Some(d) => break d,
                None => ring.wait()?,
            }
        };
        if let Some((record, bytes)) = data {
            let r = &mut self.reads[record];
            r.checksum = checksum(&bytes);
            self.image.write(r.planned.offset, &bytes)?;
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
        // Waits for the reads still in flight.
        self.ring = None;
        Ok(())
    }
}

impl Drop for Real {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// A pread reader: takes read jobs from the shared queue, one blocking O_DIRECT `pread` at a
/// time, until the queue closes; into DRAM (`direct`) or its own buffer.
fn pread_worker(
    file: &File,
    file_bytes: u64,
    jobs: &Mutex<Receiver<Job>>,
    done: &Sender<Done>,
    direct: Option<&Image>,
) -> Result<()> {
    let mut buf = AlignedBuf::zeroed(ALIGN);
    loop {
        let job = jobs.lock().expect("job queue").recv();
        let Ok(Job::Read(r)) = job else {
            return Ok(());
        };
        let (extent, at) = (r.extent, r.in_file());
        check_within(at, file_bytes)?;
        if let Some(image) = direct {
            image.read_from(file, extent, at)?;
            if done.send(r.done(&[], Instant::now())).is_err() {
                return Ok(());
            }
            continue;
        }
        if buf.as_slice().len() < extent.bytes as usize {
            buf = AlignedBuf::zeroed(extent.bytes as usize);
        }
        file.read_exact_at(&mut buf.as_mut_slice()[..extent.bytes as usize], at.offset)
            .with_context(|| format!("O_DIRECT read {at:?}"))?;
        if done.send(r.done(buf.as_slice(), Instant::now())).is_err() {
            return Ok(());
        }
    }
}

fn check_within(extent: Extent, file_bytes: u64) -> Result<()> {
    if extent.offset + extent.bytes > file_bytes {
        anyhow::bail!("read {extent:?} beyond the weight file ({file_bytes} B)");
    }
    Ok(())
}

/// A Linux eventfd: how the compute thread wakes the pipeline waiting on its io_uring when it
/// reports an op (the ring keeps a poll on it, so one wait covers reads and ops).
struct EventFd(std::os::fd::OwnedFd);

impl EventFd {
    fn new() -> Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("eventfd");
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nothing else.
        Ok(EventFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }
    fn notify(&self) {
        use std::os::fd::AsRawFd;
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer; a failed write (counter saturated) still
        // leaves the eventfd readable, which is all the ring's poll needs.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
    fn drain(&self) {
        use std::os::fd::AsRawFd;
        let mut v = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer; EAGAIN (nothing pending) is fine.
        unsafe { libc::read(self.0.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    }
}

/// The io_uring reader (ActiveFlow's "one io_uring loader"), driven by the pipeline's own
/// thread: one ring with `qd` read slots and a poll on `wake`, which the compute thread writes
/// after each op it reports. Reads the pipeline issues are queued as submissions and go to the
/// kernel, all at once, when the pipeline next waits; one wait covers read completions and ops
/// ending. Reads land in DRAM (`direct`) or in the slots' own buffers (when verifying).
///
/// On this project's VM (2 vCPUs, virtio disk) a loader thread of its own, woken through an
/// eventfd for each read and reporting each completion through a channel, cost the process
/// 13-14 µs of CPU per 4-8 KiB read at QD 8 (29-32 k reads/s), a single thread driving a ring
/// 7-8 µs (33-37 k reads/s): the hand-offs between threads cost as much CPU as the kernel's own
/// work for a read, CPU the op kernels share on a small machine.
struct Ring {
    ring: io_uring::IoUring,
    file: Arc<File>,
    file_bytes: u64,
    direct: Option<Arc<Image>>,
    bufs: Vec<AlignedBuf>,
    slots: Vec<Option<ReadJob>>,
    pending: std::collections::VecDeque<ReadJob>,
    wake: Arc<EventFd>,
    /// Whether the poll on `wake` is in the ring.
    armed: bool,
    /// Completions reaped and not yet handed to the pipeline.
    ready: std::collections::VecDeque<Done>,
}

/// The user data of the poll on the wake-up eventfd (reads carry their slot).
const WAKE: u64 = u64::MAX;

impl Ring {
    fn new(file: Arc<File>, file_bytes: u64, qd: u32, direct: Option<Arc<Image>>) -> Result<Self> {
        let ring = io_uring::IoUring::new((qd + 1).next_power_of_two()).map_err(|e| {
            anyhow::anyhow!(
                "io_uring is unavailable here ({e}); set read_engine = \"pread\" in the device file"
            )
        })?;
        Ok(Ring {
            ring,
            file,
            file_bytes,
            direct,
            bufs: (0..qd).map(|_| AlignedBuf::zeroed(ALIGN)).collect(),
            slots: vec![None; qd as usize],
            pending: Default::default(),
            wake: Arc::new(EventFd::new()?),
            armed: false,
            ready: Default::default(),
        })
    }

    /// Queues a read: into the ring if a slot is free (submitted at the next wait), else
    /// until one is.
    fn queue(&mut self, r: ReadJob) -> Result<()> {
        self.pending.push_back(r);
        self.fill()
    }

    fn fill(&mut self) -> Result<()> {
        use io_uring::{opcode, types};
        use std::os::fd::AsRawFd;
        while let Some(slot) = self.slots.iter().position(Option::is_none) {
            let Some(r) = self.pending.pop_front() else {
                break;
            };
            check_within(r.in_file(), self.file_bytes)?;
            let n = r.extent.bytes as usize;
            let dst = match &self.direct {
                Some(image) => {
                    image.check(r.extent)?;
                    image.at(r.extent.offset)
                }
                None => {
                    if self.bufs[slot].as_slice().len() < n {
                        self.bufs[slot] = AlignedBuf::zeroed(n);
                    }
                    self.bufs[slot].as_mut_slice().as_mut_ptr()
                }
            };
            let e = opcode::Read::new(types::Fd(self.file.as_raw_fd()), dst, n as u32)
                .offset(r.in_file().offset)
                .build()
                .user_data(slot as u64);
            // SAFETY: the destination (DRAM, which `direct` keeps alive, or the buffer in
            // `bufs[slot]`) stays allocated, and the buffer untouched, until this read's
            // completion is reaped: the slot is busy until then, and dropping the ring waits
            // for every busy slot.
            unsafe { self.ring.submission().push(&e) }
                .map_err(|_| anyhow::anyhow!("io_uring submission queue full"))?;
            self.slots[slot] = Some(r);
        }
        Ok(())
    }

    /// Submits what is queued and waits for a read to complete or the compute thread to write
    /// `wake`; the completed reads go to `ready`.
    fn wait(&mut self) -> Result<()> {
        use io_uring::{opcode, types};
        use std::os::fd::AsRawFd;
        if !self.armed {
            let poll =
                opcode::PollAdd::new(types::Fd(self.wake.0.as_raw_fd()), libc::POLLIN as u32)
                    .build()
                    .user_data(WAKE);
            // SAFETY: the poll names no buffer.
            unsafe { self.ring.submission().push(&poll) }
                .map_err(|_| anyhow::anyhow!("io_uring submission queue full"))?;
            self.armed = true;
        }
        self.ring.submit_and_wait(1)?;
        let at = Instant::now();
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (user, res) in cqes {
            if user == WAKE {
                self.wake.drain();
                self.armed = false;
                continue;
            }
            let slot = user as usize;
            let r = self.slots[slot]
                .take()
                .ok_or_else(|| anyhow::anyhow!("io_uring completion for an empty slot"))?;
            if res < 0 {
                return Err(std::io::Error::from_raw_os_error(-res))
                    .with_context(|| format!("O_DIRECT read {:?} (io_uring)", r.extent));
            }
            if res as u64 != r.extent.bytes {
                anyhow::bail!("io_uring read {:?} returned {res} bytes", r.extent);
            }
            let buf = match &self.direct {
                Some(image) => {
                    image.mark(r.extent);
                    &[][..]
                }
                None => self.bufs[slot].as_slice(),
            };
            self.ready.push_back(r.done(buf, at));
        }
        self.fill()
    }
}

impl Drop for Ring {
    /// The kernel may still be writing into the buffers or DRAM: waits for every read in
    /// flight before they are freed, whatever ended the run.
    fn drop(&mut self) {
        while self.slots.iter().any(Option::is_some) {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            for c in self.ring.completion() {
                if let Some(s) = self.slots.get_mut(c.user_data() as usize) {
                    *s = None;
                }
            }
        }
    }
}

/// A run of 16-bit weights in memory.
#[derive(Clone, Copy)]
struct Piece(*const i16, usize);

// A piece points into DRAM or the arena, both alive and unchanged while a kernel runs.
unsafe impl Send for Piece {}
unsafe impl Sync for Piece {}

/// An op's real work, shaped like a decode GEMV over 16-bit weights: one multiply-add per
/// 2-byte weight of `pieces` (the op's weights where they sit in DRAM, then the rest of its
/// bytes), repeated until the op's `flops` are done, split over rayon's threads in tasks of
/// about 64 Ki weights (many small columns make one task). The weights are read as i16
/// (converted to f32 in registers, as a dequantizing kernel does), so the pass runs at memory
/// speed. Returns the bytes it streamed (the pieces', once per pass).
fn kernel(pieces: &[Piece], flops: u64) -> u64 {
    const TASK: usize = 1 << 16;
    let mut split = Vec::with_capacity(pieces.len());
    for &Piece(p, n) in pieces {
        let mut at = 0;
        while at < n {
            let k = TASK.min(n - at);
            // SAFETY: within the piece.
            split.push(Piece(unsafe { p.add(at) }, k));
            at += k;
        }
    }
    let mut tasks = Vec::new();
    let (mut first, mut acc) = (0, 0);
    for (i, p) in split.iter().enumerate() {
        acc += p.1;
        if acc >= TASK {
            tasks.push(first..i + 1);
            (first, acc) = (i + 1, 0);
        }
    }
    if first < split.len() {
        tasks.push(first..split.len());
    }
    let n = split.iter().map(|p| p.1 as u64).sum::<u64>().max(1);
    let passes = (flops / 2).div_ceil(n).max(1);
    let s: f32 = (0..passes)
        .map(|pass| {
            tasks
                .par_iter()
                .map(|r| {
                    let x = 1.0001 + pass as f32 * 1e-9;
                    task_sum(&split[r.clone()], x)
                })
                .sum::<f32>()
        })
        .sum();
    std::hint::black_box(s);
    2 * n * passes
}

/// One task of [`kernel`]: every weight of `mine` times `x`, summed, with the widest vectors
/// this CPU has (AVX-512 where it has it, found at run time; otherwise what the build targets).
/// What bounds the kernel is how many cache lines it has in flight, not its arithmetic: on this
/// project's VM (Xeon, 2 vCPUs) the hardware prefetchers did little for it, so a line's loads
/// waited in the out-of-order window behind the previous lines' converts and adds. Alternating
/// in one process (4 rounds, 64 MiB ops), GB/s for contiguous / 8 KiB pieces every 16 KiB /
/// 22 of 44 / 52 of 128 / 256 of 640: one eight-lane accumulator with a prefetch into L1
/// 19.3 / 13.8 / 13.9 / 14.3 / 17.7; four accumulators, prefetch into L2 20.4 / 15.1 / 16.5 /
/// 17.0 / 19.8; AVX-512 (half the instructions per line) 21.3-22.1 / 16.4-16.8 / 17.0-18.0 /
/// 17.5-18.6 / 19.4-21.5, where a plain integer sum over the same pieces (calibrate's DRAM
/// read, 25-28 GB/s contiguous) got 15-17 / 15-17 / 15-20.
fn task_sum(mine: &[Piece], x: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { task_sum_avx512(mine, x) };
    }
    task_sum_portable(mine, x)
}

/// Whether this CPU has what [`task_sum_avx512`] is compiled for (the standard library caches
/// the answer).
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

/// [`task_sum`] in plain Rust: four accumulators of eight lanes, one per quarter of a cache
/// line, so that a line's adds do not wait on one another (one accumulator chains every add on
/// the add unit's latency, 4 cycles per 8 weights: about 10 GB/s a core at 2.6 GHz). Plain
/// multiply and add, not `mul_add`, which without an FMA target feature is a libm call.
fn task_sum_portable(mine: &[Piece], x: f32) -> f32 {
    let ([mut a0, mut a1], [mut a2, mut a3]) = ([[0f32; 8]; 2], [[0f32; 8]; 2]);
    let mut rest = 0f32;
    let mut ahead = Ahead::new(mine);
    for &Piece(p, len) in mine {
        // SAFETY: a piece is `len` live i16s (see `Piece`).
        let w = unsafe { std::slice::from_raw_parts(p, len) };
        let lines = w.chunks_exact(LINE);
        for &v in lines.remainder() {
            rest += v as f32 * x;
        }
        for line in lines {
            ahead.next();
            for k in 0..8 {
                a0[k] += line[k] as f32 * x;
                a1[k] += line[8 + k] as f32 * x;
                a2[k] += line[16 + k] as f32 * x;
                a3[k] += line[24 + k] as f32 * x;
            }
        }
    }
    rest + [a0, a1, a2, a3].iter().flatten().sum::<f32>()
}

/// [`task_sum`] with AVX-512: two lines (64 weights) a step, sign-extended to 32 bits,
/// converted and multiply-added into four 16-lane accumulators.
///
/// # Safety
/// The CPU must have AVX-512 F and BW; every piece must be `len` live i16s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn task_sum_avx512(mine: &[Piece], x: f32) -> f32 {
    use std::arch::x86_64::*;
    let xv = _mm512_set1_ps(x);
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut rest = 0f32;
    let mut ahead = Ahead::new(mine);
    for &Piece(p, len) in mine {
        let whole = len - len % (2 * LINE);
        let mut at = 0;
        while at < whole {
            ahead.next();
            ahead.next();
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: 16 weights from `at + 16k` lie within the piece (`at < whole`).
                let w = unsafe { _mm256_loadu_si256(p.add(at + 16 * k).cast()) };
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(w)), xv, *a);
            }
            at += 2 * LINE;
        }
        for j in whole..len {
            // SAFETY: within the piece.
            rest += unsafe { *p.add(j) } as f32 * x;
        }
    }
    let [a0, a1, a2, a3] = acc;
    rest + _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)))
}

/// 16-bit weights per 64-byte cache line.
const LINE: usize = 32;

/// How far ahead of the kernel [`Ahead`] prefetches, in weights (8 KiB). 4, 8 and 16 KiB ran
/// alike on this project's VM (see [`task_sum`]).
const AHEAD: usize = 4096;

/// A cursor [`AHEAD`] weights ahead of the kernel over its pieces as if they were one run:
/// each line the kernel takes, it prefetches the line that far on, across the gaps between
/// pieces, where the hardware's stream prefetcher starts over at every piece. Into L2, not L1:
/// a prefetch into L1 holds one of the core's few line-fill buffers until its line arrives.
/// On this project's VM on an AMD EPYC host (into L1, one accumulator), alternating with and
/// without it in one process: 8 KiB pieces 16 or 24 KiB apart (DIP's columns) 12.4-16.6 ->
/// 16.2-21.2 GB/s, 24 KiB every 48 KiB 17.2-18.5 -> 20.2-22.4, one contiguous 256 MiB run
/// 18.6-21.7 -> 19.5-23.4; on its Xeon host, see [`task_sum`] (without it, the AVX-512 kernel
/// ran 20.4 / 12.8 / 13.0 / 14.1 / 19.5 GB/s there, and the four-accumulator one 10.9 on
/// contiguous weights).
struct Ahead<'a> {
    pieces: &'a [Piece],
    piece: usize,
    at: usize,
}

impl<'a> Ahead<'a> {
    fn new(pieces: &'a [Piece]) -> Self {
        let mut a = Ahead {
            pieces,
            piece: 0,
            at: 0,
        };
        a.advance(AHEAD);
        a
    }

    fn advance(&mut self, mut n: usize) {
        while let Some(&Piece(_, len)) = self.pieces.get(self.piece) {
            if self.at + n < len {
                self.at += n;
                return;
            }
            n -= len - self.at;
            self.piece += 1;
            self.at = 0;
        }
    }

    #[inline(always)]
    fn next(&mut self) {
        if let Some(&Piece(p, _)) = self.pieces.get(self.piece) {
            // SAFETY: `at` is within the piece; a prefetch never faults anyway.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
                _mm_prefetch::<_MM_HINT_T1>(p.add(self.at).cast::<i8>());
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = p;
            self.advance(LINE);
        }
    }
}

/// The weights the op kernel streams, kept for the whole process, so that each new backend
/// (a validation runs dozens) does not fault in a fresh arena again: on this project's VM that
/// cost 80-110 ms in the first token of every run for a 256 MiB arena.
static ARENA: Mutex<Option<Mapping>> = Mutex::new(None);

/// The backend's compute thread: runs each op's [`kernel`] on the op's weights in DRAM (`mem`;
/// none when calibrating, where ops list no weights) and the rest of its bytes from the arena,
/// and reports its end on `done`, then writes `wake` (the pipeline's ring), and once more as
/// it stops, for whatever reason.
///
/// The thread runs its loop as one worker of a pool of its own (as many threads as rayon's
/// global pool), so an op's kernel starts on this thread the moment the op arrives and the
/// other workers steal from it, and no thread waits to be woken when the kernel ends. With the
/// loop outside the pool (the thread handing each kernel to rayon's global pool and sleeping
/// until it ended), on this project's VM (2 vCPUs), alternating in one process over 10 rounds:
/// the per-op time that does not grow with bytes (ops of 1-32 MiB back to back, fitted per
/// round) had a median 51 µs (15-82) against 37 (11-49) this way, and in a second run 121
/// (38-200) against 43 (28-51); a parallel loop of 100 µs of work issued after a 1 ms pause
/// took 193 µs against 120 (a run's ops mostly start after waiting for reads).
fn spawn_op_worker(
    ops: Receiver<Job>,
    done: Sender<Done>,
    wake: Option<Arc<EventFd>>,
    mem: Option<OpMemory>,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || -> Result<()> {
        let notify = wake.clone();
        let r = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("flashsim-kernel-{i}"))
            .build()
            .context("starting the compute thread's kernel pool")
            .and_then(|pool| {
                pool.install(move || {
                    let r = op_worker(&ops, &done, notify.as_deref(), mem.as_ref());
                    drop(done);
                    r
                })
            });
        if let Some(w) = &wake {
            w.notify();
        }
        r
    })
}

fn op_worker(
    ops: &Receiver<Job>,
    done: &Sender<Done>,
    wake: Option<&EventFd>,
    mem: Option<&OpMemory>,
) -> Result<()> {
    use std::sync::atomic::Ordering;
    while let Ok(Job::Op {
        j,
        token,
        reads_beside,
        flops,
        bytes,
        weights,
    }) = ops.recv()
    {
        let mut pieces = Vec::with_capacity(weights.len() + 1);
        let mut listed = 0u64;
        if let Some(m) = mem {
            for &e in &weights {
                m.image.check(e)?;
                if let Some(file) = &m.loads_from {
                    for run in m.image.missing(e) {
                        m.image.read_from(file, run, run)?;
                        m.counters.loaded.fetch_add(run.bytes, Ordering::Relaxed);
                    }
                }
                // 16-bit weights start at even offsets; an odd byte is skipped.
                let start = e.offset.next_multiple_of(2);
                let n = (e.end().saturating_sub(start) / 2) as usize;
                pieces.push(Piece(m.image.at(start).cast::<i16>().cast_const(), n));
                listed += e.bytes;
            }
            m.counters.computed.fetch_add(listed, Ordering::Relaxed);
        } else if !weights.is_empty() {
            anyhow::bail!("an op lists weights but the compute thread has no DRAM");
        }
        let mut arena = ARENA.lock().unwrap_or_else(|e| e.into_inner());
        let rest = (bytes.saturating_sub(listed) / 2) as usize;
        if rest > 0 || pieces.is_empty() {
            let rest = rest.max(1);
            if arena.as_ref().is_none_or(|a| a.len() < 2 * rest) {
                let mut a = Mapping::new(2 * rest)?;
                // Small nonzero weights (3 in every 16 bits), as the arena always held.
                a.words_mut().fill(0x0003_0003_0003_0003);
                *arena = Some(a);
            }
            let a = arena.as_ref().expect("made above");
            pieces.push(Piece(a.bytes().as_ptr().cast(), rest));
        }
        let t = Instant::now();
        let streamed = kernel(&pieces, flops);
        let seconds = t.elapsed().as_secs_f64();
        drop(arena);
        if let Some(m) = mem {
            m.counters
                .times
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(KernelTime {
                    token,
                    reads_beside,
                    bytes: streamed,
                    pieces: pieces.len(),
                    seconds,
                });
        }
        if done
            .send((Ev::OpDone { op: j }, Instant::now(), None))
            .is_err()
        {
            break;
        }
        if let Some(w) = wake {
            w.notify();
        }
    }
    Ok(())
}

/// Times the real backend's ops for `calibrate` and `validate`'s probes, on the backend's own
/// path: each op handed to the compute thread, run by the kernel on rayon's pool, its end
/// reported back, one op at a time as the pipeline's chain runs them. Each op computes on
/// weights no op touched recently: the ops take turns over a mapping
/// [`crate::calibrate::beyond_cache_bytes`] large (and at least four of the largest op), as a
/// token's ops stream weights the previous token's left hundreds of MiB before. On a VM of this
/// project whose CPU reports a 480 MiB last-level cache, a 64 MiB read pass over the same
/// buffer again and again ran at a median 29-36 GB/s (p90 44-64) where passes over 128 MiB to
/// 2 GiB ran at 17-23: an op timed over one arena measures the cache, not DRAM.
pub struct OpTimer {
    image: Arc<Image>,
    next: u64,
}

/// An op for [`OpTimer::run_ops`]: a plan's op as the real backend receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedOp {
    pub token: u32,
    pub flops: u64,
    /// All the bytes it streams: its weights, then the rest (KV cache) from the arena.
    pub bytes: u64,
    pub weights: Vec<Extent>,
}

impl OpTimer {
    /// A timer for ops of at most `largest_op` bytes.
    pub fn new(largest_op: u64) -> Result<Self> {
        Self::over(crate::calibrate::beyond_cache_bytes().max(4 * largest_op))
    }

    /// A timer whose ops take turns over `span` bytes.
    pub fn over(span: u64) -> Result<Self> {
        let mut image = Image::new(span)
            .with_context(|| format!("mapping {} MiB of DRAM to time ops on", span >> 20))?;
        // Small nonzero weights (3 in every 16 bits), as the backend's arena holds: pages of
        // zeros might be one shared page to a hypervisor that merges them.
        image.map.words_mut().fill(0x0003_0003_0003_0003);
        Ok(OpTimer {
            image: Arc::new(image),
            next: 0,
        })
    }

    /// Bytes of DRAM the ops take turns over.
    pub fn span_bytes(&self) -> u64 {
        self.image.map.len as u64
    }

    /// Runs `ops` back to back through the backend's compute thread, each on the weights it
    /// lists at those offsets of the timer's DRAM (which must hold them: a timer over a weight
    /// file's span), and returns each op's kernel as it ran ([`KernelTime`], `token` as given).
    pub fn run_ops(&mut self, ops: &[TimedOp]) -> Result<Vec<KernelTime>> {
        let mut thread = ComputeThread::new(&self.image);
        for (j, op) in ops.iter().enumerate() {
            thread.run(j as u32, op.clone())?;
        }
        thread.finish()
    }

    /// The mean time (s) of an op of `bytes` (one multiply-add per 16-bit weight): after a
    /// warm-up op, ops repeat until `seconds` have passed (at least 5). The mean, not the best
    /// run, since the simulator is checked against the backend's mean ms/token; `calibrate`
    /// fits the unit's dispatch overhead and memory rate to these times.
    pub fn seconds(&mut self, bytes: u64, seconds: f64) -> Result<f64> {
        let bytes = bytes.next_multiple_of(2);
        self.gathered_seconds(bytes, bytes, bytes, seconds)
    }

    /// The same for an op whose `bytes` lie in pieces of `piece` bytes every `stride` bytes
    /// (`bytes` a multiple of `piece`; `piece` even and at most `stride`), as a gathering
    /// policy's columns or channels lie in its weights.
    pub fn gathered_seconds(
        &mut self,
        bytes: u64,
        piece: u64,
        stride: u64,
        seconds: f64,
    ) -> Result<f64> {
        let span = self.span_bytes();
        if piece == 0 || !piece.is_multiple_of(2) || piece > stride || !bytes.is_multiple_of(piece)
        {
            anyhow::bail!("{bytes} B in pieces of {piece} B every {stride} B is not an op");
        }
        let reach = bytes / piece * stride;
        if bytes == 0 || reach > span {
            anyhow::bail!("an op of {bytes} B does not fit the {span} B the ops are timed on");
        }
        let mut thread = ComputeThread::new(&self.image);
        let mut run = |j: u32| -> Result<f64> {
            if self.next + reach > span {
                self.next = 0;
            }
            let weights: Vec<Extent> = (0..bytes / piece)
                .map(|i| Extent {
                    offset: self.next + i * stride,
                    bytes: piece,
                })
                .collect();
            self.next += reach;
            let t = Instant::now();
            let op = TimedOp {
                token: 0,
                flops: bytes,
                bytes,
                weights,
            };
            Ok(thread
                .run(j, op)?
                .saturating_duration_since(t)
                .as_secs_f64())
        };
        run(0)?;
        let start = Instant::now();
        let mut times = Vec::new();
        while times.len() < 5 || start.elapsed().as_secs_f64() < seconds {
            times.push(run(times.len() as u32 + 1)?);
        }
        thread.finish()?;
        Ok(times.iter().sum::<f64>() / times.len() as f64)
    }
}

/// The backend's compute thread over an [`OpTimer`]'s DRAM (no file to load from), fed one
/// op at a time.
struct ComputeThread {
    ops: Sender<Job>,
    done: Receiver<Done>,
    /// Taken when the thread is joined (by [`ComputeThread::finish`], or by a failed hand-off,
    /// which then returns the thread's own error).
    worker: Option<std::thread::JoinHandle<Result<()>>>,
    counters: Arc<KernelCounters>,
}

impl ComputeThread {
    fn new(image: &Arc<Image>) -> Self {
        let (ops, op_rx) = channel::<Job>();
        let (done_tx, done) = channel();
        let counters = Arc::new(KernelCounters::default());
        let mem = OpMemory {
            image: image.clone(),
            loads_from: None,
            counters: counters.clone(),
        };
        let worker = spawn_op_worker(op_rx, done_tx, None, Some(mem));
        ComputeThread {
            ops,
            done,
            worker: Some(worker),
            counters,
        }
    }

    /// Hands `op` (as op `j`) to the thread and waits for its end; returns when it ended. If
    /// the thread stopped (an op it could not run: weights beyond its DRAM), its error.
    fn run(&mut self, j: u32, op: TimedOp) -> Result<Instant> {
        let sent = self.ops.send(Job::Op {
            j,
            token: op.token,
            reads_beside: false,
            flops: op.flops,
            bytes: op.bytes,
            weights: op.weights,
        });
        match sent.ok().and_then(|_| self.done.recv().ok()) {
            Some((_, at, _)) => Ok(at),
            None => {
                Self::join(&mut self.worker)?;
                anyhow::bail!("the compute thread stopped")
            }
        }
    }

    /// Waits for the thread to end (once: `worker` is taken); its error, if it stopped on one.
    fn join(worker: &mut Option<std::thread::JoinHandle<Result<()>>>) -> Result<()> {
        match worker.take() {
            Some(w) => w
                .join()
                .map_err(|_| anyhow::anyhow!("the compute thread panicked"))?,
            None => Ok(()),
        }
    }

    /// Stops the thread; returns each op's kernel as it ran, or the thread's error.
    fn finish(self) -> Result<Vec<KernelTime>> {
        let ComputeThread {
            ops,
            mut worker,
            counters,
            ..
        } = self;
        drop(ops);
        Self::join(&mut worker)?;
        let mut times = counters.times.lock().unwrap_or_else(|e| e.into_inner());
        Ok(std::mem::take(&mut *times))
    }
}

/// What [`read_latencies`] reads: `size`-byte reads, `qd` in flight, in the order `order`
/// says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPattern {
    pub size: u64,
    pub qd: u32,
    pub order: ReadOrder,
}

/// Where each read of a [`ReadPattern`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOrder {
    /// At a random `size`-aligned offset of the file.
    Random,
    /// Where the read before it ended (the file's consecutive chunks in turn: a streaming
    /// reader).
    InOrder,
    /// After the read before it, 0 to `gap_bytes` (uniform, in 4 KiB steps) past its end: a
    /// policy reading the scattered rows or columns it kept in file order. A read that would
    /// pass the file's end starts again at a random chunk.
    Near { gap_bytes: u64 },
}

/// Reads of `size` bytes of `path` in the order `order` says, `qd` in flight, through
/// the real backend's own path: each read handed to its readers (`engine`) and its completion
/// reported back to this thread, which then issues the next, as the pipeline does, until
/// `seconds` have passed (and at least 4 reads per slot). What `calibrate` measures, so that the
/// table carries the backend's per-read cost along with the disk's. The reads land in `dram`
/// (a populated mapping, as the pipeline's land in the backend's) at their file offset modulo
/// its size, which must be a multiple of `size` (near reads: one that would pass its end starts
/// again at a random chunk): on this project's virtual disk, reads into a
/// few reused buffers measured up to half as fast as reads spread over a large mapping.
/// Returns the seconds taken and each read's latency (µs).
pub fn read_latencies(
    path: &Path,
    engine: Engine,
    ReadPattern { size, qd, order }: ReadPattern,
    seconds: f64,
    seed: u64,
    dram: &Arc<Image>,
) -> Result<(f64, Vec<f64>)> {
    let file_bytes = std::fs::metadata(path)?.len();
    let slots = crate::calibrate::slots(file_bytes, size)?;
    // A stream starts at a chunk the seed picks (each pass of calibrate's another).
    let mut next = crate::calibrate::splitmix(&mut (seed ^ 0x5e9)) % slots;
    let region = dram.map.len() as u64;
    if region == 0 || !region.is_multiple_of(size) {
        anyhow::bail!("reads of {size} B do not tile {region} B of DRAM");
    }
    let mut real = Real::measuring(path, qd, engine, dram)?;
    let mut state = seed ^ size ^ 0x7ead;
    let mut issued = vec![Ps::ZERO; qd as usize];
    let mut done_per_slot = vec![0u32; qd as usize];
    let mut lat = Vec::new();
    let deadline = std::time::Duration::from_secs_f64(seconds);
    real.start_clock();
    let start = Instant::now();
    // Where the read before ended (near reads).
    let mut end = None;
    let mut submit = |real: &mut Real, slot: u32, issued: &mut [Ps]| -> Result<()> {
        let random = crate::calibrate::splitmix(&mut state) % slots * size;
        let offset = match order {
            ReadOrder::Random => random,
            ReadOrder::InOrder => {
                next += 1;
                (next - 1) % slots * size
            }
            ReadOrder::Near { gap_bytes } => {
                const STEP: u64 = crate::calibrate::ALIGN as u64;
                let gap = crate::calibrate::splitmix(&mut state) % (gap_bytes / STEP + 1) * STEP;
                match end.map(|e: u64| e + gap) {
                    Some(at) if at + size <= file_bytes && at % region + size <= region => at,
                    _ => random,
                }
            }
        };
        end = Some(offset + size);
        issued[slot as usize] = real.now_of(Instant::now());
        // The read lands in DRAM at its offset within the region.
        real.base = offset - offset % region;
        real.submit(
            Ps::ZERO,
            slot,
            Extent {
                offset: offset % region,
                bytes: size,
            },
        )?;
        real.reads.clear();
        Ok(())
    };
    for slot in 0..qd {
        submit(&mut real, slot, &mut issued)?;
    }
    let mut in_flight = qd;
    while in_flight > 0 {
        let (at, ev) = real.next_completion()?;
        let Ev::IoDone { read: slot } = ev else {
            anyhow::bail!("an op completed in a read measurement");
        };
        in_flight -= 1;
        lat.push(at.checked_sub(issued[slot as usize])?.as_us());
        done_per_slot[slot as usize] += 1;
        if start.elapsed() < deadline || done_per_slot[slot as usize] < 4 {
            submit(&mut real, slot, &mut issued)?;
            in_flight += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    real.shutdown()?;
    Ok((elapsed, lat))
}

/// Reads `reads` (file offset, bytes) of `path` in their order, `qd` in flight, through the
/// real backend's own path as [`read_latencies`] does: a slot whose read completes takes the
/// next. Each read is widened to the aligned range around it (as the backend reads a plan's
/// extents) and lands in `dram` at its offset modulo the mapping's size, or at its start
/// where it would pass the end. Returns the seconds taken.
pub fn replay_reads(
    path: &Path,
    engine: Engine,
    qd: u32,
    reads: &[(u64, u64)],
    dram: &Arc<Image>,
) -> Result<f64> {
    let region = dram.map.len() as u64;
    let mut real = Real::measuring(path, qd, engine, dram)?;
    let mut next = 0;
    let mut submit = |real: &mut Real, slot: u32| -> Result<bool> {
        let Some(&(offset, bytes)) = reads.get(next) else {
            return Ok(false);
        };
        next += 1;
        let e = aligned(Extent { offset, bytes });
        if e.bytes > region {
            anyhow::bail!("a read of {} B does not fit {region} B of DRAM", e.bytes);
        }
        let at = match e.offset % region {
            at if at + e.bytes <= region => at,
            _ => 0,
        };
        real.base = e.offset - at;
        real.submit(
            Ps::ZERO,
            slot,
            Extent {
                offset: at,
                bytes: e.bytes,
            },
        )?;
        real.reads.clear();
        Ok(true)
    };
    real.start_clock();
    let start = Instant::now();
    let mut in_flight = 0;
    for slot in 0..qd.max(1) {
        in_flight += u32::from(submit(&mut real, slot)?);
    }
    while in_flight > 0 {
        let (_, ev) = real.next_completion()?;
        let Ev::IoDone { read: slot } = ev else {
            anyhow::bail!("an op completed in a read replay");
        };
        in_flight -= 1;
        in_flight += u32::from(submit(&mut real, slot)?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    real.shutdown()?;
    Ok(elapsed)
}

fn stopped() -> SimError {
    SimError::Plan("the real backend's workers stopped".into())
}

impl Backend for Real {
    fn unit_index(&self, name: &str) -> Option<usize> {
        self.units.iter().position(|u| u == name)
    }
    fn begin_token(&mut self, token: u32) {
        self.token = token;
        self.base = token as u64 % self.copies * self.copy_bytes;
        if let Some(seen) = &mut self.seen {
            seen.fill(0);
        }
    }
    fn submit(&mut self, _now: Ps, read: u32, e: Extent) -> Result<Option<Ps>, SimError> {
        let issued = aligned(e);
        let record = self.reads.len();
        self.reads.push(ReadRecord {
            planned: e,
            issued,
            base: self.base,
            checksum: 0,
        });
        let verify = self
            .verify
            .then_some(((e.offset - issued.offset) as usize, e.bytes as usize));
        let job = ReadJob {
            read,
            extent: issued,
            base: self.base,
            record,
            verify,
        };
        match &mut self.ring {
            Some(ring) => ring
                .queue(job)
                .map_err(|e| SimError::Plan(format!("{e:#}")))?,
            None => self
                .jobs_io
                .as_ref()
                .ok_or_else(stopped)?
                .send(Job::Read(job))
                .map_err(|_| stopped())?,
        }
        Ok(None)
    }
    fn start_op(
        &mut self,
        now: Ps,
        j: u32,
        op: &Op,
        _unit: usize,
        reads_beside: bool,
        _dram: &mut Dram,
    ) -> Result<(Ps, Option<Ps>), SimError> {
        if let Some(seen) = &mut self.seen {
            // No kernel runs now (ops are a chain) and reads land here only from this thread.
            for &e in &op.weights {
                self.image
                    .check(e)
                    .map_err(|err| SimError::Plan(format!("op {j}: {err}")))?;
                let r = e.offset as usize..e.end() as usize;
                seen[r.clone()].copy_from_slice(&self.image.as_slice()[r]);
            }
        }
        self.jobs_op
            .as_ref()
            .ok_or_else(stopped)?
            .send(Job::Op {
                j,
                token: self.token,
                reads_beside,
                flops: op.flops,
                bytes: op.dram_bytes,
                weights: op.weights.clone(),
            })
            .map_err(|_| stopped())?;
        Ok((now, None))
    }
    fn hold(&mut self, e: Extent) -> Result<(), SimError> {
        match &mut self.held {
            Some(h) => h.hold(e),
            None => Ok(()),
        }
    }
    fn let_go(&mut self, e: Extent) -> Result<(), SimError> {
        let Some(h) = &mut self.held else {
            return Ok(());
        };
        for run in h.let_go(e)? {
            self.image
                .zero(run)
                .map_err(|err| SimError::Plan(err.to_string()))?;
        }
        Ok(())
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
/// `f(kind, layer, r, c, offset)`. f32 weights only (the checkpoints flashsim runs). Every
/// layout: per-matrix rows or columns, LLM in a Flash's bundles, ActiveFlow's interleave (in
/// a group's region, channel c of each layer is one unit: column c of each of the operator's
/// matrices in turn).
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
    for region in layout.interleave_regions() {
        for l in region.first_layer..region.first_layer + region.layers {
            let mats = layout.interleave_matrices(shape, region, l);
            for c in 0..region.channels {
                let base = region.channel(l, c).offset;
                let mut row0 = 0u64;
                for m in &mats {
                    for r in 0..m.rows {
                        f(
                            m.kind,
                            Some(l),
                            r as usize,
                            c as usize,
                            base + 4 * (row0 + r),
                        );
                    }
                    row0 += m.rows;
                }
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

#[cfg(test)]
mod tests {
    use flashsim_policies::layout::WeightLayout;
    use flashsim_workloads::shape::{ModelShape, TensorKind as K};

    /// hidden 2, 2 heads of 1 (q_dim 2), 1 KV head (kv_dim 1), FFN 3, three layers, f32.
    fn shape() -> ModelShape {
        ModelShape {
            name: "tiny".into(),
            source: String::new(),
            layers: 3,
            hidden: 2,
            intermediate: 3,
            heads: 2,
            kv_heads: 1,
            vocab: 4,
            bytes_per_weight: 4.0,
            gated: true,
            tied_embeddings: true,
            head_dim: None,
        }
    }

    fn ext(offset: u64, bytes: u64) -> flashsim_policies::Extent {
        flashsim_policies::Extent { offset, bytes }
    }

    #[test]
    fn held_bytes_count_each_byte_once_and_go_with_their_last_hold() {
        let mut h = super::Held::new(100);
        // A cache entry 10..30 and a buffer 20..50 over it: 40 bytes held.
        h.hold(ext(10, 20)).unwrap();
        h.hold(ext(20, 30)).unwrap();
        assert_eq!(h.bytes(), (40, 40));
        // The buffer goes: only 30..50 is no longer held.
        assert_eq!(h.let_go(ext(20, 30)).unwrap(), vec![ext(30, 20)]);
        assert_eq!(h.bytes(), (20, 40));
        h.hold(ext(60, 5)).unwrap();
        assert_eq!(h.bytes(), (25, 40));
        // Evicting 10..30 frees it all; letting go of it again is an error, as is an extent
        // beyond DRAM.
        assert_eq!(h.let_go(ext(10, 20)).unwrap(), vec![ext(10, 20)]);
        assert!(h.let_go(ext(15, 1)).is_err());
        assert!(h.hold(ext(95, 10)).is_err());
        assert_eq!(h.bytes(), (5, 40));
    }

    #[test]
    fn a_mapping_is_zeroed_page_rounded_and_starts_on_a_huge_page() {
        use crate::real::Mapping;
        let mut m = Mapping::new((5 << 20) + 1).unwrap();
        assert_eq!(m.len(), (5 << 20) + 4096);
        assert_eq!(m.bytes().as_ptr() as usize % (2 << 20), 0);
        assert!(m.bytes().iter().all(|&b| b == 0));
        assert_eq!(m.words().len(), m.len() / 8);
        // Every byte is writable, the last page's too.
        m.words_mut().fill(u64::MAX);
        assert!(m.bytes().iter().all(|&b| b == 0xff));
        assert_eq!(Mapping::new(0).unwrap().len(), 4096);
    }

    #[test]
    fn timed_ops_take_turns_over_their_span_and_a_larger_op_is_refused() {
        let mut t = crate::real::OpTimer::over(8 << 20).unwrap();
        assert_eq!(t.span_bytes(), 8 << 20);
        let s = t.seconds(3 << 20, 0.0).unwrap();
        assert!(s > 0.0 && s < 1.0, "{s}");
        // Slots at 0, 3 and (8 < 9) back to 0 MiB: after at least six ops the next one starts
        // at 3 or 6 MiB, never where the last one did.
        assert!(t.next == 3 << 20 || t.next == 6 << 20, "{}", t.next);
        // An odd size is rounded up to whole 16-bit weights; one larger than the span fails.
        t.seconds(1001, 0.0).unwrap();
        assert!(t.next.is_multiple_of(2) && t.next <= (8 << 20));
        let e = t.seconds((8 << 20) + 2, 0.0).unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
        // 1 MiB in 8 KiB pieces every 16 KiB reaches 2 MiB: from 0, 2, 4, 6 MiB in turn.
        t.next = 0;
        assert!(t.gathered_seconds(1 << 20, 8 << 10, 16 << 10, 0.0).unwrap() > 0.0);
        assert!(
            t.next.is_multiple_of(2 << 20) && t.next <= (8 << 20),
            "{}",
            t.next
        );
        for (bytes, piece, stride) in [(1000, 3, 8), (1024, 8, 4), (1000, 16, 32), (8, 0, 8)] {
            let e = t
                .gathered_seconds(bytes, piece, stride, 0.0)
                .unwrap_err()
                .to_string();
            assert!(e.contains("is not an op"), "{e}");
        }
        // An op whose weights pass the span's end: the compute thread's own error, not only
        // that it stopped.
        let op = |offset| crate::real::TimedOp {
            token: 0,
            flops: 8192,
            bytes: 8192,
            weights: vec![ext(offset, 8192)],
        };
        assert_eq!(t.run_ops(&[op(0), op((8 << 20) - 8192)]).unwrap().len(), 2);
        let e = format!("{:#}", t.run_ops(&[op(0), op(8 << 20)]).unwrap_err());
        assert!(e.contains("beyond DRAM"), "{e}");
    }

    #[test]
    fn the_kernel_streams_every_piece_once_per_pass_its_flops_need() {
        let a = vec![1i16; 1000];
        let b = [2i16; 24];
        use crate::real::{kernel, Piece};
        let pieces = [Piece(a.as_ptr(), 1000), Piece(b.as_ptr(), 24)];
        // One multiply-add (2 FLOPs) per weight: 2048 FLOPs is one pass of 1024 weights.
        assert_eq!(kernel(&pieces, 2048), 2048);
        // Three passes' worth, and a partial fourth, round up to four passes.
        assert_eq!(kernel(&pieces, 3 * 2048 + 2), 4 * 2048);
        // Fewer FLOPs than weights: still one pass over every weight.
        assert_eq!(kernel(&pieces[1..], 2), 48);
    }

    #[test]
    fn every_kernel_path_sums_every_weight_of_every_piece_once() {
        use crate::real::{task_sum, task_sum_portable, Piece};
        // Lengths around the vector steps (32 and 64 weights) and longer than the prefetch
        // distance, so that whole lines, two-line steps and tails are all taken.
        let lens = [1usize, 31, 32, 33, 63, 64, 65, 127, 1000, 5000, 9001];
        let data: Vec<Vec<i16>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                (0..n)
                    .map(|j| ((i * 7919 + j * 31) % 201) as i16 - 100)
                    .collect()
            })
            .collect();
        let pieces: Vec<Piece> = data.iter().map(|d| Piece(d.as_ptr(), d.len())).collect();
        let x = 0.5f32;
        let exact: f64 = data.iter().flatten().map(|&v| v as f64 * x as f64).sum();
        // Each weight counted once: a missed or doubled line of 32 weights would move the sum
        // by hundreds, against float rounding well under one.
        assert!((task_sum_portable(&pieces, x) as f64 - exact).abs() < 0.5);
        assert!((task_sum(&pieces, x) as f64 - exact).abs() < 0.5);
        #[cfg(target_arch = "x86_64")]
        if crate::real::has_avx512() {
            // SAFETY: the CPU has the features; the pieces are live.
            let wide = unsafe { crate::real::task_sum_avx512(&pieces, x) };
            assert!((wide as f64 - exact).abs() < 0.5);
        }
    }

    #[test]
    fn the_interleaved_layout_puts_each_weight_in_its_channel_of_its_layer() {
        let s = shape();
        let opers: [&[K]; 4] = [
            &[K::Wq, K::Wk, K::Wv],
            &[K::Wo],
            &[K::Gate, K::Up],
            &[K::Down],
        ];
        // Groups of 2 layers: layers 0-1, then layer 2 alone.
        let layout = WeightLayout::interleaved(&s, 4096, 2, &opers);
        let mut at = std::collections::HashMap::new();
        super::for_each_weight(&layout, &s, |kind, layer, r, c, off| {
            assert!(at.insert((kind, layer, r, c), off).is_none());
        })
        .unwrap();
        // By hand: the Q/K/V unit of one channel of one layer is column c of Wq (2 rows), Wk
        // (1) and Wv (1): 4 weights, 16 B; in group 0 channel c of layer l is unit 2c + l.
        let qkv = layout.interleave_region(0, 0).unwrap();
        assert_eq!(qkv.unit_bytes, 16);
        let unit = |c: u64, l: u64| qkv.offset + (2 * c + l) * 16;
        assert_eq!(at[&(K::Wq, Some(0), 0, 0)], unit(0, 0));
        assert_eq!(at[&(K::Wq, Some(0), 1, 0)], unit(0, 0) + 4);
        assert_eq!(at[&(K::Wk, Some(1), 0, 1)], unit(1, 1) + 8);
        assert_eq!(at[&(K::Wv, Some(1), 0, 0)], unit(0, 1) + 12);
        // Gate/up: a unit is gate column c (3 rows) then up column c (3 rows).
        let gu = layout.interleave_region(1, 2).unwrap();
        assert_eq!(gu.unit_bytes, 24);
        assert_eq!(
            at[&(K::Up, Some(1), 2, 1)],
            gu.offset + (2 + 1) * 24 + 12 + 8
        );
        // The last group has one layer: channel c is unit c.
        let down = layout.interleave_region(2, 3).unwrap();
        assert_eq!((down.first_layer, down.layers), (2, 1));
        assert_eq!(at[&(K::Down, Some(2), 1, 2)], down.offset + 2 * 8 + 4);
        // Every weight of every layer matrix and the embedding once, each in its own 4 bytes,
        // each layer weight inside the extent the policy reads for its channel.
        let per_layer: u64 = s.layer_tensors(0).iter().map(|t| t.rows * t.cols).sum();
        assert_eq!(at.len() as u64, 3 * per_layer + 4 * 2);
        let mut offs: Vec<u64> = at.values().copied().collect();
        offs.sort_unstable();
        assert!(offs.windows(2).all(|w| w[1] >= w[0] + 4));
        for (&(kind, layer, _, c), &off) in &at {
            let Some(l) = layer else { continue };
            let o = opers.iter().position(|o| o.contains(&kind)).unwrap();
            let e = layout.interleave_region(l, o).unwrap().channel(l, c as u64);
            assert!(off >= e.offset && off + 4 <= e.end(), "{kind:?} {l} {c}");
        }
    }
}
