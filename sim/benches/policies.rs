//! Policy simulation speed, one configuration end to end (planning, caches, event-level flash).
//!
//! `dip/phi-3-medium-lfu`: DIP on Phi-3-Medium (40 layers), 128-token prompt, 256 generated
//! tokens, LFU cache, UFS 4.0 phone: the configuration whose Python simulator takes about 15 s.
//! The synthetic trace is generated (and cached) before timing starts.

use criterion::{criterion_group, criterion_main, Criterion};
use flashsim::experiment::Experiment;
use flashsim::runner::{prepare, Cache};
use flashsim_workloads::TomlSource;
use std::hint::black_box;

const DIP: &str = r#"
name = "bench-dip"
device = "ufs40-phone"
model = "phi-3-medium"
policy = "dip"
dram_budget_gib = 18.0
tokens = 256
prompt_tokens = 128
seed = 1
trace = "synthetic"
[synthetic]
active_share = 0.926
active_sigma = 1.052
inactive_scale = 0.0025
popularity_skew = 0.361
temporal_reuse = 0.337
value_persistence = 0.433
magnitude_skew = 0.381
layer_cosine = 0.95
channel_skew = 0.194
[policies.dip]
keep = 0.5
cache = "lfu"
"#;

fn dip(c: &mut Criterion) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs/experiments/bench-dip.toml");
    let exp = Experiment::from_source(TomlSource::from_text(path, DIP).unwrap()).unwrap();
    let mut cache = Cache::default();
    // Generate the trace and warm the page cache outside the timing.
    prepare(&exp, &exp.points[0], &mut cache)
        .unwrap()
        .simulate(false)
        .unwrap();
    let mut g = c.benchmark_group("dip");
    g.sample_size(10);
    g.bench_function("phi-3-medium-lfu", |b| {
        b.iter(|| {
            let mut p = prepare(&exp, &exp.points[0], &mut cache).unwrap();
            black_box(p.simulate(false).unwrap().0.events)
        })
    });
    g.finish();
}

// No plots: criterion's plotters backend needs system fonts, which a bare machine lacks (it
// panics after the first comparison); the figures are what the benchmarks are for.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = dip
}
criterion_main!(benches);
