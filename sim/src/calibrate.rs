//! `flashsim calibrate`: measures the machine into a device file.
//!
//! Storage: O_DIRECT reads of every request size (4 KiB … 4 MiB by default) at every queue depth
//! (1 … 64) through the real backend's own readers ([`crate::real::read_latencies`]: a pool of
//! threads each keeping one `pread` in flight, or one io_uring that the issuing thread drives,
//! `Engine::IoUring`; each completion reported to the issuing thread, which issues the next, as
//! the pipeline does, so the table carries the backend's per-read cost), at seeded random aligned
//! offsets of a file written first with random bytes. O_DIRECT keeps the page cache out; where a
//! filesystem refuses it (tmpfs, some overlays) calibration stops with an error instead of
//! measuring memory. The file should be larger than any cache below the filesystem (the drive's
//! own DRAM, a hypervisor's host cache): `--file-gib`.
//!
//! Memory and compute: read bandwidth of a buffer much larger than the caches, and the f32
//! matrix-vector rate of a cache-resident matrix (the kernel shape of a decode step), each for
//! 1 … all threads; and the rate at which the real backend's op kernel streams weights.
//!
//! Output: `configs/devices/NAME.toml` with the `measured` flash model (the throughput table),
//! DRAM and a `cpu` unit at their measured rates, every figure per thread count and the
//! environment (kernel, filesystem, CPU model, threads, date) as comments; and beside the plots,
//! `NAME.csv` with one row per (size, queue depth): requests, throughput, mean/P50/P99 latency.

use crate::hw::flash_measured::SEQUENTIAL_BYTES;
use crate::real::{ReadOrder, ReadPattern};
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// O_DIRECT needs buffers, offsets and lengths aligned to the logical block size; 4 KiB covers
/// every device in use.
pub const ALIGN: usize = 4096;

/// A heap buffer aligned for O_DIRECT.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// The buffer is plain bytes owned by this value.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zero bytes (rounded up to a multiple of [`ALIGN`]) at an [`ALIGN`]ed address.
    pub fn zeroed(len: usize) -> Self {
        let len = len.max(1).div_ceil(ALIGN) * ALIGN;
        let layout = std::alloc::Layout::from_size_align(len, ALIGN).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialized bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, ALIGN).expect("layout");
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// Opens `path` with O_DIRECT (read-only, or created for writing), naming the filesystem when
/// the kernel refuses.
pub fn open_direct(path: &Path, write: bool) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).custom_flags(libc::O_DIRECT);
    if write {
        o.write(true).create(true).truncate(false);
    }
    o.open(path).map_err(|e| refused(path, e))
}

fn refused(path: &Path, e: std::io::Error) -> anyhow::Error {
    if e.raw_os_error() == Some(libc::EINVAL) {
        let dir = path.parent().unwrap_or(path);
        anyhow::anyhow!(
            "O_DIRECT is refused under {} (filesystem: {}): without it the reads would measure \
             the page cache, not the storage. Calibrate a directory on a real disk.",
            dir.display(),
            filesystem(dir)
        )
    } else {
        anyhow::Error::new(e).context(format!("cannot open {} with O_DIRECT", path.display()))
    }
}

/// The filesystem type of `dir`, by its statfs magic number.
pub fn filesystem(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return "unknown".into();
    };
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return "unknown".into();
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = s.f_type as u64;
    match magic {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0xF2F5_2010 => "f2fs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x8584_58F6 => "ramfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x6969 => "nfs".into(),
        0x6573_5546 => "fuse".into(),
        m => format!("statfs type {m:#x}"),
    }
}

/// Memory-backed filesystems hold their files in the page cache itself; newer kernels accept
/// O_DIRECT on tmpfs, but the reads still measure memory. Refused like a missing O_DIRECT.
pub fn refuse_memory_backed(dir: &Path) -> Result<()> {
    let fs = filesystem(dir);
    if fs == "tmpfs" || fs == "ramfs" {
        bail!(
            "{} is on {fs}, which keeps files in memory (the page cache): reads there would \
             measure DRAM, not storage, even with O_DIRECT. Calibrate a directory on a real disk.",
            dir.display()
        );
    }
    Ok(())
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    /// Device name (the file is `out_dir/NAME.toml`).
    pub name: String,
    pub out_dir: PathBuf,
    /// Where the curve plot and the CSV go.
    pub plots_dir: PathBuf,
    pub file_bytes: u64,
    pub sizes_kib: Vec<u64>,
    pub queue_depths: Vec<u32>,
    pub seconds_per_point: f64,
    /// Each cell's time is split over this many passes over the table (ascending, then
    /// descending, …), so that the disk's drift over minutes spreads over all cells instead of
    /// bending one region of the curve. At least 1.
    pub passes: u32,
    /// Keep the test file for a later run (it is reused when its size matches).
    pub keep_file: bool,
    /// How the table's reads are issued.
    pub engine: Engine,
    pub seed: u64,
}

/// How calibration keeps `qd` reads in flight (and how the real backend reads on the device
/// file it writes: see [`crate::device::ReadEngine`]).
pub use crate::device::ReadEngine as Engine;

/// One (size, queue depth) measurement.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub size_bytes: u64,
    pub queue_depth: u32,
    pub requests: u64,
    pub seconds: f64,
    pub throughput_gb_per_s: f64,
    pub mean_latency_us: f64,
    pub p50_latency_us: f64,
    pub p99_latency_us: f64,
    /// The process's CPU time (user and system, every thread: the kernel's and the readers'
    /// work for a read, where the op kernels would compete for it) per read, µs; `None`
    /// where not measured.
    pub cpu_us_per_read: Option<f64>,
}

/// CPU seconds this process has used so far, user and system, all threads (`getrusage`).
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// Memory and compute rates for one thread count.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub threads: usize,
    /// Bytes of the buffer the DRAM read pass read ([`rate_buffer`]).
    pub buffer_bytes: u64,
    pub dram_read_gb_per_s: f64,
    pub gemv_gflops: f64,
}

/// The next number of a seeded stream (SplitMix64 of a counter).
pub(crate) fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(1);
    crate::runner::splitmix64(*x)
}

/// Creates (or reuses, when its size matches) the test file, filled with random bytes written
/// through O_DIRECT so that the page cache never holds it.
pub fn prepare_file(path: &Path, bytes: u64, seed: u64) -> Result<()> {
    if bytes < 4 << 20 || !bytes.is_multiple_of(4 << 20) {
        bail!("the test file must be a positive multiple of 4 MiB, got {bytes} bytes");
    }
    if std::fs::metadata(path)
        .map(|m| m.len() == bytes)
        .unwrap_or(false)
    {
        // Still check that O_DIRECT works here.
        open_direct(path, false)?;
        return Ok(());
    }
    let f = open_direct(path, true)?;
    f.set_len(0)?;
    let chunk = 4usize << 20;
    let mut buf = AlignedBuf::zeroed(chunk);
    let mut state = seed ^ 0x5EED;
    let mut off = 0u64;
    while off < bytes {
        for w in buf.as_mut_slice().chunks_exact_mut(8) {
            w.copy_from_slice(&splitmix(&mut state).to_le_bytes());
        }
        f.write_all_at(buf.as_slice(), off)
            .map_err(|e| refused(path, e))
            .with_context(|| format!("writing {}", path.display()))?;
        off += chunk as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// The `q` quantile of ascending `sorted` (nearest rank; not empty).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

/// How many `size`-byte slots a read may start at, checking that `size` suits O_DIRECT.
pub(crate) fn slots(file_bytes: u64, size: u64) -> Result<u64> {
    if size == 0 || !size.is_multiple_of(ALIGN as u64) || size > file_bytes {
        bail!("request size {size} must be a multiple of {ALIGN} no larger than the file");
    }
    Ok(file_bytes / size)
}

/// The threads this machine runs at once.
pub(crate) fn hardware_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub(crate) fn cell_of(size: u64, qd: u32, elapsed: f64, mut lat: Vec<f64>) -> Cell {
    lat.sort_by(f64::total_cmp);
    let n = lat.len();
    let q = |p: f64| quantile(&lat, p);
    Cell {
        size_bytes: size,
        queue_depth: qd,
        requests: n as u64,
        seconds: elapsed,
        throughput_gb_per_s: n as f64 * size as f64 / elapsed / 1e9,
        mean_latency_us: lat.iter().sum::<f64>() / n as f64,
        p50_latency_us: q(0.5),
        p99_latency_us: q(0.99),
        cpu_us_per_read: None,
    }
}

/// The largest CPU cache the kernel reports for CPU 0 (sysfs `cache/index*/size`, e.g.
/// `491520K`), bytes; `None` where it reports none. On a VM this is the host's cache as the
/// hypervisor describes it, shared with its other guests.
pub fn last_level_cache_bytes() -> Option<u64> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|e| {
        let size = std::fs::read_to_string(e.ok()?.path().join("size")).ok()?;
        parse_cache_size(size.trim())
    })
    .max()
}

/// `491520K`, `32M`, `1024` (bytes) as bytes.
fn parse_cache_size(s: &str) -> Option<u64> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let unit = match unit.trim() {
        "" => 1,
        "K" | "KB" | "KiB" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// How many bytes a DRAM measurement reads before it reads the same byte again, so that no
/// cache holds what it reads: four times the last-level cache, at least 256 MiB (when no cache
/// is reported, 8x the largest seen on this project's machines before a 480 MiB one), at most a
/// quarter of the memory available; a multiple of 2 MiB.
pub fn beyond_cache_bytes() -> u64 {
    beyond_cache(last_level_cache_bytes(), available_bytes())
}

fn beyond_cache(llc: Option<u64>, available: u64) -> u64 {
    let want = (4 * llc.unwrap_or(0)).max(256 << 20);
    want.min(available / 4)
        .max(64 << 20)
        .next_multiple_of(2 << 20)
}

/// The buffer DRAM bandwidth is read from ([`beyond_cache_bytes`] large), the same kind of
/// DRAM the backend's kernels read ([`crate::real::Mapping`]: huge pages where the kernel
/// grants them).
pub fn rate_buffer() -> Result<crate::real::Mapping> {
    let mut m = crate::real::Mapping::new(beyond_cache_bytes() as usize)?;
    for (i, w) in m.words_mut().iter_mut().enumerate() {
        *w = i as u64;
    }
    Ok(m)
}

/// DRAM read bandwidth and f32 GEMV rate with `threads` threads.
/// `buf` is the memory read (see [`rate_buffer`]), built once for every thread count.
pub fn measure_rates(buf: &[u64], threads: usize, seconds: f64) -> Rates {
    let words = buf.len();
    let chunk = words.div_ceil(threads);
    let run = |f: &(dyn Fn(usize) -> f64 + Sync)| -> f64 {
        let start = Instant::now();
        let work: f64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|t| s.spawn(move || f(t))).collect();
            hs.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        work / start.elapsed().as_secs_f64()
    };
    let passes = |per_pass_s: f64| ((seconds / per_pass_s).ceil() as usize).clamp(1, 64);
    // A pass over the buffer takes about its size over 10 GB/s.
    let mem_passes = passes((words * 8) as f64 / 10e9);
    let dram = run(&|t| {
        let part = &buf[(t * chunk).min(words)..((t + 1) * chunk).min(words)];
        let mut acc = 0u64;
        for _ in 0..mem_passes {
            acc = acc.wrapping_add(part.iter().fold(0u64, |a, &x| a.wrapping_add(x)));
        }
        std::hint::black_box(acc);
        (part.len() * 8 * mem_passes) as f64
    });
    // Compute: y = W x on a 256 x 1024 f32 matrix per thread (1 MiB, cache-resident), 2 FLOPs
    // per weight; eight independent accumulators per row so the adds can vectorize.
    let (rows, cols) = (256usize, 1024usize);
    let reps = passes(0.0005).max(200);
    let gemv = run(&|t| {
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i + t) % 17) as f32 * 0.01)
            .collect();
        let x: Vec<f32> = (0..cols).map(|i| (i % 13) as f32 * 0.1).collect();
        let mut y = vec![0f32; rows];
        for _ in 0..reps {
            for (r, yr) in y.iter_mut().enumerate() {
                let row = &w[r * cols..(r + 1) * cols];
                let mut acc = [0f32; 8];
                for (wc, xc) in row.chunks_exact(8).zip(x.chunks_exact(8)) {
                    for k in 0..8 {
                        acc[k] += wc[k] * xc[k];
                    }
                }
                *yr = acc.iter().sum();
            }
            std::hint::black_box(&mut y);
        }
        (2 * rows * cols * reps) as f64
    });
    Rates {
        threads,
        buffer_bytes: (words * 8) as u64,
        dram_read_gb_per_s: dram / 1e9,
        gemv_gflops: gemv / 1e9,
    }
}

fn read_first_line(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split(':').nth(1))
        .map(|v| v.trim().to_string())
}

/// Today's date (UTC) as YYYY-MM-DD.
fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}")
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn cpu_model() -> String {
    read_first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into())
}

/// The environment a device file records (the `# key: value` comments before its first
/// setting, as [`device_toml`] writes them); none for a preset.
pub fn recorded_environment(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .take_while(|l| l.is_empty() || l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.trim_start_matches('#').split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// How this machine differs from the one a device file was calibrated on, one line per
/// figure (CPU model, hardware threads, kernel release); empty when they match or the file
/// records no environment. Its figures need not describe another machine: the same VM image
/// has run on AMD EPYC and Intel Xeon hosts for this project.
pub fn differences_from_recorded(text: &str) -> Vec<String> {
    let here = [
        ("cpu", cpu_model()),
        ("threads", hardware_threads().to_string()),
        ("kernel", kernel_release()),
    ];
    differences(&recorded_environment(text), &here)
}

fn differences(recorded: &[(String, String)], here: &[(&str, String)]) -> Vec<String> {
    here.iter()
        .filter_map(|(k, now)| {
            let (_, then) = recorded.iter().find(|(rk, _)| rk == k)?;
            (then != now).then(|| format!("{k}: {then} when calibrated, {now} here"))
        })
        .collect()
}

/// The measured environment, one `# key: value` comment line each.
fn environment(o: &Options) -> Vec<(String, String)> {
    let threads = hardware_threads();
    vec![
        ("date".into(), today()),
        ("kernel".into(), kernel_release()),
        ("directory".into(), o.dir.display().to_string()),
        ("filesystem".into(), filesystem(&o.dir)),
        ("cpu".into(), cpu_model()),
        ("threads".into(), threads.to_string()),
        (
            "last-level cache".into(),
            match last_level_cache_bytes() {
                Some(b) => format!(
                    "{} MiB (sysfs); DRAM and ops are measured beyond it (below)",
                    b >> 20
                ),
                None => "not reported".into(),
            },
        ),
        (
            "transparent huge pages".into(),
            format!(
                "{} (the DRAM measured and the backend's ask for them)",
                transparent_huge_pages()
            ),
        ),
        (
            "test file".into(),
            format!(
                "{} MiB, O_DIRECT, random aligned offsets",
                o.file_bytes >> 20
            ),
        ),
        (
            "seconds per point".into(),
            format!(
                "{} (in {} passes over the table, ascending then descending)",
                o.seconds_per_point,
                o.passes.max(1)
            ),
        ),
        (
            "method".into(),
            format!(
                "the real backend's readers ({}) into one populated DRAM mapping (at the file \
                 offset, modulo its size); each completion handed to the issuing thread, which \
                 issues the next",
                match o.engine {
                    Engine::Pread => "pread threads, one read in flight each",
                    Engine::IoUring => "one io_uring driven by the issuing thread",
                }
            ),
        ),
    ]
}

/// The kernel's transparent huge page mode (the bracketed word of
/// `/sys/kernel/mm/transparent_hugepage/enabled`: `always`, `madvise` or `never`), which decides
/// whether [`crate::real::Mapping`]'s advice is honoured.
pub(crate) fn transparent_huge_pages() -> String {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|s| {
            let a = s.find('[')?;
            let b = s[a..].find(']')?;
            Some(s[a + 1..a + b].to_string())
        })
        .unwrap_or_else(|| "unknown (no /sys/kernel/mm/transparent_hugepage)".into())
}

/// A `/proc/meminfo` figure, KiB.
fn meminfo_kib(key: &str) -> Option<u64> {
    read_first_line("/proc/meminfo", key)
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
}

/// Memory available now (`MemAvailable`), bytes; 4 GiB when it cannot be read.
fn available_bytes() -> u64 {
    meminfo_kib("MemAvailable").map_or(4 << 30, |kib| kib * 1024)
}

/// The DRAM that measured reads of a `file_bytes` file land in, as the backend's land in its
/// mapping of the weight file: one populated mapping the size of the file where it fits in
/// half of the memory available, else that half, rounded down to a multiple of `largest` (the
/// largest read; reads land at their offset modulo its size).
pub(crate) fn measurement_dram(
    file_bytes: u64,
    largest: u64,
    progress: &mut dyn FnMut(&str),
) -> Result<std::sync::Arc<crate::real::Image>> {
    let dram_bytes = (file_bytes.min(available_bytes() / 2) / largest * largest).max(largest);
    progress(&format!(
        "mapping {} MiB of DRAM for the reads to land in ...",
        dram_bytes >> 20
    ));
    Ok(std::sync::Arc::new(crate::real::Image::new(dram_bytes)?))
}

/// Installed DRAM, GiB (from /proc/meminfo).
fn dram_gib() -> f64 {
    meminfo_kib("MemTotal")
        .map(|kib| kib as f64 / (1u64 << 20) as f64)
        .unwrap_or(8.0)
}

/// The real backend's ops as measured: mean seconds per op of each size, and the fit
/// `seconds = overhead + bytes / rate` that the device file carries.
#[derive(Debug, Clone, PartialEq)]
pub struct OpTimes {
    /// (op bytes, mean seconds), ascending in bytes.
    pub points: Vec<(u64, f64)>,
    pub overhead_us: f64,
    pub gb_per_s: f64,
    /// A [`BESIDE_READS_OP_BYTES`] op timed while reads ran beside it: (read KiB, queue
    /// depth, mean seconds). Empty until measured.
    pub beside_reads: Vec<(u64, u32, f64)>,
    /// Ops over pieces ([`GATHERED_OPS`]): (piece bytes, stride bytes, op bytes, mean seconds).
    /// Empty until measured.
    pub gathered: Vec<(u64, u64, u64, f64)>,
    /// Bytes of DRAM the timed ops took turns over ([`crate::real::OpTimer::span_bytes`]); 0
    /// until measured.
    pub span_bytes: u64,
}

/// The gathered ops calibrate times, 64 MiB of weights each: (piece, stride) bytes. DIP's
/// 8 KiB down columns of a 7B FFN with half of them kept (every 16 KiB), its 22 KiB gate/up
/// columns likewise, ActiveFlow's mean run of channels in `validate-vm` (51 KiB) with 60% of
/// them left out (every 128 KiB), and 256 KiB runs (long bundles), past any ramp seen so far.
/// On this project's VM, with the backend's earlier kernel, the cost of a piece grew with its
/// size up to ~40-50 KiB and then stayed; the stride did not matter (throwaway measurement,
/// 16-640 KiB strides). With the current kernel the fit's ramp is longer (184 KiB).
pub const GATHERED_OPS: [(u64, u64); 4] = [
    (8 << 10, 16 << 10),
    (22 << 10, 44 << 10),
    (51 << 10, 128 << 10),
    (256 << 10, 640 << 10),
];

/// The op timed beside reads: a decode-sized matrix.
pub const BESIDE_READS_OP_BYTES: u64 = 64 << 20;

/// Ops at least this large stream from DRAM on any CPU (beyond its last-level cache), as a
/// decode step's weight matrices do.
pub const STREAMING_OP_BYTES: u64 = 64 << 20;

impl OpTimes {
    /// The rate: bytes over time summed over the ops of at least [`STREAMING_OP_BYTES`] (all
    /// ops when none is that large), the rate at which decode's large matrices stream. The
    /// overhead: what the smallest op took beyond its bytes at that rate, or 0 when it took
    /// less (an op small enough to run from the CPU's caches is faster per byte; a line fitted
    /// through both regimes overstated the rate of large ops by 10-15% on this project's VM).
    pub fn fit(points: Vec<(u64, f64)>) -> Result<OpTimes> {
        if points.is_empty()
            || points
                .iter()
                .any(|&(b, t)| b == 0 || t.is_nan() || t <= 0.0)
        {
            bail!("op timings must be positive: {points:?}");
        }
        let large: Vec<&(u64, f64)> = points
            .iter()
            .filter(|p| p.0 >= STREAMING_OP_BYTES)
            .collect();
        let pool = if large.is_empty() {
            points.iter().collect()
        } else {
            large
        };
        let bytes_per_s =
            pool.iter().map(|p| p.0 as f64).sum::<f64>() / pool.iter().map(|p| p.1).sum::<f64>();
        let &(b0, t0) = points.iter().min_by_key(|p| p.0).expect("not empty");
        Ok(OpTimes {
            overhead_us: (t0 - b0 as f64 / bytes_per_s).max(0.0) * 1e6,
            gb_per_s: bytes_per_s / 1e9,
            points,
            beside_reads: Vec::new(),
            gathered: Vec::new(),
            span_bytes: 0,
        })
    }

    /// What each piece of the gathered ops cost beyond the fitted time of as many contiguous
    /// bytes, ns, per kind of op.
    pub fn piece_costs_ns(&self) -> Vec<f64> {
        self.gathered
            .iter()
            .map(|&(piece, _, bytes, t)| {
                (t - self.fitted_seconds(bytes)) / (bytes / piece) as f64 * 1e9
            })
            .collect()
    }

    /// The compute unit's piece ramp, (`piece_ramp_kib` in bytes, `piece_ramp_gb_per_s`),
    /// fitted to [`Self::piece_costs_ns`]: a piece of `m` bytes costs `k · min(m, R)` beyond
    /// the contiguous fit (its first `R` bytes stream at `1 / (1 / rate + k)`), `R` a multiple
    /// of 4 KiB up to the largest piece (the smallest of equal fits) and `k` its least-squares
    /// slope. None when nothing was measured or the pieces cost nothing beyond their bytes.
    ///
    /// A piece that cost less than nothing (its op ran faster than the contiguous fit) counts
    /// as costing nothing: gathering cannot beat streaming, so that figure is the memory's
    /// drift between the two measurements, and left negative it outweighed the rest. On this
    /// project's VM (calibration T) the 256 KiB pieces came out at -1.2 µs each beside
    /// 60-155 ns for the others, and the fit had no ramp at all.
    pub fn piece_ramp(&self) -> Option<(u64, f64)> {
        let pts: Vec<(f64, f64)> = self
            .gathered
            .iter()
            .zip(self.piece_costs_ns())
            .map(|(&(piece, ..), ns)| (piece as f64, ns.max(0.0) * 1e-9))
            .collect();
        let largest = self.gathered.iter().map(|g| g.0).max()?;
        let mut best: Option<(f64, u64, f64)> = None;
        for r in (1..=largest.div_ceil(4096)).map(|i| i * 4096) {
            let x = |m: f64| m.min(r as f64);
            let sxx: f64 = pts.iter().map(|&(m, _)| x(m) * x(m)).sum();
            let k = (pts.iter().map(|&(m, c)| x(m) * c).sum::<f64>() / sxx).max(0.0);
            let sse: f64 = pts.iter().map(|&(m, c)| (c - k * x(m)).powi(2)).sum();
            if best.is_none_or(|b| sse < b.0 * (1.0 - 1e-9)) {
                best = Some((sse, r, k));
            }
        }
        let (_, r, k) = best?;
        (k > 0.0).then(|| (r, 1.0 / (1.0 / (self.gb_per_s * 1e9) + k) / 1e9))
    }

    /// Seconds the fit gives an op of `bytes`.
    pub fn fitted_seconds(&self, bytes: u64) -> f64 {
        self.overhead_us * 1e-6 + bytes as f64 / (self.gb_per_s * 1e9)
    }

    /// How many times longer than the fit says the op beside reads took, beyond the dispatch
    /// overhead, on average over the read kinds (at least 1; 1 when not measured).
    pub fn beside_reads_slowdown(&self) -> f64 {
        if self.beside_reads.is_empty() {
            return 1.0;
        }
        let over = self.overhead_us * 1e-6;
        let alone = self.fitted_seconds(BESIDE_READS_OP_BYTES) - over;
        let mean =
            self.beside_reads.iter().map(|b| b.2).sum::<f64>() / self.beside_reads.len() as f64;
        ((mean - over) / alone).max(1.0)
    }
}

/// The `[flash]` lines of the near figures (`near`: cells of near reads and the largest gap
/// each was measured with, any order; none writes nothing): the widest gap's figures as
/// `near_gb_per_s`, the others' as `near_extra_gb_per_s`.
fn near_toml(near: &[(u64, Cell)]) -> String {
    let mut sizes: Vec<u64> = near.iter().map(|c| c.1.size_bytes).collect();
    let mut qds: Vec<u32> = near.iter().map(|c| c.1.queue_depth).collect();
    let mut gaps: Vec<u64> = near.iter().map(|c| c.0).collect();
    for v in [&mut sizes, &mut gaps] {
        v.sort_unstable();
        v.dedup();
    }
    qds.sort_unstable();
    qds.dedup();
    let Some(&widest) = gaps.last() else {
        return String::new();
    };
    let grid = |gap: u64| -> String {
        let mut s = String::new();
        for &size in &sizes {
            let row: Vec<String> = qds
                .iter()
                .map(|&q| {
                    let c = near
                        .iter()
                        .find(|c| c.0 == gap && c.1.size_bytes == size && c.1.queue_depth == q)
                        .expect("every near cell measured");
                    format!("{:.6}", c.1.throughput_gb_per_s.max(1e-6))
                })
                .collect();
            s.push_str(&format!("  [{}],  # {} KiB\n", row.join(", "), size / 1024));
        }
        s
    };
    let kib = |b: u64| (b >> 10) as f64;
    let mut s = format!(
        "# Reads in ascending file order, each 0-{} KiB (uniform, 4 KiB steps) past where the one\n\
         # before it ended (as DIP and ActiveFlow read the channels they keep), by chunk size (rows)\n\
         # and queue depth (columns): the table's figure times their throughput over that of\n\
         # random reads of the same size and depth measured in alternation with them; a read that\n\
         # starts at most near_gap_kib past the end of the one submitted before it runs at the\n\
         # table's rate times their ratio to it:\n",
        widest >> 10
    );
    s.push_str(&format!("near_gap_kib = {:?}\n", kib(widest)));
    s.push_str(&format!(
        "near_chunk_kib = {:?}\n",
        sizes.iter().map(|&b| kib(b)).collect::<Vec<_>>()
    ));
    s.push_str(&format!("near_queue_depths = {qds:?}\n"));
    s.push_str(&format!("near_gb_per_s = [\n{}]\n", grid(widest)));
    let others = &gaps[..gaps.len() - 1];
    if !others.is_empty() {
        s.push_str(
            "# The same at smaller largest gaps (0: strictly in file order). Each gap's figures\n\
             # stand for a gap of half of it; a read's ratio is interpolated on its own gap:\n",
        );
        s.push_str(&format!(
            "near_extra_gaps_kib = {:?}\n",
            others.iter().map(|&b| kib(b)).collect::<Vec<_>>()
        ));
        s.push_str("near_extra_gb_per_s = [\n");
        for &gap in others {
            let what = match gap {
                0 => "strictly in file order".to_string(),
                _ => format!("0-{} KiB apart", gap >> 10),
            };
            s.push_str(&format!(" [ # {what}\n{} ],\n", grid(gap)));
        }
        s.push_str("]\n");
    }
    s
}

/// The device file for these measurements.
pub fn device_toml(
    o: &Options,
    cells: &[Cell],
    sequential: &[Cell],
    near: &[(u64, Cell)],
    rates: &[Rates],
    ops: &OpTimes,
) -> String {
    let mut s = String::new();
    s.push_str(
        "# Measured by `flashsim calibrate` (sim/src/calibrate.rs); every figure below is a\n\
         # measurement of this machine, none is taken from a data sheet.\n",
    );
    for (k, v) in environment(o) {
        s.push_str(&format!("# {k}: {v}\n"));
    }
    s.push_str(&format!("name = \"{}\"\n", o.name));
    s.push_str(&format!(
        "description = \"Calibrated: {} under {}\"\n\n",
        filesystem(&o.dir),
        o.dir.display()
    ));
    s.push_str(&format!(
        "# The table below was measured with this engine; the real backend reads the same way.\n\
         read_engine = \"{}\"\n\n",
        o.engine.key()
    ));
    s.push_str("[flash]\nmodel = \"measured\"\n");
    let cell_at = |kib: u64, q: u32| {
        cells
            .iter()
            .find(|c| c.size_bytes == kib * 1024 && c.queue_depth == q)
    };
    // A comment table of one figure per cell: rows = chunk sizes, columns = queue depths.
    let figure_table = |s: &mut String, figure: fn(&Cell) -> Option<f64>| {
        for &kib in &o.sizes_kib {
            let row: Vec<String> = o
                .queue_depths
                .iter()
                .map(|&q| {
                    cell_at(kib, q)
                        .and_then(figure)
                        .map(|v| format!("{v:.1}"))
                        .unwrap_or_default()
                })
                .collect();
            s.push_str(&format!("#   {kib:>5} KiB: {}\n", row.join(", ")));
        }
    };
    s.push_str("# Mean latency per request (µs), rows = chunk sizes, columns = queue depths:\n");
    figure_table(&mut s, |c| Some(c.mean_latency_us));
    if cells.iter().any(|c| c.cpu_us_per_read.is_some()) {
        s.push_str(
            "# The process's CPU time per read (µs, user and system, every thread: the CPU a read\n\
             # takes from the op kernels), same rows and columns:\n",
        );
        figure_table(&mut s, |c| c.cpu_us_per_read);
    }
    s.push_str(&format!(
        "chunk_kib = {:?}\n",
        o.sizes_kib.iter().map(|&k| k as f64).collect::<Vec<_>>()
    ));
    s.push_str(&format!("queue_depths = {:?}\n", o.queue_depths));
    s.push_str(
        "# The table is of random offsets; 1 MiB reads in file order (a streaming reader, each\n\
         # read starting where the one before it ended), by queue depth:\n",
    );
    s.push_str(&format!(
        "sequential_queue_depths = {:?}\n",
        sequential.iter().map(|c| c.queue_depth).collect::<Vec<_>>()
    ));
    s.push_str(&format!(
        "sequential_gb_per_s = [{}]\n",
        sequential
            .iter()
            .map(|c| format!("{:.6}", c.throughput_gb_per_s))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    s.push_str(&near_toml(near));
    // The measured model rejects a cell faster than its queue depth allows (q / q0 times the
    // first column: concurrency cannot make a request faster than alone); on a noisy disk a
    // cell can measure so. Such a cell is lowered to the bound and the file says so.
    let q0 = o.queue_depths[0];
    let mut clamped = Vec::new();
    let mut rows = Vec::new();
    for &kib in &o.sizes_kib {
        // In millionths of a GB/s, as printed, so that the bound holds as written.
        let micro = |q: u32| {
            let c = cell_at(kib, q).expect("every cell measured");
            (c.throughput_gb_per_s.max(1e-6) * 1e6).round() as u64
        };
        let first = micro(q0);
        let row: Vec<String> = o
            .queue_depths
            .iter()
            .map(|&q| {
                let x = micro(q);
                let bound = first * q as u64 / q0 as u64;
                let gb = |m: u64| m as f64 / 1e6;
                if x > bound {
                    clamped.push(format!(
                        "{kib} KiB QD {q}: {:.3} GB/s measured, more than {:.0}x QD {} ({:.3}); set to {:.3}",
                        gb(x),
                        q as f64 / q0 as f64,
                        q0,
                        gb(first),
                        gb(bound)
                    ));
                }
                format!("{:.6}", gb(x.min(bound)))
            })
            .collect();
        rows.push(format!("  [{}],  # {kib} KiB\n", row.join(", ")));
    }
    for c in &clamped {
        s.push_str(&format!("# Clamped (noise): {c}\n"));
    }
    s.push_str("throughput_gb_per_s = [\n");
    s.push_str(&rows.concat());
    s.push_str("]\n\n");
    let best = rates
        .iter()
        .copied()
        .max_by(|a, b| a.threads.cmp(&b.threads))
        .expect("at least one thread count");
    s.push_str("[dram]\n# Installed memory (/proc/meminfo).\n");
    s.push_str(&format!("capacity_gib = {:.3}\n", dram_gib()));
    s.push_str(&format!(
        "# Read bandwidth of a {} MiB buffer, by threads:",
        best.buffer_bytes >> 20
    ));
    for r in rates {
        s.push_str(&format!(
            " {} -> {:.2} GB/s;",
            r.threads, r.dram_read_gb_per_s
        ));
    }
    s.push_str(&format!(
        "\nbandwidth_gb_per_s = {:.3}\n\n",
        rates
            .iter()
            .map(|r| r.dram_read_gb_per_s)
            .fold(0.0, f64::max)
    ));
    s.push_str("[compute.cpu]\n# f32 GEMV of a cache-resident matrix, by threads:");
    for r in rates {
        s.push_str(&format!(" {} -> {:.2} GFLOP/s;", r.threads, r.gemv_gflops));
    }
    // The backend's ops below do one multiply-add per 2-byte weight, as many FLOPs as bytes, so
    // their fitted rate in GB/s is also a FLOP rate they sustained.
    let op_gflops = ops.gb_per_s;
    if op_gflops > best.gemv_gflops {
        s.push_str(&format!(
            "\n# The backend's ops below sustained {op_gflops:.2} GFLOP/s (one multiply-add per 2-byte\n\
             # weight, beyond the fitted overhead), more than the GEMV above: the unit's arithmetic is\n\
             # at least that fast, so that the roofline's FLOP term never exceeds what those ops took.\n\
             # Measured, so the efficiency is 1.\n"
        ));
    } else {
        s.push_str(&format!(
            "\n# The rate with all {} threads, measured, so the efficiency is 1.\n",
            best.threads
        ));
    }
    s.push_str(&format!(
        "peak_gflops = {:.3}\n",
        best.gemv_gflops.max(op_gflops)
    ));
    s.push_str("flops_efficiency = 1.0\n");
    s.push_str(
        "# The real backend's ops (its kernel streaming 16-bit weights, one multiply-add each, on\n\
         # all threads), timed on the backend's own path from hand-off to reported end, mean of\n\
         # repeats",
    );
    if ops.span_bytes > 0 {
        s.push_str(&format!(
            ", each op on weights no op touched recently (the ops took turns over {} MiB)",
            ops.span_bytes >> 20
        ));
    }
    s.push_str(", by op size:");
    for &(b, t) in &ops.points {
        s.push_str(&format!(
            " {} MiB -> {:.1} us ({:.2} GB/s);",
            b >> 20,
            t * 1e6,
            b as f64 / t / 1e9
        ));
    }
    s.push_str(&format!(
        "\n# Fitted: time = dispatch_overhead_us + bytes / mem_bandwidth, the rate from the ops of\n\
         # 64 MiB and more (past the fixed costs of small ops; {:.0}% of the DRAM read bandwidth above), the\n\
         # overhead what the smallest op took beyond its bytes at that rate.\n",
        100.0 * ops.gb_per_s
            / rates
                .iter()
                .map(|r| r.dram_read_gb_per_s)
                .fold(0.0, f64::max)
    ));
    s.push_str(&format!("mem_bandwidth_gb_per_s = {:.3}\n", ops.gb_per_s));
    s.push_str("mem_efficiency = 1.0\n");
    s.push_str(&format!("dispatch_overhead_us = {:.1}\n", ops.overhead_us));
    if !ops.beside_reads.is_empty() {
        s.push_str(&format!(
            "# The {} MiB op (fitted: {:.1} us) while reads ran beside it, by read size and depth:",
            BESIDE_READS_OP_BYTES >> 20,
            ops.fitted_seconds(BESIDE_READS_OP_BYTES) * 1e6
        ));
        for &(kib, qd, t) in &ops.beside_reads {
            s.push_str(&format!(" {kib} KiB QD {qd} -> {:.1} us;", t * 1e6));
        }
        s.push_str(
            "\n# Their mean over the fit, beyond the dispatch overhead: how much slower an op is\n\
             # while reads are in flight (the readers and the disk's interrupts take CPU).\n",
        );
        s.push_str(&format!(
            "beside_reads_slowdown = {:.3}\n",
            ops.beside_reads_slowdown()
        ));
    }
    if !ops.gathered.is_empty() {
        s.push_str("# Ops over pieces of their weights (as DIP and ActiveFlow gather columns):");
        for (&(piece, stride, bytes, t), cost) in ops.gathered.iter().zip(ops.piece_costs_ns()) {
            s.push_str(&format!(
                " {} KiB every {} KiB, {} MiB -> {:.1} us ({:.2} GB/s, {:.0} ns per piece beyond \
                 the fit);",
                piece >> 10,
                stride >> 10,
                bytes >> 20,
                t * 1e6,
                bytes as f64 / t / 1e9,
                cost
            ));
        }
        s.push('\n');
        if let Some((bytes, gb_per_s)) = ops.piece_ramp() {
            s.push_str(
                "# Fitted (least squares): the first piece_ramp_kib of every separate run of an op's\n\
                 # weights streams at piece_ramp_gb_per_s (the prefetcher starts over at each run:\n\
                 # a piece's cost grows with it up to the ramp, then stays).\n",
            );
            s.push_str(&format!(
                "piece_ramp_kib = {:.1}\npiece_ramp_gb_per_s = {gb_per_s:.3}\n",
                bytes as f64 / 1024.0
            ));
        } else {
            s.push_str("# The pieces cost nothing beyond their bytes: no piece ramp.\n");
        }
    }
    s
}

/// The queue depths of the sequential figures (of the measured model's request size).
const SEQUENTIAL_QDS: [u32; 2] = [1, 8];

/// Near reads (ascending, each 0 to one of these many bytes past the end of the one before
/// it, uniform in 4 KiB steps; 0: strictly in file order) are measured at the table's sizes up
/// to [`NEAR_MAX_BYTES`], at `SEQUENTIAL_QDS`. 64 KiB: DIP's and ActiveFlow's reads of the
/// channels they keep on validate-vm's 7B shape lie 0-64 KiB apart for 60-75% of them (the
/// rest up to 1 MiB, where the advantage had faded); 16 KiB and 0: on this project's virtual
/// disk 4-8 KiB reads at QD 8 ran 1.13-1.16x random ones 0-64 KiB apart, 1.20-1.29x 0-16 KiB
/// apart and 1.60-1.82x strictly in order, and ActiveFlow's reads lie mostly 8-24 KiB apart:
/// one gap did not describe them.
pub const NEAR_GAPS_BYTES: [u64; 3] = [0, 16 << 10, 64 << 10];
/// How many slices of each near pattern (and of the random reads they are compared with) are
/// measured in turn: the disk's throughput drifts by 10-20% over tens of seconds, as much as
/// the near reads' advantage, so the ratio comes from reads that alternate every fraction of a
/// second rather than from cells measured apart.
pub const NEAR_SLICES: u32 = 8;

/// Reads of one pattern pooled over the slices they were measured in.
#[derive(Debug, Clone, Default)]
struct Pooled {
    seconds: f64,
    /// Each read's latency, µs.
    latencies_us: Vec<f64>,
    /// The process's CPU time over the slices (every thread, user and system).
    cpu_seconds: f64,
}

impl Pooled {
    /// Reads `pattern` for `seconds` through [`crate::real::read_latencies`] and adds them.
    fn read(
        &mut self,
        path: &Path,
        engine: Engine,
        pattern: ReadPattern,
        seconds: f64,
        seed: u64,
        dram: &std::sync::Arc<crate::real::Image>,
    ) -> Result<()> {
        let cpu = process_cpu_seconds();
        let (secs, lat) = crate::real::read_latencies(path, engine, pattern, seconds, seed, dram)?;
        self.cpu_seconds += process_cpu_seconds() - cpu;
        self.seconds += secs;
        self.latencies_us.extend(lat);
        Ok(())
    }

    /// The cell of these reads (`size` bytes at depth `qd`), with the CPU each took.
    fn cell(self, size: u64, qd: u32) -> Cell {
        let reads = self.latencies_us.len().max(1) as f64;
        Cell {
            cpu_us_per_read: Some(self.cpu_seconds / reads * 1e6),
            ..cell_of(size, qd, self.seconds, self.latencies_us)
        }
    }
}

/// `0..n` in the order round `round` takes them: ascending in even rounds, descending in odd
/// ones, so that the disk's drift over a round weighs on every pattern alike.
pub(crate) fn alternating(n: usize, round: u32) -> Vec<usize> {
    if round.is_multiple_of(2) {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

/// The near reads' measurements (see `measure_near`).
pub struct NearCells {
    /// Per largest gap, the cell as measured.
    pub measured: Vec<(u64, Cell)>,
    /// The random reads measured in alternation with them, one per (size, depth).
    pub random: Vec<Cell>,
    /// Per largest gap, the figure for the device file: the table's throughput at the cell's
    /// size and depth (the alternating random reads' where the table has no such depth) times
    /// the near over random ratio measured in alternation.
    pub figures: Vec<(u64, Cell)>,
}

/// Reads in ascending order each 0 to one of [`NEAR_GAPS_BYTES`] past the one before, at the
/// table's sizes up to [`NEAR_MAX_BYTES`] and at [`SEQUENTIAL_QDS`]: for each size and depth,
/// [`NEAR_SLICES`] rounds of a slice of random reads and a slice of each gap's near reads, in
/// alternating order, `seconds_per_point` per pattern in all.
fn measure_near(
    o: &Options,
    path: &Path,
    dram: &std::sync::Arc<crate::real::Image>,
    table: &[Cell],
    progress: &mut dyn FnMut(&str),
) -> Result<NearCells> {
    let mut out = NearCells {
        measured: Vec::new(),
        random: Vec::new(),
        figures: Vec::new(),
    };
    let orders: Vec<ReadOrder> = std::iter::once(ReadOrder::Random)
        .chain(NEAR_GAPS_BYTES.map(|gap_bytes| ReadOrder::Near { gap_bytes }))
        .collect();
    let slice = o.seconds_per_point / NEAR_SLICES as f64;
    for &kib in &o.sizes_kib {
        let size = kib * 1024;
        if size > NEAR_MAX_BYTES {
            continue;
        }
        for qd in SEQUENTIAL_QDS {
            let mut pooled = vec![Pooled::default(); orders.len()];
            for round in 0..NEAR_SLICES {
                for k in alternating(orders.len(), round) {
                    let pattern = ReadPattern {
                        size,
                        qd,
                        order: orders[k],
                    };
                    let seed = o.seed ^ (0x4ea7 + round as u64);
                    pooled[k].read(path, o.engine, pattern, slice, seed, dram)?;
                }
            }
            let mut cells = pooled.into_iter().map(|reads| reads.cell(size, qd));
            let random = cells.next().expect("the random reads");
            let base = table
                .iter()
                .find(|c| c.size_bytes == size && c.queue_depth == qd)
                .unwrap_or(&random)
                .throughput_gb_per_s;
            for (gap_bytes, c) in NEAR_GAPS_BYTES.into_iter().zip(cells) {
                let ratio = c.throughput_gb_per_s / random.throughput_gb_per_s;
                progress(&format!(
                    "{kib:>5} KiB  QD {qd:>3}, near (0-{} KiB apart, ascending): {:.3} GB/s, {ratio:.3}x the random reads beside them ({:.3})",
                    gap_bytes >> 10,
                    c.throughput_gb_per_s,
                    random.throughput_gb_per_s
                ));
                out.measured.push((gap_bytes, c));
                out.figures.push((
                    gap_bytes,
                    Cell {
                        throughput_gb_per_s: base * ratio,
                        ..c
                    },
                ));
            }
            out.random.push(random);
        }
    }
    Ok(out)
}

/// The largest size near reads are measured at: beyond it the gap is small beside the read
/// and the ratio is held (the model clamps).
pub const NEAR_MAX_BYTES: u64 = 256 << 10;

/// Runs the whole calibration; returns the device file written.
pub fn run(o: &Options, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    if !o.dir.is_dir() {
        bail!("--dir {}: not a directory", o.dir.display());
    }
    refuse_memory_backed(&o.dir)?;
    if o.sizes_kib.is_empty() || o.queue_depths.is_empty() {
        bail!("need at least one request size and one queue depth");
    }
    if o.sizes_kib.windows(2).any(|w| w[0] >= w[1])
        || o.queue_depths.windows(2).any(|w| w[0] >= w[1])
    {
        bail!("request sizes and queue depths must be ascending");
    }
    let path = o.dir.join("flashsim-calibrate.bin");
    progress(&format!(
        "writing the {} MiB test file {} (O_DIRECT) ...",
        o.file_bytes >> 20,
        path.display()
    ));
    prepare_file(&path, o.file_bytes, o.seed)?;
    let file = open_direct(&path, false)?;
    let largest = o.sizes_kib.last().copied().unwrap_or(1024).max(1024) * 1024;
    let dram = measurement_dram(o.file_bytes, largest, progress)?;
    // The table's cells (random offsets) and beside its 1 MiB row, 1 MiB reads in file order
    // at QD 1 and 8 (a streaming reader: the sequential figures), all measured in the same
    // alternating passes so that the disk's drift spreads over them all; then the near reads.
    let random = |size: u64, qd: u32| ReadPattern {
        size,
        qd,
        order: ReadOrder::Random,
    };
    let mut grid: Vec<ReadPattern> = Vec::new();
    for &kib in &o.sizes_kib {
        let size = kib * 1024;
        grid.extend(o.queue_depths.iter().map(|&qd| random(size, qd)));
    }
    let at = grid
        .iter()
        .rposition(|p| p.size <= SEQUENTIAL_BYTES)
        .map_or(grid.len(), |i| i + 1);
    for (k, qd) in SEQUENTIAL_QDS.iter().enumerate() {
        grid.insert(
            at + k,
            ReadPattern {
                size: SEQUENTIAL_BYTES,
                qd: *qd,
                order: ReadOrder::InOrder,
            },
        );
    }
    let passes = o.passes.max(1);
    let mut pooled = vec![Pooled::default(); grid.len()];
    for pass in 0..passes {
        progress(&format!("pass {} of {passes} over the table ...", pass + 1));
        for i in alternating(grid.len(), pass) {
            pooled[i].read(
                &path,
                o.engine,
                grid[i],
                o.seconds_per_point / passes as f64,
                o.seed ^ pass as u64,
                &dram,
            )?;
        }
    }
    let (mut cells, mut sequential) = (Vec::new(), Vec::new());
    for (p, reads) in grid.iter().zip(pooled) {
        let c = reads.cell(p.size, p.qd);
        if p.order == ReadOrder::InOrder {
            progress(&format!(
                "sequential 1 MiB QD {}: {:.3} GB/s",
                p.qd, c.throughput_gb_per_s
            ));
            sequential.push(c);
        } else {
            progress(&format!(
                "{:>5} KiB  QD {:>3}: {:>8.3} GB/s, mean {:>9.1} µs, P99 {:>9.1} µs ({} reads, {:.1} µs CPU each)",
                p.size / 1024,
                p.qd,
                c.throughput_gb_per_s,
                c.mean_latency_us,
                c.p99_latency_us,
                c.requests,
                c.cpu_us_per_read.unwrap_or(0.0)
            ));
            cells.push(c);
        }
    }
    let near = measure_near(o, &path, &dram, &cells, progress)?;
    // The backend's 64 MiB op while reads of each kind run beside it (the readers and the
    // disk's interrupts share the CPU with the kernel).
    let mut timer = crate::real::OpTimer::new(256 << 20)?;
    let mut beside = Vec::new();
    for (kib, qd) in [(4u64, 8u32), (64, 8), (1024, 8)] {
        let secs = o.seconds_per_point.max(0.5);
        let op = std::thread::scope(|s| -> Result<f64> {
            let reads = s.spawn(|| {
                crate::real::read_latencies(
                    &path,
                    o.engine,
                    random(kib * 1024, qd),
                    secs,
                    o.seed ^ 0xb5,
                    &dram,
                )
            });
            std::thread::sleep(std::time::Duration::from_secs_f64(0.1 * secs));
            let t = timer.seconds(BESIDE_READS_OP_BYTES, 0.7 * secs);
            reads.join().expect("reader thread")?;
            t
        })?;
        progress(&format!(
            "backend op of {} MiB beside {kib} KiB reads at QD {qd}: {:.1} µs",
            BESIDE_READS_OP_BYTES >> 20,
            op * 1e6
        ));
        beside.push((kib, qd, op));
    }
    drop((file, dram));
    if !o.keep_file {
        std::fs::remove_file(&path).ok();
    }
    // The real backend's ops, 1 to 256 MiB of 16-bit weights (a sparse slice of a 7B matrix up
    // to an LM head), on the backend's own path, each on weights beyond the caches.
    let mut points = Vec::new();
    for mib in [1u64, 4, 16, 64, 128, 256] {
        let t = timer.seconds(mib << 20, o.seconds_per_point)?;
        progress(&format!(
            "backend op of {mib:>3} MiB (GEMV over 16-bit weights, all threads): {:>9.1} µs, {:.2} GB/s",
            t * 1e6,
            (mib << 20) as f64 / t / 1e9
        ));
        points.push((mib << 20, t));
    }
    let mut ops = OpTimes::fit(points)?;
    ops.beside_reads = beside;
    ops.span_bytes = timer.span_bytes();
    for (piece, stride) in GATHERED_OPS {
        let bytes = (64 << 20) / piece * piece;
        let t = timer.gathered_seconds(bytes, piece, stride, o.seconds_per_point)?;
        progress(&format!(
            "backend op of {} MiB in {} KiB pieces every {} KiB: {:>9.1} µs, {:.2} GB/s",
            bytes >> 20,
            piece >> 10,
            stride >> 10,
            t * 1e6,
            bytes as f64 / t / 1e9
        ));
        ops.gathered.push((piece, stride, bytes, t));
    }
    let ramp = ops.piece_ramp();
    progress(&format!(
        "backend ops fitted: {:.1} µs + bytes / {:.2} GB/s; each piece's first {:.0} KiB at \
         {:.2} GB/s; {:.3}x slower beside reads",
        ops.overhead_us,
        ops.gb_per_s,
        ramp.map_or(0.0, |r| r.0 as f64 / 1024.0),
        ramp.map_or(ops.gb_per_s, |r| r.1),
        ops.beside_reads_slowdown()
    ));
    let max_threads = hardware_threads();
    let mut counts: Vec<usize> = std::iter::successors(Some(1usize), |t| Some(t * 2))
        .take_while(|&t| t < max_threads)
        .collect();
    counts.push(max_threads);
    let buf = rate_buffer()?;
    let rates: Vec<Rates> = counts
        .iter()
        .map(|&t| {
            let r = measure_rates(buf.words(), t, o.seconds_per_point.max(0.05));
            progress(&format!(
                "{t} thread(s): DRAM read {:.2} GB/s, f32 GEMV {:.2} GFLOP/s",
                r.dram_read_gb_per_s, r.gemv_gflops
            ));
            r
        })
        .collect();
    std::fs::create_dir_all(&o.out_dir)?;
    let out = o.out_dir.join(format!("{}.toml", o.name));
    std::fs::write(
        &out,
        device_toml(o, &cells, &sequential, &near.figures, &rates, &ops),
    )?;
    std::fs::create_dir_all(&o.plots_dir)?;
    let mut csv = File::create(o.plots_dir.join(format!("{}.csv", o.name)))?;
    writeln!(
        csv,
        "size_kib,queue_depth,requests,seconds,throughput_gb_per_s,mean_latency_us,p50_latency_us,p99_latency_us,cpu_us_per_read,order,near_gap_kib"
    )?;
    // The table's cells (random offsets), the sequential ones (file order), the random reads
    // measured in alternation with the near ones, and the near ones (ascending, 0 to
    // near_gap_kib apart).
    let rows = cells
        .iter()
        .map(|c| (c, "random", String::new()))
        .chain(sequential.iter().map(|c| (c, "sequential", String::new())))
        .chain(
            near.random
                .iter()
                .map(|c| (c, "near_random", String::new())),
        )
        .chain(
            near.measured
                .iter()
                .map(|(gap, c)| (c, "near", format!("{}", gap >> 10))),
        );
    for (c, order, gap_kib) in rows {
        writeln!(
            csv,
            "{},{},{},{:.6},{:.6},{:.3},{:.3},{:.3},{},{order},{gap_kib}",
            c.size_bytes / 1024,
            c.queue_depth,
            c.requests,
            c.seconds,
            c.throughput_gb_per_s,
            c.mean_latency_us,
            c.p50_latency_us,
            c.p99_latency_us,
            c.cpu_us_per_read
                .map(|v| format!("{v:.2}"))
                .unwrap_or_default()
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cache_sizes_parse_and_measurements_reach_beyond_them() {
        use super::{beyond_cache, parse_cache_size};
        assert_eq!(parse_cache_size("491520K"), Some(480 << 20));
        assert_eq!(parse_cache_size("32M"), Some(32 << 20));
        assert_eq!(parse_cache_size("1024"), Some(1024));
        assert_eq!(parse_cache_size("12X"), None);
        assert_eq!(parse_cache_size(""), None);
        // Four times the cache, a multiple of 2 MiB; at least 256 MiB; at most a quarter of
        // what is available.
        assert_eq!(beyond_cache(Some(480 << 20), 20 << 30), 1920 << 20);
        assert_eq!(beyond_cache(Some(32 << 20), 20 << 30), 256 << 20);
        assert_eq!(beyond_cache(None, 20 << 30), 256 << 20);
        assert_eq!(beyond_cache(Some(480 << 20), 4 << 30), 1 << 30);
        assert_eq!(beyond_cache(Some(3 << 20), 1 << 30), 256 << 20);
        assert_eq!(beyond_cache(Some((100 << 20) + 1), 20 << 30) % (2 << 20), 0);
    }

    #[test]
    fn a_device_file_records_its_machine_and_a_different_one_is_named() {
        use super::{differences, recorded_environment};
        let text = "# Measured by `flashsim calibrate`\n# date: 2026-11-21\n# cpu: AMD EPYC\n\
                    # threads: 2\n# kernel: 6.18\nname = \"x\"\n# cpu: not this one\n";
        let env = recorded_environment(text);
        assert_eq!(env.len(), 4, "{env:?}");
        assert_eq!(env[1], ("cpu".to_string(), "AMD EPYC".to_string()));
        let here = [
            ("cpu", "Intel(R) Xeon(R) Processor".to_string()),
            ("threads", "2".to_string()),
            ("kernel", "6.18".to_string()),
        ];
        assert_eq!(
            differences(&env, &here),
            vec!["cpu: AMD EPYC when calibrated, Intel(R) Xeon(R) Processor here".to_string()]
        );
        // A preset records no machine: nothing to compare.
        assert!(differences(&recorded_environment("name = \"ufs\"\n"), &here).is_empty());
    }
}
