//! The `flashsim` binary as a user runs it.

mod common;

use common::repo;
use std::process::Command;

fn flashsim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flashsim"))
}

#[test]
fn quickstart_writes_results_csv_with_units_in_column_names() {
    let out = tempfile::tempdir().unwrap();
    let run = |dir: &std::path::Path| {
        let o = flashsim()
            .current_dir(repo())
            .args(["run", "configs/experiments/quickstart.toml", "--out-dir"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let stdout = run(out.path());
    println!("{stdout}");
    assert!(stdout.contains("tok/s"));
    let csv = std::fs::read_to_string(out.path().join("quickstart/results.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    for col in [
        "tokens_per_s",
        "ms_per_token",
        "flash_io_ms_per_token",
        "compute_ms_per_token",
        "stall_ms_per_token",
        "flash_bytes_per_token",
        "mean_read_bytes",
        "dram_peak_bytes",
        "dram_budget_gib",
        "pin_attention",
        "model",
        "trace",
    ] {
        assert!(header.contains(&col), "missing column {col} in {header:?}");
    }
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows.len(),
        6,
        "two models x (two dense-streaming points and one all-in-dram)"
    );
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for (model, trace, range) in [
        ("llama-2-7b", "none", 0..3),
        ("stories260K", "stories260K", 3..6),
    ] {
        let tps: Vec<f64> = rows[range.clone()]
            .iter()
            .map(|r| r[col("tokens_per_s")].parse().unwrap())
            .collect();
        // Keeping attention resident reads less and runs faster; all in DRAM is fastest.
        assert!(tps[0] < tps[1] && tps[1] < tps[2], "{model}: {tps:?}");
        let all_in_dram_bytes: f64 = rows[range.end - 1][col("flash_bytes_per_token")]
            .parse()
            .unwrap();
        assert_eq!(all_in_dram_bytes, 0.0);
        for r in &rows[range] {
            assert_eq!((r[col("model")], r[col("trace")]), (model, trace));
        }
    }

    // Byte-identical on a second run.
    let again = tempfile::tempdir().unwrap();
    run(again.path());
    let csv2 = std::fs::read_to_string(again.path().join("quickstart/results.csv")).unwrap();
    assert_eq!(csv, csv2);
}

#[test]
fn a_bad_experiment_exits_nonzero_with_file_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "name = \"bad\"\ndevice = \"m1max-ssd\"\nmodel = \"opt-6.7b\"\npolicy = \"all-in-dram\"\ndram_budget_gib = 16.0\ntokens = 1\nprompt_tokens = 1\nseed = 1\nbogus = 3\n",
    )
    .unwrap();
    let o = flashsim().arg("run").arg(&p).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{err}");
    assert!(err.contains("bad.toml:9: key `bogus`"), "{err}");
}

#[test]
fn list_shows_policies_devices_and_models() {
    let o = flashsim().current_dir(repo()).arg("list").output().unwrap();
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    for name in [
        "dense-streaming",
        "all-in-dram",
        "parametric",
        "measured",
        "m1max-ssd",
        "ufs40-phone",
        "llama-2-7b",
        "stories260K",
    ] {
        assert!(s.contains(name), "{name} not listed:\n{s}");
    }
}

#[test]
fn the_readme_example_experiment_runs() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find("```toml\n").expect("README has a TOML example") + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("readme-example.toml");
    std::fs::write(&exp, &readme[start..end]).unwrap();
    let o = flashsim()
        .arg("run")
        .arg(&exp)
        .arg("--out-dir")
        .arg(dir.path())
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(dir.path().join("my-sweep/results.csv")).unwrap();
    // 2 models x (2 budgets x (2 dense-streaming points + 1 all-in-dram)).
    assert_eq!(csv.lines().count(), 1 + 12);
}
