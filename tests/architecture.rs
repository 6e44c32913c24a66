//! The module structure ARCHITECTURE.md describes, held to the code: data flows one way
//! through the pipeline's modules, each knows only the next stage it hands to (and the few
//! earlier ones it reads, listed here with why), and no two modules of the crate import each
//! other, directly or around a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The pipeline's modules, in flow order.
const STAGES: &[&str] = &[
    "ingest", "log", "dispatch", "project", "tracker", "writer", "recovery",
];

/// Every import allowed between two pipeline modules.
const ALLOWED: &[(&str, &str, &str)] = &[
    ("ingest", "log", "appends batches to the event log"),
    (
        "dispatch",
        "log",
        "takes committed batches of logged events",
    ),
    (
        "dispatch",
        "project",
        "hands each committed batch to the projector",
    ),
    (
        "dispatch",
        "tracker",
        "hands each committed batch to the tracker",
    ),
    ("project", "log", "projects logged events"),
    (
        "tracker",
        "log",
        "reads the log to rebuild a call seen before, and records quarantines",
    ),
    ("tracker", "writer", "hands records to the writer"),
    (
        "writer",
        "project",
        "reads how far the projections are written before closing calls",
    ),
    ("recovery", "log", "reads the open calls' events at start"),
    ("recovery", "project", "re-projects the open calls"),
    ("recovery", "tracker", "hands the open calls to the tracker"),
];

/// The crate's modules each module of `src/` names (`crate::x`), comments aside.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let names = graph.entry(module.clone()).or_default();
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            for used in crate_paths(line) {
                if used != module {
                    names.insert(used);
                }
            }
        }
    }
    graph
}

/// The first segment of every `crate::` path on a line, `use crate::{a, b::c}` included.
fn crate_paths(line: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        let rest = &line[i + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = group.split('}').next().unwrap_or("");
                found.extend(group.split(',').map(|s| ident(s.trim())));
            }
            None => found.push(ident(rest)),
        }
    }
    found.retain(|s| !s.is_empty() && s != "self");
    found
}

#[test]
fn pipeline_modules_import_only_what_the_flow_allows() {
    let graph = imports();
    for stage in STAGES {
        assert!(graph.contains_key(*stage), "no module {stage} in src/");
    }
    let mut problems = Vec::new();
    for (from, names) in &graph {
        if !STAGES.contains(&from.as_str()) {
            continue;
        }
        for to in names.iter().filter(|n| STAGES.contains(&n.as_str())) {
            if !ALLOWED.iter().any(|(a, b, _)| a == from && b == to) {
                problems.push(format!("{from} imports {to}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "imports against the flow:\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_module_of_the_crate_imports_itself_around_a_cycle() {
    let graph = imports();
    // Kahn's algorithm: whatever cannot be ordered is on a cycle.
    let mut pending: BTreeMap<&str, usize> = graph
        .iter()
        .map(|(m, names)| {
            let known = names.iter().filter(|n| graph.contains_key(*n)).count();
            (m.as_str(), known)
        })
        .collect();
    let mut ready: Vec<&str> = pending
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(m, _)| *m)
        .collect();
    while let Some(done) = ready.pop() {
        pending.remove(done);
        for (module, names) in &graph {
            if names.contains(done)
                && let Some(n) = pending.get_mut(module.as_str())
            {
                *n -= 1;
                if *n == 0 {
                    ready.push(module.as_str());
                }
            }
        }
    }
    assert!(
        pending.is_empty(),
        "modules on an import cycle: {:?}",
        pending.keys().collect::<Vec<_>>()
    );
}

#[test]
fn the_scan_reads_grouped_and_nested_paths() {
    assert_eq!(
        crate_paths("use crate::{db, log::EventLog, self};"),
        vec!["db", "log"]
    );
    assert_eq!(
        crate_paths("let x = crate::retry::Retry::new(a, crate::config::X);"),
        vec!["retry", "config"]
    );
}
