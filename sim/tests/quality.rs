//! Quality beside speed: masks scored with the real stories260K weights.

mod common;

use flashsim_workloads::shared_models_for_test;

#[test]
fn masks_are_scored_against_the_dense_model() {
    if shared_models_for_test().is_none() {
        return;
    }
    let rows = common::run(
        r#"
name = "quality"
device = "ufs40-phone"
model = "stories260K"
trace = "stories260K"
policy = ["dense-streaming", "dip", "activeflow", "llm-in-a-flash"]
dram_budget_gib = 0.05
tokens = 96
prompt_tokens = 0
seed = 1
[policies.dip]
keep = [0.5, 0.8]
[policies.activeflow]
sparsity = [0.3, 0.6]
[policies.llm-in-a-flash]
predictor = "oracle"
active_threshold = 0.0
"#,
    );
    let m: Vec<_> = rows.iter().map(|r| r.metrics).collect();
    for (r, x) in rows.iter().zip(&m) {
        println!(
            "{} {:?}: KL {:?}, top-1 {:?}, retained {:?}",
            r.point.config.policy,
            r.point.axis_values,
            x.kl_divergence,
            x.top1_agreement,
            x.retained_mass
        );
    }
    // Dense streaming computes everything: the masked model is the dense model.
    assert_eq!(
        (m[0].kl_divergence, m[0].top1_agreement),
        (Some(0.0), Some(1.0))
    );
    // Pruning more costs more, and keeping more mass costs less.
    let kl = |i: usize| m[i].kl_divergence.unwrap();
    assert!(kl(1) > kl(2) && kl(2) > 0.0, "DIP keep 0.5 vs 0.8");
    assert!(
        kl(4) > kl(3) && kl(3) > 0.0,
        "ActiveFlow sparsity 0.6 vs 0.3"
    );
    assert!(m[1].retained_mass < m[2].retained_mass);
    // An oracle predictor with a zero threshold keeps every neuron that is not exactly zero.
    assert!(kl(5) < 1e-6, "{}", kl(5));
}
