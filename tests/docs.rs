//! The docs a user reads stay true: every relative link in the README, ARCHITECTURE.md,
//! CONTRIBUTING.md and docs/ reaches a file (and a heading, when it names one), every TOML
//! snippet parses, and every snippet that is a whole config (pools and routes) passes `check`.

use std::path::{Path, PathBuf};

fn docs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "CONTRIBUTING.md"]
        .iter()
        .map(|f| root.join(f))
        .collect();
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "md") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A heading's anchor, as GitHub makes it.
fn slug(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(slug(line));
        }
    }
    out
}

/// `(label, target)` of each `[label](target)` outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_link_reaches_its_file_and_heading() {
    let mut broken = Vec::new();
    for doc in docs() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for target in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") || target.contains(' ') {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let path = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(file)
            };
            if !path.exists() {
                broken.push(format!("{}: {target}: no such file", doc.display()));
                continue;
            }
            if !anchor.is_empty() {
                let there = std::fs::read_to_string(&path).unwrap_or_default();
                if !anchors(&there).iter().any(|a| a == anchor) {
                    broken.push(format!("{}: {target}: no such heading", doc.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn every_config_snippet_parses_and_whole_ones_pass_check() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for doc in docs() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let mut snippet: Option<String> = None;
        for line in text.lines() {
            match (&mut snippet, line.trim_start()) {
                (None, l) if l.starts_with("```toml") => snippet = Some(String::new()),
                (Some(s), l) if l.starts_with("```") => {
                    let s = std::mem::take(s);
                    snippet = None;
                    if let Err(e) = s.parse::<toml::Table>() {
                        failures.push(format!("{}: a snippet is not TOML: {e}\n{s}", doc.display()));
                        continue;
                    }
                    if s.contains("[[routes]]") && s.contains("[pools.") {
                        checked += 1;
                        let dir = tempfile::tempdir().unwrap();
                        if let Err(e) =
                            switchyard::runtime::load_str(&s, &dir.path().join("snippet.toml"), None)
                        {
                            failures.push(format!(
                                "{}: a config does not pass check: {e}\n{s}",
                                doc.display()
                            ));
                        }
                    }
                }
                (Some(s), _) => {
                    s.push_str(line);
                    s.push('\n');
                }
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        checked >= 2,
        "the README's config and the walkthrough are checked"
    );
}
