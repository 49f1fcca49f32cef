//! Expansion of experiments into points: Cartesian products, per-policy axes, zip groups.

mod common;

const BASE: &str = r#"name = "x"
device = "m1max-ssd"
model = "opt-6.7b"
dram_budget_gib = 20.0
tokens = 1
prompt_tokens = 1
seed = 1
"#;

fn axis(p: &flashsim::experiment::Point, k: &str) -> String {
    p.axis_values
        .iter()
        .find(|(a, _)| a == k)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

#[test]
fn lists_multiply_and_policy_tables_expand_only_their_policy() {
    let text = format!(
        "{BASE}policy = [\"dense-streaming\", \"all-in-dram\"]\nio_queue_depth = [8, 32]\n[policies.dense-streaming]\npinned_fraction = [0.0, 0.25, 0.5]\n"
    );
    let exp = common::experiment("x.toml", &text).unwrap();
    // io_queue_depth x (3 dense-streaming points + 1 all-in-dram point).
    assert_eq!(exp.points.len(), 2 * (3 + 1));
    assert_eq!(
        exp.axes,
        vec!["io_queue_depth", "policy", "pinned_fraction"]
    );
    let first: Vec<(String, String, String)> = exp
        .points
        .iter()
        .map(|p| {
            (
                axis(p, "io_queue_depth"),
                axis(p, "policy"),
                axis(p, "pinned_fraction"),
            )
        })
        .collect();
    assert_eq!(
        first[0],
        ("8".into(), "dense-streaming".into(), "0.0".into())
    );
    assert_eq!(
        first[2],
        ("8".into(), "dense-streaming".into(), "0.5".into())
    );
    assert_eq!(first[3], ("8".into(), "all-in-dram".into(), "".into()));
    assert_eq!(first[4].0, "32");
}

#[test]
fn zip_groups_move_together() {
    let text = format!(
        "{}policy = \"all-in-dram\"\nzip = [[\"model\", \"trace\"]]\nio_queue_depth = [1, 2]\n",
        BASE.replace(
            "model = \"opt-6.7b\"",
            "model = [\"opt-6.7b\", \"stories260K\"]\ntrace = [\"none\", \"stories260K\"]"
        )
    );
    let exp = common::experiment("zip.toml", &text).unwrap();
    assert_eq!(exp.points.len(), 4);
    let pairs: Vec<(String, String, String)> = exp
        .points
        .iter()
        .map(|p| {
            (
                p.config.model.clone(),
                p.config.trace.clone(),
                axis(p, "io_queue_depth"),
            )
        })
        .collect();
    // Axes in key order, the last fastest: io_queue_depth sorts before the (model, trace) group.
    assert_eq!(
        pairs,
        vec![
            ("opt-6.7b".into(), "none".into(), "1".into()),
            ("stories260K".into(), "stories260K".into(), "1".into()),
            ("opt-6.7b".into(), "none".into(), "2".into()),
            ("stories260K".into(), "stories260K".into(), "2".into()),
        ]
    );
}

#[test]
fn zip_errors_name_the_key() {
    let text = format!(
        "{}policy = \"all-in-dram\"\nzip = [[\"model\", \"trace\"]]\n",
        BASE.replace(
            "model = \"opt-6.7b\"",
            "model = [\"opt-6.7b\", \"stories260K\"]\ntrace = [\"none\"]"
        )
    );
    let e = common::experiment("zip-bad.toml", &text).unwrap_err();
    println!("{e}");
    assert_eq!(e.key(), Some("zip"));
    assert!(e.to_string().contains("differ in length"));
    let text = format!("{BASE}policy = \"all-in-dram\"\nzip = [[\"model\", \"seed\"]]\n");
    let e = common::experiment("zip-scalar.toml", &text).unwrap_err();
    assert!(e.to_string().contains("`model` must be a list"), "{e}");
}
