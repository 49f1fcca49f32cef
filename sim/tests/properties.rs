//! Property tests: invariants that must hold for any device, model and policy parameters.

mod common;

use flashsim::executor::Activity;
use flashsim::hw::flash::Flash;
use flashsim::hw::flash_measured::Measured;
use flashsim::hw::flash_parametric::Parametric;
use flashsim::runner::{prepare, Cache, Metrics};
use flashsim::time::{transfer_time, Ps};
use proptest::prelude::*;

fn parametric() -> impl Strategy<Value = Parametric> {
    (
        1u64..500,
        1u64..8_000,
        1u64..4,
        1u32..64,
        proptest::option::of(1u64..100),
    )
        .prop_map(|(t0_us, b_mbps, max_mult, units, iops_frac)| {
            let t0 = Ps(t0_us * 1_000_000);
            let b = b_mbps * 1_000_000;
            // 1/IOPS is a fraction of T0, as the config requires.
            let cmd = iops_frac.map(|f| Ps(t0.0 * f / 100));
            Parametric::new(t0, b, b * max_mult, units, cmd)
        })
}

fn measured() -> impl Strategy<Value = Measured> {
    (0.05f64..1.0, 1.0f64..8.0, 0.3f64..1.0).prop_map(|(x4k, x1m, scale)| {
        // A plausible, physical table: throughput grows with size and depth, sublinearly in depth.
        let rows: Vec<Vec<f64>> = [x4k, (x4k + x1m) / 2.0, x1m]
            .iter()
            .map(|&x| {
                vec![
                    x * 1e9 * scale,
                    x * 1e9 * scale * 3.0,
                    x * 1e9 * scale * 6.0,
                ]
            })
            .collect();
        Measured::new(&[4096.0, 65536.0, 1048576.0], &[1, 4, 32], &rows).unwrap()
    })
}

/// Requests as (gap before submission in ns, bytes).
fn requests() -> impl Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec((0u64..200_000, 1u64..(8 << 20)), 1..300)
}

fn check_flash(f: &mut dyn Flash, reqs: &[(u64, u64)]) -> Result<(), TestCaseError> {
    let mut now = Ps::ZERO;
    let mut done = Vec::new();
    for &(gap_ns, bytes) in reqs {
        now = Ps(now.0 + gap_ns * 1000);
        let d = f.submit(now, 0, bytes).unwrap();
        // Never before issue + minimum latency.
        prop_assert!(d >= now.checked_add(f.min_latency(bytes).unwrap()).unwrap());
        done.push((d, bytes));
    }
    // Throughput never exceeds the device maximum: any run of completions needs at least its
    // bytes / B_max of time after the completion before it.
    done.sort();
    let bmax = f.max_bytes_per_s();
    for i in 0..done.len() {
        let mut bytes = 0u64;
        for j in i + 1..done.len() {
            bytes += done[j].1;
            let min = transfer_time(bytes, bmax).unwrap();
            // One picosecond of rounding per request.
            prop_assert!(done[j].0 .0 - done[i].0 .0 + (j - i) as u64 >= min.0);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn parametric_flash_respects_latency_and_bandwidth(mut f in parametric(), reqs in requests()) {
        check_flash(&mut f, &reqs)?;
    }

    #[test]
    fn measured_flash_respects_latency_and_bandwidth(mut f in measured(), reqs in requests()) {
        check_flash(&mut f, &reqs)?;
    }
}

/// A small experiment with random parameters.
fn small_experiment(
    pinned: f64,
    pin_attention: bool,
    buffered: u32,
    qd: u32,
    max_read_kib: u64,
    budget_gib: f64,
    device: &str,
) -> String {
    format!(
        r#"
name = "prop"
device = "{device}"
model = "stories260K"
policy = "dense-streaming"
dram_budget_gib = {budget_gib}
tokens = 6
prompt_tokens = 5
seed = 3
io_queue_depth = {qd}
max_read_kib = {max_read_kib}
[policies.dense-streaming]
pinned_fraction = {pinned}
pin_attention = {pin_attention}
buffered_ops = {buffered}
"#
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn simulation_invariants(
        pinned in 0.0f64..1.0,
        pin_attention in any::<bool>(),
        buffered in 1u32..5,
        qd in 1u32..64,
        max_read_kib in 1u64..64,
        budget_mib in 1.2f64..4.0,
        device in prop::sample::select(vec!["m1max-ssd", "ufs31-phone", "ufs40-phone", "nvme-gen4-laptop"]),
    ) {
        let text = small_experiment(pinned, pin_attention, buffered, qd, max_read_kib, budget_mib / 1024.0, device);
        let exp = common::experiment("prop.toml", &text).unwrap();
        let point = &exp.points[0];
        let mut cache = Cache::default();
        let mut p = match prepare(&exp, point, &mut cache) {
            Ok(p) => p,
            // A budget too small is refused before simulating: that is the contract.
            Err(e) => {
                prop_assert!(e.to_string().contains("dram_budget_gib"));
                return Ok(());
            }
        };
        let (stats, activity) = p.simulate(true).unwrap();
        // DRAM in use never exceeds the budget.
        prop_assert!(stats.dram_peak_bytes <= p.dram_budget_bytes);
        // Ops form a chain: wall time = compute + stall, per token.
        for t in &stats.tokens {
            prop_assert_eq!(t.wall, Ps(t.compute_busy.0 + t.stall.0));
        }
        // Simulated time never goes backwards: token starts and op starts are ordered.
        for w in stats.tokens.windows(2) {
            prop_assert!(w[1].start >= w[0].start.checked_add(w[0].wall).unwrap());
        }
        let mut last_op_start = Ps::ZERO;
        for a in &activity {
            match *a {
                Activity::Read { issued, done, bytes, .. } => {
                    prop_assert!(done >= issued.checked_add(p.device.flash.min_latency(bytes).unwrap()).unwrap());
                }
                Activity::Op { start, done, .. } => {
                    prop_assert!(start >= last_op_start && done >= start);
                    last_op_start = start;
                }
            }
        }
        // Same config, same seed: identical results.
        let mut p2 = prepare(&exp, point, &mut cache).unwrap();
        let (stats2, activity2) = p2.simulate(true).unwrap();
        prop_assert_eq!(&stats, &stats2);
        prop_assert_eq!(activity, activity2);
        prop_assert_eq!(Metrics::from_stats(&stats, 0), Metrics::from_stats(&stats2, 0));
    }
}
