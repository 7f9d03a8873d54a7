//! Helpers of the job queue tests: backends on a test's own Redis DB and Postgres database,
//! the real `xenios-worker` binary as a child process (killed on drop), and the Python venv.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use xenios_core::redis::redis;
use xenios_core::{AiBackend, Config};

use crate::{TestDb, TestRedis, test_vars, workspace_root};

/// The configuration variables of a test backend, with extra settings.
pub fn vars_for(db: &TestDb, redis: &TestRedis, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut vars = test_vars(db, &redis.url);
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    vars
}

/// A backend on the test's database and Redis DB.
pub async fn backend_on(db: &TestDb, redis: &TestRedis, extra: &[(&str, &str)]) -> AiBackend {
    let config = Config::from_map(&vars_for(db, redis, extra)).expect("test config");
    AiBackend::builder(config).build().await.expect("backend")
}

/// Entries in a list, hash or sorted set (0 when missing).
pub async fn count(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> usize {
    let kind: String = redis::cmd("TYPE").arg(key).query_async(conn).await.unwrap();
    let cmd = match kind.as_str() {
        "list" => "LLEN",
        "hash" => "HLEN",
        "zset" => "ZCARD",
        "set" => "SCARD",
        "none" => return 0,
        other => panic!("{key} is a {other}"),
    };
    redis::cmd(cmd).arg(key).query_async(conn).await.unwrap()
}

/// Every entry of a list, head first (none when it is missing).
pub async fn list(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap()
}

/// Waits (up to `within`) until a worker has taken everything from `queue` and holds
/// `held` messages unacked.
pub async fn wait_taken(
    conn: &redis::aio::MultiplexedConnection,
    queue: &str,
    held: usize,
    what: &str,
    within: Duration,
) {
    crate::wait_for(what, within, || {
        let mut conn = conn.clone();
        async move {
            (count(&mut conn, "unacked").await == held && count(&mut conn, queue).await == 0)
                .then_some(())
        }
    })
    .await;
}

/// The `xenios-worker` binary of this build (built first if needed).
pub fn worker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("xenios-worker", "xenios-worker"))
        .clone()
}

/// The `xenios-cli` binary of this build (built first if needed).
pub fn cli_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("xenios-cli", "xenios-cli"))
        .clone()
}

/// The `xenios-server` binary of this build (built first if needed).
pub fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("xenios-server", "xenios-server"))
        .clone()
}

/// The binary next to the test executable, as `scripts/test.sh` (nextest `--workspace
/// --all-targets`) builds it; rebuilt with `cargo build` only when missing or older than one
/// of its own sources (e.g. after `nextest run -p xenios-tests`). Its sources are read from
/// the dep-info file cargo writes beside it: a change elsewhere in the workspace (another
/// binary, an example) must not trigger a build, whose different feature set would
/// recompile the workspace in the middle of a test.
fn build_bin(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let path = profile_dir.join(bin);
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let newest_source = match std::fs::read_to_string(profile_dir.join(format!("{bin}.d"))) {
        Ok(dep_info) => newest_dependency(&dep_info),
        Err(_) => [
            "xenios-core",
            "xenios-server",
            "xenios-worker",
            "xenios-cli",
        ]
        .iter()
        .filter_map(|c| newest_mtime(&workspace_root().join(c)))
        .max(),
    };
    let stale = match (built, newest_source) {
        (Some(b), Some(s)) => s > b,
        (Some(_), None) => false,
        (None, _) => true,
    };
    if stale {
        let release = profile_dir.ends_with("release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "-q", "-p", package, "--bin", bin]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo build");
        assert!(status.success(), "cannot build {bin}");
    }
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// The newest modification time of the files a dep-info file (`target: dep dep ...`) lists.
fn newest_dependency(dep_info: &str) -> Option<std::time::SystemTime> {
    let (_, deps) = dep_info.lines().next()?.split_once(": ")?;
    // Paths are separated by spaces; a space inside a path is escaped as `\ `.
    deps.replace("\\ ", "\u{0}")
        .split_whitespace()
        .map(|p| p.replace('\u{0}', " "))
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .max()
}

fn newest_mtime(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else if p.extension().is_some_and(|e| e == "rs" || e == "toml") {
            entry.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

/// The real worker binary as a child process; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct ChildWorker {
    child: Option<Child>,
}

impl ChildWorker {
    pub fn spawn(vars: &HashMap<String, String>, args: &[&str]) -> Self {
        Self::spawn_with_stderr(vars, args, Stdio::inherit())
    }

    /// As [`ChildWorker::spawn`], its log lines written to the file `log`.
    pub fn spawn_logging_to(
        vars: &HashMap<String, String>,
        args: &[&str],
        log: &std::path::Path,
    ) -> Self {
        let file = std::fs::File::create(log).expect("worker log file");
        Self::spawn_with_stderr(vars, args, Stdio::from(file))
    }

    fn spawn_with_stderr(vars: &HashMap<String, String>, args: &[&str], stderr: Stdio) -> Self {
        let child = Command::new(worker_bin())
            .args(args)
            .envs(vars)
            .env("LOG_FORMAT", "pretty")
            .env("LOG_LEVEL", "info")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn xenios-worker");
        Self { child: Some(child) }
    }

    /// Whether the process is still running (false once it has exited or was killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (warm shutdown).
    pub fn terminate(&self) {
        crate::process::sigterm(self.pid());
    }

    /// Waits for the exit, killing the process after `deadline`.
    pub fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("not running");
        let status = crate::process::exit_within(child, deadline);
        self.child = None;
        status.unwrap_or_else(|| panic!("xenios-worker did not exit within {deadline:?}"))
    }
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Python of the venv with Celery and Flower: `XENIOS_PYTHON`, else made by
/// `scripts/py-venv.sh` (never skipped).
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        if let Ok(p) = std::env::var("XENIOS_PYTHON")
            && !p.is_empty()
        {
            return PathBuf::from(p);
        }
        let out = Command::new(workspace_root().join("scripts/py-venv.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/py-venv.sh");
        assert!(out.status.success(), "scripts/py-venv.sh failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

/// The directory of the Python helpers (`tests/python`).
pub fn python_dir() -> PathBuf {
    workspace_root().join("tests/python")
}

/// Any child process (Python Celery worker, Flower), killed and reaped on drop.
#[derive(Debug)]
pub struct ChildProcess(pub Child);

impl ChildProcess {
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(
            cmd.stdin(Stdio::null())
                .spawn()
                .expect("spawn child process"),
        )
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A broadcast control request (`celery.pidbox`) as Celery 5.6 publishes it (see the captured
/// traffic in `tests/fixtures/celery/redis-traffic-decoded.txt`):
/// written here by hand, not by the worker's own encoder, so a test of the worker's control
/// handling does not depend on the code it checks.
pub fn control_request(method: &str, arguments: serde_json::Value) -> String {
    use base64::Engine as _;
    let body = serde_json::json!({
        "method": method, "arguments": arguments, "destination": null, "pattern": null,
        "matcher": null, "ticket": uuid::Uuid::new_v4().to_string(), "reply_to": null,
    });
    let expires = chrono::Utc::now().timestamp() as f64 + 10.0;
    serde_json::json!({
        "body": base64::engine::general_purpose::STANDARD.encode(body.to_string()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"clock": 1, "expires": expires},
        "properties": {
            "delivery_mode": 2,
            "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": uuid::Uuid::new_v4().to_string(),
        },
    })
    .to_string()
}
