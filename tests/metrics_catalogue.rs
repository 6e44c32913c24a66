//! The metrics catalogue (`src/telemetry/metric.rs`) against what uses it: the README's
//! metrics table, every `counter!`/`gauge!`/`histogram!` call in `src/`, and the `/metrics`
//! text the recorder renders. Its own test binary, so the process-wide recorder sees only the
//! metrics this test touches.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cdr_service::telemetry::metric::{self, Kind, Metric};
use metrics::{Label, counter, gauge, histogram};

/// Source files whose metric calls still name their metric with a string literal. Their
/// names, kinds and labels are checked all the same; a file leaves this list once its calls
/// use the catalogue's consts (the test fails while a listed file has no literal left).
const LITERAL_NAMES_ALLOWED: &[&str] = &[];

/// The catalogue itself, which names every metric by its literal.
const CATALOGUE: &str = "src/telemetry/metric.rs";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn by_name() -> BTreeMap<&'static str, &'static Metric> {
    metric::ALL.iter().map(|m| (m.name, m)).collect()
}

/// The text between backticks in a table cell.
fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// One row of README's metrics table: the metrics it names, their type and label names.
#[derive(Debug)]
struct Row {
    names: Vec<String>,
    kind: String,
    labels: Vec<String>,
}

/// The rows of the table under README's "### Metrics" heading.
fn readme_rows() -> Vec<Row> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("\n### Metrics\n")
        .nth(1)
        .expect("README has a \"### Metrics\" section");
    let section = section.split("\n#").next().unwrap();
    let table: Vec<&str> = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert_eq!(
        table.first().map(|h| h.replace(' ', "")).as_deref(),
        Some("|metric|type|labels|meaning|"),
        "the metrics table's header"
    );
    table[2..]
        .iter()
        .map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
            assert_eq!(cells.len(), 4, "four cells in {line}");
            Row {
                names: backticked(cells[0]),
                kind: cells[1].trim().to_owned(),
                labels: backticked(cells[2]),
            }
        })
        .collect()
}

#[test]
fn the_readme_table_lists_every_metric_with_its_type_and_labels() {
    let catalogue = by_name();
    let mut listed = BTreeSet::new();
    for row in readme_rows() {
        assert!(!row.names.is_empty(), "a row without a metric: {row:?}");
        for name in &row.names {
            let m = catalogue
                .get(name.as_str())
                .unwrap_or_else(|| panic!("README lists {name}, which the catalogue does not"));
            assert!(listed.insert(name.clone()), "README lists {name} twice");
            assert_eq!(row.kind, m.kind.as_str(), "{name}'s type in README");
            assert_eq!(row.labels, m.labels, "{name}'s labels in README");
        }
    }
    let missing: Vec<_> = catalogue
        .keys()
        .filter(|name| !listed.contains(**name))
        .collect();
    assert!(
        missing.is_empty(),
        "missing from README's table: {missing:?}"
    );
}

#[test]
fn the_catalogue_is_consistent() {
    let mut names = BTreeSet::new();
    for m in metric::ALL {
        assert!(names.insert(m.name), "{} twice in ALL", m.name);
        assert!(m.name.starts_with("cdr_"), "{}", m.name);
        assert!(
            !m.description.trim().is_empty(),
            "{} has no description",
            m.name
        );
        assert_eq!(
            m.name.ends_with("_total"),
            m.kind == Kind::Counter,
            "{}: counters, and only counters, end in _total",
            m.name
        );
        assert_eq!(
            m.name.ends_with("_seconds"),
            m.unit == Some(metrics::Unit::Seconds),
            "{}: in seconds exactly when its name says so",
            m.name
        );
        if let Kind::Histogram { buckets } = m.kind {
            assert!(
                !buckets.is_empty() && buckets.windows(2).all(|w| w[0] < w[1]),
                "{}: buckets rise",
                m.name
            );
        }
    }
    // Every const is in ALL, and named after its metric.
    let consts = catalogue_consts();
    assert_eq!(consts.len(), metric::ALL.len(), "a const left out of ALL");
    for (ident, name) in &consts {
        assert!(
            names.contains(name.as_str()),
            "{ident} ({name}) is not in ALL"
        );
        let bare = name.trim_start_matches("cdr_");
        let bare = bare.strip_suffix("_total").unwrap_or(bare);
        let bare = bare.strip_suffix("_seconds").unwrap_or(bare);
        assert_eq!(*ident, bare.to_uppercase(), "the const for {name}");
    }
}

/// The catalogue's consts, from its source: identifier -> metric name.
fn catalogue_consts() -> BTreeMap<String, String> {
    let source = std::fs::read_to_string(root().join(CATALOGUE)).unwrap();
    source
        .split("\npub const ")
        .skip(1)
        .filter_map(|item| {
            let (ident, rest) = item.split_once(": Metric =")?;
            let name = rest.split('"').nth(1)?;
            Some((ident.to_owned(), name.to_owned()))
        })
        .collect()
}

/// One `counter!`, `gauge!` or `histogram!` call in the source.
#[derive(Debug)]
struct Call {
    place: String,
    kind: &'static str,
    /// The first argument, as written.
    name: String,
    /// The label keys: `"status" => ...` gives `status`; a key that is not a literal stays as
    /// written.
    labels: Vec<String>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level arguments of the call whose `(` ends `text`'s first character: split on
/// commas outside brackets and string literals, up to the closing `)`.
fn arguments(text: &str) -> Vec<String> {
    let (mut args, mut current) = (Vec::new(), String::new());
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for c in text.chars().skip(1) {
        if in_string {
            (escaped, in_string) = (c == '\\' && !escaped, in_string && (c != '"' || escaped));
        } else {
            match c {
                '"' => in_string = true,
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth == 0 => break,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    args.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
        }
        current.push(c);
    }
    args.push(current);
    args.into_iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect()
}

/// Every metric macro call in one file.
fn calls_in(file: &str, source: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    for kind in ["counter", "gauge", "histogram"] {
        let needle = format!("{kind}!(");
        for (at, _) in source.match_indices(&needle) {
            let before = source[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // describe_counter! and the like
            }
            let args = arguments(&source[at + needle.len() - 1..]);
            let line = source[..at].matches('\n').count() + 1;
            calls.push(Call {
                place: format!("{file}:{line}"),
                kind,
                name: args.first().cloned().unwrap_or_default(),
                labels: args[1.min(args.len())..]
                    .iter()
                    .map(|a| {
                        let key = a.split("=>").next().unwrap().trim();
                        let literal = key.strip_prefix('"').and_then(|k| k.strip_suffix('"'));
                        literal.unwrap_or(key).to_owned()
                    })
                    .collect(),
            });
        }
    }
    calls
}

#[test]
fn every_metric_call_in_src_uses_the_catalogue() {
    let catalogue = by_name();
    let consts = catalogue_consts();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut literal_files = BTreeSet::new();
    let mut problems = Vec::new();
    let mut seen = 0;
    for path in files {
        let file = path
            .strip_prefix(root())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        if file == CATALOGUE {
            continue;
        }
        for call in calls_in(&file, &std::fs::read_to_string(&path).unwrap()) {
            seen += 1;
            let name = if let Some(literal) = call.name.strip_prefix('"') {
                literal_files.insert(file.clone());
                if !LITERAL_NAMES_ALLOWED.contains(&file.as_str()) {
                    problems.push(format!("{}: a literal name, {}", call.place, call.name));
                }
                literal.trim_end_matches('"').to_owned()
            } else {
                let path = call.name.strip_suffix(".name").unwrap_or("");
                let ident = path.rsplit("metric::").next().unwrap();
                match (path.contains("metric::"), consts.get(ident)) {
                    (true, Some(name)) => name.clone(),
                    _ => {
                        let msg = "not named by a `metric::CONST.name`";
                        problems.push(format!("{}: {msg}: {}", call.place, call.name));
                        continue;
                    }
                }
            };
            let Some(m) = catalogue.get(name.as_str()) else {
                problems.push(format!("{}: {name} is not in the catalogue", call.place));
                continue;
            };
            if call.kind != m.kind.as_str() {
                problems.push(format!("{}: {name} is a {}", call.place, m.kind.as_str()));
            }
            if call.labels != m.labels {
                let have = &call.labels;
                problems.push(format!("{}: {name} with labels {have:?}", call.place));
            }
        }
    }
    assert!(seen > 30, "the scan found only {seen} metric calls");
    for allowed in LITERAL_NAMES_ALLOWED {
        if !literal_files.contains(*allowed) {
            problems.push(format!(
                "{allowed}: no literal metric name left; take it off LITERAL_NAMES_ALLOWED"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_recorder_describes_every_metric_and_buckets_every_histogram() {
    let handle = cdr_service::telemetry::metrics();
    for m in metric::ALL {
        let labels: Vec<Label> = m.labels.iter().map(|l| Label::new(*l, "x")).collect();
        match m.kind {
            Kind::Counter => counter!(m.name, labels).increment(1),
            Kind::Gauge => gauge!(m.name, labels).set(1.0),
            Kind::Histogram { .. } => histogram!(m.name, labels).record(1.0),
        }
    }
    let text = handle.render();
    for m in metric::ALL {
        let help = format!("# HELP {} {}", m.name, m.description);
        assert!(
            text.lines().any(|l| l == help),
            "{help}\nmissing from:\n{text}"
        );
        let kind = format!("# TYPE {} {}", m.name, m.kind.as_str());
        assert!(text.lines().any(|l| l == kind), "{kind}");
        if let Kind::Histogram { buckets } = m.kind {
            let prefix = format!("{}_bucket{{", m.name);
            let bounds = text.lines().filter(|l| l.starts_with(&prefix)).count();
            assert_eq!(bounds, buckets.len() + 1, "{}'s buckets (and +Inf)", m.name);
        }
    }
}
