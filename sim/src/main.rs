//! The `flashsim` command.

use anyhow::Result;
use clap::{Parser, Subcommand};
use flashsim::experiment::Experiment;
use flashsim::{output, paths, runner};
use std::io::IsTerminal;
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
        /// Print no table.
        #[arg(long)]
        quiet: bool,
    },
    /// List the registered policies and flash models, and the device and model files found.
    List {
        /// The configs folder to list.
        #[arg(long)]
        configs: Option<PathBuf>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run {
            experiment,
            out_dir,
            quiet,
        } => {
            let exp = Experiment::load(&experiment)?;
            let n = exp.points.len();
            let tty = std::io::stderr().is_terminal();
            let results = runner::run_experiment(&exp, |r| {
                if tty && !quiet {
                    eprint!("\rpoint {}/{}", r.point.index + 1, n);
                }
            })?;
            if tty && !quiet {
                eprintln!();
            }
            let path = output::write_csv(&exp, &results, &out_dir.join(exp.name()))?;
            if !quiet {
                print!("{}", output::table(&exp, &results));
            }
            println!("{} points -> {}", n, path.display());
            Ok(())
        }
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
