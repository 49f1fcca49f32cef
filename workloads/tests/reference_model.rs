//! The reference model against the real stories260K weights.

use flashsim_workloads::checkpoint::{hf, llama2c};
use flashsim_workloads::model::{generate, Dense, Masker, Model, Sampler, Sampling, Site};
use flashsim_workloads::shared_models_for_test;
use flashsim_workloads::tokenizer::Tokenizer;

/// llama2.c doc/stories260K.md, as quoted in shared/models/README.md.
const REFERENCE: &str = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high. Lily";

#[test]
fn greedy_generation_matches_the_reference_text() {
    let Some(dir) = shared_models_for_test() else {
        return;
    };
    let w = llama2c::load(dir.join("stories260K.bin")).unwrap();
    let tok = Tokenizer::load(dir.join("tok512.bin"), w.config.vocab_size).unwrap();
    let prompt = tok.encode("Once upon a time", true, false);
    let mut model = Model::new(w);
    let mut sampler = Sampler::new(Sampling::Greedy, 0);
    let g = generate(
        &mut model,
        &prompt,
        256,
        &mut sampler,
        &mut Dense,
        |_, _, _| {},
    );
    let text = tok.decode_all(&g.tokens);
    println!("{text}");
    // The model emits a newline token (<0x0A>) after "too high."; the README quotes the
    // reference on one line, so whitespace runs are folded to one space before comparing.
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(folded.starts_with(REFERENCE), "got: {text}");
    assert!(
        text.contains("too high.\nLily"),
        "the newline token is where the reference breaks the line"
    );
}

#[test]
fn tokenizer_encodes_as_run_c() {
    let Some(dir) = shared_models_for_test() else {
        return;
    };
    // shared/models/README.md: the Llama-2 tokenizer encodes this to [1, 9038, 2501, 263, 931].
    let tok = Tokenizer::load(dir.join("tokenizer.bin"), 32000).unwrap();
    assert_eq!(
        tok.encode("Once upon a time", true, false),
        vec![1, 9038, 2501, 263, 931]
    );
    let small = Tokenizer::load(dir.join("tok512.bin"), 512).unwrap();
    let ids = small.encode("Once upon a time", true, false);
    assert_eq!(small.decode_all(&ids), "Once upon a time");
}

struct AllOnes;
impl Masker for AllOnes {
    fn mask(&mut self, _: usize, _: usize, _: Site, x: &[f32]) -> Option<Vec<bool>> {
        Some(vec![true; x.len()])
    }
}

#[test]
fn all_ones_mask_equals_dense_bit_for_bit() {
    let Some(dir) = shared_models_for_test() else {
        return;
    };
    let w = llama2c::load(dir.join("stories260K.bin")).unwrap();
    let mut dense = Model::new(w.clone());
    let mut masked = Model::new(w);
    for (pos, token) in [1u32, 400, 17, 301, 99, 5].into_iter().enumerate() {
        let a = dense.forward(token, pos, &mut Dense, None);
        let b = masked.forward(token, pos, &mut AllOnes, None);
        let (a, b): (Vec<u32>, Vec<u32>) = (
            a.iter().map(|x| x.to_bits()).collect(),
            b.iter().map(|x| x.to_bits()).collect(),
        );
        assert_eq!(a, b, "position {pos}");
    }
}

#[test]
fn hf_safetensors_and_llama2c_give_the_same_logits() {
    let Some(dir) = shared_models_for_test() else {
        return;
    };
    let w = llama2c::load(dir.join("stories260K.bin")).unwrap();
    let out = tempfile::tempdir().unwrap();
    // Single file in f32, and sharded: both must give llama2.c's logits exactly.
    hf::write(&w, out.path().join("single"), hf::WriteDtype::F32, None).unwrap();
    hf::write(
        &w,
        out.path().join("sharded"),
        hf::WriteDtype::F32,
        Some(60_000),
    )
    .unwrap();
    assert!(out
        .path()
        .join("sharded/model.safetensors.index.json")
        .is_file());
    for sub in ["single", "sharded"] {
        let h = hf::load(out.path().join(sub)).unwrap();
        assert_eq!(h, w, "{sub}: weights differ");
        let mut a = Model::new(w.clone());
        let mut b = Model::new(h);
        for (pos, token) in [1u32, 300, 42, 7].into_iter().enumerate() {
            assert_eq!(
                a.forward(token, pos, &mut Dense, None),
                b.forward(token, pos, &mut Dense, None)
            );
        }
    }
    // The q/k rows really are permuted on disk (HF's rotate-half order), not copied as is.
    let st_bytes = std::fs::read(out.path().join("single/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let q = st.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
    let row1: Vec<f32> = q.data()[64 * 4..128 * 4]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(
        row1,
        w.layers[0].wq.row(2).to_vec(),
        "HF row 1 of head 0 is interleaved row 2"
    );
    // f16 and bf16 load too, within their precision.
    for (sub, dt, tol) in [
        ("f16", hf::WriteDtype::F16, 1e-2),
        ("bf16", hf::WriteDtype::BF16, 5e-2),
    ] {
        hf::write(&w, out.path().join(sub), dt, None).unwrap();
        let h = hf::load(out.path().join(sub)).unwrap();
        let (mut a, mut b) = (Model::new(w.clone()), Model::new(h));
        let (la, lb) = (
            a.forward(1, 0, &mut Dense, None),
            b.forward(1, 0, &mut Dense, None),
        );
        let err = la
            .iter()
            .zip(&lb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            err < tol as f32 * la.iter().map(|x| x.abs()).fold(0f32, f32::max),
            "{sub}: {err}"
        );
    }
}

#[test]
fn broken_checkpoints_are_clear_errors() {
    let Some(dir) = shared_models_for_test() else {
        return;
    };
    let bytes = std::fs::read(dir.join("stories260K.bin")).unwrap();
    let p = std::path::Path::new("broken.bin");
    for (what, b) in [
        ("truncated", bytes[..bytes.len() - 100].to_vec()),
        ("truncated", bytes[..10].to_vec()),
        ("wrong header", {
            let mut b = bytes.clone();
            b[12..16].copy_from_slice(&0i32.to_le_bytes()); // n_heads = 0
            b
        }),
        ("wrong header", {
            let mut b = bytes.clone();
            b[12..16].copy_from_slice(&7i32.to_le_bytes()); // 64 does not split into 7 heads
            b
        }),
        ("beyond", [bytes.clone(), vec![0u8; 8]].concat()),
        ("truncated", {
            // Dimensions so large that the sizes overflow 64 bits.
            let mut b = bytes.clone();
            let dims = [
                1i32 << 30,
                1 << 30,
                1 << 30,
                1 << 20,
                1 << 20,
                1 << 30,
                1 << 30,
            ];
            for (i, v) in dims.iter().enumerate() {
                b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
            }
            b
        }),
    ] {
        let e = llama2c::parse(p, &b).unwrap_err().to_string();
        println!("{e}");
        assert!(e.contains("broken.bin") && e.contains(what), "{e}");
    }
    // A tokenizer too short for the vocabulary.
    let t = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        t.path(),
        &std::fs::read(dir.join("tok512.bin")).unwrap()[..3000],
    )
    .unwrap();
    let e = Tokenizer::load(t.path(), 512).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn hf_shape_mismatch_and_missing_tensor_are_clear_errors() {
    let Some(dir) = shared_models_for_test() else {
        return;
    };
    let w = llama2c::load(dir.join("stories260K.bin")).unwrap();
    let out = tempfile::tempdir().unwrap();
    hf::write(&w, out.path(), hf::WriteDtype::F32, None).unwrap();
    let cfg = out.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"intermediate_size\": 172", "\"intermediate_size\": 170"),
    )
    .unwrap();
    let e = hf::load(out.path()).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("shape") && e.contains("gate_proj"), "{e}");
    std::fs::write(
        &cfg,
        text.replace(
            "\"tie_word_embeddings\": true",
            "\"tie_word_embeddings\": false",
        ),
    )
    .unwrap();
    let e = hf::load(out.path()).unwrap_err().to_string();
    assert!(e.contains("lm_head.weight") && e.contains("missing"), "{e}");
    // A truncated safetensors file.
    std::fs::write(&cfg, &text).unwrap();
    let st = out.path().join("model.safetensors");
    let b = std::fs::read(&st).unwrap();
    std::fs::write(&st, &b[..b.len() - 10]).unwrap();
    let e = hf::load(out.path()).unwrap_err().to_string();
    println!("{e}");
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
}
