//! Experiments: which arm of an A/B test converts better. An `[[experiments]]` entry names a
//! flag with variants (its arms are the variants) or a route (its arms are the split's pools),
//! and a goal: requests to a path prefix, of a method, answered with a status. Every request of
//! a user in an arm is an exposure; a goal request answered as the goal says is a conversion of
//! its user (who was exposed by that very request, if not before). Distinct users are counted
//! with HyperLogLog sketches ([`hll`]), so the counts of several replicas merge exactly; the
//! statistics are in [`stats`].

pub mod hll;
pub mod stats;

use std::sync::Arc;

use http::Method;
use serde::{Deserialize, Serialize};

use hll::Sketch;

/// What an experiment compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A flag (index into the snapshot's flags): its variants.
    Flag(usize),
    /// A route (index into the snapshot's routes): its pools.
    Route(usize),
}

/// Which answers count as reaching the goal: `2xx`, or one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Class(u16),
    Exact(u16),
}

impl StatusMatch {
    pub fn parse(text: &str) -> Option<StatusMatch> {
        let t = text.trim().to_ascii_lowercase();
        if let Some(c) = t.strip_suffix("xx") {
            let c: u16 = c.parse().ok()?;
            return (1..=5).contains(&c).then_some(StatusMatch::Class(c));
        }
        let n: u16 = t.parse().ok()?;
        (100..=599).contains(&n).then_some(StatusMatch::Exact(n))
    }

    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Class(c) => status / 100 == c,
            StatusMatch::Exact(n) => status == n,
        }
    }
}

/// The goal: a request to `path_prefix` (of `method`, if set) answered as `status` says.
#[derive(Debug, Clone)]
pub struct Goal {
    pub path_prefix: String,
    pub method: Option<Method>,
    pub status: StatusMatch,
    /// As written, for the API.
    pub text: String,
}

/// One arm's sketches.
#[derive(Debug, Clone, Default)]
pub struct Arm {
    pub exposed: Sketch,
    pub converted: Sketch,
}

/// An experiment's counts, kept across reloads (for the same arms) and restarts.
#[derive(Debug, Default)]
pub struct Results {
    pub arms: Vec<Arm>,
}

/// A compiled `[[experiments]]`.
#[derive(Debug, Clone)]
pub struct ExperimentConfig {
    pub name: String,
    pub subject: Subject,
    pub goal: Goal,
    /// Arm names: the flag's variant names (in order of [`crate::routing::Flag::variant_names`])
    /// or the route's pools.
    pub arms: Vec<String>,
    /// The share each arm should get, for the sample-ratio check.
    pub weights: Vec<f64>,
    pub results: Arc<Results>,
}

/// A conversion waiting for its answer's status.
#[derive(Debug)]
pub struct Conversion {
    pub results: Arc<Results>,
    pub arm: usize,
    pub user: u64,
    pub status: StatusMatch,
}

impl Conversion {
    /// The answer's status is known.
    pub fn done(self, status: u16) {
        if self.status.matches(status) {
            self.results.arms[self.arm].converted.insert(self.user);
        }
    }
}

impl Goal {
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        path.starts_with(&self.path_prefix) && self.method.as_ref().is_none_or(|m| m == method)
    }
}

/// One arm's figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArmReport {
    pub name: String,
    /// The share the arm should get.
    pub weight: f64,
    /// Distinct users exposed (estimated, ±0.8%).
    pub exposed: u64,
    /// Distinct users converted.
    pub converted: u64,
    pub rate: f64,
    /// The 95% Wilson score interval of the rate.
    pub ci: [f64; 2],
    /// Rate minus the first arm's (`None` for the first).
    pub difference: Option<f64>,
    pub z: Option<f64>,
    /// Two-sided p-value of the two-proportion z-test against the first arm.
    pub p_value: Option<f64>,
    /// The arm's sketches, base64, when asked for (to merge replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sketches: Option<[String; 2]>,
}

/// The sample-ratio check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Srm {
    pub chi_square: f64,
    pub p_value: f64,
    /// p below [`stats::SRM_P`]: the assignment is broken; do not read the results.
    pub mismatch: bool,
}

/// An experiment's results, as the API and `switchyard experiments` show them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub name: String,
    /// `flag NAME` or `route NAME`.
    pub subject: String,
    pub goal: String,
    pub arms: Vec<ArmReport>,
    pub srm: Option<Srm>,
    pub method: String,
}

pub const METHOD: &str = "rates with 95% Wilson score intervals; each arm against the first by a two-sided two-proportion z-test (pooled variance); sample ratio by Pearson's chi-square against the weights, a mismatch below p = 0.001";

/// The figures of arms given as `(name, weight, exposed sketch, converted sketch)`.
pub fn report(
    name: &str,
    subject: &str,
    goal: &str,
    arms: &[(String, f64, &Sketch, &Sketch)],
    sketches: bool,
) -> Report {
    let counts: Vec<(u64, u64)> = arms
        .iter()
        .map(|(_, _, e, c)| {
            let exposed = e.count();
            (exposed, c.count().min(exposed))
        })
        .collect();
    let first = counts.first().copied();
    let arm_reports = arms
        .iter()
        .zip(&counts)
        .enumerate()
        .map(|(i, ((n, w, e, c), &(exposed, converted)))| {
            let (ne, nc) = (exposed as f64, converted as f64);
            let test = match (i, first) {
                (0, _) | (_, None) => None,
                (_, Some((e0, c0))) => stats::two_proportion(c0 as f64, e0 as f64, nc, ne),
            };
            let rate = if exposed == 0 { 0.0 } else { nc / ne };
            let (lo, hi) = stats::wilson(nc, ne);
            ArmReport {
                name: n.clone(),
                weight: *w,
                exposed,
                converted,
                rate,
                ci: [lo, hi],
                difference: match (i, first) {
                    (0, _) | (_, None) => None,
                    (_, Some((e0, c0))) if e0 > 0 && exposed > 0 => Some(rate - c0 as f64 / e0 as f64),
                    _ => None,
                },
                z: test.map(|t| t.0),
                p_value: test.map(|t| t.1),
                sketches: sketches.then(|| [e.encode(), c.encode()]),
            }
        })
        .collect();
    let observed: Vec<f64> = counts.iter().map(|c| c.0 as f64).collect();
    let weights: Vec<f64> = arms.iter().map(|a| a.1).collect();
    let srm = stats::chi_square(&observed, &weights).map(|(chi, p)| Srm {
        chi_square: chi,
        p_value: p,
        mismatch: p < stats::SRM_P,
    });
    Report {
        name: name.to_owned(),
        subject: subject.to_owned(),
        goal: goal.to_owned(),
        arms: arm_reports,
        srm,
        method: METHOD.to_owned(),
    }
}

impl ExperimentConfig {
    pub fn report(&self, subject: &str, sketches: bool) -> Report {
        let arms: Vec<(String, f64, &Sketch, &Sketch)> = self
            .arms
            .iter()
            .zip(&self.weights)
            .zip(&self.results.arms)
            .map(|((n, w), a)| (n.clone(), *w, &a.exposed, &a.converted))
            .collect();
        report(&self.name, subject, &self.goal.text, &arms, sketches)
    }
}

/// An experiment seen in a replica's report: name, subject, goal, arms with weights.
type Seen = (String, String, String, Vec<(String, f64)>);

/// Merges reports of the same experiments from several replicas (with their sketches) into
/// one, by experiment and arm name. An arm missing from a replica counts nobody there.
pub fn merge(replicas: &[Vec<Report>]) -> Result<Vec<Report>, String> {
    // (name, subject, goal, arms with their weights), in first-seen order.
    let mut order: Vec<Seen> = Vec::new();
    let mut sketches: std::collections::HashMap<(String, String), (Sketch, Sketch)> = Default::default();
    for reports in replicas {
        for r in reports {
            if !order.iter().any(|o| o.0 == r.name) {
                order.push((r.name.clone(), r.subject.clone(), r.goal.clone(), Vec::new()));
            }
            let entry = order.iter_mut().find(|o| o.0 == r.name).expect("just added");
            for a in &r.arms {
                if !entry.3.iter().any(|x| x.0 == a.name) {
                    entry.3.push((a.name.clone(), a.weight));
                }
                let [e, c] = a
                    .sketches
                    .as_ref()
                    .ok_or_else(|| format!("{}: the replica sent no sketches", r.name))?;
                let slot = sketches.entry((r.name.clone(), a.name.clone())).or_default();
                slot.0.merge(&Sketch::decode(e)?);
                slot.1.merge(&Sketch::decode(c)?);
            }
        }
    }
    Ok(order
        .iter()
        .map(|(name, subject, goal, arms)| {
            let list: Vec<(String, f64, &Sketch, &Sketch)> = arms
                .iter()
                .map(|(a, w)| {
                    let s = &sketches[&(name.clone(), a.clone())];
                    (a.clone(), *w, &s.0, &s.1)
                })
                .collect();
            report(name, subject, goal, &list, false)
        })
        .collect())
}

/// What the state file's sibling keeps: each experiment's arms' sketches.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    /// experiment → arm → [exposed, converted] (base64 sketches).
    pub experiments: std::collections::BTreeMap<String, std::collections::BTreeMap<String, [String; 2]>>,
}

impl Saved {
    pub fn of(experiments: &[ExperimentConfig]) -> Saved {
        let mut s = Saved::default();
        for e in experiments {
            let arms = e
                .arms
                .iter()
                .zip(&e.results.arms)
                .map(|(n, a)| (n.clone(), [a.exposed.encode(), a.converted.encode()]))
                .collect();
            s.experiments.insert(e.name.clone(), arms);
        }
        s
    }

    /// Takes the saved counts into the live experiments (a merge: loading twice changes
    /// nothing). Arms no longer configured are left out. An experiment with an arm whose
    /// sketch does not decode is left out whole (its arms restored without that one would show
    /// a sample-ratio mismatch that is not there): the problems are returned.
    pub fn restore(&self, experiments: &[ExperimentConfig]) -> Vec<String> {
        let mut problems = Vec::new();
        for e in experiments {
            let Some(saved) = self.experiments.get(&e.name) else {
                continue;
            };
            let mut decoded = Vec::new();
            let mut bad = Vec::new();
            for (n, a) in e.arms.iter().zip(&e.results.arms) {
                if let Some([x, c]) = saved.get(n) {
                    match (Sketch::decode(x), Sketch::decode(c)) {
                        (Ok(x), Ok(c)) => decoded.push((a, x, c)),
                        _ => bad.push(n.as_str()),
                    }
                }
            }
            if !bad.is_empty() {
                problems.push(format!(
                    "experiment `{}`: the saved sketch of arm {} does not decode; none of its arms' counts were restored",
                    e.name,
                    bad.join(", ")
                ));
                continue;
            }
            for (a, x, c) in decoded {
                a.exposed.merge(&x);
                a.converted.merge(&c);
            }
        }
        problems
    }
}

/// Reads the saved counts at start into `experiments`. A file that is not the counts, or has
/// an arm that does not decode, is moved aside (`.corrupt-<time>`) so the next save does not
/// overwrite it; each problem is logged and returned. `Err`: the file is damaged and could not
/// be moved: it must not be written over.
pub fn load_saved(path: &std::path::Path, experiments: &[ExperimentConfig]) -> Result<Vec<String>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let problems = match serde_json::from_slice::<Saved>(&text) {
        Ok(s) => s.restore(experiments),
        Err(e) => vec![format!("{} is not the experiments' counts ({e})", path.display())],
    };
    if problems.is_empty() {
        return Ok(problems);
    }
    for p in &problems {
        tracing::warn!("{p}");
    }
    match crate::persist::keep_aside(path, std::time::SystemTime::now()) {
        Ok(aside) => {
            tracing::warn!("the damaged experiments' counts are kept as {}", aside.display());
            Ok(problems
                .into_iter()
                .map(|p| format!("{p}; the file is kept as {}", aside.display()))
                .collect())
        }
        Err(e) => Err(format!(
            "{}; it cannot be moved aside ({e}), so it is not written over",
            problems.join("; ")
        )),
    }
}

/// Writes the live experiments' counts now (off the runtime), unless they are what `last`
/// holds; `last` is updated on success.
pub async fn save(
    experiments: &[ExperimentConfig],
    path: &std::path::Path,
    last: &mut String,
) -> std::io::Result<()> {
    if experiments.is_empty() {
        return Ok(());
    }
    let text = serde_json::to_string(&Saved::of(experiments)).unwrap_or_default();
    if text == *last {
        return Ok(());
    }
    let (p, bytes) = (path.to_owned(), text.clone());
    tokio::task::spawn_blocking(move || crate::persist::write_atomic(&p, bytes.as_bytes()))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))?;
    *last = text;
    Ok(())
}

/// Where the experiments' counts are kept: beside the state file.
pub fn saved_path(state_file: &std::path::Path) -> std::path::PathBuf {
    let mut p = state_file.as_os_str().to_owned();
    p.push(".experiments.json");
    std::path::PathBuf::from(p)
}

/// How often the counts are written.
pub const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
