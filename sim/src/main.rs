//! The `flashsim` command.

use anyhow::Result;
use clap::{Parser, Subcommand};
use flashsim::commands;
use flashsim::experiment::Experiment;
use flashsim::{output, pareto, paths, plots, sweep};
use flashsim_workloads::trace::stats::StatsConfig;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "flashsim",
    version,
    about = "Simulate LLM inference with weights streamed from flash"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an experiment: one result row per point of its Cartesian product.
    Run {
        /// The experiment file (configs/experiments/*.toml).
        experiment: PathBuf,
        /// Where `<name>/results.csv` goes.
        #[arg(long, default_value = "results")]
        out_dir: PathBuf,
        /// Print no table and no progress bar.
        #[arg(long)]
        quiet: bool,
        /// Worker threads (default: every core). Results do not depend on it.
        #[arg(long)]
        threads: Option<usize>,
        /// Run only slice I of N (`--shard 0/4`); `flashsim merge` combines the slices.
        #[arg(long, value_parser = parse_shard)]
        shard: Option<(usize, usize)>,
        /// Discard earlier results of this experiment instead of resuming.
        #[arg(long)]
        fresh: bool,
        /// Draw no plots.
        #[arg(long)]
        no_plots: bool,
    },
    /// Combine the shards of a sweep into the files an unsharded run writes.
    Merge {
        experiment: PathBuf,
        #[arg(long, default_value = "results")]
        out_dir: PathBuf,
    },
    /// Write the Pareto front of a results folder to its `pareto.csv`.
    Pareto {
        /// A results folder (holding results.csv).
        dir: PathBuf,
        /// `max:COLUMN` or `min:COLUMN`, repeated (default: max:tokens_per_s,
        /// min:dram_peak_bytes, and min:kl_divergence where present).
        #[arg(long = "objective")]
        objectives: Vec<flashsim::pareto::Objective>,
        /// Points within this share of the front are listed too.
        #[arg(long, default_value_t = 0.02)]
        epsilon: f64,
    },
    /// Rerun an experiment and compare its Pareto front with a committed baseline.
    Check {
        /// The baseline folder (results/baselines/NAME), holding pareto.csv and baseline.json.
        #[arg(long)]
        baseline: PathBuf,
        /// The experiment (default: the one the baseline records).
        experiment: Option<PathBuf>,
        /// Allowed relative change per objective.
        #[arg(long, default_value_t = 0.02)]
        tolerance: f64,
        /// Write this run as the new baseline.
        #[arg(long)]
        update: bool,
    },
    /// Draw the plots of a results folder (and the device curves of its devices).
    Plot {
        experiment: PathBuf,
        #[arg(long, default_value = "results")]
        out_dir: PathBuf,
    },
    /// Generate text with the reference model (llama2.c `.bin` or a Hugging Face directory).
    Generate {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long, default_value = "Once upon a time")]
        prompt: String,
        /// Positions to run, prompt included.
        #[arg(long, default_value_t = 256)]
        steps: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Record, inspect, synthesize and fit activation traces.
    #[command(subcommand)]
    Trace(TraceCmd),
    /// Measure this machine's storage (O_DIRECT reads by request size and queue depth), DRAM
    /// bandwidth and compute rate into a device file (`configs/devices/NAME.toml`).
    Calibrate {
        /// A directory on the storage to measure (a test file is written there).
        #[arg(long)]
        dir: PathBuf,
        /// Device name (default: `calibrated-HOSTNAME`).
        #[arg(long)]
        name: Option<String>,
        /// Where the device file goes.
        #[arg(long, default_value = "configs/devices")]
        out_dir: PathBuf,
        /// Where the curve plot and the per-cell CSV go.
        #[arg(long, default_value = "results/calibrate")]
        plots_dir: PathBuf,
        /// Size of the test file, GiB: larger than any cache below the filesystem.
        #[arg(long, default_value_t = 4.0)]
        file_gib: f64,
        /// Request sizes, KiB.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "4,8,16,32,64,128,256,512,1024,2048,4096"
        )]
        sizes_kib: Vec<u64>,
        /// Queue depths (reader threads, one read in flight each).
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
        queue_depths: Vec<u32>,
        /// Seconds of reading per (size, queue depth).
        #[arg(long, default_value_t = 0.3)]
        seconds_per_point: f64,
        /// Passes over the table, each cell's seconds split among them (ascending, then
        /// descending order), so that the disk's drift spreads over all cells.
        #[arg(long, default_value_t = 2)]
        passes: u32,
        /// Keep the test file (a later run with the same size reuses it).
        #[arg(long)]
        keep_file: bool,
        /// How reads are kept in flight, through the real backend's readers: a pread thread
        /// per slot, or one io_uring driven by the issuing thread (the device file records which).
        #[arg(long, value_enum, default_value = "pread")]
        engine: flashsim::calibrate::Engine,
    },
    /// Run every point of an experiment both simulated and on the real backend (O_DIRECT reads
    /// of a weight file, real kernels); write simulated vs measured per metric to
    /// `results/<experiment>/validate.csv` and a plot.
    Validate {
        experiment: PathBuf,
        /// A directory on the storage the experiment's device file was calibrated on.
        #[arg(long)]
        weights_dir: PathBuf,
        #[arg(long, default_value = "results")]
        out_dir: PathBuf,
        /// Keep the weight file (a later run reuses it when its size matches).
        #[arg(long)]
        keep_weights: bool,
        /// Real runs per point, their tokens pooled (storage varies from run to run).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// GiB of weight file: copies of the weights, token t reading copy t mod copies, so
        /// that no cache outside the machine holds what a run reads (as calibrate's file).
        #[arg(long, default_value_t = 8.0)]
        file_gib: f64,
        /// Seconds per cell of the probe before each real run (reads of 16 KiB, 128 KiB and
        /// 1 MiB at random offsets and 1 MiB in file order, and the backend's 64 MiB op): each
        /// point is simulated again on the device file scaled to what the round's probes found,
        /// beside the device file as written. 0: no probes (needed for a preset device file).
        #[arg(long, default_value_t = 0.5)]
        probe_seconds: f64,
        /// Also refit the probed device's compute to the probes' 64 MiB op (by default only
        /// its reads are scaled: on this project's VM the probes' op ran 10% slower than the
        /// runs' own kernels, so refitting misjudged the compute-bound points).
        #[arg(long)]
        probe_compute: bool,
    },
    /// Time the real backend's kernels alone (no reads) on every op each point's policy plans
    /// after warm-up, back to back, as planned and packed into one run per op, beside
    /// calibrate's DRAM read pass; write `results/<experiment>/kernels.csv`. The sparse
    /// kernels' efficiency benchmark without the reads and idle spells of a real run.
    Kernels {
        experiment: PathBuf,
        #[arg(long, default_value = "results")]
        out_dir: PathBuf,
        /// Rounds over every point, alternating which variant goes first.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds of the DRAM read pass before each point in each round.
        #[arg(long, default_value_t = 0.5)]
        dram_seconds: f64,
    },
    /// Replay each point's simulated reads on this machine's disk (O_DIRECT, the device file's
    /// read engine, the point's queue depth, back to back), in the point's order and at random
    /// offsets, against the flash model fed the same reads; write
    /// `results/<experiment>/replay.csv`. Checks the flash model alone, where `validate`
    /// checks whole tokens.
    Replay {
        experiment: PathBuf,
        /// A directory on the storage the experiment's device file was calibrated on.
        #[arg(long)]
        weights_dir: PathBuf,
        #[arg(long, default_value = "results")]
        out_dir: PathBuf,
        /// GiB of test file: copies of the span the reads cover, one per round in turn.
        #[arg(long, default_value_t = 8.0)]
        file_gib: f64,
        /// Simulated reads replayed per point (the first ones).
        #[arg(long, default_value_t = 40_000)]
        reads: usize,
        /// Replays of each stream, alternating which goes first.
        #[arg(long, default_value_t = 4)]
        rounds: usize,
    },
    /// List the registered policies and flash models, and the device and model files found.
    List {
        /// The configs folder to list.
        #[arg(long)]
        configs: Option<PathBuf>,
    },
}

#[derive(clap::Args, Clone, Copy)]
struct StatsArgs {
    /// Share of the width taken as the top-k set.
    #[arg(long, default_value_t = 0.1)]
    top_frac: f64,
    /// Tokens in the window of `window_reuse`.
    #[arg(long, default_value_t = 5)]
    window: usize,
    /// Share of neurons counted as hot.
    #[arg(long, default_value_t = 0.1)]
    hot_frac: f64,
}

impl StatsArgs {
    fn config(self) -> StatsConfig {
        StatsConfig {
            top_frac: self.top_frac,
            window: self.window,
            hot_frac: self.hot_frac,
        }
    }
}

#[derive(Subcommand)]
enum TraceCmd {
    /// Run the reference model over prompts and store every position's activations.
    Record {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        tokenizer: PathBuf,
        /// One sequence per prompt (repeat the flag).
        #[arg(long = "prompt", required = true)]
        prompts: Vec<String>,
        /// Positions per sequence, prompt included.
        #[arg(long, default_value_t = 128)]
        positions: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Per-layer statistics of a trace (real or synthetic).
    Stats {
        trace: PathBuf,
        #[command(flatten)]
        stats: StatsArgs,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Generate a synthetic trace for a model shape.
    Synth {
        /// A model in configs/models, or a model TOML file.
        #[arg(long)]
        model: String,
        /// Generator parameters (TOML; missing keys keep the published defaults).
        #[arg(long)]
        params: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        sequences: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 256)]
        tokens: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fit the synthetic generator to a real trace.
    Fit {
        trace: PathBuf,
        #[command(flatten)]
        stats: StatsArgs,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Budget of synthetic traces evaluated.
        #[arg(long, default_value_t = 900)]
        evaluations: usize,
        /// Write the fitted parameters here (TOML, for `trace synth --params`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn parse_shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}`: write I/N, e.g. 0/4"))?;
    let i: usize = i.parse().map_err(|_| format!("`{i}` is not a number"))?;
    let n: usize = n.parse().map_err(|_| format!("`{n}` is not a number"))?;
    if n == 0 || i >= n {
        return Err(format!("`{s}`: need 0 <= I < N"));
    }
    Ok((i, n))
}

fn main() {
    cpu_check();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// A binary built for x86-64-v3 (`.cargo/config.toml`) on a CPU without AVX2 would die of an
/// illegal instruction somewhere: say why instead. (`is_x86_feature_detected!` is folded to
/// `true` in such a build, so the CPU's own flags are read.)
#[inline(never)]
fn cpu_check() {
    if cfg!(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_feature = "avx2"
    )) {
        if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
            let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or("");
            if !flags.split_whitespace().any(|f| f == "avx2") {
                eprintln!("error: this flashsim was built for x86-64-v3 (AVX2), which this CPU lacks; rebuild with RUSTFLAGS=\"-C target-cpu=x86-64\" cargo build --release");
                std::process::exit(1);
            }
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run {
            experiment,
            out_dir,
            quiet,
            threads,
            shard,
            fresh,
            no_plots,
        } => {
            let exp = Experiment::load(&experiment)?;
            let opts = sweep::SweepOptions {
                threads,
                shard,
                fresh,
                progress: !quiet,
            };
            let out = sweep::run_sweep(&exp, &out_dir, &opts)?;
            if !quiet {
                print!("{}", output::table(&exp, &out.results));
            }
            let front = pareto::write_front(&out.dir, None, 0.02)?;
            if !no_plots && shard.is_none() {
                plots::draw_results(&exp, &out.dir)?;
            }
            println!(
                "{} points ({} run, {} resumed) in {:.1} s -> {} ({} on or near the Pareto front)",
                out.results.len(),
                out.ran,
                out.resumed,
                out.wall_s,
                out.dir.join("results.csv").display(),
                front.rows.len()
            );
            Ok(())
        }
        Cmd::Merge {
            experiment,
            out_dir,
        } => {
            let exp = Experiment::load(&experiment)?;
            let results = sweep::merge(&exp, &out_dir)?;
            let dir = sweep::results_dir(&exp, &out_dir, None);
            pareto::write_front(&dir, None, 0.02)?;
            println!(
                "{} points merged -> {}",
                results.len(),
                dir.join("results.csv").display()
            );
            Ok(())
        }
        Cmd::Pareto {
            dir,
            objectives,
            epsilon,
        } => {
            let objs = (!objectives.is_empty()).then_some(objectives.as_slice());
            let f = pareto::write_front(&dir, objs, epsilon)?;
            println!(
                "{} points on or near the front -> {}",
                f.rows.len(),
                dir.join("pareto.csv").display()
            );
            Ok(())
        }
        Cmd::Check {
            baseline,
            experiment,
            tolerance,
            update,
        } => {
            let passed = commands::cmd_check(&baseline, experiment.as_deref(), tolerance, update)?;
            if !passed {
                std::process::exit(2);
            }
            Ok(())
        }
        Cmd::Calibrate {
            dir,
            name,
            out_dir,
            plots_dir,
            file_gib,
            sizes_kib,
            queue_depths,
            seconds_per_point,
            passes,
            keep_file,
            engine,
        } => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "host".into());
            let mib = (file_gib * 1024.0 / 4.0).round().max(1.0) as u64 * 4;
            let opts = flashsim::calibrate::Options {
                dir,
                name: name.unwrap_or_else(|| format!("calibrated-{host}")),
                out_dir,
                plots_dir,
                file_bytes: mib << 20,
                sizes_kib,
                queue_depths,
                seconds_per_point,
                passes,
                keep_file,
                engine,
                seed: 1,
            };
            let path = flashsim::calibrate::run(&opts, &mut |line| eprintln!("{line}"))?;
            let device = flashsim::device::Device::load(&path)?;
            let plots = plots::draw_device(&device, &opts.plots_dir.join(&opts.name))?;
            println!("{}", path.display());
            for p in plots {
                println!("{}", p.display());
            }
            Ok(())
        }
        Cmd::Validate {
            experiment,
            weights_dir,
            out_dir,
            keep_weights,
            repeats,
            file_gib,
            probe_seconds,
            probe_compute,
        } => {
            let exp = Experiment::load(&experiment)?;
            let o = flashsim::validate::Options {
                weights_dir,
                out_dir,
                keep_weights,
                repeats,
                file_gib,
                probe_seconds,
                probe_compute,
            };
            let flashsim::validate::Validation {
                rows,
                path,
                efficiency,
                warnings,
            } = flashsim::validate::run(&exp, &o, &mut |l| eprintln!("{l}"))?;
            println!(
                "{:>5}  {:<16} {:>7}  {:<10} {:<14} {:<5} {:>12} {:>12} {:>8}",
                "point",
                "policy",
                "GiB",
                "device",
                "metric",
                "stat",
                "simulated",
                "measured",
                "diff %"
            );
            for r in &rows {
                println!(
                    "{:>5}  {:<16} {:>7}  {:<10} {:<14} {:<5} {:>12.3} {:>12.3} {:>+8.1}",
                    r.point,
                    r.policy,
                    r.dram_budget_gib,
                    r.device,
                    r.metric,
                    r.stat,
                    r.simulated_ms,
                    r.measured_ms,
                    r.diff_pct()
                );
            }
            for line in flashsim::validate::summary(&rows) {
                println!("{line}");
            }
            for e in &efficiency {
                println!("{}", e.line());
            }
            for w in &warnings {
                println!("{w}");
            }
            let dir = path.parent().expect("results dir").to_path_buf();
            let plots = plots::draw_validation(&rows, &dir.join("validate"))?;
            println!("{}", path.display());
            println!("{}", dir.join("efficiency.csv").display());
            for p in plots {
                println!("{}", p.display());
            }
            Ok(())
        }
        Cmd::Kernels {
            experiment,
            out_dir,
            rounds,
            dram_seconds,
        } => {
            let exp = Experiment::load(&experiment)?;
            let o = flashsim::kernels::Options {
                out_dir,
                rounds,
                dram_seconds,
            };
            // Each row is reported as it is measured (stderr); all of them again at the end.
            let (rows, path) = flashsim::kernels::run(&exp, &o, &mut |l| eprintln!("{l}"))?;
            for r in &rows {
                println!("{}", r.line());
            }
            if let Some(line) = flashsim::kernels::target_line(&rows) {
                println!("{line}");
            }
            println!("{}", path.display());
            Ok(())
        }
        Cmd::Replay {
            experiment,
            weights_dir,
            out_dir,
            file_gib,
            reads,
            rounds,
        } => {
            let exp = Experiment::load(&experiment)?;
            let o = flashsim::replay::Options {
                weights_dir,
                out_dir,
                file_gib,
                reads,
                rounds,
            };
            // Each row is reported as it is measured (stderr); all of them again at the end.
            let (rows, path) = flashsim::replay::run(&exp, &o, &mut |l| eprintln!("{l}"))?;
            for r in &rows {
                println!("{}", r.line());
            }
            println!("{}", path.display());
            Ok(())
        }
        Cmd::Plot {
            experiment,
            out_dir,
        } => {
            let exp = Experiment::load(&experiment)?;
            let dir = sweep::results_dir(&exp, &out_dir, None);
            let mut drawn = plots::draw_results(&exp, &dir)?;
            // A validated experiment's figure too, from its table.
            let validated = dir.join("validate.csv");
            if validated.exists() {
                let rows = flashsim::validate::read_csv(&validated)?;
                drawn.extend(plots::draw_validation(&rows, &dir.join("validate"))?);
            }
            for p in drawn {
                println!("{}", p.display());
            }
            Ok(())
        }
        Cmd::Generate {
            checkpoint,
            tokenizer,
            prompt,
            steps,
            temperature,
            seed,
        } => commands::cmd_generate(&checkpoint, &tokenizer, &prompt, steps, temperature, seed),
        Cmd::Trace(t) => match t {
            TraceCmd::Record {
                checkpoint,
                tokenizer,
                prompts,
                positions,
                temperature,
                seed,
                out,
            } => commands::cmd_record(
                &checkpoint,
                &tokenizer,
                &prompts,
                positions,
                temperature,
                seed,
                &out,
            ),
            TraceCmd::Stats { trace, stats, json } => {
                commands::cmd_stats(&trace, stats.config(), json)
            }
            TraceCmd::Synth {
                model,
                params,
                sequences,
                tokens,
                seed,
                out,
            } => commands::cmd_synth(&model, params.as_deref(), sequences, tokens, seed, &out),
            TraceCmd::Fit {
                trace,
                stats,
                seed,
                evaluations,
                out,
            } => commands::cmd_fit(&trace, stats.config(), seed, evaluations, out.as_deref()),
        },
        Cmd::List { configs } => {
            println!("policies:");
            for e in flashsim_policies::registry() {
                println!("  {:<18} {}", e.name, e.summary);
            }
            println!("flash models:");
            for e in flashsim::hw::flash::registry() {
                println!("  {:<18} {}", e.name, e.summary);
            }
            let dir = configs.unwrap_or_else(|| {
                paths::config_dirs(std::path::Path::new("configs/experiments/x.toml"))
                    .into_iter()
                    .find(|d| d.is_dir())
                    .unwrap_or_else(|| PathBuf::from("configs"))
            });
            println!("devices ({}):", dir.join("devices").display());
            for d in paths::list(&dir, "devices") {
                println!("  {d}");
            }
            println!("models ({}):", dir.join("models").display());
            for m in paths::list(&dir, "models") {
                println!("  {m}");
            }
            Ok(())
        }
    }
}
