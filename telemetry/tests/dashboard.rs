//! The Grafana dashboard in deploy/grafana asks only for metrics the scheduler and the
//! workers export, and shows every one of them: a renamed metric fails here, not as an empty
//! panel in an operator's Grafana.

use std::collections::BTreeSet;

use serde_json::Value;

fn dashboard() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/fleet.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(value: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in value["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panels(panel));
    }
    out
}

/// The metric names a PromQL expression reads: identifiers of the fleet's families
/// (`fleet_`, `DCGM_`) outside quoted strings, a histogram's `_bucket`/`_sum`/`_count` series
/// under its family's name.
fn metrics_in(expr: &str, histograms: &BTreeSet<String>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut quoted = false;
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("fleet_") || word.starts_with("DCGM_") {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix).filter(|base| histograms.contains(*base)))
                .unwrap_or(&word);
            names.insert(family.to_string());
        }
        word.clear();
    }
    names
}

#[test]
fn every_panel_reads_exported_metrics_and_every_metric_has_a_panel() {
    let exported: BTreeSet<String> = fleet_telemetry::metrics::names().into_iter().collect();
    let histograms: BTreeSet<String> = ["fleet_worker_task_seconds".to_string()].into();
    assert!(histograms.is_subset(&exported));
    let dashboard = dashboard();
    let mut shown = BTreeSet::new();
    for panel in panels(&dashboard) {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {title:?} has no targets"));
        let mut read = BTreeSet::new();
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("a target of {title:?} has no expr"));
            read.extend(metrics_in(expr, &histograms));
        }
        assert!(!read.is_empty(), "panel {title:?} reads none of the fleet's metrics");
        let unknown: Vec<_> = read.difference(&exported).collect();
        assert!(unknown.is_empty(), "panel {title:?} reads metrics no service exports: {unknown:?}");
        shown.extend(read);
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let query = variable["query"]["query"].as_str().or(variable["query"].as_str()).unwrap_or_default();
        let unknown: Vec<_> = metrics_in(query, &histograms).into_iter().filter(|m| !exported.contains(m)).collect();
        assert!(unknown.is_empty(), "variable {} reads unknown metrics: {unknown:?}", variable["name"]);
    }
    let missing: Vec<_> = exported.difference(&shown).collect();
    assert!(missing.is_empty(), "exported but on no panel: {missing:?}");
}

#[test]
fn metric_names_are_read_from_expressions_as_prometheus_would() {
    let histograms: BTreeSet<String> = ["fleet_worker_task_seconds".to_string()].into();
    let expr = r#"histogram_quantile(0.95, sum by (le)(rate(fleet_worker_task_seconds_bucket{priority=~"fleet_x"}[5m])))
        / ignoring(x) DCGM_FI_DEV_FB_USED + fleet_backlog_tasks_count"#;
    let names = metrics_in(expr, &histograms);
    // The quoted label value is not a metric; `_count` of a gauge is a name of its own.
    let expected: BTreeSet<String> =
        ["fleet_worker_task_seconds", "DCGM_FI_DEV_FB_USED", "fleet_backlog_tasks_count"].map(String::from).into();
    assert_eq!(names, expected);
}
