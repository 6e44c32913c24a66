//! The deployment files in `deploy/` hold together: the compose stack names what exists (build
//! context, Dockerfile, mounted folders, dependencies, ports), the Grafana provisioning points at
//! what compose mounts, and the dashboard is well-formed. They are secure by default: no
//! password written in compose or Kubernetes files (every credential from `.env`, which git
//! ignores and `.env.example` documents, or from Secrets), ports published on 127.0.0.1 only,
//! the schema migrated by its owner before the service runs as the runtime role, the service's
//! containers read-only, without capabilities or privilege escalation, and an image without
//! curl whose health check is the binary. No container engine is needed: the files are parsed
//! and checked against the repository. Whether each dashboard query has data is checked against
//! a real Prometheus in `tests/dashboard_promql.rs`; the roles and `migrate` run for real in
//! `tests/roles.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use yaml_serde::Value as Yaml;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Yaml {
    let mut v: Yaml = yaml_serde::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    v.apply_merge()
        .unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));
    v
}

fn compose() -> Yaml {
    yaml(&deploy().join("compose.yaml"))
}

fn services(compose: &Yaml) -> BTreeMap<String, Yaml> {
    compose
        .get("services")
        .and_then(Yaml::as_mapping)
        .expect("compose.yaml has a `services` mapping")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().expect("service names are strings").to_owned(),
                v.clone(),
            )
        })
        .collect()
}

fn service<'a>(services: &'a BTreeMap<String, Yaml>, name: &str) -> &'a Yaml {
    services
        .get(name)
        .unwrap_or_else(|| panic!("compose.yaml has no service `{name}`"))
}

fn str_at<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key)?;
    }
    cur.as_str()
}

fn strings(v: Option<&Yaml>) -> Vec<String> {
    v.and_then(Yaml::as_sequence)
        .map(|s| {
            s.iter()
                .map(|x| match x {
                    Yaml::String(s) => s.clone(),
                    Yaml::Number(n) => n.to_string(),
                    other => panic!("expected a string, got {other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `environment` as a map, whether written as a mapping or as a list of `KEY=VALUE`.
fn environment(svc: &Yaml) -> BTreeMap<String, String> {
    match svc.get("environment") {
        None => BTreeMap::new(),
        Some(Yaml::Mapping(m)) => m
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Bool(b) => b.to_string(),
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Null => String::new(),
                    other => panic!("environment value {other:?}"),
                };
                (k.as_str().unwrap().to_owned(), value)
            })
            .collect(),
        Some(list @ Yaml::Sequence(_)) => strings(Some(list))
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv, String::new()),
            })
            .collect(),
        Some(other) => panic!("environment must be a mapping or a list, got {other:?}"),
    }
}

/// `depends_on` targets and their conditions (`service_started` for the list form).
fn depends_on(svc: &Yaml) -> BTreeMap<String, String> {
    match svc.get("depends_on") {
        None => BTreeMap::new(),
        Some(list @ Yaml::Sequence(_)) => strings(Some(list))
            .into_iter()
            .map(|s| (s, "service_started".to_owned()))
            .collect(),
        Some(Yaml::Mapping(m)) => m
            .iter()
            .map(|(k, v)| {
                let cond = str_at(v, &["condition"]).unwrap_or("service_started");
                (k.as_str().unwrap().to_owned(), cond.to_owned())
            })
            .collect(),
        Some(other) => panic!("depends_on must be a list or a mapping, got {other:?}"),
    }
}

/// A volume entry as (source, target): short `SRC:DST[:MODE]` or long `{source, target}`.
fn volumes(svc: &Yaml) -> Vec<(String, String)> {
    let Some(list) = svc.get("volumes").and_then(Yaml::as_sequence) else {
        return Vec::new();
    };
    list.iter()
        .map(|v| match v {
            Yaml::String(s) => {
                let mut parts = s.splitn(3, ':');
                let src = parts.next().unwrap().to_owned();
                let dst = parts
                    .next()
                    .unwrap_or_else(|| panic!("volume `{s}` has no target"))
                    .to_owned();
                (src, dst)
            }
            Yaml::Mapping(_) => (
                str_at(v, &["source"]).unwrap_or_default().to_owned(),
                str_at(v, &["target"])
                    .expect("long volume syntax needs a target")
                    .to_owned(),
            ),
            other => panic!("volume entry {other:?}"),
        })
        .collect()
}

fn is_host_path(src: &str) -> bool {
    src.starts_with('.') || src.starts_with('/') || src.starts_with('~')
}

/// A published port: the host address it is bound to (none: every address), the host port and
/// the container port.
#[derive(Debug)]
struct Published {
    address: Option<String>,
    host: u16,
    container: u16,
}

/// Published ports of a service: short `[ADDRESS:]HOST:CONTAINER[/PROTOCOL]` or long syntax.
fn published(svc: &Yaml) -> Vec<Published> {
    let Some(list) = svc.get("ports").and_then(Yaml::as_sequence) else {
        return Vec::new();
    };
    list.iter()
        .map(|p| {
            let text = match p {
                Yaml::String(s) => s.clone(),
                Yaml::Number(n) => n.to_string(),
                Yaml::Mapping(_) => {
                    let target = p.get("target").and_then(Yaml::as_u64).expect("port target");
                    let published = match p.get("published") {
                        Some(Yaml::String(s)) => s.clone(),
                        Some(Yaml::Number(n)) => n.to_string(),
                        _ => target.to_string(),
                    };
                    match str_at(p, &["host_ip"]) {
                        Some(ip) => format!("{ip}:{published}:{target}"),
                        None => format!("{published}:{target}"),
                    }
                }
                other => panic!("port entry {other:?}"),
            };
            let text = text.split('/').next().unwrap();
            let parts: Vec<&str> = text.rsplitn(3, ':').collect();
            let container: u16 = parts[0].parse().unwrap_or_else(|_| panic!("port `{text}`"));
            let host: u16 = parts
                .get(1)
                .map(|h| h.parse().unwrap_or_else(|_| panic!("port `{text}`")))
                .unwrap_or(container);
            Published {
                address: parts.get(2).map(|a| a.to_string()),
                host,
                container,
            }
        })
        .collect()
}

/// Published (host, container) ports of a service.
fn ports(svc: &Yaml) -> Vec<(u16, u16)> {
    published(svc)
        .into_iter()
        .map(|p| (p.host, p.container))
        .collect()
}

fn resolve(base: &Path, relative: &str) -> PathBuf {
    let joined = base.join(relative);
    joined
        .canonicalize()
        .unwrap_or_else(|e| panic!("{} (from `{relative}`): {e}", joined.display()))
}

const SERVICES: [&str; 8] = [
    "postgres",
    "rabbitmq",
    "migrate",
    "roles",
    "cdr-service",
    "prometheus",
    "grafana",
    "storm",
];

#[test]
fn compose_has_every_service_and_each_has_an_image() {
    let services = services(&compose());
    for name in SERVICES {
        let svc = service(&services, name);
        assert!(
            svc.get("image").is_some() || svc.get("build").is_some(),
            "service `{name}` has neither an image nor a build"
        );
    }
    let pg = str_at(service(&services, "postgres"), &["image"]).unwrap();
    assert!(pg.starts_with("postgres:16"), "postgres image `{pg}`");
    let mq = str_at(service(&services, "rabbitmq"), &["image"]).unwrap();
    assert!(
        mq.starts_with("rabbitmq:3") && mq.contains("management"),
        "rabbitmq image `{mq}` must be a 3.x management image"
    );
}

#[test]
fn postgres_and_rabbitmq_have_healthchecks_and_the_service_waits_for_them() {
    let services = services(&compose());
    for name in ["postgres", "rabbitmq", "cdr-service"] {
        let test = service(&services, name)
            .get("healthcheck")
            .and_then(|h| h.get("test"))
            .unwrap_or_else(|| panic!("`{name}` has no healthcheck test"));
        assert!(
            !strings(Some(test)).is_empty() || test.as_str().is_some_and(|s| !s.is_empty()),
            "`{name}` healthcheck test is empty"
        );
    }
    let deps = depends_on(service(&services, "cdr-service"));
    for dep in ["postgres", "rabbitmq"] {
        assert_eq!(
            deps.get(dep).map(String::as_str),
            Some("service_healthy"),
            "cdr-service must wait for {dep} to be healthy: {deps:?}"
        );
    }
    // The schema and the runtime role exist before the service starts.
    for dep in ["migrate", "roles"] {
        assert_eq!(
            deps.get(dep).map(String::as_str),
            Some("service_completed_successfully"),
            "cdr-service must wait for {dep} to have succeeded: {deps:?}"
        );
    }
    assert_eq!(
        depends_on(service(&services, "migrate"))
            .get("postgres")
            .map(String::as_str),
        Some("service_healthy")
    );
    assert_eq!(
        depends_on(service(&services, "roles"))
            .get("migrate")
            .map(String::as_str),
        Some("service_completed_successfully"),
        "the grants are given once the tables exist"
    );
}

#[test]
fn cdr_service_build_context_and_dockerfile_exist() {
    let services = services(&compose());
    let svc = service(&services, "cdr-service");
    let build = svc.get("build").expect("cdr-service has a build section");
    let context = str_at(build, &["context"]).expect("build.context");
    let context_dir = resolve(&deploy(), context);
    assert!(context_dir.is_dir(), "{}", context_dir.display());
    assert_eq!(
        context_dir,
        repo().canonicalize().unwrap(),
        "the build context is the repository root"
    );
    let dockerfile = str_at(build, &["dockerfile"]).unwrap_or("Dockerfile");
    let dockerfile_path = context_dir.join(dockerfile);
    assert!(
        dockerfile_path.is_file(),
        "Dockerfile {} does not exist",
        dockerfile_path.display()
    );
    // The build arguments compose passes are ones the Dockerfile declares.
    let args = build
        .get("args")
        .and_then(Yaml::as_mapping)
        .expect("build.args");
    let docker_text = read(&dockerfile_path);
    for arg in ["VERSION", "CDR_GIT_COMMIT"] {
        assert!(args.contains_key(arg), "build arg {arg} missing: {args:?}");
        assert!(
            docker_text.contains(&format!("ARG {arg}")),
            "the Dockerfile declares no ARG {arg}"
        );
    }
    let env = environment(svc);
    assert!(env.contains_key("POSTGRES_URL"), "{env:?}");
    assert!(env.contains_key("RABBITMQ_URL"), "{env:?}");
    assert_eq!(env.get("ENV").map(String::as_str), Some("production"));
    assert!(
        env["POSTGRES_URL"].contains("@postgres:5432/"),
        "POSTGRES_URL must point at the postgres service: {}",
        env["POSTGRES_URL"]
    );
    assert!(
        env["RABBITMQ_URL"].contains("@rabbitmq:5672"),
        "RABBITMQ_URL must point at the rabbitmq service: {}",
        env["RABBITMQ_URL"]
    );
    // The runtime role, which may not change the schema: the service does not try.
    assert_eq!(
        env.get("CDR__DATABASE__MIGRATE").map(String::as_str),
        Some("false")
    );
    assert_eq!(url_user(&env["POSTGRES_URL"]), RUNTIME_ROLE);
}

#[test]
fn every_mounted_host_path_exists_and_named_volumes_are_declared() {
    let compose = compose();
    let declared: BTreeSet<String> = compose
        .get("volumes")
        .and_then(Yaml::as_mapping)
        .map(|m| m.keys().map(|k| k.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    let mut host_paths = 0;
    for (name, svc) in services(&compose) {
        for (src, dst) in volumes(&svc) {
            assert!(dst.starts_with('/'), "{name}: volume target `{dst}`");
            if is_host_path(&src) {
                let path = deploy().join(&src);
                assert!(
                    path.exists(),
                    "{name}: mounted host path `{src}` ({}) does not exist",
                    path.display()
                );
                host_paths += 1;
            } else if !src.is_empty() {
                assert!(
                    declared.contains(&src),
                    "{name}: named volume `{src}` is not declared under top-level volumes"
                );
            }
        }
    }
    assert!(host_paths >= 3, "prometheus and grafana mount their files");
}

#[test]
fn depends_on_targets_exist() {
    let services = services(&compose());
    for (name, svc) in &services {
        for (dep, condition) in depends_on(svc) {
            assert!(
                services.contains_key(&dep),
                "`{name}` depends on `{dep}`, which is not a service"
            );
            assert!(
                [
                    "service_started",
                    "service_healthy",
                    "service_completed_successfully"
                ]
                .contains(&condition.as_str()),
                "`{name}` -> `{dep}`: unknown condition `{condition}`"
            );
            if condition == "service_healthy" {
                assert!(
                    services[&dep].get("healthcheck").is_some(),
                    "`{name}` waits for `{dep}` to be healthy, but `{dep}` has no healthcheck"
                );
            }
        }
    }
}

#[test]
fn storm_runs_the_service_image_only_in_the_storm_profile() {
    let services = services(&compose());
    let storm = service(&services, "storm");
    assert_eq!(strings(storm.get("profiles")), vec!["storm".to_owned()]);
    assert_eq!(
        strings(storm.get("command")),
        [
            "storm",
            "--calls",
            "10000",
            "--rate",
            "200",
            "--base-time",
            "now",
            "--verify"
        ]
    );
    let image = str_at(service(&services, "cdr-service"), &["image"]);
    assert!(image.is_some(), "cdr-service names the image it builds");
    assert_eq!(
        str_at(storm, &["image"]),
        image,
        "storm runs the image cdr-service builds"
    );
    let env = environment(storm);
    assert!(env.contains_key("POSTGRES_URL") && env.contains_key("RABBITMQ_URL"));
    assert!(depends_on(storm).contains_key("cdr-service"));
    // Everything else starts with a plain `up`.
    for (name, svc) in &services {
        if name != "storm" {
            assert!(
                svc.get("profiles").is_none(),
                "`{name}` must not be behind a profile"
            );
        }
    }
}

#[test]
fn ports_are_published_on_the_loopback_address_only() {
    let services = services(&compose());
    let all: BTreeSet<u16> = services.values().flat_map(ports).map(|(h, _)| h).collect();
    for port in [12052, 3000, 9090, 15672, 5672] {
        assert!(all.contains(&port), "port {port} is not published: {all:?}");
    }
    for (name, svc) in &services {
        for p in published(svc) {
            assert_eq!(
                p.address.as_deref(),
                Some("127.0.0.1"),
                "`{name}` publishes {}:{} beyond 127.0.0.1",
                p.host,
                p.container
            );
        }
    }
    assert!(
        ports(service(&services, "postgres")).is_empty(),
        "the database is reached through the compose network only"
    );
    assert!(ports(service(&services, "cdr-service")).contains(&(12052, 12052)));
    assert!(ports(service(&services, "grafana")).contains(&(3000, 3000)));
    assert!(ports(service(&services, "prometheus")).contains(&(9090, 9090)));
    assert!(ports(service(&services, "rabbitmq")).contains(&(15672, 15672)));
}

/// The container path a service mounts `host` (relative to deploy/) at.
fn mount_target(svc: &Yaml, host: &str) -> String {
    let want = deploy().join(host).canonicalize().unwrap();
    volumes(svc)
        .into_iter()
        .find(|(src, _)| {
            is_host_path(src) && deploy().join(src).canonicalize().ok().as_ref() == Some(&want)
        })
        .map(|(_, dst)| dst)
        .unwrap_or_else(|| panic!("deploy/{host} is not mounted"))
}

#[test]
fn prometheus_scrapes_the_service_every_5s() {
    let services = services(&compose());
    let prom = service(&services, "prometheus");
    let dir = mount_target(prom, "prometheus");
    assert_eq!(dir, "/etc/prometheus");
    let config = yaml(&deploy().join("prometheus/prometheus.yml"));
    let jobs = config
        .get("scrape_configs")
        .and_then(Yaml::as_sequence)
        .expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| str_at(j, &["job_name"]) == Some("cdr-service"))
        .expect("a cdr-service scrape job");
    let interval = str_at(job, &["scrape_interval"])
        .or_else(|| str_at(&config, &["global", "scrape_interval"]))
        .expect("a scrape interval");
    assert_eq!(interval, "5s");
    let targets: Vec<String> = job
        .get("static_configs")
        .and_then(Yaml::as_sequence)
        .expect("static_configs")
        .iter()
        .flat_map(|sc| strings(sc.get("targets")))
        .collect();
    assert_eq!(targets, ["cdr-service:12052"]);
    let (host, port) = targets[0].split_once(':').unwrap();
    assert!(services.contains_key(host), "target host is a service");
    assert!(
        ports(service(&services, host))
            .iter()
            .any(|(_, c)| c.to_string() == port),
        "the service listens on {port}"
    );
    // The command, if set, reads the mounted file.
    let cmd = strings(prom.get("command")).join(" ");
    assert!(
        cmd.is_empty() || cmd.contains("--config.file=/etc/prometheus/prometheus.yml"),
        "{cmd}"
    );
}

#[test]
fn grafana_provisioning_points_at_what_compose_mounts() {
    let services = services(&compose());
    let grafana = service(&services, "grafana");
    let env = environment(grafana);
    // No anonymous admin: anonymous access off, or a Viewer at most; the admin's password from
    // .env.
    if env.get("GF_AUTH_ANONYMOUS_ENABLED").map(String::as_str) == Some("true") {
        assert_eq!(
            env.get("GF_AUTH_ANONYMOUS_ORG_ROLE").map(String::as_str),
            Some("Viewer"),
            "anonymous users may view at most"
        );
    }
    assert!(
        required_reference(&env["GF_SECURITY_ADMIN_PASSWORD"]).is_some(),
        "the admin's password comes from .env: {:?}",
        env["GF_SECURITY_ADMIN_PASSWORD"]
    );
    assert_eq!(
        mount_target(grafana, "grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    let dashboards_dir = mount_target(grafana, "grafana/dashboards");

    let providers = yaml(&deploy().join("grafana/provisioning/dashboards/dashboards.yaml"));
    assert_eq!(providers.get("apiVersion").and_then(Yaml::as_u64), Some(1));
    let list = providers
        .get("providers")
        .and_then(Yaml::as_sequence)
        .expect("providers");
    assert!(!list.is_empty());
    for p in list {
        assert_eq!(str_at(p, &["type"]), Some("file"));
        assert_eq!(
            str_at(p, &["options", "path"]),
            Some(dashboards_dir.as_str()),
            "the file provider reads the folder compose mounts"
        );
    }
    if let Some(home) = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        let file = home
            .strip_prefix(&format!("{dashboards_dir}/"))
            .expect("the home dashboard is in the mounted folder");
        assert!(deploy().join("grafana/dashboards").join(file).is_file());
    }

    let sources = yaml(&deploy().join("grafana/provisioning/datasources/prometheus.yaml"));
    assert_eq!(sources.get("apiVersion").and_then(Yaml::as_u64), Some(1));
    let list = sources
        .get("datasources")
        .and_then(Yaml::as_sequence)
        .expect("datasources");
    let prom = list
        .iter()
        .find(|d| str_at(d, &["uid"]) == Some("prometheus"))
        .expect("a datasource with uid `prometheus`");
    assert_eq!(str_at(prom, &["type"]), Some("prometheus"));
    assert_eq!(str_at(prom, &["url"]), Some("http://prometheus:9090"));
    assert!(services.contains_key("prometheus"));
    // $__rate_interval is computed from this: it must equal the scrape interval.
    assert_eq!(str_at(prom, &["jsonData", "timeInterval"]), Some("5s"));
}

fn dashboard() -> Json {
    let path = deploy().join("grafana/dashboards/cdr-service.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// Every panel, including those nested in rows.
fn all_panels(d: &Json) -> Vec<Json> {
    fn walk(panels: &[Json], out: &mut Vec<Json>) {
        for p in panels {
            out.push(p.clone());
            if let Some(nested) = p.get("panels").and_then(Json::as_array) {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        d.get("panels")
            .and_then(Json::as_array)
            .expect("dashboard has panels"),
        &mut out,
    );
    out
}

#[test]
fn dashboard_panels_have_a_datasource_queries_and_unique_ids() {
    let d = dashboard();
    let schema = d.get("schemaVersion").and_then(Json::as_u64).unwrap();
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(
        d.get("uid")
            .and_then(Json::as_str)
            .is_some_and(|u| !u.is_empty())
    );
    assert!(
        d.get("title")
            .and_then(Json::as_str)
            .is_some_and(|t| !t.is_empty())
    );
    let panels = all_panels(&d);
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = p.get("title").and_then(Json::as_str).unwrap_or("?");
        let id = p
            .get("id")
            .and_then(Json::as_u64)
            .unwrap_or_else(|| panic!("panel `{title}` has no numeric id"));
        assert!(ids.insert(id), "panel id {id} (`{title}`) is not unique");
        assert!(p.get("gridPos").is_some(), "panel `{title}` has no gridPos");
        if p.get("type").and_then(Json::as_str) == Some("row") {
            continue; // a row only groups panels; it has no query
        }
        assert_eq!(
            p.pointer("/datasource/uid").and_then(Json::as_str),
            Some("prometheus"),
            "panel `{title}` has no prometheus datasource"
        );
        let targets = p
            .get("targets")
            .and_then(Json::as_array)
            .unwrap_or_else(|| panic!("panel `{title}` has no targets"));
        assert!(!targets.is_empty(), "panel `{title}` has no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            let expr = t.get("expr").and_then(Json::as_str).unwrap_or("");
            assert!(!expr.trim().is_empty(), "panel `{title}` has an empty expr");
            if let Some(uid) = t.pointer("/datasource/uid") {
                assert_eq!(uid, "prometheus", "panel `{title}` target datasource");
            }
            let r = t.get("refId").and_then(Json::as_str).unwrap_or("");
            assert!(
                !r.is_empty() && refs.insert(r),
                "panel `{title}`: refId `{r}`"
            );
            // Ranges follow the scrape interval instead of being hard-coded.
            for (i, _) in expr.match_indices('[') {
                assert!(
                    expr[i..].starts_with("[$__rate_interval]"),
                    "panel `{title}`: use [$__rate_interval] in `{expr}`"
                );
            }
        }
    }
}

#[test]
fn dashboard_covers_the_operations_metrics() {
    let d = dashboard();
    let exprs: Vec<String> = all_panels(&d)
        .iter()
        .flat_map(|p| {
            p.get("targets")
                .and_then(Json::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|t| t.get("expr").and_then(Json::as_str).map(str::to_owned))
        .collect();
    let all = exprs.join("\n");
    for metric in [
        "cdr_active_calls",
        "cdr_calls_lingering",
        "cdr_events_received_total",
        "cdr_events_rejected_total",
        "cdr_platform_events_total",
        "sum by (format) (rate(cdr_events_received_total",
        "cdr_duplicates_dropped_total",
        "cdr_late_events_total",
        "cdr_records_written_total",
        "cdr_record_flush_latency_seconds_bucket",
        "cdr_log_batch_size",
        "cdr_log_write_duration_seconds_bucket",
        "cdr_messages_in_flight",
        "cdr_broker_up",
        "cdr_database_up",
        "cdr_actor_restarts_total",
        "cdr_actor_quarantines_total",
        "cdr_calls_recovered_total",
        "cdr_build_info",
        "cdr_cluster_role",
        "cdr_lease_taken_total",
        "cdr_lease_lost_total",
    ] {
        assert!(all.contains(metric), "no panel queries {metric}");
    }
    assert!(all.contains("histogram_quantile(0.5,") && all.contains("histogram_quantile(0.99,"));
    assert!(all.contains("$__rate_interval"));
}

/// The Kubernetes example runs two replicas, one active and one standby, rolled without ever
/// having fewer ready than asked, probed on the service's own endpoints, and holds no credential.
#[test]
fn the_kubernetes_example_runs_two_replicas_rolled_safely() {
    let text = read(&deploy().join("kubernetes/cdr-service.yaml"));
    let doc = yaml(&deploy().join("kubernetes/cdr-service.yaml"));
    assert_eq!(str_at(&doc, &["kind"]), Some("Deployment"));
    let spec = doc.get("spec").expect("spec");
    assert_eq!(spec.get("replicas").and_then(Yaml::as_u64), Some(2));
    let rolling = spec
        .get("strategy")
        .and_then(|s| s.get("rollingUpdate"))
        .expect("a rolling update");
    assert_eq!(
        rolling.get("maxUnavailable").and_then(Yaml::as_u64),
        Some(0)
    );
    let container = &spec["template"]["spec"]["containers"][0];
    assert_eq!(
        str_at(container, &["readinessProbe", "httpGet", "path"]),
        Some("/health/ready")
    );
    assert_eq!(
        str_at(container, &["livenessProbe", "httpGet", "path"]),
        Some("/health/live")
    );
    let grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a grace period");
    assert!(grace > 20, "longer than the service's shutdown.timeout");
    assert!(!text.contains("guest:guest"));
}

/// The role the compose stack's service runs as (created by deploy/roles.sql).
const RUNTIME_ROLE: &str = "cdr_runtime";

/// A `${NAME...}` reference of the compose file: its variable, and whether it is required
/// (`${NAME:?message}` or `${NAME?message}`: no default, and `up` stops when it is unset).
#[derive(Debug, Clone, PartialEq)]
struct Reference {
    name: String,
    required: bool,
}

/// Every `${...}` reference in `text`, in order.
fn references(text: &str) -> Vec<Reference> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let inner = &rest[start + 2..];
        let end = inner
            .find('}')
            .unwrap_or_else(|| panic!("an unterminated reference: `{}`", &rest[start..]));
        let body = &inner[..end];
        let name_len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(body.len());
        let (name, modifier) = body.split_at(name_len);
        assert!(
            !name.is_empty(),
            "a reference without a name: `${{{body}}}`"
        );
        found.push(Reference {
            name: name.to_owned(),
            required: modifier.starts_with(":?") || modifier.starts_with('?'),
        });
        rest = &inner[end + 1..];
    }
    found
}

/// The variable `value` takes, when it is one required reference and nothing else.
fn required_reference(value: &str) -> Option<String> {
    match references(value).as_slice() {
        [r] if r.required && value.starts_with("${") && value.ends_with('}') => {
            Some(r.name.clone())
        }
        _ => None,
    }
}

/// `text` with every `${...}` written `$NAME` and every `<...>` placeholder written `<>`, so
/// that neither holds a space or a colon.
fn simplified(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    loop {
        let next = [rest.find("${"), rest.find('<')]
            .into_iter()
            .flatten()
            .min();
        let Some(start) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..start]);
        if rest[start..].starts_with("${") {
            let end = start + rest[start..].find('}').expect("a terminated reference");
            out.push('$');
            out.push_str(&references(&rest[start..=end])[0].name);
            rest = &rest[end + 1..];
        } else {
            match rest[start..].find(['>', '\n']) {
                Some(n) if rest[start + n..].starts_with('>') => {
                    out.push_str("<>");
                    rest = &rest[start + n + 1..];
                }
                _ => {
                    out.push('<');
                    rest = &rest[start + 1..];
                }
            }
        }
    }
}

/// The user and the password of every `scheme://user:password@host` in `text` (`simplified`).
fn url_credentials(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (i, _) in text.match_indices("://") {
        let rest = &text[i + 3..];
        let end = rest
            .find(|c: char| c.is_whitespace() || "'\"/,[]".contains(c))
            .unwrap_or(rest.len());
        if let Some((userinfo, _)) = rest[..end].rsplit_once('@')
            && let Some((user, password)) = userinfo.split_once(':')
        {
            found.push((user.to_owned(), password.to_owned()));
        }
    }
    found
}

/// The user of a connection URL.
fn url_user(url: &str) -> String {
    let url = simplified(url);
    let authority = url.split_once("://").expect("a URL").1;
    let userinfo = authority.split_once('@').expect("a URL with a user").0;
    userinfo.split(':').next().unwrap().to_owned()
}

#[test]
fn the_reference_and_url_readers_read_what_compose_writes() {
    assert_eq!(
        references("a${X:?set it}b${Y:-1}${Z}"),
        [
            Reference {
                name: "X".into(),
                required: true
            },
            Reference {
                name: "Y".into(),
                required: false
            },
            Reference {
                name: "Z".into(),
                required: false
            },
        ]
    );
    assert_eq!(
        required_reference("${P:?set it in .env}").as_deref(),
        Some("P")
    );
    assert_eq!(required_reference("${P:-guest}"), None);
    assert_eq!(required_reference("x${P:?set}"), None);
    let text =
        simplified("amqp://${U:?set it}:${P:?set it}@h:5672/%2f and postgres://a:<the one>@h/db");
    assert_eq!(text, "amqp://$U:$P@h:5672/%2f and postgres://a:<>@h/db");
    assert_eq!(
        url_credentials(&text),
        [
            ("$U".to_owned(), "$P".to_owned()),
            ("a".to_owned(), "<>".to_owned())
        ]
    );
    assert!(url_credentials("http://127.0.0.1:12052/metrics postgres://u@h/db").is_empty());
    assert_eq!(
        url_user("postgres://cdr_runtime:${P:?x}@postgres:5432/cdr"),
        "cdr_runtime"
    );
}

/// Every password the compose file passes comes from `.env`, as a required variable: written
/// in a connection URL or in an environment variable, it is `${VAR:?...}`, never a value.
#[test]
fn no_password_is_written_in_the_compose_file() {
    let text = read(&deploy().join("compose.yaml"));
    assert!(!text.contains("guest:guest"));
    let required: BTreeSet<String> = references(&text)
        .into_iter()
        .filter(|r| r.required)
        .map(|r| r.name)
        .collect();
    for r in references(&text) {
        assert!(
            r.required || !r.name.contains("PASSWORD"),
            "${{{}}} must be required (`:?set it in .env`): no default password",
            r.name
        );
    }
    let credentials = url_credentials(&simplified(&text));
    assert!(
        credentials.len() >= 3,
        "the runtime role's, the owner's and the broker's URLs: {credentials:?}"
    );
    for (user, password) in &credentials {
        let variable = password.strip_prefix('$').unwrap_or_else(|| {
            panic!("a password written in compose.yaml, for {user}: {password:?}")
        });
        assert!(
            required.contains(variable)
                && references(&text)
                    .iter()
                    .all(|r| r.name != variable || r.required),
            "{user}'s password must be required (`${{{variable}:?set it in .env}}`)"
        );
    }
    let mut secrets = 0;
    for (name, svc) in services(&compose()) {
        for (key, value) in environment(&svc) {
            if key.contains("PASSWORD") || key.ends_with("_PASS") {
                secrets += 1;
                assert!(
                    required_reference(&value).is_some(),
                    "`{name}`: {key} must be `${{VAR:?set it in .env}}`, not {value:?}"
                );
            }
        }
    }
    assert!(secrets >= 5, "{secrets} password variables");
}

/// `KEY=value` lines of an env file, comments left out.
fn env_assignments(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not an assignment: `{l}`"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

#[test]
fn env_example_sets_every_variable_compose_uses_with_placeholders() {
    let example = env_assignments(&read(&deploy().join(".env.example")));
    let used: BTreeSet<String> = references(&read(&deploy().join("compose.yaml")))
        .into_iter()
        .map(|r| r.name)
        .collect();
    for name in &used {
        assert!(
            example.contains_key(name),
            "compose.yaml uses ${{{name}}}, which .env.example does not set"
        );
    }
    for (name, value) in &example {
        assert!(
            used.contains(name),
            ".env.example sets {name}, which compose.yaml does not use"
        );
        if name.contains("PASSWORD") {
            assert_eq!(
                value, "change-me",
                "{name} in .env.example is a placeholder"
            );
        }
    }
}

#[test]
fn the_env_file_is_ignored_by_git_and_its_example_is_not() {
    let text = read(&repo().join(".gitignore"));
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        patterns
            .iter()
            .any(|p| [".env", "/deploy/.env", "deploy/.env", "**/.env"].contains(p)),
        ".gitignore must list .env: {patterns:?}"
    );
    for p in &patterns {
        assert!(
            !matches!(
                *p,
                ".env*" | "*.example" | "*" | "deploy" | "deploy/" | "/deploy/" | "deploy/*"
            ),
            "`{p}` in .gitignore would ignore deploy/.env.example"
        );
    }
}

/// The containers of the service's image, and the one-shot psql step, run with a read-only
/// file system, no capability and no way to gain a privilege; the service's health check is
/// the binary.
#[test]
fn the_service_image_runs_read_only_without_capabilities_or_privilege_escalation() {
    let services = services(&compose());
    let image = str_at(service(&services, "cdr-service"), &["image"]).unwrap();
    let mut hardened: Vec<&str> = services
        .iter()
        .filter(|(_, svc)| str_at(svc, &["image"]) == Some(image))
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        ["cdr-service", "migrate", "storm"]
            .iter()
            .all(|n| hardened.contains(n)),
        "{hardened:?}"
    );
    hardened.push("roles");
    for name in hardened {
        let svc = service(&services, name);
        assert_eq!(
            svc.get("read_only").and_then(Yaml::as_bool),
            Some(true),
            "`{name}`: read_only"
        );
        assert!(
            strings(svc.get("cap_drop")).iter().any(|c| c == "ALL"),
            "`{name}`: cap_drop [ALL]"
        );
        assert!(
            strings(svc.get("security_opt"))
                .iter()
                .any(|o| o == "no-new-privileges:true" || o == "no-new-privileges"),
            "`{name}`: security_opt no-new-privileges"
        );
        assert!(svc.get("cap_add").is_none(), "`{name}`: cap_add");
        assert_ne!(
            svc.get("privileged").and_then(Yaml::as_bool),
            Some(true),
            "`{name}`: privileged"
        );
    }
    let test = strings(
        service(&services, "cdr-service")
            .get("healthcheck")
            .and_then(|h| h.get("test")),
    );
    assert_eq!(
        test,
        [
            "CMD",
            "/usr/local/bin/cdr-service",
            "healthcheck",
            "--ready"
        ]
    );
}

/// The owner of the database applies the migrations and gives the runtime role its grants;
/// the service then runs as that role, with the password roles.sql set.
#[test]
fn the_owner_migrates_and_grants_and_the_service_runs_as_the_runtime_role() {
    let services = services(&compose());
    let postgres = environment(service(&services, "postgres"));
    let owner = &postgres["POSTGRES_USER"];
    let owner_password =
        required_reference(&postgres["POSTGRES_PASSWORD"]).expect("the owner's password from .env");

    let migrate = service(&services, "migrate");
    assert_eq!(strings(migrate.get("command")), ["migrate"]);
    assert_eq!(
        str_at(migrate, &["image"]),
        str_at(service(&services, "cdr-service"), &["image"]),
        "migrate runs the service's own image"
    );
    assert_eq!(str_at(migrate, &["restart"]), Some("no"));
    let url = &environment(migrate)["POSTGRES_URL"];
    assert_eq!(&url_user(url), owner);
    assert_eq!(
        url_credentials(&simplified(url))[0].1,
        format!("${owner_password}")
    );

    let roles = service(&services, "roles");
    let script = mount_target(roles, "roles.sql");
    let args: Vec<String> = strings(roles.get("entrypoint"))
        .into_iter()
        .chain(strings(roles.get("command")))
        .collect();
    assert_eq!(args[0], "psql");
    for arg in [
        format!("--file={script}"),
        format!("--username={owner}"),
        format!("--set=runtime_role={RUNTIME_ROLE}"),
    ] {
        assert!(args.contains(&arg), "roles runs psql with {arg}: {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.contains("password")),
        "no password on psql's command line: {args:?}"
    );
    assert_eq!(str_at(roles, &["restart"]), Some("no"));
    let env = environment(roles);
    assert_eq!(required_reference(&env["PGPASSWORD"]), Some(owner_password));
    let runtime_password =
        required_reference(&env["CDR_RUNTIME_PASSWORD"]).expect("the runtime role's password");

    let url = &environment(service(&services, "cdr-service"))["POSTGRES_URL"];
    assert_eq!(
        url_credentials(&simplified(url)),
        [(RUNTIME_ROLE.to_owned(), format!("${runtime_password}"))],
        "the service logs in as the role roles.sql made, with the password it set"
    );
}

/// The Dockerfile's instructions, continuation lines joined and comments left out, as
/// (instruction, arguments).
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&repo().join("Dockerfile"));
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, args) = current.split_once(' ').unwrap_or((current.as_str(), ""));
                instructions.push((op.to_ascii_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// An exec-form argument list (`["a", "b"]`).
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not an exec form: `{args}`: {e}"))
}

#[test]
fn the_image_has_no_curl_or_shell_and_checks_its_health_with_the_binary() {
    let instructions = dockerfile();
    for (op, args) in &instructions {
        assert!(
            !args.contains("curl") && !args.contains("wget"),
            "{op} {args}"
        );
    }
    let from = instructions
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("a FROM");
    let runtime = &instructions[from..];
    let base = &runtime[0].1;
    assert!(
        base.starts_with("gcr.io/distroless/cc-debian12:nonroot"),
        "the runtime stage is distroless: {base}"
    );
    assert!(
        runtime.iter().all(|(op, _)| op != "RUN"),
        "the runtime stage runs nothing (it has no shell)"
    );
    let last = |name: &str| {
        runtime
            .iter()
            .rev()
            .find(|(op, _)| op == name)
            .map(|(_, args)| args.as_str())
            .unwrap_or_else(|| panic!("no {name} in the runtime stage"))
    };
    let user = last("USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER `{user}` is numeric"));
    assert_ne!(uid, 0, "not root");
    let binary = last("COPY").split_whitespace().last().unwrap().to_owned();
    assert_eq!(exec_form(last("ENTRYPOINT")), std::slice::from_ref(&binary));
    let check = last("HEALTHCHECK");
    let (_, command) = check.split_once("CMD ").expect("HEALTHCHECK ... CMD");
    assert_eq!(exec_form(command), [binary, "healthcheck".to_owned()]);
}

/// The Kubernetes example: every container least privileged, the schema migrated and the
/// grants given by init containers with the owner's Secret, the service as the runtime role,
/// and no credential in the file (comments included: their URLs have placeholders).
#[test]
fn the_kubernetes_example_runs_least_privileged_and_holds_no_credential() {
    let path = deploy().join("kubernetes/cdr-service.yaml");
    let text = read(&path);
    let doc = yaml(&path);
    let pod = &doc["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        str_at(pod, &["securityContext", "seccompProfile", "type"]),
        Some("RuntimeDefault")
    );
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    let init = pod["initContainers"]
        .as_sequence()
        .expect("init containers");
    let main = &pod["containers"][0];
    for c in init.iter().chain(pod["containers"].as_sequence().unwrap()) {
        let name = str_at(c, &["name"]).unwrap();
        let sc = &c["securityContext"];
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{name}"
        );
        assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{name}");
        assert_ne!(sc["privileged"].as_bool(), Some(true), "{name}");
        assert!(
            strings(sc.get("capabilities").and_then(|c| c.get("drop"))).contains(&"ALL".into()),
            "{name}: capabilities drop ALL"
        );
        for e in c["env"].as_sequence().into_iter().flatten() {
            let variable = str_at(e, &["name"]).unwrap();
            if let Some(value) = str_at(e, &["value"]) {
                assert!(
                    !variable.contains("PASSWORD") && !variable.contains("URL"),
                    "{name}: {variable} is written in the manifest, not taken from a Secret"
                );
                assert!(url_credentials(&simplified(value)).is_empty(), "{name}");
            }
        }
    }
    let init_container = |name: &str| {
        init.iter()
            .find(|c| str_at(c, &["name"]) == Some(name))
            .unwrap_or_else(|| panic!("no init container `{name}`"))
    };
    let secret_of = |c: &Yaml, variable: &str| {
        c["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|e| str_at(e, &["name"]) == Some(variable))
            .and_then(|e| str_at(e, &["valueFrom", "secretKeyRef", "name"]))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{variable} from a Secret"))
    };

    let migrate = init_container("migrate");
    assert_eq!(str_at(migrate, &["image"]), str_at(main, &["image"]));
    assert_eq!(
        strings(migrate.get("args")).first().map(String::as_str),
        Some("migrate")
    );
    let owner_secret = secret_of(migrate, "POSTGRES_URL");
    let runtime_secret = str_at(&main["envFrom"][0], &["secretRef", "name"])
        .expect("the service's URLs from a Secret");
    assert_ne!(
        owner_secret, runtime_secret,
        "the owner's credentials are not the service's"
    );
    let migrate_setting = main["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| str_at(e, &["name"]) == Some("CDR__DATABASE__MIGRATE"))
        .and_then(|e| str_at(e, &["value"]));
    assert_eq!(migrate_setting, Some("false"));

    let roles = init_container("roles");
    let args: Vec<String> = strings(roles.get("command"))
        .into_iter()
        .chain(strings(roles.get("args")))
        .collect();
    assert_eq!(args[0], "psql");
    let mount = str_at(&roles["volumeMounts"][0], &["mountPath"]).unwrap();
    assert!(
        args.contains(&format!("--file={mount}/roles.sql")),
        "{args:?}"
    );
    assert!(args.contains(&format!("--set=runtime_role={RUNTIME_ROLE}")));
    assert_eq!(secret_of(roles, "POSTGRES_URL"), owner_secret);
    assert_eq!(secret_of(roles, "CDR_RUNTIME_PASSWORD"), owner_secret);

    for (user, password) in url_credentials(&simplified(&text)) {
        assert_eq!(password, "<>", "a password written for {user}");
    }
}
