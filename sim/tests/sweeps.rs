//! Sweeps: thread count, shards, kill-and-resume, the baseline check, random sampling.

mod common;

use common::repo;
use flashsim::experiment::Experiment;
use flashsim::sweep::{merge, run_sweep, SweepOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A sweep over every trace-driven policy on stories260K with its real trace, some budgets too
/// small for some policies (recorded as infeasible), written to `dir/sweep.toml` with absolute
/// paths to the repository's files.
fn small_sweep(dir: &Path) -> PathBuf {
    let r = repo().canonicalize().unwrap().display().to_string();
    let text = format!(
        r#"
name = "sweep-test"
device = ["{r}/configs/devices/ufs40-phone.toml", "{r}/configs/devices/nvme-gen4-laptop.toml"]
model = "{r}/configs/models/stories260K.toml"
trace = "{r}/workloads/traces/stories260K.safetensors"
policy = ["dense-streaming", "llm-in-a-flash", "dip", "activeflow", "mmap", "all-in-dram"]
dram_budget_gib = [0.0006, 0.002]
tokens = 12
prompt_tokens = 16
seed = 3
[policies.dip]
keep = [0.3, 0.5]
[policies.activeflow]
preload_layers = [0, 1, "auto"]
"#
    );
    let p = dir.join("sweep.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn one_thread_and_two_give_the_same_bytes_and_infeasible_points_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = Experiment::load(small_sweep(tmp.path())).unwrap();
    let run = |threads, out: &str| {
        let o = run_sweep(
            &exp,
            &tmp.path().join(out),
            &SweepOptions {
                threads: Some(threads),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(o.ran, exp.points.len());
        o.dir
    };
    let (a, b) = (run(1, "one"), run(2, "two"));
    for f in ["results.csv", "results.parquet", "resolved.jsonl"] {
        assert!(read(&a.join(f)) == read(&b.join(f)), "{f} differs");
    }
    let csv = String::from_utf8(read(&a.join("results.csv"))).unwrap();
    println!("{csv}");
    let infeasible = csv.lines().filter(|l| l.contains("DRAM")).count();
    assert!(
        infeasible > 0,
        "the 0.0006 GiB points of some policies cannot fit"
    );
    assert!(infeasible < exp.points.len());
    assert_eq!(csv.lines().count(), exp.points.len() + 1);
    // Parquet: a real file with the footer magic.
    let pq = read(&a.join("results.parquet"));
    assert_eq!(&pq[..4], b"PAR1");
    assert_eq!(&pq[pq.len() - 4..], b"PAR1");
    let manifest: serde_json::Value =
        serde_json::from_slice(&read(&a.join("manifest.json"))).unwrap();
    assert_eq!(manifest["threads"], 1);
    assert_eq!(manifest["traces_sha256"].as_object().unwrap().len(), 1);
}

#[test]
fn shards_merged_equal_the_unsharded_run() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = Experiment::load(small_sweep(tmp.path())).unwrap();
    let whole = run_sweep(&exp, &tmp.path().join("whole"), &SweepOptions::default()).unwrap();
    let out = tmp.path().join("sharded");
    for i in 0..3 {
        let o = run_sweep(
            &exp,
            &out,
            &SweepOptions {
                shard: Some((i, 3)),
                threads: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(o.results.iter().all(|r| r.point.index % 3 == i));
    }
    // A merge with a shard missing is refused.
    let partial = tmp.path().join("partial");
    run_sweep(
        &exp,
        &partial,
        &SweepOptions {
            shard: Some((0, 2)),
            ..Default::default()
        },
    )
    .unwrap();
    let e = merge(&exp, &partial).unwrap_err().to_string();
    assert!(e.contains("missing"), "{e}");
    merge(&exp, &out).unwrap();
    let merged = out.join("sweep-test");
    for f in ["results.csv", "results.parquet", "resolved.jsonl"] {
        assert!(
            read(&whole.dir.join(f)) == read(&merged.join(f)),
            "{f} differs"
        );
    }
}

/// An experiment of `points` dense-streaming points on Llama-2-7B, slow enough to be killed.
fn slow_sweep(dir: &Path) -> PathBuf {
    let r = repo().canonicalize().unwrap().display().to_string();
    let text = format!(
        r#"
name = "slow"
device = "{r}/configs/devices/ufs40-phone.toml"
model = "{r}/configs/models/llama-2-7b.toml"
policy = "dense-streaming"
dram_budget_gib = [4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0, 10.5, 11.0, 11.5]
io_queue_depth = [4, 32]
tokens = 160
prompt_tokens = 128
seed = 1
[policies.dense-streaming]
pinned_fraction = 0.5
"#
    );
    let p = dir.join("slow.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn flashsim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flashsim"))
}

/// `flashsim run --quiet --no-plots --threads 1 --out-dir OUT FILE`.
fn run_one_thread(out: &Path, file: &Path) -> Command {
    let mut c = flashsim();
    c.args([
        "run",
        "--quiet",
        "--no-plots",
        "--threads",
        "1",
        "--out-dir",
    ])
    .arg(out)
    .arg(file);
    c
}

#[test]
fn a_sweep_killed_mid_run_resumes_without_losing_or_duplicating_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let file = slow_sweep(tmp.path());
    let total = Experiment::load(&file).unwrap().points.len();
    let run = |out: &Path, extra: &[&str]| {
        let o = run_one_thread(out, &file).args(extra).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let reference = tmp.path().join("reference");
    run(&reference, &[]);

    let killed = tmp.path().join("killed");
    let journal = killed.join("slow/points.jsonl");
    let mut child = run_one_thread(&killed, &file).spawn().unwrap();
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let start = std::time::Instant::now();
    while lines(&journal) < 3 {
        assert!(
            start.elapsed().as_secs() < 120,
            "the sweep never wrote 3 points"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = lines(&journal);
    println!("killed after {done} of {total} points");
    assert!(done < total, "the sweep finished before it was killed");
    // A kill can also tear the line being written.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    std::io::Write::write_all(&mut f, br#"{"index":7,"config_hash":"#).unwrap();
    drop(f);

    let stdout = run(&killed, &[]);
    println!("{stdout}");
    assert!(stdout.contains(&format!("{} resumed", done)), "{stdout}");
    assert!(
        read(&reference.join("slow/results.csv")) == read(&killed.join("slow/results.csv")),
        "resumed results differ from an uninterrupted run"
    );
    let journal_text = std::fs::read_to_string(&journal).unwrap();
    let mut idx: Vec<u64> = journal_text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["index"]
                .as_u64()
                .unwrap()
        })
        .collect();
    idx.sort();
    assert_eq!(
        idx,
        (0..total as u64).collect::<Vec<_>>(),
        "each point exactly once"
    );
}

#[test]
fn check_passes_on_its_baseline_and_fails_on_a_shifted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let file = small_sweep(tmp.path());
    let base = tmp.path().join("baseline");
    assert!(flashsim::commands::cmd_check(&base, Some(&file), 0.02, true).unwrap());
    assert!(base.join("pareto.csv").is_file() && base.join("baseline.json").is_file());
    // Rerun against it: passes; the experiment comes from baseline.json.
    assert!(flashsim::commands::cmd_check(&base, None, 0.02, false).unwrap());
    // Claim the baseline was 5% faster: the rerun now regresses.
    let mut t = flashsim::pareto::Table::read(&base.join("pareto.csv")).unwrap();
    let c = t.column("tokens_per_s").unwrap();
    for r in &mut t.rows {
        r[c] = (r[c].parse::<f64>().unwrap() * 1.05).to_string();
    }
    t.write(&base.join("pareto.csv")).unwrap();
    assert!(!flashsim::commands::cmd_check(&base, None, 0.02, false).unwrap());
    // Within a 10% tolerance it passes again.
    assert!(flashsim::commands::cmd_check(&base, None, 0.10, false).unwrap());
}

#[test]
fn random_sampling_is_seeded_bounded_and_recorded() {
    let text = r#"
name = "sampled"
device = "ufs40-phone"
model = "llama-2-7b"
policy = "dense-streaming"
samples = 20
dram_budget_gib = { uniform = [4.0, 12.0] }
io_queue_depth = { int = [1, 64] }
tokens = 4
prompt_tokens = 16
seed = 9
[policies.dense-streaming]
pinned_fraction = { log_uniform = [0.01, 1.0] }
"#;
    let a = common::experiment("sampled.toml", text).unwrap();
    let b = common::experiment("sampled.toml", text).unwrap();
    assert_eq!(a.points.len(), 20);
    let mut budgets = Vec::new();
    for (p, q) in a.points.iter().zip(&b.points) {
        assert_eq!(p.config, q.config);
        assert_eq!(p.policy_params, q.policy_params);
        let c = &p.config;
        assert!((4.0..=12.0).contains(&c.dram_budget_gib));
        assert!((1..=64).contains(&c.io_queue_depth));
        let pf = p.policy_params["pinned_fraction"].as_float().unwrap();
        assert!((0.01..=1.0).contains(&pf));
        budgets.push(c.dram_budget_gib);
    }
    budgets.dedup();
    assert!(budgets.len() > 15, "draws differ");
    for k in ["dram_budget_gib", "io_queue_depth", "pinned_fraction"] {
        assert!(a.axes.iter().any(|x| x == k), "{k} is a column");
    }
    // A different seed draws different values; a range without `samples` is an error.
    let other = common::experiment("sampled.toml", &text.replace("seed = 9", "seed = 10")).unwrap();
    assert_ne!(
        other.points[0].config.dram_budget_gib,
        a.points[0].config.dram_budget_gib
    );
    let e = common::experiment("sampled.toml", &text.replace("samples = 20", ""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("samples"), "{e}");
}
