//! No secret in any output: the binary given broken connection strings (a mistyped scheme, a
//! bad port, an unencoded character, a password as a parameter) stops with exit code 1 and
//! says which key is wrong, and neither stderr nor stdout holds the password, for `run` and
//! for `migrate`. The string can also come from a file (`<NAME>_FILE`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "S3cretPW";

/// Runs the binary with `args` and exactly `vars`; its exit code and everything it printed.
fn run(args: &[&str], vars: &[(&str, String)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cdr-service"))
        .args(args)
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .env("CDR__HTTP__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cdr-service");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    let mut printed = String::from_utf8_lossy(&output.stderr).into_owned();
    printed.push_str(&String::from_utf8_lossy(&output.stdout));
    (output.status.code(), printed)
}

#[test]
fn broken_connection_strings_are_named_and_never_printed_with_their_password() {
    let ok_amqp = (
        "RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
    );
    let ok_db = (
        "POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
    );
    let broken: [(&str, String); 9] = [
        (
            "POSTGRES_URL",
            format!("postgress://cdr:{PASSWORD}@db:5432/cdr"),
        ),
        (
            "POSTGRES_URL",
            format!("postgres://cdr:{PASSWORD}@db:99999/cdr"),
        ),
        (
            "POSTGRES_URL",
            format!("postgres://cdr:{PASSWORD}@db:port/cdr"),
        ),
        (
            "POSTGRES_URL",
            "postgres://cdr:S3c/ret?PW#x@db:5432/cdr".to_owned(),
        ),
        (
            "POSTGRES_URL",
            format!("postgres://db/cdr?password={PASSWORD}&port=x"),
        ),
        ("DATABASE_URL", format!("mysql://cdr:{PASSWORD}@db/cdr")),
        ("RABBITMQ_URL", format!("ampq://cdr:{PASSWORD}@mq/%2f")),
        (
            "RABBITMQ_URL",
            format!("amqp://cdr:{PASSWORD}@mq:notaport/%2f"),
        ),
        (
            "RABBITMQ_URL",
            format!("amqp://cdr:{PASSWORD}@mq:5672/%2f?heartbeat=often"),
        ),
    ];
    for (name, url) in broken {
        let other = if name == "RABBITMQ_URL" {
            ok_db.clone()
        } else {
            ok_amqp.clone()
        };
        for command in [&["run"][..], &["migrate", "--wait", "1s"][..]] {
            let (code, printed) = run(command, &[(name, url.clone()), other.clone()]);
            assert_eq!(code, Some(1), "{command:?} {url}: {printed}");
            let key = if name == "RABBITMQ_URL" {
                "amqp.url"
            } else {
                "database.url"
            };
            assert!(printed.contains(key), "{command:?} {url}: {printed}");
            for secret in [PASSWORD, "S3c/ret", "ret?PW"] {
                assert!(!printed.contains(secret), "{command:?} {url}: {printed}");
            }
        }
    }
}

#[test]
fn a_connection_string_from_a_file_is_used_and_a_missing_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("postgres-url");
    std::fs::write(&file, format!("postgress://cdr:{PASSWORD}@db:5432/cdr\n")).unwrap();
    // Read from the file: its (broken) content is judged, and not printed with its password.
    let (code, printed) = run(
        &["run"],
        &[("POSTGRES_URL_FILE", file.display().to_string())],
    );
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains("database.url") && printed.contains("postgress://cdr:***@db"),
        "{printed}"
    );
    assert!(!printed.contains(PASSWORD), "{printed}");
    let (code, printed) = run(
        &["run"],
        &[("RABBITMQ_URL_FILE", "/run/secrets/nowhere".to_owned())],
    );
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains("RABBITMQ_URL_FILE") && printed.contains("/run/secrets/nowhere"),
        "{printed}"
    );
}
