//! The crate's modules import each other without circles, and the services never reach the
//! HTTP layer or axum: read from the source, so a new `use` that closes a loop fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every module of `src/`, by path (`http::partners`), with its file's text, comments removed.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod") | Some("lib")) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let code: String = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            (parts.join("::"), code)
        })
        .collect()
}

/// The paths of a `a::{b, c::{d}}` tree starting at `text`, joined to `prefix`.
fn expand(prefix: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut head = String::new();
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_alphanumeric() || c == '_' || c == ':' {
            head.push(c);
            i += 1;
        } else if c == '{' {
            // The group, to its matching brace, split at depth-0 commas.
            let mut depth = 0;
            let mut item = String::new();
            let base = format!("{prefix}{head}").trim_end_matches("::").to_string();
            while i < bytes.len() {
                let c = bytes[i];
                match c {
                    '{' => {
                        depth += 1;
                        if depth > 1 {
                            item.push(c);
                        }
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            out.extend(expand(&format!("{base}::"), item.trim()));
                            break;
                        }
                        item.push(c);
                    }
                    ',' if depth == 1 => {
                        out.extend(expand(&format!("{base}::"), item.trim()));
                        item.clear();
                    }
                    _ => item.push(c),
                }
                i += 1;
            }
            return out;
        } else {
            break;
        }
    }
    if !head.is_empty() {
        out.push(format!("{prefix}{}", head.trim_end_matches("::")));
    }
    out
}

/// The modules `module` names, resolved against the module set.
fn imports(module: &str, code: &str, all: &BTreeSet<String>) -> BTreeSet<String> {
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let join = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else {
            format!("{a}::{b}")
        }
    };
    let mut paths = Vec::new();
    for (marker, base) in [("crate::", String::new()), ("super::", parent.to_string())] {
        let mut rest = code;
        while let Some(at) = rest.find(marker) {
            let before = rest[..at].chars().last();
            let after = &rest[at + marker.len()..];
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                let prefix = if base.is_empty() {
                    String::new()
                } else {
                    format!("{base}::")
                };
                paths.extend(expand(&prefix, after));
            }
            rest = after;
        }
    }
    // `use child::…` and `pub use child::…` in a parent name its own children.
    for line in code.lines() {
        let t = line.trim_start();
        let t = t.strip_prefix("pub ").unwrap_or(t);
        if let Some(u) = t.strip_prefix("use ") {
            let first = u.split([':', ';', ' ']).next().unwrap_or("");
            if all.contains(&join(module, first)) {
                let prefix = if module.is_empty() {
                    String::new()
                } else {
                    format!("{module}::")
                };
                paths.extend(expand(&prefix, u));
            }
        }
    }
    paths
        .into_iter()
        .filter_map(|p| {
            // The deepest module the path goes through.
            let mut parts: Vec<&str> = p.split("::").collect();
            while !parts.is_empty() {
                let m = parts.join("::");
                if all.contains(&m) {
                    return Some(m);
                }
                parts.pop();
            }
            None
        })
        .filter(|m| m != module && !m.is_empty())
        .collect()
}

#[test]
fn modules_import_each_other_without_circles() {
    let modules = modules();
    let all: BTreeSet<String> = modules.keys().cloned().collect();
    let graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|(m, code)| (m.clone(), imports(m, code, &all)))
        .collect();
    // The test reads what it must: handlers import the error mapping and the services.
    assert!(
        graph["http::partners"].contains("http::error"),
        "{graph:#?}"
    );
    assert!(graph["http::partners"].contains("service"), "{graph:#?}");
    assert!(graph["service"].contains("service::billing"), "{graph:#?}");

    // Depth-first search for a back edge, reporting the loop it closes.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_string());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!(
                "modules import each other in a circle: {}",
                cycle.join(" → ")
            );
        }
    }
}

#[test]
fn the_services_know_nothing_of_http() {
    for (m, code) in modules() {
        if m == "service" || m.starts_with("service::") {
            for forbidden in ["axum", "crate::http", "StatusCode", "IntoResponse"] {
                assert!(
                    !code.contains(forbidden),
                    "{m} mentions {forbidden}: the services must not depend on HTTP"
                );
            }
        }
    }
}
