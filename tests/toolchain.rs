//! The Rust version the project declares (`rust-version` in Cargo.toml, which clippy's
//! `incompatible_msrv` lint holds the sources to, and the README's prerequisites) is at least what
//! every locked crate the binary builds from declares: a dependency update that needs a newer
//! compiler fails here, not on a user's machine.

use std::process::Command;

fn version(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap()).collect()
}

fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_declared_rust_version_is_what_the_locked_crates_need() {
    let declared = env!("CARGO_PKG_RUST_VERSION");
    // The crates the binary is built from (not the tests' and benches' own).
    let tree = cargo(&[
        "tree",
        "-e",
        "normal,build",
        "--prefix",
        "none",
        "--locked",
        "--offline",
    ]);
    let built: std::collections::HashSet<(String, String)> = tree
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.trim_start_matches('v').to_owned()))
        })
        .collect();
    // This machine's platform only: other platforms' crates (android_system_properties, say)
    // are in the lock but never downloaded here.
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .unwrap();
    let host = String::from_utf8(rustc.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names its host");
    let meta: serde_json::Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--locked",
        "--offline",
        "--filter-platform",
        &host,
    ]))
    .unwrap();
    let mut needs: Vec<(Vec<u32>, String)> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            built.contains(&(
                p["name"].as_str().unwrap().to_owned(),
                p["version"].as_str().unwrap().to_owned(),
            ))
        })
        .filter_map(|p| {
            let v = p["rust_version"].as_str()?;
            Some((
                version(v),
                format!("{} {} needs Rust {v}", p["name"], p["version"]),
            ))
        })
        .collect();
    assert!(
        needs.len() > 50,
        "the crates' versions were read: {}",
        needs.len()
    );
    needs.sort();
    let (most, who) = needs.last().unwrap();
    let mut declared_v = version(declared);
    declared_v.resize(most.len().max(declared_v.len()), 0);
    let mut most_v = most.clone();
    most_v.resize(declared_v.len(), 0);
    assert!(
        most_v <= declared_v,
        "Cargo.toml declares Rust {declared}, but {who}"
    );
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(&format!("Rust {declared} or newer")),
        "the README's prerequisites name Rust {declared}"
    );
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    let image: Vec<u32> = dockerfile
        .split("FROM rust:")
        .nth(1)
        .and_then(|r| r.split('-').next())
        .map(version)
        .expect("the Dockerfile builds FROM rust:X.Y-…");
    assert!(
        image >= version(declared),
        "the image's Rust is at least the declared one"
    );
}
