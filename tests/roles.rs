//! Least privilege, as a deployment runs it: `cdr-service migrate` (the binary, a child
//! process) applies the schema as the superuser; `deploy/roles.sql` (psql) creates the runtime
//! role; the service (the binary) runs as that role with `database.migrate = false` through a
//! storm with every fault share, each record then verified (`cdr-service storm --verify`, as
//! the same role). The role is no superuser, owns nothing and may change no part of the
//! schema. `cdr-service healthcheck` answers for the running service and `cdr-service migrate`
//! gives up on a database that stays away.

use cdr_testkit as common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::service::{Service, free_port};
use common::*;
use sqlx::{Connection, PgConnection, PgPool};

const CALLS: usize = 800;

fn binary() -> Command {
    Command::new(service_binary!())
}

fn roles_sql() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/roles.sql")
}

/// Runs `command` off the async runtime; prints what it wrote.
async fn output(mut command: Command, what: &'static str) -> Output {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the child's task")
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    eprintln!(
        "--- {what}: {} ---\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `cdr-service migrate` with exactly `database_url` (nothing else of the tests' environment).
async fn migrate(database_url: &str, args: &[&str]) -> Output {
    let mut command = binary();
    command
        .env_clear()
        .env("POSTGRES_URL", database_url)
        .arg("migrate")
        .args(args);
    output(command, "cdr-service migrate").await
}

/// `deploy/roles.sql` run by psql on `database_url` for `role`, with `args` and `env` added.
async fn create_role(database_url: &str, role: &str, args: &[&str], env: &[(&str, &str)]) {
    let mut command = Command::new("psql");
    command
        .arg("--no-psqlrc")
        .args(["-d", database_url])
        .args(["-v", &format!("runtime_role={role}")])
        .args(args)
        .args(["-f", roles_sql().to_str().unwrap()])
        .env_remove("CDR_RUNTIME_PASSWORD")
        .envs(env.iter().copied());
    let out = output(command, "psql -f deploy/roles.sql").await;
    assert!(out.status.success(), "deploy/roles.sql failed");
}

/// The runtime role of one test (role names are the cluster's, not the database's): dropped
/// with what it was granted, also when the test fails.
struct Role {
    name: String,
    password: String,
    /// The test database, as its administrator.
    admin_url: String,
}

impl Role {
    fn new(env: &TestEnv) -> Role {
        Role {
            name: format!("cdr_runtime_{}", env.id),
            password: uuid::Uuid::new_v4().simple().to_string(),
            admin_url: env.db_url.clone(),
        }
    }

    /// The test database's URL with this role and its password.
    fn url(&self) -> String {
        let mut url = url::Url::parse(&self.admin_url).expect("the test database's URL");
        url.set_username(&self.name).unwrap();
        url.set_password(Some(&self.password)).unwrap();
        url.to_string()
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["--no-psqlrc", "-q", "-d", &self.admin_url])
            .args(["-c", &format!("DROP OWNED BY {}", self.name)])
            .args(["-c", &format!("DROP ROLE IF EXISTS {}", self.name)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The role's attributes: (superuser, create databases, create roles, replication, bypass row
/// security, log in).
async fn attributes(admin: &PgPool, role: &str) -> (bool, bool, bool, bool, bool, bool) {
    sqlx::query_as(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin \
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .fetch_one(admin)
    .await
    .expect("the role exists")
}

async fn password_verifier(admin: &PgPool, role: &str) -> String {
    sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(role)
        .fetch_one(admin)
        .await
        .expect("the role's password")
}

/// Every statement that changes the schema fails for `role_url` with "insufficient privilege".
async fn assert_no_ddl(role_url: &str) {
    let mut conn = PgConnection::connect(role_url)
        .await
        .expect("the runtime role logs in");
    let superuser: String = sqlx::query_scalar("SELECT current_setting('is_superuser')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(superuser, "off");
    for statement in [
        "CREATE TABLE roles_probe (a int)",
        "CREATE VIEW roles_probe AS SELECT 1 AS a",
        "CREATE FUNCTION roles_probe() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE INDEX roles_probe ON calls (status)",
        "ALTER TABLE calls ADD COLUMN roles_probe int",
        "ALTER TABLE call_events DROP COLUMN payload",
        "DROP TABLE usage_records",
        "TRUNCATE call_events",
        "DELETE FROM calls",
        "DELETE FROM call_events",
        "UPDATE call_events SET payload = '{}'",
        "INSERT INTO cost_models (id, resource_type, cost_per_unit, currency, start_date) \
         VALUES ('x', 'telephony_minute', 1, 'USD', '2025-01-01')",
        "DELETE FROM _sqlx_migrations",
        "CREATE SCHEMA roles_probe",
        "CREATE ROLE roles_probe",
        "CREATE DATABASE roles_probe",
    ] {
        let refused = sqlx::query(statement)
            .execute(&mut conn)
            .await
            .expect_err(statement);
        let code = match &refused {
            sqlx::Error::Database(e) => e.code().map(|c| c.into_owned()),
            _ => None,
        };
        assert_eq!(
            code.as_deref(),
            Some("42501"),
            "`{statement}` must fail for want of privilege: {refused}"
        );
    }
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_a_storm_as_a_role_that_may_only_read_and_write_rows() {
    let started = Instant::now();
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    let admin = env.pool().await;

    // The schema, as a deploy job applies it.
    let first = migrate(&env.db_url, &[]).await;
    assert!(first.status.success(), "cdr-service migrate failed");
    let printed = String::from_utf8_lossy(&first.stdout);
    assert!(printed.contains("applied 0001 schema"), "{printed}");
    let count = cdr_service::db::MIGRATOR.iter().count();
    assert!(
        printed.contains(&format!("{count} migrations, {count} of them applied now")),
        "{printed}"
    );
    let again = migrate(&env.db_url, &[]).await;
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains(", 0 of them applied now"),
        "a second run has nothing to do"
    );

    // Unit prices, as the platform keeps them (the records are priced from them).
    insert_storm_prices(&admin).await;

    // The runtime role: created with its password on the command line, then again (as a
    // deployment does on every upgrade) with it from the environment.
    let role = Role::new(&env);
    let password_variable = format!("runtime_password={}", role.password);
    create_role(&env.db_url, &role.name, &["-v", &password_variable], &[]).await;
    let first_verifier = password_verifier(&admin, &role.name).await;
    assert!(
        first_verifier.starts_with("SCRAM-SHA-256$"),
        "{first_verifier}"
    );
    create_role(
        &env.db_url,
        &role.name,
        &[],
        &[("CDR_RUNTIME_PASSWORD", role.password.as_str())],
    )
    .await;
    assert_ne!(
        password_verifier(&admin, &role.name).await,
        first_verifier,
        "the password was set again"
    );
    assert_eq!(
        attributes(&admin, &role.name).await,
        (false, false, false, false, false, true),
        "a login role without any other attribute"
    );
    let owned: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid) \
              + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid) \
              + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid) \
         FROM pg_roles r WHERE r.rolname = $1",
    )
    .bind(&role.name)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(owned, 0, "the runtime role owns nothing");
    assert_no_ddl(&role.url()).await;

    // Nor may it migrate: on a database without the schema, `migrate` as the runtime role fails
    // at once, with the database's reason.
    let bare = format!("{}_bare", env.db_name);
    let bare_url = create_database(&bare).await;
    let mut bare_as_role = url::Url::parse(&bare_url).unwrap();
    bare_as_role.set_username(&role.name).unwrap();
    bare_as_role.set_password(Some(&role.password)).unwrap();
    let refused = migrate(bare_as_role.as_str(), &["--wait", "1m"]).await;
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("permission denied"), "{said}");
    assert!(!said.contains(&role.password), "the password is not shown");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {bare} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .expect("drop the bare database");

    // The service, as the runtime role, migrating nothing.
    settings.database.url = (role.url()).into();
    let port = free_port();
    let mut vars = env.env_vars(&settings);
    vars.retain(|(k, _)| k != "CDR__HTTP__LISTEN");
    vars.push(("CDR__HTTP__LISTEN".into(), format!("127.0.0.1:{port}")));
    vars.push(("CDR__DATABASE__MIGRATE".into(), "false".into()));
    let service = Service::start_with_env(
        service_binary!(),
        vars,
        port,
        Stdio::null(),
        Stdio::inherit(),
    )
    .await;

    // The health check of the container, on the address the service listens on everywhere.
    for (args, path) in [
        (&["healthcheck"][..], "/health/live"),
        (&["healthcheck", "--ready"][..], "/health/ready"),
    ] {
        let mut command = binary();
        command
            .env_clear()
            .env("CDR__HTTP__LISTEN", format!("0.0.0.0:{port}"))
            .args(args);
        let out = output(command, "cdr-service healthcheck").await;
        let line = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{line}");
        assert_eq!(line.lines().count(), 1, "one line: {line}");
        assert!(
            line.starts_with(&format!("http://127.0.0.1:{port}{path}: 200 OK")),
            "{line}"
        );
    }
    let mut command = binary();
    command
        .env_clear()
        .env("CDR__HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .args(["healthcheck", "--ready", "--timeout", "1s"]);
    let out = output(command, "cdr-service healthcheck (nothing listening)").await;
    assert_eq!(out.status.code(), Some(1));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("no answer"), "{line}");

    // A storm with every fault share through the service, verified record by record, the
    // verifier reading as the runtime role too (as the compose file's storm does).
    let seed: u64 = std::env::var("STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20250924);
    let dir = tempfile::tempdir().expect("temp dir");
    let report_path = dir.path().join("storm.json");
    let mut args = storm_args_with_every_fault(CALLS, seed, &report_path);
    args.extend(["--base-time".to_owned(), "2025-09-23T23:58:00Z".to_owned()]);
    let mut command = binary();
    command.args(&args).envs(env.env_vars(&settings));
    let storm = output(command, "cdr-service storm --verify").await;
    assert!(storm.status.success(), "storm --verify failed");
    assert!(String::from_utf8_lossy(&storm.stdout).contains("verify: PASSED"));
    let report = storm_report_verified(&report_path, CALLS);
    let verify = &report["verify"];
    assert_eq!(
        verify["dead_lettered"], verify["poison_expected"],
        "every poison message dead-lettered"
    );

    // What the role wrote besides the records: the log, the usage lines, the lease.
    let (logged, priced, leases): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM call_events), \
                (SELECT count(*) FROM usage_records WHERE calculated_cost IS NOT NULL), \
                (SELECT count(*) FROM cluster_lease)",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(logged > 0 && priced > 0, "{logged} events, {priced} lines");
    assert_eq!(leases, 1, "the service took the lease");

    let (code, _) = service.terminate();
    assert_eq!(code, Some(0), "a clean stop as the runtime role");
    admin.close().await;
    drop(role);
    env.cleanup(&settings).await;
    eprintln!("roles test done in {:?}", started.elapsed());
}

#[tokio::test]
async fn migrate_gives_up_on_a_database_that_stays_unreachable() {
    let nowhere = format!("postgres://postgres:secret@127.0.0.1:{}/cdr", free_port());
    let started = Instant::now();
    let out = migrate(&nowhere, &["--wait", "1s"]).await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("trying again"), "{said}");
    assert!(said.contains("not reachable within 1s"), "{said}");
    assert!(
        !said.contains("secret"),
        "the password is not shown: {said}"
    );
    assert!(took < Duration::from_secs(8), "gave up after {took:?}");
}
