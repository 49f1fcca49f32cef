//! The real backend on a small weight file: it reads exactly the extents the plans name (the
//! bytes it brings in match the file at those offsets), keeps within the DRAM budget, follows
//! the same plans as the simulator (same reads, bytes and ops per token), and `validate`
//! writes its table.

use flashsim::experiment::Experiment;
use flashsim::real::{checksum, write_weight_file};
use flashsim::runner::{self, Cache};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

mod common;
use common::repo;

/// The UFS 4.0 preset, as it is (`pread`: reads from a thread pool) or copied into `dir` with
/// `read_engine = "io_uring"` (one ring the pipeline's thread drives).
fn device(dir: &Path, engine: &str) -> String {
    let preset = repo()
        .canonicalize()
        .unwrap()
        .join("configs/devices/ufs40-phone.toml");
    if engine == "pread" {
        return preset.display().to_string();
    }
    let text = std::fs::read_to_string(&preset).unwrap();
    let (head, rest) = text.split_once("[flash]").unwrap();
    let p = dir.join(format!("ufs40-{engine}.toml"));
    std::fs::write(
        &p,
        format!("{head}read_engine = \"{engine}\"\n\n[flash]{rest}"),
    )
    .unwrap();
    p.display().to_string()
}

fn experiment(dir: &Path, engine: &str) -> PathBuf {
    let r = repo().canonicalize().unwrap().display().to_string();
    let d = device(dir, engine);
    let text = format!(
        r#"
name = "real-test"
device = "{d}"
model = "{r}/configs/models/stories260K.toml"
trace = "{r}/workloads/traces/stories260K.safetensors"
policy = ["dense-streaming", "llm-in-a-flash", "dip", "activeflow", "mmap"]
dram_budget_gib = [0.0008, 0.004]
tokens = 6
warmup_tokens = 1
prompt_tokens = 16
io_queue_depth = 4
seed = 3
"#
    );
    let p = dir.join("real.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// [`experiment`]'s text with its policies and DRAM budgets replaced (`policy = …` and
/// `dram_budget_gib = …` lines as written).
fn narrowed(dir: &Path, engine: &str, policy: &str, budgets: &str) -> String {
    std::fs::read_to_string(experiment(dir, engine))
        .unwrap()
        .replace(
            r#"policy = ["dense-streaming", "llm-in-a-flash", "dip", "activeflow", "mmap"]"#,
            policy,
        )
        .replace("dram_budget_gib = [0.0008, 0.004]", budgets)
}

#[test]
fn real_reads_are_the_planned_extents_within_budget_and_match_the_simulation() {
    check_reads("pread");
}

#[test]
fn io_uring_reads_are_the_planned_extents_within_budget_and_match_the_simulation() {
    check_reads("io_uring");
}

fn check_reads(engine: &str) {
    // Under the target dir: a real disk (O_DIRECT), not a tmpfs.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let exp = Experiment::load(experiment(tmp.path(), engine)).unwrap();
    let dev = flashsim::device::Device::load(device(tmp.path(), engine)).unwrap();
    assert_eq!(dev.read_engine.key(), engine);
    runner::materialize_traces(&exp).unwrap();
    let mut cache = Cache::default();
    let weights = tmp.path().join("weights.bin");
    let mut checked = 0;
    for point in &exp.points {
        let Ok(mut real_p) = runner::prepare(&exp, point, &mut cache) else {
            continue; // a budget this policy cannot fit (recorded as infeasible in sweeps)
        };
        // Three copies of the weights: token t reads copy t mod 3.
        let copy = real_p.layout.file_bytes.div_ceil(4096) * 4096;
        let file_bytes = write_weight_file(&weights, 3 * copy, 11).unwrap();
        let file = std::fs::File::open(&weights).unwrap();
        let (real, reads, computed, held_peak, kernels) =
            match real_p.execute_real(&weights, true, Some(copy)) {
                Ok(r) => (
                    r.stats,
                    r.reads,
                    r.computed_bytes,
                    r.held_peak_bytes,
                    r.kernels,
                ),
                // Completions arrive in another order than simulated, so buffers can overlap more:
                // at the tight budget a point the simulation fits may not fit for real (an error,
                // never an overrun).
                Err(e) if runner::infeasible(&e).is_some() => {
                    eprintln!("point {}: over the budget for real: {e:#}", point.index);
                    continue;
                }
                Err(e) => panic!("point {}: {e:#}", point.index),
            };
        let mut sim_p = runner::prepare(&exp, point, &mut cache).unwrap();
        let (sim, _) = sim_p.simulate(false).unwrap();
        let what = format!("point {} ({})", point.index, point.config.policy);
        // Same plans: reads, bytes and tokens agree with the simulation, token by token.
        assert_eq!(real.tokens.len(), sim.tokens.len(), "{what}");
        for (a, b) in real.tokens.iter().zip(&sim.tokens) {
            assert_eq!((a.reads, a.read_bytes), (b.reads, b.read_bytes), "{what}");
        }
        assert_eq!(
            reads.len() as u64,
            sim.tokens.iter().map(|t| t.reads).sum::<u64>()
        );
        // Every read brought in exactly the planned bytes, from its token's copy.
        let bases: std::collections::BTreeSet<u64> = reads.iter().map(|r| r.base).collect();
        assert!(bases.is_subset(&[0, copy, 2 * copy].into()), "{what}");
        if point.config.policy == "dense-streaming" {
            // It reads every token.
            assert_eq!(bases.len(), 3, "{what}");
        }
        for r in &reads {
            let e = r.planned;
            assert!(
                r.issued.offset <= e.offset
                    && e.offset + e.bytes <= r.issued.offset + r.issued.bytes
            );
            assert_eq!(r.issued.offset % 4096, 0);
            assert!(
                e.offset + e.bytes <= file_bytes,
                "{what}: {e:?} beyond the file"
            );
            let mut want = vec![0u8; e.bytes as usize];
            file.read_exact_at(&mut want, e.offset + r.base).unwrap();
            assert_eq!(r.checksum, checksum(&want), "{what}: {e:?}");
        }
        // Within the budget (the peak itself may differ from the simulation's: completions
        // arrive in a different order on real hardware, so buffers overlap differently).
        assert!(real.dram_peak_bytes <= real_p.dram_budget_bytes, "{what}");
        assert!(real.dram_peak_bytes >= real.resident_weight_bytes, "{what}");
        // The bytes DRAM really held (resident weights, buffers, cache entries, each byte
        // once, let go as the plans say) never exceeded what the accounting counted.
        let held_peak = held_peak.expect("verifying");
        assert!(held_peak >= real.resident_weight_bytes, "{what}");
        assert!(
            held_peak <= real.dram_peak_bytes,
            "{what}: held {held_peak} B"
        );
        // Real time passed, and the pipeline's identity holds on the wall clock too.
        for t in &real.tokens {
            assert!(t.wall.0 > 0, "{what}");
            assert_eq!(
                t.wall,
                t.compute_busy.checked_add(t.stall).unwrap(),
                "{what}"
            );
        }
        // The kernels computed on the weights the ops list. Without `verify`, reads land in
        // DRAM directly and a weight page no read brought in is loaded at its first use: only
        // the policy's resident weights may be (each tensor's run of pages, at most two pages
        // beyond its bytes).
        assert!(computed > 0, "{what}");
        // Each op's kernel was timed, in token order, every token; together they streamed at
        // least the listed weights (an odd byte at a weight run's start or end is skipped).
        assert!(
            kernels.windows(2).all(|w| w[0].token <= w[1].token),
            "{what}"
        );
        for t in 0..real.tokens.len() as u32 {
            assert!(kernels.iter().any(|k| k.token == t), "{what}: token {t}");
        }
        assert!(
            kernels.iter().all(|k| k.seconds > 0.0 && k.pieces > 0),
            "{what}"
        );
        let streamed: u64 = kernels.iter().map(|k| k.bytes).sum();
        let pieces: usize = kernels.iter().map(|k| k.pieces).sum();
        assert!(
            streamed + 2 * pieces as u64 >= computed,
            "{what}: {streamed} < {computed}"
        );
        // A fresh policy: its cache starts empty, as in the run above.
        let mut timed_p = runner::prepare(&exp, point, &mut cache).unwrap();
        match timed_p.execute_real(&weights, false, None) {
            Ok(timed) => {
                assert_eq!(timed.computed_bytes, computed, "{what}");
                let slop = 2 * 4096 * real_p.layout.tensors().len() as u64;
                assert!(
                    timed.loaded_bytes <= real.resident_weight_bytes + slop,
                    "{what}: loaded {} B on demand, resident {} B",
                    timed.loaded_bytes,
                    real.resident_weight_bytes
                );
            }
            Err(e) if runner::infeasible(&e).is_some() => {}
            Err(e) => panic!("{what}: {e:#}"),
        }
        checked += 1;
    }
    // Every policy at the roomy budget at least.
    assert!(checked >= 5, "only {checked} points ran");
}

/// `flashsim validate` of the experiment `text` (written to `dir`), two rounds, the weight file
/// and results in `dir`.
fn validate_twice(
    dir: &Path,
    text: &str,
    file_gib: f64,
    probe_seconds: f64,
) -> flashsim::validate::Validation {
    let path = dir.join("v.toml");
    std::fs::write(&path, text).unwrap();
    let exp = Experiment::load(&path).unwrap();
    let o = flashsim::validate::Options {
        weights_dir: dir.to_path_buf(),
        out_dir: dir.join("out"),
        keep_weights: false,
        repeats: 2,
        file_gib,
        probe_seconds,
        probe_compute: false,
    };
    flashsim::validate::run(&exp, &o, &mut |_| {}).unwrap()
}

#[test]
fn validate_writes_simulated_against_measured() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // 0.0001 GiB holds neither policy's resident weights: refused when set up, skipped.
    let text = narrowed(
        tmp.path(),
        "pread",
        r#"policy = ["dense-streaming", "llm-in-a-flash"]"#,
        "dram_budget_gib = [0.0001, 0.002]",
    );
    let flashsim::validate::Validation {
        rows,
        path: csv,
        efficiency,
        warnings,
    } = validate_twice(tmp.path(), &text, 0.0, 0.0);
    // A preset records no machine to differ from.
    assert!(warnings.is_empty(), "{warnings:?}");
    // Without probes, each point's efficiency is against the device file alone (a preset:
    // no measured sequential figure).
    assert_eq!(efficiency.len(), 2);
    for e in &efficiency {
        assert!(
            e.read_bytes_per_s > 0.0 && e.kernel_bytes_per_s > 0.0,
            "{e:?}"
        );
        assert!(e.kernel_ops.0 + e.kernel_ops.1 > 0, "{e:?}");
        assert!(e.mean_piece_bytes > 0.0, "{e:?}");
        // Every kernel is counted once by shape as by reads: a rate for each shape that ran.
        let (contiguous, gathered) = e.kernel_shape_ops;
        assert_eq!(
            contiguous + gathered,
            e.kernel_ops.0 + e.kernel_ops.1,
            "{e:?}"
        );
        assert_eq!(
            e.kernel_contiguous_bytes_per_s.is_some(),
            contiguous > 0,
            "{e:?}"
        );
        assert_eq!(
            e.kernel_gathered_bytes_per_s.is_some(),
            gathered > 0,
            "{e:?}"
        );
        // The gathered ones split again by reads beside them, each counted once, a rate for
        // each side that ran.
        let (alone, beside) = e.kernel_gathered_ops;
        assert_eq!(alone + beside, gathered, "{e:?}");
        assert!(alone <= e.kernel_ops.0 && beside <= e.kernel_ops.1, "{e:?}");
        assert_eq!(
            (
                e.kernel_gathered_alone_bytes_per_s.is_some(),
                e.kernel_gathered_beside_bytes_per_s.is_some()
            ),
            (alone > 0, beside > 0),
            "{e:?}"
        );
        assert_eq!((e.sequential_probed, e.dram_probed), (None, None), "{e:?}");
        assert_eq!(e.sequential_calibrated, None, "{e:?}");
    }
    // Two points, 4 metrics, ms/token with mean/P50/P90/P99: 7 rows each.
    assert_eq!(rows.len(), 14);
    assert!(rows
        .iter()
        .all(|r| r.simulated_ms >= 0.0 && r.measured_ms > 0.0 || r.metric != "ms_per_token"));
    // Two rounds: every mean has the interval of its two runs' means, no quantile has one.
    for r in &rows {
        let h = r.measured_ci95_ms;
        assert_eq!(h.is_some(), r.stat == "mean", "{r:?}");
        assert!(h.is_none_or(|h| h.is_finite() && h >= 0.0), "{r:?}");
    }
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 15);
    let back = flashsim::validate::read_csv(&csv).unwrap();
    for (a, b) in rows.iter().zip(&back) {
        let (x, y) = (a.measured_ci95_ms, b.measured_ci95_ms);
        assert!(x.zip(y).is_none_or(|(x, y)| (x - y).abs() < 1e-6) && x.is_some() == y.is_some());
    }
    assert!(!tmp.path().join("flashsim-weights-real-test.bin").exists());
}

#[test]
fn validate_probes_the_machine_before_each_run_and_simulates_on_what_it_found() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // A calibrated (measured-table) device file: the committed one of this project's VM.
    let calibrated = repo()
        .canonicalize()
        .unwrap()
        .join("configs/devices/vm-ext4-virtio.toml");
    let text = narrowed(
        tmp.path(),
        "pread",
        r#"policy = ["dense-streaming", "dip"]"#,
        "dram_budget_gib = 0.004",
    );
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("device = ") {
                format!("device = \"{}\"", calibrated.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    // 16 MiB of copies: room for 1 MiB probe reads at random offsets.
    let flashsim::validate::Validation {
        rows,
        path: csv,
        efficiency,
        warnings,
    } = validate_twice(tmp.path(), &text, 1.0 / 64.0, 0.05);
    // The committed device file names the machine it was calibrated on: a warning when this one
    // differs (CPU, threads or kernel), naming the file and each difference.
    let differ = flashsim::calibrate::differences_from_recorded(
        &std::fs::read_to_string(&calibrated).unwrap(),
    );
    assert_eq!(
        warnings.len(),
        usize::from(!differ.is_empty()),
        "{warnings:?}"
    );
    for w in &warnings {
        assert!(w.contains("vm-ext4-virtio.toml"), "{w}");
        assert!(differ.iter().all(|d| w.contains(d.as_str())), "{w}");
    }
    // Each point's reads and kernels against the calibrated figures and the probed ones.
    assert_eq!(efficiency.len(), 2);
    for e in &efficiency {
        let seq = e.sequential_calibrated.expect("a calibrated device file");
        assert!(seq > 0.0 && e.sequential_probed.unwrap() > 0.0, "{e:?}");
        assert!(
            e.dram_calibrated > 0.0 && e.dram_probed.unwrap() > 0.0,
            "{e:?}"
        );
        assert!(
            e.read_bytes_per_s > 0.0 && e.kernel_bytes_per_s > 0.0,
            "{e:?}"
        );
    }
    // DIP's kernels gather the input channels its mask keeps.
    let dip = efficiency.iter().find(|e| e.policy == "dip").unwrap();
    assert!(dip.kernel_shape_ops.1 > 0, "{dip:?}");
    assert!(dip.kernel_gathered_bytes_per_s.unwrap() > 0.0, "{dip:?}");
    let eff = std::fs::read_to_string(csv.with_file_name("efficiency.csv")).unwrap();
    assert_eq!(eff.lines().count(), 3, "{eff}");
    // Every figure present but, where every kernel ran alone or every one beside reads, the
    // other side's rate.
    for l in eff.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), 28, "{l}");
        assert!(f[..16].iter().all(|v| !v.is_empty()), "{l}");
    }
    // Two points, 7 rows each, for the calibrated device file and for the probed device.
    let count = |d: &str| rows.iter().filter(|r| r.device == d).count();
    assert_eq!((count("calibrated"), count("probed")), (14, 14));
    for (c, p) in rows
        .iter()
        .filter(|r| r.device == "calibrated")
        .zip(rows.iter().filter(|r| r.device == "probed"))
    {
        // Same real runs on both sides; only the simulation differs.
        assert_eq!((c.point, c.metric, c.stat), (p.point, p.metric, p.stat));
        assert_eq!(c.measured_ms, p.measured_ms);
    }
    let back = flashsim::validate::read_csv(&csv).unwrap();
    assert_eq!(back.len(), 28);
    // One probe per real run: 2 points x 2 rounds, each figure measured (positive).
    let probes = std::fs::read_to_string(csv.with_file_name("probes.csv")).unwrap();
    let lines: Vec<&str> = probes.lines().collect();
    assert_eq!(lines.len(), 5, "{probes}");
    assert!(lines[0].starts_with("round,point,policy,dram_budget_gib,queue_depth,random_16_kib"));
    for l in &lines[1..] {
        let f: Vec<f64> = l.split(',').skip(5).map(|v| v.parse().unwrap()).collect();
        assert_eq!(f.len(), 6, "{l}");
        assert!(f.iter().all(|&v| v > 0.0), "{l}");
    }
}

#[test]
fn the_real_backend_computes_the_reference_logits_under_the_same_masks() {
    check_logits(
        "pread",
        &[
            "dense-streaming",
            "llm-in-a-flash",
            "dip",
            "activeflow",
            "mmap",
        ],
        8,
    );
}

#[test]
fn io_uring_reads_give_the_reference_logits_too() {
    check_logits("io_uring", &["llm-in-a-flash", "dip", "activeflow"], 6);
}

fn check_logits(engine: &str, policies: &[&str], points: usize) {
    if flashsim_workloads::shared_models_for_test().is_none() {
        return;
    }
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let r = repo().canonicalize().unwrap().display().to_string();
    let d = device(tmp.path(), engine);
    let text = format!(
        r#"
name = "real-logits"
device = "{d}"
model = "{r}/configs/models/stories260K.toml"
trace = "{r}/workloads/traces/stories260K.safetensors"
policy = {policies:?}
dram_budget_gib = [0.004, 0.0009]
tokens = 8
prompt_tokens = 0
io_queue_depth = 4
seed = 3
# Windows that let neurons go within 8 tokens (a window of 2, no over-prediction).
[policies.llm-in-a-flash]
bundling = [false, true]
window_tokens = 2
over_prediction = 1.0
[policies.dip]
cache_aware = [false, true]
# Serial loading, and preloads of groups of 4 (stories260K's 5 layers: groups 0-3 and 4).
[policies.activeflow]
sparsity = 0.5
preload_layers = [0, 4]
"#
    );
    let path = tmp.path().join("logits.toml");
    std::fs::write(&path, text).unwrap();
    let exp = Experiment::load(&path).unwrap();
    let mut cache = Cache::default();
    let weights = tmp.path().join("model.bin");
    assert_eq!(exp.points.len(), 2 * points);
    let dev = flashsim::device::Device::load(&d).unwrap();
    assert_eq!(dev.read_engine.key(), engine);
    // Per policy that ran: bytes its cache evicted and admitted by extent.
    let mut seen = std::collections::BTreeMap::<String, (u64, u64)>::new();
    for point in &exp.points {
        let what = format!(
            "point {} ({}, {:?})",
            point.index, point.config.policy, point.axis_values
        );
        // At the tight budget a policy may not fit (refused when set up, or over the budget
        // during the run, where completions arrive in another order than simulated).
        let tight = point.config.dram_budget_gib < 0.001;
        let mut p = match runner::prepare(&exp, point, &mut cache) {
            Ok(p) => p,
            Err(e) if tight => {
                eprintln!("{what}: {e:#}");
                continue;
            }
            Err(e) => panic!("{what}: {e:#}"),
        };
        let reference = p.quality.clone().expect("the checkpoint loads");
        let image = flashsim::real::model_image(&p.layout, &p.shape, &reference).unwrap();
        flashsim::real::write_image(&weights, &image).unwrap();
        let got = match p.check_real_logits(&weights) {
            Ok(got) => got,
            Err(e) if tight && runner::infeasible(&e).is_some() => {
                eprintln!("{what}: over the budget for real: {e:#}");
                continue;
            }
            Err(e) => panic!("{what}: {e:#}"),
        };
        eprintln!("{what}: {got:?}");
        let diffs = &got.diffs;
        assert_eq!(diffs.len(), 8);
        assert!(
            diffs.iter().all(|&d| d <= 1e-5),
            "{what}: logits differ by {diffs:?}"
        );
        // What DRAM held (each byte once) stayed within the budget.
        assert!(got.held_peak_bytes > 0, "{what}");
        assert!(got.held_peak_bytes <= p.dram_budget_bytes, "{what}");
        let e = seen.entry(point.config.policy.clone()).or_default();
        *e = (e.0 + got.evicted_bytes, e.1 + got.admitted_bytes);
    }
    // Every policy ran, and every cache let bytes go (zeroed in DRAM, so computing on them
    // afterwards would have shown above); ActiveFlow's fills are copied out of its buffers.
    assert!(
        seen.keys().map(String::as_str).eq(policies
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()),
        "{seen:?}"
    );
    for (policy, &(evicted, admitted)) in &seen {
        if policy != "dense-streaming" {
            assert!(evicted > 0, "{policy}: {seen:?}");
        }
        assert_eq!(admitted > 0, policy == "activeflow", "{policy}: {seen:?}");
    }
    // The check can fail: the same plans over a file of zeros give other logits.
    let mut p = runner::prepare(&exp, &exp.points[0], &mut cache).unwrap();
    let zeros = vec![0u8; (p.layout.file_bytes as usize).div_ceil(4096) * 4096];
    flashsim::real::write_image(&weights, &zeros).unwrap();
    let diffs = p.check_real_logits(&weights).unwrap().diffs;
    assert!(diffs.iter().all(|&d| d > 1e-3), "{diffs:?}");
}

#[test]
fn replay_times_each_points_simulated_reads_on_the_disk_and_on_the_model() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let text = narrowed(
        tmp.path(),
        "io_uring",
        r#"policy = ["dense-streaming", "dip"]"#,
        "dram_budget_gib = 0.004",
    );
    let path = tmp.path().join("replay.toml");
    std::fs::write(&path, text).unwrap();
    let exp = Experiment::load(&path).unwrap();
    let o = flashsim::replay::Options {
        weights_dir: tmp.path().to_path_buf(),
        out_dir: tmp.path().join("out"),
        file_gib: 0.01,
        reads: 300,
        rounds: 2,
    };
    let (rows, csv) = flashsim::replay::run(&exp, &o, &mut |_| {}).unwrap();
    // Per point, the reads the simulation issued (as many as it issued, up to 300): in its
    // order and at random offsets, each timed on the disk and on the model.
    let mut cache = flashsim::runner::Cache::default();
    assert_eq!(rows.len(), 2 * exp.points.len());
    for (point, pair) in exp.points.iter().zip(rows.chunks(2)) {
        let mut p = flashsim::runner::prepare(&exp, point, &mut cache).unwrap();
        let reads = flashsim::replay::simulated_reads(&mut p).unwrap();
        let (stats, _) = p.simulate(false).unwrap();
        let issued: u64 = stats.tokens.iter().map(|t| t.reads).sum();
        assert!(issued as usize <= reads.len(), "{issued} {}", reads.len());
        let want = reads.len().min(300);
        assert_eq!((pair[0].stream, pair[1].stream), ("order", "random"));
        for r in pair {
            assert_eq!(
                (r.point, r.reads, r.queue_depth),
                (point.index, want, 4),
                "{r:?}"
            );
            assert!(
                r.model_gb_per_s > 0.0 && r.model_gb_per_s.is_finite(),
                "{r:?}"
            );
            assert!(
                r.disk_gb_per_s > 0.0 && r.disk_gb_per_s.is_finite(),
                "{r:?}"
            );
        }
        let (o0, o1) = (pair[0].mean_read_kib, pair[1].mean_read_kib);
        assert_eq!(o0, o1);
        let mean = reads[..want].iter().map(|r| r.1).sum::<u64>() as f64 / want as f64;
        assert!((o0 - mean / 1024.0).abs() < 1e-9, "{o0} {mean}");
    }
    // The model alone: one 4 KiB read at a time takes the preset's latency each.
    let dev =
        flashsim::device::Device::load(repo().join("configs/devices/ufs40-phone.toml")).unwrap();
    let reads: Vec<(u64, u64)> = (0..2000).map(|i| (i * (1 << 20), 4096)).collect();
    let x = flashsim::device::reads_bytes_per_s(dev.flash.as_ref(), reads, 1).unwrap();
    let one = dev.flash.min_latency(4096).unwrap().as_s();
    assert!((x / (4096.0 / one) - 1.0).abs() < 1e-6, "{x}");
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap().lines().count(),
        rows.len() + 1
    );
    // The test file is gone.
    assert!(!tmp.path().join("flashsim-replay-replay.bin").exists());
}

#[test]
fn kernels_time_the_very_ops_a_real_run_computes() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let text = narrowed(
        tmp.path(),
        "pread",
        r#"policy = ["dense-streaming", "dip", "activeflow"]"#,
        "dram_budget_gib = 0.004",
    );
    let path = tmp.path().join("kernels.toml");
    std::fs::write(&path, text).unwrap();
    let exp = Experiment::load(&path).unwrap();
    let o = flashsim::kernels::Options {
        out_dir: tmp.path().join("out"),
        rounds: 2,
        dram_seconds: 0.02,
    };
    let (rows, csv) = flashsim::kernels::run(&exp, &o, &mut |_| {}).unwrap();
    assert_eq!(rows.len(), exp.points.len());
    let mut cache = Cache::default();
    let weights = tmp.path().join("w.bin");
    for (point, row) in exp.points.iter().zip(&rows) {
        assert_eq!(
            (row.point, row.policy.as_str()),
            (point.index, point.config.policy.as_str())
        );
        // The same ops, pieces and bytes as the real backend's kernels after warm-up.
        let mut p = runner::prepare(&exp, point, &mut cache).unwrap();
        write_weight_file(&weights, p.layout.file_bytes.div_ceil(4096) * 4096, 5).unwrap();
        let run = p.execute_real(&weights, false, None).unwrap();
        let warm = point.config.warmup_tokens;
        let ks: Vec<_> = run.kernels.iter().filter(|k| k.token >= warm).collect();
        let gathered = ks
            .iter()
            .filter(|k| k.bytes < flashsim::validate::CONTIGUOUS_PIECE_BYTES * k.pieces as u64)
            .count();
        assert_eq!(
            (row.ops, row.gathered_ops, row.pieces, row.bytes),
            (
                ks.len(),
                gathered,
                ks.iter().map(|k| k.pieces).sum(),
                ks.iter().map(|k| k.bytes).sum()
            ),
            "{row:?}"
        );
        for (x, pct) in [(row.planned, row.planned_pct), (row.packed, row.packed_pct)] {
            assert!(
                x > 0.0 && x.is_finite() && pct > 0.0 && pct.is_finite(),
                "{row:?}"
            );
        }
        assert!(row.dram_read > 0.0, "{row:?}");
        assert_eq!(row.gathered_planned.is_some(), gathered > 0, "{row:?}");
    }
    assert!(rows.iter().any(|r| r.gathered_ops > 0), "{rows:?}");
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap().lines().count(),
        rows.len() + 1
    );
}
