//! `switchyard experiments`: the experiments' results, from one proxy or merged from several
//! replicas (`--admin URL` once per replica): each replica's sketches are merged, so the table
//! is the one a single proxy that saw all their traffic would print.

use std::fmt::Write;

use crate::experiments::{merge, Report};

use super::AdminTarget;

/// Fetches each target's experiments with their sketches, merges them, and prints the table
/// (or JSON).
pub async fn run(targets: &[AdminTarget], json: bool) -> anyhow::Result<String> {
    let mut replicas = Vec::new();
    for t in targets {
        let v = t.get("/api/experiments?sketches=true").await?;
        let reports: Vec<Report> = serde_json::from_value(v)
            .map_err(|e| anyhow::anyhow!("{}: not an experiments answer ({e})", t.base))?;
        replicas.push(reports);
    }
    let merged = merge(&replicas).map_err(anyhow::Error::msg)?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&merged)?));
    }
    Ok(table(&merged, targets.len()))
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// The results as people read them.
pub fn table(reports: &[Report], replicas: usize) -> String {
    let mut s = String::new();
    if reports.is_empty() {
        s.push_str("no experiments: add [[experiments]] to the config\n");
        return s;
    }
    for r in reports {
        let _ = writeln!(
            s,
            "{} ({}; goal {}{})",
            r.name,
            r.subject,
            r.goal,
            if replicas > 1 {
                format!("; {replicas} replicas merged")
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "  {:<14} {:>9} {:>9} {:>8}  {:<19} {:>10} {:>10}",
            "arm", "exposed", "converted", "rate", "95% CI", "vs first", "p-value"
        );
        for a in &r.arms {
            let _ = writeln!(
                s,
                "  {:<14} {:>9} {:>9} {:>8}  {:<19} {:>10} {:>10}",
                a.name,
                a.exposed,
                a.converted,
                pct(a.rate),
                format!("[{}, {}]", pct(a.ci[0]), pct(a.ci[1])),
                a.difference
                    .map_or(String::new(), |d| format!("{:+.2} pts", d * 100.0)),
                a.p_value.map_or(String::new(), |p| if p < 1e-4 {
                    format!("{p:.1e}")
                } else {
                    format!("{p:.4}")
                }),
            );
        }
        match &r.srm {
            Some(x) if x.mismatch => {
                let _ = writeln!(
                    s,
                    "  SAMPLE RATIO MISMATCH: chi-square {:.1}, p = {:.1e}: the arms' users do not match their weights, so the assignment or the counting is broken; do not read these results",
                    x.chi_square, x.p_value
                );
            }
            Some(x) => {
                let _ = writeln!(
                    s,
                    "  sample ratio: chi-square {:.2}, p = {:.3}: consistent with the weights",
                    x.chi_square, x.p_value
                );
            }
            None => {
                let _ = writeln!(s, "  sample ratio: not enough users yet");
            }
        }
    }
    s.push_str("(rates with 95% Wilson intervals; each arm against the first by a two-sided two-proportion z-test; sample ratio by chi-square, a mismatch below p = 0.001)\n");
    s
}
