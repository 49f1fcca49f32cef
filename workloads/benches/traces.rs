//! Trace speed, in tokens per second:
//! - `record/stories260K`: one forward pass of the reference model with activation capture
//!   (what `flashsim trace record` does per position, file writes aside);
//! - `synth/llama-2-7b`: one token of the synthetic generator at the 7B shape (32 layers,
//!   11008 neurons, hidden 4096), all four activations.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flashsim_workloads::checkpoint::llama2c;
use flashsim_workloads::model::{Activations, Dense, Model};
use flashsim_workloads::trace::synth::{Generator, SynthParams};
use flashsim_workloads::ModelShape;
use std::hint::black_box;

fn record(c: &mut Criterion) {
    let Some(dir) = flashsim_workloads::shared_models_dir() else {
        eprintln!("record/stories260K not run: ../shared/models/stories260K.bin is missing");
        return;
    };
    let w = llama2c::load(dir.join("stories260K.bin")).unwrap();
    let mut m = Model::new(w);
    let mut acts = Activations::default();
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(256));
    g.bench_function("stories260K", |b| {
        b.iter(|| {
            for pos in 0..256 {
                black_box(m.forward((pos % 500) as u32 + 3, pos, &mut Dense, Some(&mut acts)));
            }
        })
    });
    g.finish();
}

fn synth(c: &mut Criterion) {
    let shape = ModelShape::load(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/models/llama-2-7b.toml"),
    )
    .unwrap();
    let mut gen = Generator::new(SynthParams::default(), &shape, 1);
    let mut acts = Activations::default();
    gen.next(true, &mut acts);
    let mut g = c.benchmark_group("synth");
    g.sample_size(10);
    g.throughput(Throughput::Elements(8));
    g.bench_function("llama-2-7b", |b| {
        b.iter(|| {
            for _ in 0..8 {
                gen.next(false, &mut acts);
            }
            black_box(acts.h.len())
        })
    });
    g.finish();
}

// No plots: criterion's plotters backend needs system fonts, which a bare machine lacks (it
// panics after the first comparison); the figures are what the benchmarks are for.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = record, synth
}
criterion_main!(benches);
