//! The crate's layout rules, checked on its sources: which module may name which (the
//! "Layout" of ARCHITECTURE.md). A module's imports are every `crate::NAME` its files name outside their test
//! modules (and `tests.rs` files) and comments; a module is a top-level file or directory of `src/`, except that a
//! directory's `task.rs` (the task that runs a module's logic, such as `guard::task`) is a
//! module of its own, on the floor of the tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module and the modules of the crate it names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    let src = stack[0].clone();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            // A module's `tests.rs` is its test module.
            if path.extension().is_none_or(|e| e != "rs") || path.file_name().is_some_and(|n| n == "tests.rs")
            {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let parts: Vec<&str> = rel
                .components()
                .map(|c| c.as_os_str().to_str().unwrap().trim_end_matches(".rs"))
                .collect();
            let top = match parts.as_slice() {
                [dir, "task"] => format!("{dir}::task"),
                [first, ..] => (*first).to_owned(),
                [] => continue,
            };
            if top == "lib" || top == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let deps = out.entry(top.clone()).or_default();
            for name in named(&text) {
                if name != top && name != "self" {
                    deps.insert(name);
                }
            }
            // A task names its module through `super::`.
            if let Some(module) = top.strip_suffix("::task") {
                if text.contains("super::") {
                    deps.insert(module.to_owned());
                }
            }
        }
    }
    out
}

/// The crate's modules that `text` names, outside `#[cfg(test)]` (which this crate keeps at
/// the end of a file) and comments.
fn named(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let task = |name: String| -> String {
            if rest[name.len()..].starts_with("::task") {
                format!("{name}::task")
            } else {
                name
            }
        };
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first segment of each item.
            for item in split_top(group) {
                let name = ident(item.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(task(name));
            }
        }
    }
    out
}

/// The top-level items of a `{...}` group's inside (up to its closing brace).
fn split_top(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

#[test]
fn the_parser_finds_paths_groups_and_nested_groups() {
    let text = "use crate::routing::Table;\nuse crate::{clock::unix_ms, control::{Adopt, Trigger}};\n\
                // crate::commented\nfn f() { crate::egress::client(); }\n#[cfg(test)]\nmod tests { use crate::config; }\n";
    let found: Vec<String> = named(text).into_iter().collect();
    assert_eq!(found, ["clock", "control", "egress", "routing"]);
}

#[test]
fn routing_and_http1_name_nothing_else_of_the_crate() {
    let all = imports();
    assert_eq!(
        all["http1"].iter().collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "http1 is wire rules only"
    );
    let routing: Vec<&String> = all["routing"].iter().collect();
    assert_eq!(routing, ["http1"], "routing is pure: it names http1 only");
}

#[test]
fn the_floor_modules_name_nothing_above_them() {
    let all = imports();
    for base in ["clock", "egress", "persist", "logging"] {
        assert!(all[base].is_empty(), "{base} names {:?}", all[base]);
    }
    // The writer's inbox names only the guard's figures it carries.
    let control: Vec<&String> = all["control"].iter().collect();
    assert_eq!(control, ["guard"]);
}

#[test]
fn only_the_app_names_the_writer() {
    for (module, deps) in imports() {
        if deps.contains("reload") {
            assert_eq!(module, "app", "{module} names reload: senders name control");
        }
    }
}

/// The import circles: each strongly connected set of more than one module (Tarjan).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in &self.graph[v] {
                if !self.graph.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let l = self.low[w.as_str()].min(self.low[v]);
                    self.low.insert(v, l);
                } else if self.stack.contains(&w.as_str()) {
                    let l = self.index[w.as_str()].min(self.low[v]);
                    self.low.insert(v, l);
                }
            }
            if self.low[v] == self.index[v] {
                let mut set = Vec::new();
                while let Some(w) = self.stack.pop() {
                    set.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if set.len() > 1 {
                    set.sort();
                    self.found.push(set);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn circles_are_found() {
    let g: BTreeMap<String, BTreeSet<String>> =
        [("a", &["b"][..]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
            .collect();
    assert_eq!(circles(&g), [["a", "b", "c"]]);
}

#[test]
fn no_module_imports_in_a_circle() {
    let all = imports();
    assert_eq!(circles(&all), Vec::<Vec<String>>::new(), "{all:#?}");
    // The arrows, for a reader (`cargo test --test layout -- --nocapture`).
    for (module, names) in &all {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        println!("{module} → {}", names.join(", "));
    }
}

#[test]
fn upstream_names_only_http1_and_config_never_the_runtime() {
    let all = imports();
    let upstream: Vec<&String> = all["upstream"].iter().collect();
    assert_eq!(
        upstream,
        ["http1"],
        "the upstream client knows no proxy, route or mirror"
    );
    for below in ["runtime", "proxy", "reload", "admin", "app"] {
        assert!(
            !all["config"].contains(below),
            "config names {below}: compiling is a function of the text"
        );
    }
}

/// Every `.rs` file under `src/`, with its text.
fn sources() -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    out
}

#[test]
fn rooms_that_fit_and_no_function_with_too_many_arguments() {
    for (path, text) in sources() {
        let lines = text.lines().count();
        assert!(
            lines <= 800,
            "{} has {lines} lines: split it by concern",
            path.display()
        );
        assert!(
            !text.contains("clippy::too_many_arguments"),
            "{} allows too_many_arguments: name the group of arguments with a struct",
            path.display()
        );
    }
}
