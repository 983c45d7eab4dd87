//! The Grafana dashboard (`deploy/grafana/peage.json`) against what the processes serve: every
//! metric a panel queries must be in some process's `/metrics`.
#![allow(dead_code)]

use std::collections::BTreeSet;

/// Every `peage_*` metric named by a panel's query, with the panel's title.
pub fn panel_metrics() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/peage.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                found.push((title.clone(), name));
            }
        }
    }
    assert!(
        found.len() > 20,
        "the dashboard queries few metrics: {found:?}"
    );
    found
}

/// The `peage_…` identifiers of a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("peage_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The metric names of a `/metrics` text (samples, not comments).
pub fn exposed(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l[..l.find(['{', ' ']).unwrap_or(l.len())].to_string())
        .collect()
}

/// The panels' metrics that none of `expositions` serves, as "panel: metric".
pub fn missing(expositions: &[&str], except: impl Fn(&str) -> bool) -> Vec<String> {
    let served: BTreeSet<String> = expositions.iter().flat_map(|m| exposed(m)).collect();
    panel_metrics()
        .into_iter()
        .filter(|(_, name)| !served.contains(name) && !except(name))
        .map(|(panel, name)| format!("{panel}: {name}"))
        .collect()
}
