//! The model and trace subcommands of `flashsim`: `generate`, `trace record`, `trace stats`,
//! `trace synth`, `trace fit`.

use anyhow::{bail, Context, Result};
use flashsim_workloads::checkpoint::{self, hf, llama2c, Weights};
use flashsim_workloads::model::{generate, Dense, Model, Sampler, Sampling};
use flashsim_workloads::tokenizer::Tokenizer;
use flashsim_workloads::trace::record::{record, RecordConfig};
use flashsim_workloads::trace::stats::{self, StatsConfig, FIGURES};
use flashsim_workloads::trace::synth::{self, SynthConfig, SynthParams};
use flashsim_workloads::trace::Trace;
use flashsim_workloads::{ModelShape, TomlSource};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Loads a checkpoint: a llama2.c `.bin` file or a Hugging Face directory.
pub fn load_checkpoint(path: &Path) -> Result<Weights> {
    Ok(if path.is_dir() {
        hf::load(path)?
    } else {
        llama2c::load(path)?
    })
}

fn sampling(temperature: f32) -> Sampling {
    if temperature <= 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Temperature(temperature)
    }
}

/// `flashsim generate`: prints the prompt and the generated text.
pub fn cmd_generate(
    checkpoint: &Path,
    tokenizer: &Path,
    prompt: &str,
    steps: usize,
    temperature: f32,
    seed: u64,
) -> Result<()> {
    let w = load_checkpoint(checkpoint)?;
    let tok = Tokenizer::load(tokenizer, w.config.vocab_size)?;
    let ids = tok.encode(prompt, true, false);
    let mut model = Model::new(w);
    let mut sampler = Sampler::new(sampling(temperature), seed);
    let start = std::time::Instant::now();
    let mut out = std::io::stdout().lock();
    let mut prev = ids[0];
    let mut shown = 0usize;
    let g = generate(
        &mut model,
        &ids,
        steps,
        &mut sampler,
        &mut Dense,
        |_, _, _| {},
    );
    for &t in &g.tokens[1..] {
        out.write_all(&tok.decode(prev, t))?;
        prev = t;
        shown += 1;
    }
    writeln!(out)?;
    out.flush()?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{shown} tokens, {:.1} tok/s", shown as f64 / secs.max(1e-9));
    Ok(())
}

/// `flashsim trace record`.
#[allow(clippy::too_many_arguments)]
pub fn cmd_record(
    checkpoint: &Path,
    tokenizer: &Path,
    prompts: &[String],
    positions: usize,
    temperature: f32,
    seed: u64,
    out: &Path,
) -> Result<()> {
    if prompts.is_empty() {
        bail!("give at least one --prompt");
    }
    let w = load_checkpoint(checkpoint)?;
    let sha = if checkpoint.is_dir() {
        checkpoint::sha256_file(&checkpoint.join("config.json"))?
    } else {
        checkpoint::sha256_file(checkpoint)?
    };
    let name = checkpoint
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tok = Tokenizer::load(tokenizer, w.config.vocab_size)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let cfg = RecordConfig {
        prompts: prompts.to_vec(),
        positions,
        sampling: sampling(temperature),
        seed,
    };
    let start = std::time::Instant::now();
    let s = record(&w, &name, &sha, &tok, &cfg, out)?;
    let secs = start.elapsed().as_secs_f64();
    for (i, t) in s.texts.iter().enumerate() {
        println!("sequence {i}: {}", t.replace('\n', " "));
    }
    println!(
        "{} tokens in {} sequences -> {} ({:.0} tokens/s recorded)",
        s.tokens,
        s.sequences,
        s.path.display(),
        s.tokens as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// `flashsim trace stats`.
pub fn cmd_stats(trace: &Path, cfg: StatsConfig, json: bool) -> Result<()> {
    let t = Trace::open(trace)?;
    let s = stats::compute(&t, &cfg);
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "{}: {} tokens, {} sequences, {} ({})",
            trace.display(),
            t.tokens(),
            t.sequences().len(),
            t.shape.name,
            t.meta.get("source").map(String::as_str).unwrap_or("?")
        );
        print!("{}", stats::table(&s));
    }
    Ok(())
}

/// Resolves a model name (`configs/models/NAME.toml`) or path.
pub fn model_shape(name: &str) -> Result<ModelShape> {
    let p = PathBuf::from(name);
    let path = if p.is_file() {
        p
    } else {
        crate::paths::config_dirs(Path::new("configs/experiments/x.toml"))
            .into_iter()
            .map(|d| d.join("models").join(format!("{name}.toml")))
            .find(|p| p.is_file())
            .with_context(|| format!("no model `{name}` in configs/models"))?
    };
    Ok(ModelShape::load(path)?)
}

/// Reads synthetic parameters from a TOML file (missing keys keep their defaults).
pub fn synth_params(path: Option<&Path>) -> Result<SynthParams> {
    let Some(path) = path else {
        return Ok(SynthParams::default());
    };
    let src = TomlSource::read(path)?;
    let p: SynthParams = src.parse()?;
    p.check()
        .map_err(|m| anyhow::anyhow!("{}: {m}", path.display()))?;
    Ok(p)
}

/// `flashsim trace synth`.
pub fn cmd_synth(
    model: &str,
    params: Option<&Path>,
    sequences: usize,
    tokens: usize,
    seed: u64,
    out: &Path,
) -> Result<()> {
    let cfg = SynthConfig {
        params: synth_params(params)?,
        shape: model_shape(model)?,
        sequences,
        tokens_per_sequence: tokens,
        seed,
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let start = std::time::Instant::now();
    let path = synth::generate(&cfg, out)?;
    let secs = start.elapsed().as_secs_f64();
    let n = sequences * tokens;
    println!(
        "{n} tokens of {} ({} layers x {} neurons) -> {} in {secs:.2} s ({:.1} tokens/s)",
        cfg.shape.name,
        cfg.shape.layers,
        cfg.shape.intermediate,
        path.display(),
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// `flashsim trace fit`: fits the generator to a real trace and prints both tables' means.
pub fn cmd_fit(
    trace: &Path,
    cfg: StatsConfig,
    seed: u64,
    evaluations: usize,
    out: Option<&Path>,
) -> Result<()> {
    let t = Trace::open(trace)?;
    let f = synth::fit(&t, &cfg, seed, evaluations);
    println!(
        "fitted in {} evaluations; largest |synthetic - real| over the mean figures: {:.4}",
        f.evaluations, f.max_abs_error
    );
    println!(
        "{:>20} {:>8} {:>9} {:>7}",
        "figure", "real", "synthetic", "diff"
    );
    for (i, name) in FIGURES.iter().enumerate() {
        let (a, b) = (f.target.mean.figures()[i], f.achieved.mean.figures()[i]);
        println!("{name:>20} {a:>8.3} {b:>9.3} {:>+7.3}", b - a);
    }
    let toml = toml::to_string(&f.params)?;
    println!("\nparameters:\n{toml}");
    if let Some(out) = out {
        let text = format!(
            "# Synthetic-trace parameters fitted by `flashsim trace fit` to {}\n# (seed {seed}; largest error over the mean figures {:.4}).\n{toml}",
            trace.display(),
            f.max_abs_error
        );
        std::fs::write(out, text)?;
        println!("-> {}", out.display());
    }
    Ok(())
}

/// `flashsim check`: reruns the baseline's experiment into a scratch folder, compares its
/// Pareto front with the baseline's `pareto.csv`, prints what moved, and (with `update`)
/// makes this run the baseline. Returns whether it passed.
pub fn cmd_check(
    baseline: &Path,
    experiment: Option<&Path>,
    tolerance: f64,
    update: bool,
) -> Result<bool> {
    use crate::pareto::{self, Table};
    let meta_path = baseline.join("baseline.json");
    let meta: Option<serde_json::Value> = std::fs::read_to_string(&meta_path)
        .ok()
        .map(|t| serde_json::from_str(&t))
        .transpose()
        .with_context(|| format!("{}: not JSON", meta_path.display()))?;
    let exp_path = match (experiment, &meta) {
        (Some(e), _) => e.to_path_buf(),
        (None, Some(m)) => {
            let rel = m["experiment"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("{}: no `experiment`", meta_path.display()))?;
            baseline.join(rel)
        }
        (None, None) => anyhow::bail!(
            "{} has no baseline.json: name the experiment (flashsim check EXPERIMENT --baseline {} --update)",
            baseline.display(),
            baseline.display()
        ),
    };
    let exp = crate::experiment::Experiment::load(&exp_path)?;
    let scratch = std::env::temp_dir().join(format!("flashsim-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let out = crate::sweep::run_sweep(
        &exp,
        &scratch,
        &crate::sweep::SweepOptions {
            fresh: true,
            ..Default::default()
        },
    )?;
    let now = Table::read(&out.dir.join("results.csv"))?;
    let objectives = pareto::default_objectives(&now);
    let front_now = pareto::write_front(&out.dir, Some(&objectives), 0.02)?;
    let passed = if baseline.join("pareto.csv").is_file() {
        let base = Table::read(&baseline.join("pareto.csv"))?;
        let cmp = pareto::compare(&now, &base, &objectives, 0.02, tolerance)?;
        print!("{}", cmp.report(tolerance));
        println!(
            "check {}: {} ({} baseline front points, tolerance {:.1}%)",
            baseline.display(),
            if cmp.passed() { "passed" } else { "FAILED" },
            base.rows.len(),
            tolerance * 100.0
        );
        cmp.passed()
    } else if update {
        true
    } else {
        anyhow::bail!(
            "{} holds no pareto.csv: create it with --update",
            baseline.display()
        );
    };
    if update {
        std::fs::create_dir_all(baseline)?;
        std::fs::copy(out.dir.join("results.csv"), baseline.join("results.csv"))?;
        front_now.write(&baseline.join("pareto.csv"))?;
        let rel = pathdiff(
            &std::fs::canonicalize(&exp_path)?,
            &std::fs::canonicalize(baseline)?,
        );
        let m = serde_json::json!({
            "experiment": rel,
            "objectives": objectives.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
            "tolerance": tolerance,
        });
        std::fs::write(&meta_path, serde_json::to_string_pretty(&m)? + "\n")?;
        println!("baseline {} updated", baseline.display());
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(passed || update)
}

/// `to` relative to the folder `from` (both absolute).
fn pathdiff(to: &Path, from: &Path) -> String {
    let (t, f): (Vec<_>, Vec<_>) = (to.components().collect(), from.components().collect());
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); f.len() - common];
    parts.extend(
        t[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}
