//! Bad input gets a clear error naming the file, the key and the line.

mod common;

use common::DEVICE;

use flashsim::device::Device;
use flashsim::runner::{prepare, Cache};
use flashsim_workloads::{ConfigError, ModelShape, TomlSource};

fn assert_names(e: &ConfigError, file: &str, key: &str, line: usize) {
    let msg = e.to_string();
    println!("{msg}");
    assert!(msg.contains(file), "file missing in: {msg}");
    assert!(msg.contains(&format!("`{key}`")), "key missing in: {msg}");
    assert!(
        msg.contains(&format!(":{line}:")),
        "line {line} missing in: {msg}"
    );
    assert_eq!(e.key(), Some(key));
    assert_eq!(e.line(), Some(line));
}

const GOOD: &str = r#"name = "t"
device = "m1max-ssd"
model = "opt-6.7b"
policy = "dense-streaming"
dram_budget_gib = 8.0
tokens = 2
prompt_tokens = 4
seed = 1

[policies.dense-streaming]
pinned_fraction = 0.25
"#;

#[test]
fn the_good_experiment_loads() {
    let exp = common::experiment("good.toml", GOOD).unwrap();
    assert_eq!(exp.points.len(), 1);
    prepare(&exp, &exp.points[0], &mut Cache::default()).unwrap();
}

#[test]
fn wrong_top_level_key() {
    let text = GOOD.replace("tokens = 2", "tokenz = 2");
    let e = common::experiment("wrong-key.toml", &text).unwrap_err();
    assert_names(&e, "wrong-key.toml", "tokenz", 6);
}

#[test]
fn wrong_policy_key() {
    let text = GOOD.replace("pinned_fraction = 0.25", "pinned_fractoin = 0.25");
    let e = common::experiment("wrong-policy-key.toml", &text).unwrap_err();
    assert_names(
        &e,
        "wrong-policy-key.toml",
        "policies.dense-streaming.pinned_fractoin",
        11,
    );
}

#[test]
fn policy_value_out_of_range() {
    let text = GOOD.replace("pinned_fraction = 0.25", "pinned_fraction = 1.5");
    // Policy parameters are checked when the experiment loads, before any point runs.
    let e = common::experiment("bad-fraction.toml", &text).unwrap_err();
    assert_names(
        &e,
        "bad-fraction.toml",
        "policies.dense-streaming.pinned_fraction",
        11,
    );
}

#[test]
fn missing_field() {
    let text = GOOD.replace("seed = 1\n", "");
    let e = common::experiment("missing.toml", &text).unwrap_err();
    assert!(e.to_string().contains("missing field"));
    assert_eq!(e.key(), Some("seed"));
    assert!(e.to_string().contains("missing.toml"));
    assert!(e.line().is_some());
}

#[test]
fn unknown_policy_name() {
    let text = GOOD.replace(
        "policy = \"dense-streaming\"",
        "policy = [\"dense-streaming\", \"magic\"]",
    );
    let e = common::experiment("unknown-policy.toml", &text).unwrap_err();
    assert_names(&e, "unknown-policy.toml", "policy", 4);
    assert!(e.to_string().contains("known: dense-streaming"));
}

#[test]
fn dram_budget_smaller_than_resident_weights() {
    // all-in-dram keeps the whole 12.4 GiB of OPT-6.7B resident.
    let text = GOOD.replace("policy = \"dense-streaming\"", "policy = \"all-in-dram\"");
    let exp = common::experiment("small-budget.toml", &text).unwrap();
    let e = prepare(&exp, &exp.points[0], &mut Cache::default())
        .err()
        .unwrap();
    assert_names(&e, "small-budget.toml", "dram_budget_gib", 5);
    assert!(e.to_string().contains("resident weights"));
}

#[test]
fn dram_budget_beyond_the_device() {
    let text = GOOD.replace("dram_budget_gib = 8.0", "dram_budget_gib = 100.0");
    let exp = common::experiment("huge-budget.toml", &text).unwrap();
    let e = prepare(&exp, &exp.points[0], &mut Cache::default())
        .err()
        .unwrap();
    assert_names(&e, "huge-budget.toml", "dram_budget_gib", 5);
}

#[test]
fn unknown_device_lists_where_it_looked() {
    let text = GOOD.replace("m1max-ssd", "m9-ssd");
    let exp = common::experiment("no-device.toml", &text).unwrap();
    let e = prepare(&exp, &exp.points[0], &mut Cache::default())
        .err()
        .unwrap();
    assert_names(&e, "no-device.toml", "device", 2);
    assert!(e.to_string().contains("m9-ssd.toml"));
}

fn device(text: &str) -> Result<Device, ConfigError> {
    Device::from_source(&TomlSource::from_text("configs/devices/d.toml", text)?)
}

#[test]
fn the_good_device_loads() {
    device(DEVICE).unwrap();
}

#[test]
fn negative_bandwidth() {
    let e = device(&DEVICE.replace(
        "max_bandwidth_gb_per_s = 3.0",
        "max_bandwidth_gb_per_s = -3.0",
    ))
    .unwrap_err();
    assert_names(&e, "d.toml", "flash.max_bandwidth_gb_per_s", 7);
    let e =
        device(&DEVICE.replace("bandwidth_gb_per_s = 50", "bandwidth_gb_per_s = -50")).unwrap_err();
    assert_names(&e, "d.toml", "dram.bandwidth_gb_per_s", 12);
}

#[test]
fn wrong_device_key_and_unknown_flash_model() {
    let e = device(&DEVICE.replace("parallel_units = 8", "parallel_unitz = 8")).unwrap_err();
    assert_names(&e, "d.toml", "flash.parallel_unitz", 8);
    let e = device(&DEVICE.replace("model = \"parametric\"", "model = \"quantum\"")).unwrap_err();
    assert_names(&e, "d.toml", "flash.model", 4);
}

#[test]
fn request_rate_above_device_rate() {
    let e = device(&DEVICE.replace(
        "request_bandwidth_gb_per_s = 2.0",
        "request_bandwidth_gb_per_s = 4.0",
    ))
    .unwrap_err();
    assert_names(&e, "d.toml", "flash.request_bandwidth_gb_per_s", 6);
}

#[test]
fn near_figures_of_the_wrong_shape_name_their_key() {
    // The measured table and its near figures, the rest as the good device's.
    let measured = common::measured_near_device("");
    device(&measured).unwrap();
    let e = device(&measured.replace("[[0.12, 0.5]]", "[[0.12]]")).unwrap_err();
    assert_names(&e, "d.toml", "flash.near_gb_per_s", 11);
    let e = device(&measured.replace("near_gap_kib = 64.0\n", "")).unwrap_err();
    assert_names(&e, "d.toml", "flash.near_gb_per_s", 10);
    assert!(e.to_string().contains("near_gap_kib"), "{e}");
    // Figures at other gaps: one grid per gap, of the near figures' shape, each gap once.
    let extra = |gaps: &str, grids: &str| {
        measured.replace(
            "near_gb_per_s = [[0.12, 0.5]]\n",
            &format!(
                "near_gb_per_s = [[0.12, 0.5]]\nnear_extra_gaps_kib = {gaps}\nnear_extra_gb_per_s = {grids}\n"
            ),
        )
    };
    device(&extra("[0.0, 16.0]", "[[[0.15, 0.6]], [[0.13, 0.56]]]")).unwrap();
    for (gaps, grids, says) in [
        ("[0.0, 16.0]", "[[[0.15, 0.6]]]", "one per gap"),
        (
            "[16.0]",
            "[[[0.15]]]",
            "near throughput figures must have 1 rows",
        ),
        ("[64.0]", "[[[0.15, 0.6]]]", "given twice"),
        ("[-4.0]", "[[[0.15, 0.6]]]", "0 or more"),
    ] {
        let e = device(&extra(gaps, grids)).unwrap_err();
        assert_names(&e, "d.toml", "flash.near_extra_gb_per_s", 13);
        assert!(e.to_string().contains(says), "{gaps} {grids}: {e}");
    }
}

#[test]
fn model_shape_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.toml");
    std::fs::write(
        &p,
        "name = \"m\"\nlayers = 2\nhidden = 64\nintermediate = 128\nheads = 8\nkv_heads = 3\nvocab = 10\nbytes_per_weight = 2.0\ngated = true\n",
    )
    .unwrap();
    let e = ModelShape::load(&p).unwrap_err();
    assert_names(&e, "m.toml", "kv_heads", 6);
    std::fs::write(
        &p,
        "name = \"m\"\nlayers = 2\nhidden = 64\nintermediate = 128\nheads = 8\nkv_heads = 4\nvocab = 10\nbytes_per_weight = 0.3\ngated = true\n",
    )
    .unwrap();
    let e = ModelShape::load(&p).unwrap_err();
    assert_names(&e, "m.toml", "bytes_per_weight", 8);
}

#[test]
fn every_shipped_config_loads() {
    for kind in ["devices", "models"] {
        for entry in std::fs::read_dir(common::configs().join(kind)).unwrap() {
            let p = entry.unwrap().path();
            match kind {
                "devices" => drop(Device::load(&p).unwrap_or_else(|e| panic!("{e}"))),
                _ => drop(ModelShape::load(&p).unwrap_or_else(|e| panic!("{e}"))),
            }
        }
    }
    for entry in std::fs::read_dir(common::configs().join("experiments")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let exp = flashsim::experiment::Experiment::load(&p).unwrap_or_else(|e| panic!("{e}"));
            let mut cache = Cache::default();
            for pt in &exp.points {
                // A point whose budget cannot hold its policy is a legitimate sweep point (the
                // sweep records it as infeasible); anything else is a broken config.
                match prepare(&exp, pt, &mut cache) {
                    Ok(_) => {}
                    Err(flashsim_workloads::ConfigError::Invalid { key: Some(k), .. })
                        if k == "dram_budget_gib" => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }
}

#[test]
fn a_trace_runs_with_its_own_model_and_is_refused_with_another() {
    let text = GOOD
        .replace("opt-6.7b", "stories260K")
        .replace("dram_budget_gib = 8.0", "dram_budget_gib = 0.01")
        .replace("seed = 1\n", "seed = 1\ntrace = \"stories260K\"\n");
    let exp = common::experiment("trace.toml", &text).unwrap();
    let mut p = prepare(&exp, &exp.points[0], &mut Cache::default()).unwrap();
    let t = p.trace.clone().unwrap();
    assert_eq!(t.tokens(), 384);
    // The trace's tokens drive the run, wrapping at its end.
    assert_eq!(
        (p.token_id(0), p.token_id(5), p.token_id(384 + 5)),
        (t.token(0), t.token(5), t.token(5))
    );
    assert_eq!(p.token_id(0), 1, "the trace starts with BOS");
    p.simulate(false).unwrap();
    // The same trace for a 7B model is refused, naming the key and the line.
    let text = GOOD.replace("seed = 1\n", "seed = 1\ntrace = \"stories260K\"\n");
    let exp = common::experiment("trace-mismatch.toml", &text).unwrap();
    let e = prepare(&exp, &exp.points[0], &mut Cache::default())
        .err()
        .unwrap();
    assert_names(&e, "trace-mismatch.toml", "trace", 9);
    assert!(e.to_string().contains("5 layers"));
    let text = GOOD.replace("seed = 1\n", "seed = 1\ntrace = \"nope\"\n");
    let exp = common::experiment("no-trace.toml", &text).unwrap();
    let e = prepare(&exp, &exp.points[0], &mut Cache::default())
        .err()
        .unwrap();
    assert_names(&e, "no-trace.toml", "trace", 9);
}
