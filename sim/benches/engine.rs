//! Engine speed: events per second on one core.
//!
//! `engine/hold`: the classic "hold" benchmark of event-queue literature: a fixed population of
//! pending events; each handled event schedules one successor a pseudo-random delay later, so
//! every event is one pop and one push on a heap of constant size.
//! `pipeline/dense-opt-6.7b`: the real decode pipeline (dense streaming of OPT-6.7B on the
//! M1 Max preset), counting the events it handles.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flashsim::engine::{Engine, Event, Handler};
use flashsim::experiment::Experiment;
use flashsim::runner::{prepare, Cache};
use flashsim::{Ps, SimError};
use flashsim_workloads::TomlSource;
use std::hint::black_box;

#[derive(Clone, Copy)]
struct Tick {
    actor: u32,
}
impl Event for Tick {
    fn kind(&self) -> u8 {
        0
    }
}

struct Hold {
    remaining: u64,
    state: u64,
}

impl Handler for Hold {
    type Event = Tick;
    #[inline]
    fn handle(&mut self, now: Ps, ev: Tick, follow: &mut Vec<(Ps, Tick)>) -> Result<(), SimError> {
        if self.remaining > 0 {
            self.remaining -= 1;
            // xorshift: a cheap deterministic delay of 1..1024 ns.
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let delay = ((self.state ^ ev.actor as u64) & 1023) + 1;
            follow.push((Ps(now.0 + delay * 1000), ev));
        }
        Ok(())
    }
}

fn run_hold(population: u32, events: u64) -> u64 {
    let mut eng = Engine::new();
    for a in 0..population {
        eng.schedule(Ps(a as u64), Tick { actor: a }).unwrap();
    }
    let mut h = Hold {
        remaining: events,
        state: 0x2545_F491_4F6C_DD1D,
    };
    eng.run(&mut h).unwrap();
    eng.processed()
}

fn engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine/hold");
    let events = 1_000_000u64;
    for population in [64u32, 1024] {
        g.throughput(Throughput::Elements(events + population as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(population),
            &population,
            |b, &p| b.iter(|| black_box(run_hold(p, events))),
        );
    }
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let text = r#"
name = "bench"
device = "m1max-ssd"
model = "opt-6.7b"
policy = "dense-streaming"
dram_budget_gib = 12.0
tokens = 4
prompt_tokens = 0
seed = 1
[policies.dense-streaming]
buffered_ops = 3
"#;
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/experiments/bench.toml");
    let exp = Experiment::from_source(TomlSource::from_text(path, text).unwrap()).unwrap();
    let mut cache = Cache::default();
    let events = prepare(&exp, &exp.points[0], &mut cache)
        .unwrap()
        .simulate(false)
        .unwrap()
        .0
        .events;
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(events));
    g.bench_function("dense-opt-6.7b", |b| {
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
    targets = engine, pipeline
}
criterion_main!(benches);
