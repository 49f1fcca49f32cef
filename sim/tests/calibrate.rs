//! `flashsim calibrate` on a small file: the device file it writes loads as a measured-curve
//! device with every cell, and memory-backed directories are refused.

use flashsim::calibrate::{self, Options};
use flashsim::device::Device;
use flashsim::time::{transfer_time, Ps};

fn options(dir: &std::path::Path) -> Options {
    Options {
        dir: dir.to_path_buf(),
        name: "calibrated-test".into(),
        out_dir: dir.join("devices"),
        plots_dir: dir.join("plots"),
        file_bytes: 16 << 20,
        sizes_kib: vec![4, 64, 256],
        queue_depths: vec![1, 4],
        seconds_per_point: 0.02,
        passes: 2,
        keep_file: false,
        engine: calibrate::Engine::Pread,
        seed: 3,
    }
}

#[test]
fn io_uring_measures_the_same_kind_of_table() {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(root).unwrap();
    let o = Options {
        engine: calibrate::Engine::IoUring,
        ..options(dir.path())
    };
    let path = calibrate::run(&o, &mut |_| {}).unwrap();
    assert!(std::fs::read_to_string(&path).unwrap().contains(
        "# method: the real backend's readers (one io_uring driven by the issuing thread)"
    ));
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("read_engine = \"io_uring\""));
    Device::load(&path).unwrap();
    let csv = std::fs::read_to_string(dir.path().join("plots/calibrated-test.csv")).unwrap();
    for r in csv.lines().skip(1) {
        let f: Vec<f64> = r.split(',').take(9).map(|x| x.parse().unwrap()).collect();
        assert!(f[2] >= 4.0 * f[1] && f[4] > 0.0, "{r}");
    }
}

#[test]
fn calibrates_a_small_file_into_a_loadable_measured_device() {
    // Under the target dir: a real disk on the machines CI uses (tempfile's default may be tmpfs).
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(root).unwrap();
    let o = options(dir.path());
    let mut lines = Vec::new();
    let path = calibrate::run(&o, &mut |l| lines.push(l.to_string())).unwrap();
    assert!(
        !dir.path().join("flashsim-calibrate.bin").exists(),
        "test file removed"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    for key in [
        "# kernel:",
        "# filesystem:",
        "# cpu:",
        "# threads:",
        "# last-level cache:",
        "# date:",
    ] {
        assert!(
            text.contains(key),
            "environment line {key} missing:\n{text}"
        );
    }
    // The ops' span and the DRAM buffer are recorded as they were.
    assert!(text.contains("(the ops took turns over "), "{text}");
    assert!(text.contains("# Read bandwidth of a "), "{text}");
    // Read back as the machine it describes: this one.
    assert!(calibrate::recorded_environment(&text).len() >= 8);
    assert_eq!(
        calibrate::differences_from_recorded(&text),
        Vec::<String>::new()
    );
    let device = Device::load(&path).unwrap();
    assert_eq!(device.name, "calibrated-test");
    assert!(device.dram_bus_bytes_per_s > 0);
    // One CSV row per (size, queue depth) of the table, per queue depth of the sequential
    // figures (1 and 8), per (size, queue depth, gap) of the near figures (sizes up to 256
    // KiB, depths 1 and 8, gaps 0, 16 and 64 KiB) and per (size, queue depth) of the random
    // reads measured in alternation with them; each with reads and a positive throughput.
    let csv = std::fs::read_to_string(dir.path().join("plots/calibrated-test.csv")).unwrap();
    assert!(csv.lines().next().unwrap().ends_with(",order,near_gap_kib"));
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    let of = |order: &str| {
        rows.iter()
            .filter(|r| r.split(',').nth(9) == Some(order))
            .count()
    };
    assert_eq!(
        (
            of("random"),
            of("sequential"),
            of("near"),
            of("near_random")
        ),
        (6, 2, 18, 6),
        "{csv}"
    );
    for gap in ["0", "16", "64"] {
        let n = rows
            .iter()
            .filter(|r| r.ends_with(&format!(",near,{gap}")))
            .count();
        assert_eq!(n, 6, "gap {gap}: {csv}");
    }
    assert!(
        text.contains("near_extra_gaps_kib = [0.0, 16.0]\n"),
        "{text}"
    );
    for r in rows {
        let f: Vec<f64> = r.split(',').take(9).map(|x| x.parse().unwrap()).collect();
        assert!(
            f[2] >= 8.0 * f[1],
            "at least 4 reads per slot in each of the 2 passes: {r}"
        );
        assert!(f[4] > 0.0 && f[5] > 0.0, "{r}");
        // Reads take the process some CPU, and not a millisecond each.
        assert!(f[8] > 0.0 && f[8] < 1000.0, "CPU per read: {r}");
    }
    assert!(text.contains("# The process's CPU time per read"), "{text}");
    // The measured model serves a request in about the time measured for it: the simulated
    // throughput of 64 KiB at QD 1 is the table's figure.
    let mut device = device;
    let t = device
        .flash
        .submit(flashsim::time::Ps::ZERO, 0, 64 << 10)
        .unwrap();
    let sim_gb_s = (64u64 << 10) as f64 / (t.0 as f64 * 1e-12) / 1e9;
    let row = csv.lines().find(|l| l.starts_with("64,1,")).unwrap();
    let measured: f64 = row.split(',').nth(4).unwrap().parse().unwrap();
    assert!(
        (sim_gb_s / measured - 1.0).abs() < 0.01,
        "{sim_gb_s} vs {measured}"
    );
}

#[test]
fn memory_backed_directories_are_refused() {
    // /dev/shm is tmpfs on Linux machines like CI's; without one the test cannot say anything.
    let shm = std::path::Path::new("/dev/shm");
    if calibrate::filesystem(shm) != "tmpfs" {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs a tmpfs at /dev/shm for this test"
        );
        eprintln!("SKIPPED: no tmpfs at /dev/shm");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let err = calibrate::run(&options(dir.path()), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tmpfs") && err.contains("not storage"),
        "{err}"
    );
    assert!(
        !dir.path().join("flashsim-calibrate.bin").exists(),
        "nothing written"
    );
}

#[test]
fn a_noisy_cell_faster_than_its_queue_depth_allows_is_clamped_and_the_file_loads() {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(root).unwrap();
    let o = options(dir.path());
    let cell = |kib: u64, q: u32, gb_s: f64| calibrate::Cell {
        size_bytes: kib << 10,
        queue_depth: q,
        requests: 100,
        seconds: 1.0,
        throughput_gb_per_s: gb_s,
        mean_latency_us: (kib << 10) as f64 * q as f64 / (gb_s * 1e3),
        p50_latency_us: 1.0,
        p99_latency_us: 1.0,
        cpu_us_per_read: None,
    };
    // 256 KiB at QD 4 measured 5x its QD 1 figure: physically at most 4x.
    let cells = [
        cell(4, 1, 0.04),
        cell(4, 4, 0.12),
        cell(64, 1, 0.4),
        cell(64, 4, 1.2),
        cell(256, 1, 0.5),
        cell(256, 4, 2.5),
    ];
    let rates = [calibrate::Rates {
        threads: 1,
        buffer_bytes: 1920 << 20,
        dram_read_gb_per_s: 10.0,
        gemv_gflops: 5.0,
    }];
    let mut ops = calibrate::OpTimes::fit(vec![(1 << 20, 200e-6), (16 << 20, 2.2e-3)]).unwrap();
    // The 64 MiB op beside reads: 1.25x and 1.75x the fit beyond the overhead, 1.5x on average.
    let over = ops.overhead_us * 1e-6;
    let alone = ops.fitted_seconds(calibrate::BESIDE_READS_OP_BYTES) - over;
    ops.beside_reads = vec![(4, 8, over + 1.25 * alone), (1024, 8, over + 1.75 * alone)];
    // Gathered ops whose pieces cost 50 ps per byte of their first 40 KiB beyond as many
    // contiguous bytes: 8 KiB pieces 409.6 ns, 22 KiB 1126.4 ns, 51 and 256 KiB 2048 ns.
    let ramp = 40u64 << 10;
    let gathered = |piece: u64, stride: u64| {
        let bytes = (64u64 << 20) / piece * piece;
        let ns = 0.05 * piece.min(ramp) as f64;
        let t = ops.fitted_seconds(bytes) + (bytes / piece) as f64 * ns * 1e-9;
        (piece, stride, bytes, t)
    };
    ops.gathered = calibrate::GATHERED_OPS
        .iter()
        .map(|&(p, s)| gathered(p, s))
        .collect();
    let costs = ops.piece_costs_ns();
    for (c, want) in costs.iter().zip([409.6, 1126.4, 2048.0, 2048.0]) {
        assert!((c - want).abs() < 1e-3, "{costs:?}");
    }
    let (r, gb) = ops.piece_ramp().unwrap();
    assert_eq!(r, ramp);
    let want_gb = 1.0 / (1.0 / ops.gb_per_s + 0.05);
    assert!((gb / want_gb - 1.0).abs() < 1e-9, "{gb} vs {want_gb}");
    // An op that ran faster than the contiguous fit (the memory drifted between the two) is
    // a piece that cost nothing, not one that paid the others back: with the 256 KiB op at
    // 0.8x the fit (-6.6 µs a piece, beside 0.4-2 µs for the others) the ramp still comes
    // from the rest (20 KiB), where left negative it would have been none.
    let mut drifted = ops.clone();
    let (piece, stride, bytes, _) = drifted.gathered[3];
    drifted.gathered[3] = (piece, stride, bytes, 0.8 * ops.fitted_seconds(bytes));
    assert!(drifted.piece_costs_ns()[3] < -3.0 * 2048.0);
    let (r, _) = drifted.piece_ramp().expect("a ramp from the other pieces");
    assert!((16 << 10..ramp).contains(&r), "{r}");
    // Near reads (0-64 KiB apart, ascending) 1.5x the random ones at 4 KiB, 1.25x at 64 KiB;
    // strictly in order twice the random ones.
    let near = [
        (64 << 10, cell(64, 4, 1.5)),
        (0, cell(4, 4, 0.24)),
        (64 << 10, cell(4, 1, 0.06)),
        (0, cell(64, 1, 0.8)),
        (64 << 10, cell(4, 4, 0.18)),
        (0, cell(64, 4, 2.4)),
        (64 << 10, cell(64, 1, 0.5)),
        (0, cell(4, 1, 0.08)),
    ];
    let text = calibrate::device_toml(&o, &cells, &[cell(1024, 1, 1.0)], &near, &rates, &ops);
    assert!(text.contains("beside_reads_slowdown = 1.500"), "{text}");
    assert!(text.contains("piece_ramp_kib = 40.0\n"), "{text}");
    assert!(!text.contains("piece_overhead_ns"), "{text}");
    // The sizes the measurements used, as measured.
    assert!(
        text.contains("# Read bandwidth of a 1920 MiB buffer, by threads:"),
        "{text}"
    );
    assert!(text.contains("8 KiB every 16 KiB, 64 MiB ->"), "{text}");
    assert!(text.contains("sequential_gb_per_s = [1.000000]"), "{text}");
    assert!(text.contains("near_gap_kib = 64.0\n"), "{text}");
    assert!(text.contains("near_chunk_kib = [4.0, 64.0]\n"), "{text}");
    assert!(text.contains("near_queue_depths = [1, 4]\n"), "{text}");
    assert!(text.contains("[0.060000, 0.180000],  # 4 KiB"), "{text}");
    assert!(text.contains("[0.500000, 1.500000],  # 64 KiB"), "{text}");
    assert!(text.contains("near_extra_gaps_kib = [0.0]\n"), "{text}");
    assert!(
        text.contains(
            "near_extra_gb_per_s = [\n [ # strictly in file order\n  [0.080000, 0.240000],  # 4 KiB\n  [0.800000, 2.400000],  # 64 KiB\n ],\n]\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("# Clamped (noise): 256 KiB QD 4: 2.500 GB/s measured, more than 4x QD 1 (0.500); set to 2.000"),
        "{text}"
    );
    assert!(text.contains("[0.500000, 2.000000],  # 256 KiB"), "{text}");
    assert!(text.contains("[0.400000, 1.200000],  # 64 KiB"), "{text}");
    let path = dir.path().join("noisy.toml");
    std::fs::write(&path, text).unwrap();
    let dev = Device::load(&path).unwrap();
    // The GEMV measured 5 GFLOP/s, the backend's ops 7.6 (as many FLOPs as bytes): the unit's
    // arithmetic rate is raised to the ops', so an op costs its memory time, as measured.
    let unit = &dev.units[0];
    let b = 16u64 << 20;
    assert_eq!(
        unit.op_time(b, b, 1, false).unwrap(),
        unit.op_time(0, b, 1, false).unwrap()
    );
    // Beside reads, 1.5x beyond the dispatch overhead.
    let overhead = unit.op_time(0, 0, 0, true).unwrap().as_s();
    let ratio = (unit.op_time(b, b, 0, true).unwrap().as_s() - overhead)
        / (unit.op_time(b, b, 0, false).unwrap().as_s() - overhead);
    assert!((ratio - 1.5).abs() < 1e-6, "{ratio}");
    // Ten pieces of 16 MiB: ten ramps of 40 KiB, 2.048 µs each; beside reads slowed as the
    // rates are. 2000 pieces of 8 KiB: each its 8 KiB at the ramp's cost (409.6 ns).
    let extra = |bytes, pieces, beside| {
        unit.op_time(0, bytes, pieces, beside).unwrap().as_us()
            - unit.op_time(0, bytes, 0, beside).unwrap().as_us()
    };
    // The rate is printed to 3 decimals: 0.1% of the ramp's cost.
    assert!(
        (extra(b, 10, false) / 20.48 - 1.0).abs() < 1e-3,
        "{}",
        extra(b, 10, false)
    );
    assert!(
        (extra(b, 10, true) / 30.72 - 1.0).abs() < 1e-3,
        "{}",
        extra(b, 10, true)
    );
    let small = 2000 * 8192;
    assert!(
        (extra(small, 2000, false) / 819.2 - 1.0).abs() < 1e-3,
        "{}",
        extra(small, 2000, false)
    );
    // The sequential figure: 1 MiB at QD 1 in file order at 1 GB/s, after a first random read.
    let mib = 1u64 << 20;
    let mut f = dev.flash.fresh();
    let t1 = f.submit(Ps::ZERO, 0, mib).unwrap();
    let t2 = f.submit(t1, mib, mib).unwrap();
    assert_eq!(
        t2.checked_sub(t1).unwrap(),
        transfer_time(mib, 1_000_000_000).unwrap()
    );
    // Near: 64 KiB at QD 1 starting 64 KiB past the end of the read before runs at 0.5 GB/s
    // (the table's 0.4 times the measured 1.25 of gaps 0-64 KiB, which stand for 32 KiB); 4
    // KiB past it, 1/8 of the way from the in-order figure (2x) to that on log ratio; 68 KiB
    // past it a random read at the table's 0.4 GB/s.
    let kib64 = 64u64 << 10;
    let us = |t: Ps| t.as_us();
    let near_us = transfer_time(kib64, 500_000_000).unwrap().as_us();
    let random_us = transfer_time(kib64, 400_000_000).unwrap().as_us();
    let ratio_4_kib = 2f64.powf(7.0 / 8.0) * 1.25f64.powf(1.0 / 8.0);
    let t3 = f.submit(t2, 2 * mib + 4096, kib64).unwrap();
    let want = kib64 as f64 / (0.4e9 * ratio_4_kib) * 1e6;
    assert!((us(t3) - us(t2) - want).abs() < 1e-3, "{t2:?} {t3:?}");
    let t4 = f.submit(t3, 2 * mib + 4096 + 2 * kib64, kib64).unwrap();
    assert!((us(t4) - us(t3) - near_us).abs() < 1e-3, "{t3:?} {t4:?}");
    let t5 = f
        .submit(t4, 2 * mib + 4096 + 4 * kib64 + 4096, kib64)
        .unwrap();
    assert!((us(t5) - us(t4) - random_us).abs() < 1e-3, "{t4:?} {t5:?}");
}

#[test]
fn op_times_fit_an_overhead_and_a_rate_and_never_a_negative_overhead() {
    let mib = |m: u64| m << 20;
    // 50 µs + bytes / 10 GB/s: the rate from the 64 and 256 MiB ops (their 50 µs included, so
    // 0.3% low), the overhead from the 1 MiB op.
    let t = |b: u64| 50e-6 + b as f64 / 10e9;
    let fit =
        calibrate::OpTimes::fit([1, 4, 16, 64, 256].map(|m| (mib(m), t(mib(m)))).to_vec()).unwrap();
    assert!((fit.gb_per_s / 10.0 - 1.0).abs() < 0.005, "{fit:?}");
    assert!((fit.overhead_us / 50.0 - 1.0).abs() < 0.01, "{fit:?}");
    // Ops in cache, faster per byte, do not set the rate, and give no negative overhead.
    let cached = calibrate::OpTimes::fit(vec![(mib(1), 40e-6), (mib(64), 5e-3)]).unwrap();
    assert_eq!(cached.overhead_us, 0.0);
    assert!(
        (cached.gb_per_s - mib(64) as f64 / 5e-3 / 1e9).abs() < 1e-9,
        "{cached:?}"
    );
    // Only small ops: the rate from all of them.
    let small = calibrate::OpTimes::fit(vec![(mib(1), 100e-6), (mib(3), 300e-6)]).unwrap();
    assert!(
        (small.gb_per_s - mib(4) as f64 / 400e-6 / 1e9).abs() < 1e-9,
        "{small:?}"
    );
    assert!(calibrate::OpTimes::fit(vec![]).is_err());
    assert!(calibrate::OpTimes::fit(vec![(mib(1), 0.0)]).is_err());
}
