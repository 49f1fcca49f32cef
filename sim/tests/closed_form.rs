//! Closed-form checks in the Ramulator style: each prints expected, measured and deviation.

mod common;

use common::report;
use flashsim::device::Device;
use flashsim::hw::flash::Flash;
use flashsim::hw::flash_measured::Measured;
use flashsim::hw::flash_parametric::Parametric;
use flashsim::time::{transfer_time, Ps, PS_PER_S};

fn m1max() -> Device {
    Device::load(common::configs().join("devices/m1max-ssd.toml")).unwrap()
}

#[test]
fn qd1_latency_is_exactly_t0_plus_s_over_b() {
    // Every preset, several sizes, an idle device each time: T(S) = T0 + S/B to the picosecond.
    for name in [
        "m1max-ssd",
        "ufs31-phone",
        "ufs40-phone",
        "nvme-gen4-laptop",
    ] {
        let dev = Device::load(common::configs().join(format!("devices/{name}.toml"))).unwrap();
        for bytes in [512u64, 4096, 16384, 65536, 1 << 20, 4 << 20] {
            let mut f = dev.flash.fresh();
            let issued = Ps(1_000_000);
            let done = f.submit(issued, 0, bytes).unwrap();
            let expected = f.min_latency(bytes).unwrap();
            let measured = done.checked_sub(issued).unwrap();
            report(
                &format!("{name} QD1 {bytes} B latency (ps)"),
                expected.0 as f64,
                measured.0 as f64,
            );
            assert_eq!(measured, expected);
        }
    }
    // And against the formula written out by hand for one device: T0 = 186.414 us, B = 0.35156 GB/s.
    let mut f = m1max().flash.fresh();
    let expected = Ps(186_414_000)
        .checked_add(transfer_time(8192, 351_560_000).unwrap())
        .unwrap();
    let measured = f.submit(Ps::ZERO, 0, 8192).unwrap();
    report(
        "m1max QD1 8 KiB (ps) by hand",
        expected.0 as f64,
        measured.0 as f64,
    );
    assert_eq!(measured, expected);
}

/// Throughput of `n` requests of `bytes` kept `qd` deep.
fn throughput(f: &dyn Flash, bytes: u64, qd: usize, n: usize) -> f64 {
    throughput_at(f, bytes, qd, n, |_| 0)
}

/// Throughput of `n` requests of `bytes` kept `qd` deep, request `i` at `offset(i)`.
fn throughput_at(
    f: &dyn Flash,
    bytes: u64,
    qd: usize,
    n: usize,
    offset: impl Fn(u64) -> u64,
) -> f64 {
    let reads = (0..n as u64).map(|i| (offset(i), bytes));
    flashsim::device::reads_bytes_per_s(f, reads, qd as u32).unwrap()
}

#[test]
fn many_large_requests_reach_the_device_maximum() {
    for name in [
        "m1max-ssd",
        "ufs31-phone",
        "ufs40-phone",
        "nvme-gen4-laptop",
    ] {
        let dev = Device::load(common::configs().join(format!("devices/{name}.toml"))).unwrap();
        let f = dev.flash.fresh();
        let x = throughput(f.as_ref(), 4 << 20, 64, 6000);
        let dev_x = report(
            &format!("{name} 4 MiB x 64 deep (B/s)"),
            dev.flash.max_bytes_per_s() as f64,
            x,
        );
        assert!(dev_x.abs() < 0.01, "{name}: {dev_x}");
    }
}

#[test]
fn table2_sparse_read_points_are_reproduced_at_32_threads() {
    // The two points the m1max preset was fitted to (LLM in a Flash, Table 2).
    let dev = m1max();
    for (bytes, gbps) in [(8192u64, 1.25), (16384, 2.25)] {
        let f = dev.flash.fresh();
        let x = throughput(f.as_ref(), bytes, 32, 20_000) / 1e9;
        let d = report(&format!("m1max {bytes} B x 32 threads (GB/s)"), gbps, x);
        assert!(d.abs() < 0.01);
    }
}

#[test]
fn measured_curve_reproduces_its_table() {
    let chunks = [4096.0, 65536.0, 1048576.0];
    let qds = [1, 4, 32];
    let x = vec![
        vec![0.15e9, 0.5e9, 1.0e9],
        vec![1.3e9, 2.8e9, 3.0e9],
        vec![3.0e9, 3.1e9, 3.2e9],
    ];
    let m = Measured::new(&chunks, &qds, &x).unwrap();
    for (i, &c) in chunks.iter().enumerate() {
        for (j, &q) in qds.iter().enumerate() {
            let f = m.fresh();
            let got = throughput(f.as_ref(), c as u64, q as usize, 4000);
            let d = report(&format!("measured table {c} B QD{q} (B/s)"), x[i][j], got);
            assert!(d.abs() < 0.01, "{d}");
        }
    }
    // Between points: log-log interpolation lies between the neighbours.
    let mid = m.throughput(16384, 2);
    assert!(mid > 0.15e9 && mid < 2.8e9, "{mid}");
}

#[test]
fn measured_reads_complete_out_of_order_and_a_mix_costs_the_sum_of_its_parts() {
    let kib = 1024u64;
    let m = small_and_large();
    // A 1 MiB read, then a 16 KiB one beside it: the short one finishes first, in exactly its
    // own service time at depth 2 (206 µs), not behind the long one's transfer (a link that
    // carried data in submission order finished it after the 1 MiB read, at 1057 µs).
    let mut f = m.fresh();
    let long = f.submit(Ps::ZERO, 0, kib << 10).unwrap();
    let short = f.submit(Ps::ZERO, 64 << 20, 16 * kib).unwrap();
    let want = transfer_time(2 * 16 * kib, m.throughput(16 * kib, 2).round() as u64).unwrap();
    report(
        "measured 16 KiB beside 1 MiB (µs)",
        want.as_us(),
        short.as_us(),
    );
    assert_eq!(short, want);
    assert!(short < long, "{short:?} {long:?}");
    // Kept 8 deep, 16 KiB and 1 MiB reads in turn at random offsets: each read costs its own
    // share, so the mix delivers the bytes over the sum of each size's time at its measured
    // rate (0.4 and 2 GB/s): 1040 KiB / (16 KiB / 0.4 + 1 MiB / 2) GB/s.
    // The link (at the table's best, here 4 MiB reads at 4 GB/s) is half busy.
    let m = Measured::new(
        &[16.0 * 1024.0, 1048576.0, 4194304.0],
        &[1, 8],
        &[vec![0.1e9, 0.4e9], vec![1e9, 2e9], vec![2e9, 4e9]],
    )
    .unwrap();
    let size = |i: u64| {
        if i.is_multiple_of(2) {
            16 * kib
        } else {
            kib << 10
        }
    };
    let reads = (0..4000u64).map(|i| ((i * 7919 % 4096) << 20, size(i)));
    let mix = flashsim::device::reads_bytes_per_s(&m, reads, 8).unwrap();
    let parts = (1040 * kib) as f64 / ((16 * kib) as f64 / 0.4e9 + (kib << 10) as f64 / 2e9);
    let d = report("measured mix 16 KiB + 1 MiB QD8 (B/s)", parts, mix);
    assert!(d.abs() < 0.03, "{d}");
    assert!(mix <= m.max_bytes_per_s() as f64, "{mix}");
}

#[test]
fn measured_sequential_figures_apply_to_reads_in_file_order_only() {
    // 1 MiB at random offsets: 1 GB/s at QD 1, 2 GB/s at QD 8; in file order 0.5 and 3 GB/s.
    let mib = 1u64 << 20;
    let m = Measured::new(&[mib as f64], &[1, 8], &[vec![1e9, 2e9]])
        .unwrap()
        .with_sequential(&[1, 8], &[0.5e9, 3e9])
        .unwrap();
    let mut f = m.fresh();
    // The first request follows nothing: random, 1 MiB at 1 GB/s.
    let t1 = f.submit(Ps::ZERO, 0, mib).unwrap();
    assert_eq!(t1, transfer_time(mib, 1_000_000_000).unwrap());
    // The next chunk in file order: 0.5 GB/s at QD 1.
    let t2 = f.submit(t1, mib, mib).unwrap();
    let seq = t2.checked_sub(t1).unwrap();
    report(
        "measured sequential 1 MiB QD1 (ps)",
        transfer_time(mib, 500_000_000).unwrap().0 as f64,
        seq.0 as f64,
    );
    assert_eq!(seq, transfer_time(mib, 500_000_000).unwrap());
    // A jump: random again; a gap of one byte is not file order either.
    let t3 = f.submit(t2, 10 * mib, mib).unwrap();
    assert_eq!(
        t3.checked_sub(t2).unwrap(),
        transfer_time(mib, 1_000_000_000).unwrap()
    );
    let t4 = f.submit(t3, 11 * mib + 4096, mib).unwrap();
    assert_eq!(
        t4.checked_sub(t3).unwrap(),
        transfer_time(mib, 1_000_000_000).unwrap()
    );
    // A stream kept 8 deep runs at the sequential figure (3 GB/s), random reads at the table's.
    let stream = |sequential: bool| {
        throughput_at(m.fresh().as_ref(), mib, 8, 4000, |i| {
            if sequential {
                i * mib
            } else {
                (i * 7919 % 4001) * 2 * mib
            }
        })
    };
    let d = report("measured sequential QD8 (B/s)", 3e9, stream(true));
    assert!(d.abs() < 0.01, "{d}");
    let d = report("measured random QD8 (B/s)", 2e9, stream(false));
    assert!(d.abs() < 0.01, "{d}");
    // Lengths must match.
    assert!(Measured::new(&[mib as f64], &[1], &[vec![1e9]])
        .unwrap()
        .with_sequential(&[1, 8], &[1e9])
        .is_err());
}

/// 16 KiB at random offsets: 0.1 GB/s at QD 1, 0.4 at QD 8; 1 MiB: 1 and 2 GB/s.
fn small_and_large() -> Measured {
    Measured::new(
        &[16.0 * 1024.0, 1048576.0],
        &[1, 8],
        &[vec![0.1e9, 0.4e9], vec![1e9, 2e9]],
    )
    .unwrap()
}

/// `m` with 16 KiB reads ascending, gaps of at most 64 KiB, at 0.12 and 0.5 GB/s (QD 1 / 8).
fn with_near_16_kib(m: Measured) -> Measured {
    m.with_near(64 << 10, &[16.0 * 1024.0], &[1, 8], &[vec![0.12e9, 0.5e9]])
        .unwrap()
}

#[test]
fn measured_near_figures_apply_to_reads_a_little_past_the_one_before_only() {
    // 16 KiB at random offsets: 0.1 GB/s at QD 1, 0.4 at QD 8; ascending with gaps of at most
    // 64 KiB: 0.12 and 0.5 GB/s (1.2x and 1.25x). 1 MiB reads carry no near figure: clamped
    // to the 16 KiB ratio.
    let kib = 1024u64;
    let m = with_near_16_kib(small_and_large());
    let mut f = m.fresh();
    let t1 = f.submit(Ps::ZERO, 0, 16 * kib).unwrap();
    assert_eq!(t1, transfer_time(16 * kib, 100_000_000).unwrap());
    // 4 KiB past the end: near, 0.12 GB/s.
    let t2 = f.submit(t1, 20 * kib, 16 * kib).unwrap();
    let near = t2.checked_sub(t1).unwrap().as_us();
    let want = transfer_time(16 * kib, 120_000_000).unwrap().as_us();
    report("measured near 16 KiB QD1 (µs)", want, near);
    assert!((near - want).abs() < 1e-3, "{near} vs {want}");
    // Behind the read before, or more than 64 KiB past it: random.
    for offset in [0, 36 * kib + 64 * kib + 4096] {
        let t = f.submit(t2, offset, 16 * kib).unwrap();
        assert_eq!(
            t.checked_sub(t2).unwrap(),
            transfer_time(16 * kib, 100_000_000).unwrap(),
            "{offset}"
        );
        f = m.fresh();
        f.submit(Ps::ZERO, 0, 16 * kib).unwrap();
        f.submit(t1, 20 * kib, 16 * kib).unwrap();
    }
    // Kept 8 deep, 16 KiB reads 16 KiB apart deliver the near figure, 1 MiB apart the table's.
    let stream = |gap: u64| {
        throughput_at(m.fresh().as_ref(), 16 * kib, 8, 4000, |i| {
            i * (16 * kib + gap)
        })
    };
    let d = report("measured near 16 KiB QD8 (B/s)", 0.5e9, stream(16 * kib));
    assert!(d.abs() < 0.01, "{d}");
    let d = report("measured far 16 KiB QD8 (B/s)", 0.4e9, stream(kib << 10));
    assert!(d.abs() < 0.01, "{d}");
    // Shapes must match; every gap's figures have the same sizes and depths; a gap once.
    let base = || Measured::new(&[16384.0], &[1], &[vec![1e8]]).unwrap();
    assert!(base()
        .with_near(64 * kib, &[16384.0], &[1, 8], &[vec![1e8]])
        .is_err());
    assert!(base()
        .with_near(64 * kib, &[16384.0], &[1], &[vec![-1.0]])
        .is_err());
    let once = || {
        base()
            .with_near(64 * kib, &[16384.0], &[1], &[vec![1e8]])
            .unwrap()
    };
    assert!(once()
        .with_near(64 * kib, &[16384.0], &[1], &[vec![1e8]])
        .is_err());
    assert!(once()
        .with_near(16 * kib, &[8192.0], &[1], &[vec![1e8]])
        .is_err());
    assert!(once()
        .with_near(16 * kib, &[16384.0], &[1], &[vec![1e8]])
        .is_ok());
}

#[test]
fn near_figures_at_several_gaps_price_a_read_by_its_own_gap() {
    // 16 KiB random 0.1 / 0.4 GB/s (QD 1 / 8). Ascending with gaps of 0-64 KiB 0.12 / 0.5
    // (1.25x at QD 8), of 0-16 KiB 0.13 / 0.56 (1.4x), strictly in order 0.15 / 0.6 (1.5x):
    // the figures stand for gaps of 32, 8 and 0 KiB.
    let kib = 1024u64;
    let m = with_near_16_kib(small_and_large())
        .with_near(16 * kib, &[16.0 * 1024.0], &[1, 8], &[vec![0.13e9, 0.56e9]])
        .unwrap()
        .with_near(0, &[16.0 * 1024.0], &[1, 8], &[vec![0.15e9, 0.6e9]])
        .unwrap();
    let ratio = |gap: u64| {
        throughput_at(m.fresh().as_ref(), 16 * kib, 8, 4000, |i| {
            i * (16 * kib + gap)
        }) / 0.4e9
    };
    // At the gaps the figures stand for, between them linear on the gap (on log ratio),
    // clamped beyond the widest's, random beyond its largest gap (64 KiB).
    for (gap_kib, want) in [
        (0, 1.5),
        (4, (1.5f64 * 1.4).sqrt()),
        (8, 1.4),
        (20, (1.4f64 * 1.25).sqrt()),
        (32, 1.25),
        (48, 1.25),
        (68, 1.0),
    ] {
        let got = ratio(gap_kib * kib);
        let d = report(
            &format!("near 16 KiB QD8 {gap_kib} KiB apart (x random)"),
            want,
            got,
        );
        assert!(d.abs() < 0.01, "{gap_kib} KiB: {got} vs {want}");
    }
    // The fastest a 16 KiB read can be: alone and strictly in order, 0.15 GB/s.
    assert_eq!(
        m.min_latency(16 * kib).unwrap(),
        transfer_time(16 * kib, 150_000_000).unwrap()
    );
    // The same figures from a device file: near_extra_gaps_kib and near_extra_gb_per_s.
    let text = common::measured_near_device(
        "near_extra_gaps_kib = [0.0, 16.0]\nnear_extra_gb_per_s = [[[0.15, 0.6]], [[0.13, 0.56]]]\n",
    );
    let dev = Device::from_source(
        &flashsim_workloads::toml_source::TomlSource::from_text("gaps.toml", &text).unwrap(),
    )
    .unwrap();
    let got = throughput_at(dev.flash.fresh().as_ref(), 16 * kib, 8, 4000, |i| {
        i * 36 * kib
    });
    let d = report(
        "near 16 KiB QD8 20 KiB apart, from a file (x random)",
        (1.4f64 * 1.25).sqrt(),
        got / 0.4e9,
    );
    assert!(d.abs() < 0.01, "{got}");
}

#[test]
fn short_reads_in_file_order_take_the_near_ratio_and_blend_into_the_sequential_one() {
    // 16 KiB random 0.4 GB/s at QD 8, near 0.5 (1.25x); 1 MiB random 2 GB/s at QD 8, in file
    // order 1 GB/s (0.5x): the sequential figure is a 1 MiB measurement.
    let kib = 1024u64;
    let sequential = || {
        small_and_large()
            .with_sequential(&[1, 8], &[0.5e9, 1e9])
            .unwrap()
    };
    let m = with_near_16_kib(sequential());
    let in_order = |size: u64| throughput_at(m.fresh().as_ref(), size, 8, 4000, |i| i * size);
    // 16 KiB strictly in order: a near read with no gap (not 0.4 x 0.5 = 0.2 GB/s).
    let d = report(
        "measured in-order 16 KiB QD8 (B/s)",
        0.5e9,
        in_order(16 * kib),
    );
    assert!(d.abs() < 0.01, "{d}");
    // 1 MiB in order: the sequential figure.
    let d = report(
        "measured in-order 1 MiB QD8 (B/s)",
        1e9,
        in_order(kib << 10),
    );
    assert!(d.abs() < 0.01, "{d}");
    // 128 KiB, halfway on log size: the table's figure times the geometric mean of the ratios.
    let want = m.throughput(128 * kib, 8) * (0.5f64 * 1.25).sqrt();
    let d = report(
        "measured in-order 128 KiB QD8 (B/s)",
        want,
        in_order(128 * kib),
    );
    assert!(d.abs() < 0.01, "{d}");
    // Without near figures, the sequential ratio at every size, as before.
    let plain = sequential();
    let got = throughput_at(plain.fresh().as_ref(), 16 * kib, 8, 4000, |i| i * 16 * kib);
    let d = report(
        "measured in-order 16 KiB QD8, no near figures (B/s)",
        0.2e9,
        got,
    );
    assert!(d.abs() < 0.01, "{d}");
}

#[test]
fn ops_slow_down_only_where_reads_run_beside_them() {
    use flashsim::runner::{prepare, Cache};
    // Llama-2-7B on the UFS 4.0 phone, one point per policy setting; each simulated with the
    // CPU as configured and 2x slower beside reads.
    let compute_ms = |policy: &str, buffered: u32, slowdown: f64| -> f64 {
        let text = format!(
            r#"
name = "beside"
device = "ufs40-phone"
model = "llama-2-7b"
policy = "{policy}"
dram_budget_gib = 16.0
tokens = 3
prompt_tokens = 8
seed = 1
[policies.dense-streaming]
buffered_ops = {buffered}
"#
        );
        let exp = common::experiment("beside.toml", &text).unwrap();
        let mut p = prepare(&exp, &exp.points[0], &mut Cache::default()).unwrap();
        for u in p.device.units.iter_mut() {
            *u = u.clone().with_beside_reads_slowdown(slowdown);
        }
        let (stats, _) = p.simulate(false).unwrap();
        stats
            .tokens
            .iter()
            .map(|t| t.compute_busy.as_s())
            .sum::<f64>()
            * 1e3
    };
    // No reads at all, or none in flight while an op runs (each op's reads are issued when the
    // op before it is done): no slowdown.
    for (policy, buffered) in [("all-in-dram", 2), ("dense-streaming", 1)] {
        let (alone, beside) = (
            compute_ms(policy, buffered, 1.0),
            compute_ms(policy, buffered, 2.0),
        );
        report(
            &format!("{policy} buffered {buffered} compute (ms)"),
            alone,
            beside,
        );
        assert_eq!(alone, beside, "{policy}");
    }
    // Double buffering: op j + 1's reads run beside op j, which then takes twice as long
    // (beyond its dispatch overhead); the last op of a token has none beside it.
    let (alone, beside) = (
        compute_ms("dense-streaming", 2, 1.0),
        compute_ms("dense-streaming", 2, 2.0),
    );
    report(
        "dense-streaming buffered 2 compute x2 (ms)",
        2.0 * alone,
        beside,
    );
    assert!(
        beside > 1.5 * alone && beside <= 2.0 * alone,
        "{alone} {beside}"
    );
}

#[test]
fn parametric_queueing_follows_q_s_over_t() {
    // Below saturation, Q requests in flight deliver Q·S/(T0 + S/B).
    let t0 = Ps(100_000_000); // 100 us
    let b = 1_000_000_000; // 1 GB/s per request
    let f = Parametric::new(t0, b, 8_000_000_000, 8, None);
    let s = 4096u64;
    let expected = 4.0 * s as f64 / (t0.0 as f64 / PS_PER_S as f64 + s as f64 / b as f64);
    let got = throughput(&f, s, 4, 40_000);
    let d = report("parametric 4 KiB QD4 (B/s)", expected, got);
    assert!(d.abs() < 0.001);
}

#[test]
fn parametric_short_reads_pass_longer_ones() {
    // Two units, 100 µs + S / 1 GB/s each, a 2 GB/s link. A 4 MiB read, then a 4 KiB one on
    // the other unit: the short one finishes in exactly T0 + S/B, long before the 4 MiB read
    // (a link carrying data in submission order finished it after that read, at 4.3 ms).
    let t0 = Ps(100_000_000);
    let mut f = Parametric::new(t0, 1_000_000_000, 2_000_000_000, 2, None);
    let long = f.submit(Ps::ZERO, 0, 4 << 20).unwrap();
    let short = f.submit(Ps::ZERO, 64 << 20, 4096).unwrap();
    assert_eq!(short, f.min_latency(4096).unwrap());
    assert_eq!(long, f.min_latency(4 << 20).unwrap());
    assert!(short < long);
    // Two 4 MiB reads: the second one's data wait for the first one's to cross the link. A
    // 4 KiB read then waits for a unit (the first frees first), and its data for the link,
    // busy with the second one's until that ends.
    let mut f = Parametric::new(t0, 1_000_000_000, 2_000_000_000, 2, None);
    let a = f.submit(Ps::ZERO, 0, 4 << 20).unwrap();
    let b = f.submit(Ps::ZERO, 0, 4 << 20).unwrap();
    let on_link = transfer_time(4 << 20, 2_000_000_000).unwrap();
    assert_eq!(b, a.checked_add(on_link).unwrap());
    let c = f.submit(Ps::ZERO, 0, 4096).unwrap();
    assert!(a.checked_add(f.min_latency(4096).unwrap()).unwrap() < b);
    assert_eq!(
        c,
        b.checked_add(transfer_time(4096, 2_000_000_000).unwrap())
            .unwrap()
    );
}

#[test]
fn table2_dense_streaming_rows() {
    // LLM in a Flash, Table 2, rows 1 and 2: OPT-6.7B fp16 on the M1 Max, I/O per token.
    // The paper's I/O figure is bytes / 6.10 GB/s with the flash never idle; three buffers keep
    // our pipeline's flash from ever waiting for a free buffer.
    let rows = common::run(
        r#"
name = "table2-dense"
device = "m1max-ssd"
model = "opt-6.7b"
policy = "dense-streaming"
dram_budget_gib = 12.0
tokens = 3
prompt_tokens = 0
seed = 1
[policies.dense-streaming]
pinned_fraction = [0.0, 0.5]
buffered_ops = 3
"#,
    );
    let none = &rows[0].metrics;
    let hybrid = &rows[1].metrics;
    let d = report(
        "Table 2 'none' I/O ms/token",
        2196.0,
        none.flash_io_ms_per_token,
    );
    assert!(d.abs() < 0.02);
    let d = report(
        "Table 2 'hybrid' I/O ms/token",
        1090.0,
        hybrid.flash_io_ms_per_token,
    );
    assert!(d.abs() < 0.02);
    let d = report(
        "Table 2 'none' GB read/token",
        13.4,
        none.flash_bytes_per_token / 1e9,
    );
    assert!(d.abs() < 0.02);
    let d = report(
        "Table 2 'hybrid' GB in DRAM",
        6.7,
        hybrid.dram_resident_weight_bytes as f64 / 1e9,
    );
    assert!(d.abs() < 0.02);
}

#[test]
fn a_policy_sizing_itself_and_the_device_plot_see_random_reads_where_the_model_has_more() {
    use flashsim::device::{stream_bytes_per_s, Rates, APART_BYTES};
    use flashsim_policies::DeviceRates;
    use flashsim_workloads::toml_source::TomlSource;
    // 1 MiB reads: 1 / 2 GB/s at random offsets (QD 1 / 8), 0.5 / 3 GB/s in file order.
    let text = format!(
        r#"name = "m"

[flash]
model = "measured"
chunk_kib = [1024.0]
queue_depths = [1, 8]
throughput_gb_per_s = [[1.0, 2.0]]
sequential_queue_depths = [1, 8]
sequential_gb_per_s = [0.5, 3.0]
{}"#,
        &common::DEVICE[common::DEVICE.find("\n[dram]").unwrap()..]
    );
    let d = Device::from_source(&TomlSource::from_text("configs/devices/m.toml", &text).unwrap())
        .unwrap();
    let mib = 1u64 << 20;
    for (qd, random, in_order) in [(1u32, 1e9, 0.5e9), (8, 2e9, 3e9)] {
        let rates = Rates {
            device: &d,
            io_queue_depth: qd,
        };
        // The table's figure, not the sequential one (which consecutive offsets got).
        let got = rates.flash_read_bytes_per_s(mib);
        assert!((got / random - 1.0).abs() < 0.01, "QD {qd}: {got}");
        let apart = stream_bytes_per_s(d.flash.as_ref(), qd, mib, APART_BYTES);
        assert_eq!(apart, got);
        // The plot's file-order curve: the first read follows nothing (random), the rest in
        // order.
        let seq = stream_bytes_per_s(d.flash.as_ref(), qd, mib, 0);
        assert!(
            seq != got && (seq - in_order).abs() < (got - in_order).abs(),
            "QD {qd}: {seq}"
        );
    }
}
