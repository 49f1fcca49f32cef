//! Traces: record, read back, statistics, synthesis, fitting, and broken files.

use flashsim_workloads::checkpoint::llama2c;
use flashsim_workloads::model::{Activations, Dense, Model, Sampling};
use flashsim_workloads::shape::ModelShape;
use flashsim_workloads::shared_models_for_test;
use flashsim_workloads::tokenizer::Tokenizer;
use flashsim_workloads::trace::record::{record, RecordConfig};
use flashsim_workloads::trace::stats::{self, StatsConfig};
use flashsim_workloads::trace::synth::{self, SynthConfig, SynthParams};
use flashsim_workloads::trace::{Act, Trace, TraceWriter};
use std::path::{Path, PathBuf};

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/stories260K.safetensors")
}

fn tiny_shape() -> ModelShape {
    ModelShape {
        name: "tiny".into(),
        source: String::new(),
        layers: 3,
        hidden: 16,
        intermediate: 40,
        heads: 2,
        kv_heads: 1,
        vocab: 50,
        bytes_per_weight: 2.0,
        gated: true,
        tied_embeddings: false,
        head_dim: None,
    }
}

#[test]
fn recorded_trace_holds_the_model_activations() {
    let Some(dir) = shared_models_for_test() else {
        return;
    };
    let w = llama2c::load(dir.join("stories260K.bin")).unwrap();
    let tok = Tokenizer::load(dir.join("tok512.bin"), 512).unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("t.safetensors");
    let cfg = RecordConfig {
        prompts: vec!["Once upon a time".into(), "The cat".into()],
        positions: 20,
        sampling: Sampling::Greedy,
        seed: 1,
    };
    let s = record(&w, "stories260K", "abc", &tok, &cfg, &path).unwrap();
    assert_eq!(s.tokens, 40);
    assert!(
        !out.path().join("t.safetensors.parts").exists(),
        "parts removed"
    );
    let t = Trace::open(&path).unwrap();
    assert_eq!(t.tokens(), 40);
    assert_eq!(t.sequences(), vec![0..20, 20..40]);
    assert_eq!(t.meta["source"], "recorded");
    assert_eq!(t.meta["checkpoint_sha256"], "abc");
    assert_eq!(t.meta["sampling"], "greedy");
    assert!(t.meta["prompts"].contains("The cat"));
    // Replay the first sequence: every stored value is the model's activation rounded to f16.
    let mut m = Model::new(w);
    let mut acts = Activations::default();
    let mut got = Vec::new();
    for pos in 0..20 {
        let token = t.token(pos);
        assert_eq!(t.position(pos), pos as u32);
        m.forward(token, pos, &mut Dense, Some(&mut acts));
        for (act, want) in [
            (Act::XAttn, &acts.x_attn),
            (Act::XO, &acts.x_o),
            (Act::XMlp, &acts.x_mlp),
            (Act::H, &acts.h),
        ] {
            for (l, v) in want.iter().enumerate() {
                t.read(act, pos, l, &mut got);
                let want16: Vec<f32> = v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
                assert_eq!(got, want16, "{act:?} token {pos} layer {l}");
            }
        }
    }
}

#[test]
fn the_file_is_plain_safetensors() {
    // What a notebook sees: an 8-byte length, a JSON header with dtypes and shapes, the data.
    let bytes = std::fs::read(bundled()).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header["h"]["dtype"], "F16");
    assert_eq!(header["h"]["shape"], serde_json::json!([384, 5, 172]));
    assert_eq!(header["__metadata__"]["format"], "flashsim-trace/1");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.names().len(), 7);
}

#[test]
fn bundled_trace_statistics_match_the_shared_readme() {
    // shared/models/README.md measured these on stories260K with an independent numpy model:
    // 90/95/99% of |h| mass in 51-54% / 63-66% / 81-83% of neurons; top-25% Jaccard 0.19-0.22;
    // next token's top-25% already in the previous 5 tokens' union: 0.77-0.78.
    let t = Trace::open(bundled()).unwrap();
    let s = stats::compute(
        &t,
        &StatsConfig {
            top_frac: 0.25,
            window: 5,
            hot_frac: 0.1,
        },
    );
    println!("{}", stats::table(&s));
    for l in &s.layers {
        assert!((0.49..=0.57).contains(&l.mass90), "{l:?}");
        assert!((0.61..=0.69).contains(&l.mass95), "{l:?}");
        assert!((0.79..=0.86).contains(&l.mass99), "{l:?}");
        assert!((0.15..=0.25).contains(&l.jaccard_1), "{l:?}");
        assert!((0.74..=0.81).contains(&l.window_reuse), "{l:?}");
    }
}

#[test]
fn fitted_synthetic_trace_matches_the_real_one_within_0_05() {
    let real = Trace::open(bundled()).unwrap();
    let cfg = StatsConfig::default();
    let f = synth::fit(&real, &cfg, 0, 450);
    println!(
        "max |diff| {:.4} after {} evaluations",
        f.max_abs_error, f.evaluations
    );
    // And the same parameters, written to a file by the streaming generator, measure the same.
    let out = tempfile::tempdir().unwrap();
    let p = synth::generate(
        &SynthConfig {
            params: f.params,
            shape: real.shape.clone(),
            sequences: 4,
            tokens_per_sequence: 96,
            seed: 0,
        },
        &out.path().join("s.safetensors"),
    )
    .unwrap();
    let s = stats::compute(&Trace::open(&p).unwrap(), &cfg);
    println!(
        "real:\n{}synthetic:\n{}",
        stats::table(&f.target),
        stats::table(&s)
    );
    for (i, name) in stats::FIGURES.iter().enumerate() {
        let (a, b) = (f.target.mean.figures()[i], s.mean.figures()[i]);
        assert!(
            (a - b).abs() < 0.05,
            "{name}: real {a:.3}, synthetic {b:.3}"
        );
    }
}

#[test]
fn synthetic_defaults_follow_the_published_7b_figures() {
    // LLM in a Flash: ~3.3% active; ActiveFlow: > 0.95 cosine, > 80% top-K precision.
    let shape = ModelShape {
        layers: 4,
        hidden: 1024,
        intermediate: 2752,
        ..tiny_shape()
    };
    let seqs: Vec<std::ops::Range<usize>> = (0..2).map(|i| i * 24..(i + 1) * 24).collect();
    let m = synth::MemTrace::generate(SynthParams::default(), &shape, &seqs, 3);
    let s = stats::compute(&m, &StatsConfig::default());
    println!("{}", stats::table(&s));
    let mean = s.mean;
    assert!(mean.xmlp_cos.unwrap() > 0.93, "{mean:?}");
    assert!(mean.xmlp_topk_precision.unwrap() > 0.75, "{mean:?}");
    // The 3.3% active neurons hold 90% of the mass.
    assert!(mean.mass90 <= 0.034, "{mean:?}");
}

#[test]
fn synthetic_generation_is_deterministic_and_seeded() {
    let out = tempfile::tempdir().unwrap();
    let cfg = |seed| SynthConfig {
        params: SynthParams::default(),
        shape: tiny_shape(),
        sequences: 2,
        tokens_per_sequence: 10,
        seed,
    };
    let a = synth::generate(&cfg(5), &out.path().join("a.safetensors")).unwrap();
    let b = synth::generate(&cfg(5), &out.path().join("b.safetensors")).unwrap();
    let c = synth::generate(&cfg(6), &out.path().join("c.safetensors")).unwrap();
    let (a, b, c) = (
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        std::fs::read(c).unwrap(),
    );
    assert_eq!(a, b);
    assert_ne!(a, c);
}

fn write_tiny(path: &Path, tokens: usize) {
    let mut w = TraceWriter::create(path, &tiny_shape(), Default::default()).unwrap();
    let mut g = synth::Generator::new(SynthParams::default(), &tiny_shape(), 1);
    let mut acts = Activations::default();
    for t in 0..tokens {
        g.next(t == 0, &mut acts);
        w.push(t as u32, t as u32, 0, &acts).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn truncated_or_inconsistent_traces_are_clear_errors() {
    let out = tempfile::tempdir().unwrap();
    let good = out.path().join("good.safetensors");
    write_tiny(&good, 8);
    Trace::open(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = out.path().join("bad.safetensors");
    let check = |b: &[u8], want: &str| {
        std::fs::write(&bad, b).unwrap();
        let e = Trace::open(&bad).err().expect("must fail").to_string();
        println!("{e}");
        assert!(e.contains("bad.safetensors") && e.contains(want), "{e}");
    };
    check(&bytes[..bytes.len() - 7], "truncated");
    check(&bytes[..5], "truncated");
    check(&bytes[..100], "truncated");
    // A header whose model shape disagrees with the tensors.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let wrong = header.replace("\\\"intermediate\\\":40", "\\\"intermediate\\\":41");
    assert_ne!(wrong, header);
    check(
        &[&bytes[..8], wrong.as_bytes(), &bytes[8 + n..]].concat(),
        "model shape",
    );
    // Positions that do not count up.
    let mut w = TraceWriter::create(&bad, &tiny_shape(), Default::default()).unwrap();
    let mut g = synth::Generator::new(SynthParams::default(), &tiny_shape(), 1);
    let mut acts = Activations::default();
    for t in 0..3 {
        g.next(t == 0, &mut acts);
        w.push(0, [0, 2, 3][t], 0, &acts).unwrap();
    }
    w.finish().unwrap();
    let e = Trace::open(&bad).err().unwrap().to_string();
    assert!(e.contains("positions"), "{e}");
    // A record of the wrong width is refused when written.
    let mut w = TraceWriter::create(
        out.path().join("w.safetensors"),
        &tiny_shape(),
        Default::default(),
    )
    .unwrap();
    acts.h[0].pop();
    assert!(w
        .push(0, 0, 0, &acts)
        .unwrap_err()
        .to_string()
        .contains("`h` must be 3 layers of 40 values"));
}
