//! The service binary as a child process.
//!
//! Cargo tells only the root package's tests and benches where it built the binary
//! (`CARGO_BIN_EXE_cdr-service`, at compile time), so they pass its path in:
//! [`service_binary!`](crate::service_binary) expands to it where it is written.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdr_service::config::Settings;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::env::TestEnv;

/// The path of the `cdr-service` binary cargo built for the test or bench this is written in.
#[macro_export]
macro_rules! service_binary {
    () => {
        ::std::path::Path::new(env!("CARGO_BIN_EXE_cdr-service"))
    };
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Standard output and error for a child, both the writing end of a pipe nobody reads: every
/// write fails with a broken pipe, as when a container's log collector went away.
pub fn closed_pipe() -> (Stdio, Stdio) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let stderr = writer.try_clone().expect("pipe writer");
    (writer.into(), stderr.into())
}

/// Standard output or error for a child, read line by line as the child writes it, so that a
/// chatty child never blocks on a full pipe; [`Captured::lines`] has them all once it exited.
pub fn captured() -> (Stdio, Captured) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    let thread = std::thread::spawn(move || {
        BufReader::new(reader)
            .lines()
            .map_while(Result::ok)
            .collect()
    });
    (writer.into(), Captured(thread))
}

/// The lines a child writes to the pipe of [`captured`].
pub struct Captured(std::thread::JoinHandle<Vec<String>>);

impl Captured {
    /// Every line the child wrote; waits for it to close its end (to exit).
    pub fn lines(self) -> Vec<String> {
        self.0.join().expect("the pipe's reader")
    }
}

/// The real binary as a child process on a test's settings.
pub struct Service {
    pub child: Child,
    pub port: u16,
}

impl Service {
    /// Starts `binary` (see [`service_binary!`](crate::service_binary)) with `run` on the
    /// test's settings and a free port, and waits until it is ready.
    pub async fn start(binary: &Path, env: &TestEnv, settings: &Settings) -> Service {
        Self::start_logging_to(binary, env, settings, Stdio::null(), Stdio::inherit()).await
    }

    /// As `start`, with the child's standard output and error where the caller says.
    pub async fn start_logging_to(
        binary: &Path,
        env: &TestEnv,
        settings: &Settings,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Service {
        let port = free_port();
        let mut vars = env.env_vars(settings);
        vars.retain(|(k, _)| k != "CDR__HTTP__LISTEN");
        vars.push(("CDR__HTTP__LISTEN".into(), format!("127.0.0.1:{port}")));
        Self::run(Command::new(binary), vars, port, stdout, stderr).await
    }

    /// As `start`, under a limit on the child's address space of `bytes` (`prlimit --as`, the
    /// same process once it runs the binary). An allocation past the limit fails, and the
    /// service aborts. glibc's malloc (the service allocates with jemalloc, but glibc still
    /// serves its threads' own bookkeeping) is kept to two arenas: otherwise each thread's
    /// arena reserves 64 MB of address space that is never used (an idle service maps 380 MB
    /// instead of 180), and the limit would weigh reservations rather than allocations.
    pub async fn start_limited(
        binary: &Path,
        env: &TestEnv,
        settings: &Settings,
        bytes: u64,
    ) -> Service {
        let port = free_port();
        let mut vars = env.env_vars(settings);
        vars.retain(|(k, _)| k != "CDR__HTTP__LISTEN");
        vars.push(("CDR__HTTP__LISTEN".into(), format!("127.0.0.1:{port}")));
        vars.push(("MALLOC_ARENA_MAX".into(), "2".into()));
        let mut command = Command::new("prlimit");
        command.arg(format!("--as={bytes}")).arg("--").arg(binary);
        Self::run(command, vars, port, Stdio::null(), Stdio::inherit()).await
    }

    /// The most address space the child has had mapped (`VmPeak`), in bytes.
    pub fn peak_address_space(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the child's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmPeak:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmPeak")
            * 1024
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Starts `binary` with `run` and exactly the environment `vars` (nothing inherited from the
    /// tests' own, so that a platform name set where they run changes nothing), and waits until
    /// it is ready on `port` of 127.0.0.1: `vars` must make it listen there.
    pub async fn start_with_env(
        binary: &Path,
        vars: Vec<(String, String)>,
        port: u16,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Service {
        let mut command = Command::new(binary);
        command.env_clear();
        Self::run(command, vars, port, stdout, stderr).await
    }

    /// Runs `command` (the binary) with `run` and `vars`, and waits until it is ready on `port`.
    async fn run(
        mut command: Command,
        vars: Vec<(String, String)>,
        port: u16,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Service {
        let child = command
            .arg("run")
            .envs(vars)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start cdr-service");
        Service { child, port }.ready().await
    }

    /// Waits until `/health/ready` answers on the service's port.
    async fn ready(mut self) -> Service {
        let port = self.port;
        let url = format!("http://127.0.0.1:{port}/health/ready");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("the service exited before it was ready: {status}");
            }
            if matches!(reqwest::get(&url).await, Ok(r) if r.status().is_success()) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the service was not ready within 60s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self
    }

    /// SIGTERM, then wait for the exit; returns the exit code and how long it took.
    pub fn terminate(mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status.code(), started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("service did not exit within 60s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A test that fails leaves no service running (it would hold the test's output open).
impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Service {
    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill9(mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL).expect("SIGKILL");
        let _ = self.child.wait();
    }
}
