//! Test harness: real Postgres, real Redis, the real server on port 0, and local fake
//! upstreams. Every test gets its own database and its own Redis logical database, both
//! removed when the test's handles drop (also when the test fails).
//!
//! - `TEST_PG_ADMIN_URL` (default `postgres://postgres:postgres@127.0.0.1:5432/postgres`): where test
//!   databases are created.
//! - `TEST_REDIS_URL` (default `redis://127.0.0.1:6379`): the Redis whose databases 1-15 are
//!   handed out, one per test, through lock keys in database 0.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xenios_core::redis::redis;
use xenios_core::{AiBackend, Config};

pub mod cli;
pub mod fake_openrouter;
pub mod faults;
pub mod jobs_support;
pub mod process;

pub const API_KEY: &str = "test-api-key-0123456789";

fn pg_admin_url() -> String {
    std::env::var("TEST_PG_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The address of the test Postgres (host and port of `TEST_PG_ADMIN_URL`), for proxies.
pub fn pg_addr() -> SocketAddr {
    let url = url::Url::parse(&pg_admin_url()).expect("TEST_PG_ADMIN_URL is a URL");
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = url.port().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .ok()
        .and_then(|mut a| a.next())
        .expect("TEST_PG_ADMIN_URL names a reachable host")
}

fn redis_base_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// For a test whose case this machine cannot run (no TLS on the test Postgres, no
/// pgvector): says so on stderr as `SKIP <test>: <reason>` (shown even on success, see
/// `.config/nextest.toml`) and returns true, so the test returns without claiming the case;
/// with `XENIOS_TEST_NO_SKIP=1` (a machine that must run every case) it fails instead.
pub fn skip(reason: &str) -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    if std::env::var("XENIOS_TEST_NO_SKIP").is_ok_and(|v| v == "1") {
        panic!("{test} cannot run here: {reason} (XENIOS_TEST_NO_SKIP=1)");
    }
    eprintln!("SKIP {test}: {reason}");
    true
}

/// A client that opens a connection of its own for each request, so that the kernel spreads
/// them over a server's serving threads (`SERVER_THREADS`, one socket each).
pub fn connection_per_request() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Polls `check` until it returns `Some`, or panics after `deadline` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs async cleanup from a `Drop`, on a thread of its own (drop may run inside a runtime).
fn block_on_thread<F: Future<Output = ()> + Send + 'static>(f: F) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(f);
        }
    })
    .join();
}

async fn pg_admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg_admin_url(), tokio_postgres::NoTls)
        .await
        .expect("cannot connect to the test Postgres (is it running? see scripts/services.sh)");
    tokio::spawn(conn);
    client
}

/// A database of its own for one test, dropped with the handle.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A database with every migration applied: a clone of the migrated template database
    /// (`CREATE DATABASE ... TEMPLATE`, as crates.io's test-db does), so no test pays for
    /// the migrations.
    pub async fn new() -> Self {
        let template = template_db().await;
        Self::create(Some(&template)).await
    }

    /// An empty database, for tests of the migrations themselves.
    pub async fn empty() -> Self {
        Self::create(None).await
    }

    async fn create(template: Option<&str>) -> Self {
        let admin = pg_admin().await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // Sweep databases left by killed test processes (older than an hour).
        let stale = admin
            .query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'xenios_test_%'",
                &[],
            )
            .await
            .unwrap();
        for row in stale {
            let name: String = row.get(0);
            let born = name
                .split('_')
                .nth(2)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(now);
            if now.saturating_sub(born) > 3600 {
                let _ = admin
                    .execute(
                        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                        &[],
                    )
                    .await;
            }
        }
        let name = format!("xenios_test_{now}_{}", uuid::Uuid::new_v4().simple());
        let sql = match template {
            Some(t) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{t}\""),
            None => format!("CREATE DATABASE \"{name}\""),
        };
        admin.execute(&sql, &[]).await.unwrap();
        let url = test_url(&name);
        Self { name, url }
    }

    /// A plain client on this database, for fixtures and assertions.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }
}

/// The URL of test database `name`: plain TCP and a recognisable application name.
fn test_url(name: &str) -> String {
    let mut url = url_with_path(&pg_admin_url(), name);
    if !url.contains("application_name") {
        url.push_str(if url.contains('?') { "&" } else { "?" });
        // Plain TCP: tests run in parallel on a loaded box and TLS handshakes only add
        // load; tests/tests/it/db.rs covers sslmode=require on its own.
        url.push_str("application_name=xenios-tests&sslmode=disable");
    }
    url
}

/// The migrations directory's contents as a hash: the template of one set of migrations is
/// never used for another (another branch, an edited migration).
fn migrations_digest() -> u64 {
    use std::hash::{Hash, Hasher};
    fn walk(dir: &std::path::Path, h: &mut std::hash::DefaultHasher) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            p.file_name().hash(h);
            if p.is_dir() {
                walk(&p, h);
            } else {
                std::fs::read(&p).unwrap().hash(h);
            }
        }
    }
    let mut h = std::hash::DefaultHasher::new();
    walk(&workspace_root().join("migrations"), &mut h);
    h.finish()
}

/// The repository root (the parent of this crate).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

async fn template_ready(admin: &tokio_postgres::Client, name: &str) -> bool {
    admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate AND NOT datallowconn",
            &[&name],
        )
        .await
        .unwrap()
        .is_some()
}

/// The name of the migrated template database, built on first use by whichever test process
/// gets there first (under an advisory lock; the others wait for it). A template is ready
/// once marked `IS_TEMPLATE` and closed to connections; one left half-built by a killed
/// process is dropped and built again.
async fn template_db() -> String {
    static NAME: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    NAME.get_or_init(|| async {
        let name = format!("xenios_tmpl_{:016x}", migrations_digest());
        let admin = pg_admin().await;
        if template_ready(&admin, &name).await {
            return name;
        }
        // Session-level lock on the admin connection, released when it closes.
        admin
            .execute("SELECT pg_advisory_lock(7243530011)", &[])
            .await
            .unwrap();
        if !template_ready(&admin, &name).await {
            admin
                .execute(
                    &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                    &[],
                )
                .await
                .unwrap();
            admin
                .execute(&format!("CREATE DATABASE \"{name}\""), &[])
                .await
                .unwrap();
            let mut vars = HashMap::new();
            vars.insert("ENVIRONMENT".to_owned(), "development".to_owned());
            vars.insert("DATABASE_URL".to_owned(), test_url(&name));
            // Migrating needs no Redis; nothing listens on port 1.
            vars.insert("REDIS_URL".to_owned(), "redis://127.0.0.1:1/0".to_owned());
            vars.insert("XENIOS_BACKEND_API_KEY".to_owned(), API_KEY.to_owned());
            let backend = AiBackend::builder(Config::from_map(&vars).expect("template config"))
                .build()
                .await
                .expect("template backend");
            backend
                .database()
                .migrate()
                .await
                .expect("migrating the template database");
            drop(backend);
            // Close it to connections (a template must have none while it is cloned), then
            // end those the dropped backend's pool may still hold.
            admin
                .execute(
                    &format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false"),
                    &[],
                )
                .await
                .unwrap();
            admin
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    &[&name],
                )
                .await
                .unwrap();
            wait_for(
                "the template database's connections to close",
                Duration::from_secs(10),
                || async {
                    let n: i64 = admin
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                            &[&name],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    (n == 0).then_some(())
                },
            )
            .await;
            admin
                .execute(
                    &format!("ALTER DATABASE \"{name}\" WITH IS_TEMPLATE true"),
                    &[],
                )
                .await
                .unwrap();
        }
        admin
            .execute("SELECT pg_advisory_unlock(7243530011)", &[])
            .await
            .unwrap();
        name
    })
    .await
    .clone()
}

fn url_with_path(base: &str, db: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = head[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(head.len());
    let mut url = format!("{}/{}", &head[..host_end], db);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        block_on_thread(async move {
            if let Ok((client, conn)) =
                tokio_postgres::connect(&pg_admin_url(), tokio_postgres::NoTls).await
            {
                tokio::spawn(conn);
                let _ = client
                    .execute(
                        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                        &[],
                    )
                    .await;
            }
        });
    }
}

/// A Redis logical database (1-15) of its own for one test, flushed and released on drop.
#[derive(Debug)]
pub struct TestRedis {
    pub db: u8,
    pub url: String,
    token: String,
}

const REDIS_LOCK_TTL_SECS: u64 = 900;

impl TestRedis {
    pub async fn new() -> Self {
        let client = redis::Client::open(format!("{}/0", redis_base_url())).unwrap();
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("cannot connect to the test Redis (is it running? see scripts/services.sh)");
        let token = uuid::Uuid::new_v4().to_string();
        let db = wait_for(
            "a free Redis test database",
            Duration::from_secs(120),
            || {
                let mut conn = conn.clone();
                let token = token.clone();
                async move {
                    for db in 1u8..=15 {
                        let taken: Option<String> = redis::cmd("SET")
                            .arg(format!("xenios-test-lock:{db}"))
                            .arg(&token)
                            .arg("NX")
                            .arg("EX")
                            .arg(REDIS_LOCK_TTL_SECS)
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        if taken.is_some() {
                            return Some(db);
                        }
                    }
                    None
                }
            },
        )
        .await;
        let url = format!("{}/{db}", redis_base_url());
        let mut db_conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("FLUSHDB")
            .query_async(&mut db_conn)
            .await
            .unwrap();
        Self { db, url, token }
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let (url, db, token) = (self.url.clone(), self.db, self.token.clone());
        block_on_thread(async move {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return;
            };
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let _: Result<(), _> = redis::cmd("FLUSHDB").query_async(&mut c).await;
            }
            let Ok(lock) = redis::Client::open(format!("{}/0", redis_base_url())) else {
                return;
            };
            if let Ok(mut c) = lock.get_multiplexed_async_connection().await {
                // Release only our own lock.
                let _: Result<i64, _> = redis::Script::new(
                    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
                )
                .key(format!("xenios-test-lock:{db}"))
                .arg(token)
                .invoke_async(&mut c)
                .await;
            }
        });
    }
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private `redis-server` process, for tests that stop and restart Redis.
#[derive(Debug)]
pub struct RedisProcess {
    pub port: u16,
    child: Option<Child>,
}

impl RedisProcess {
    pub async fn start() -> Self {
        let mut p = Self {
            port: free_port(),
            child: None,
        };
        p.restart().await;
        p
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub async fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH");
        self.child = Some(child);
        let port = self.port;
        wait_for(
            "private redis-server to accept",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Configuration variables for a test backend on the given database and Redis.
pub fn test_vars(db: &TestDb, redis_url: &str) -> HashMap<String, String> {
    let mut vars = test_vars_without_database(redis_url);
    vars.insert("DATABASE_URL".to_owned(), db.url.clone());
    vars
}

/// [`test_vars`] without `DATABASE_URL`, for a test that brings a Postgres of its own.
pub fn test_vars_without_database(redis_url: &str) -> HashMap<String, String> {
    [
        ("ENVIRONMENT", "development"),
        ("REDIS_URL", redis_url),
        ("XENIOS_BACKEND_API_KEY", API_KEY),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("READY_TIMEOUT_MS", "2000"),
        ("DATABASE_CONNECT_TIMEOUT_MS", "1000"),
        ("SHUTDOWN_TIMEOUT_SECS", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The real server on port 0 against a test database and Redis.
#[derive(Debug)]
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub backend: AiBackend,
    pub db: TestDb,
    pub redis: Option<TestRedis>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    /// Spawns the server on its own database and Redis database.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Spawns the server after letting the test change its configuration variables.
    pub async fn spawn_with(change: impl FnOnce(&mut HashMap<String, String>)) -> Self {
        let db = TestDb::new().await;
        let redis = TestRedis::new().await;
        let mut vars = test_vars(&db, &redis.url);
        change(&mut vars);
        Self::spawn_on(db, Some(redis), vars).await
    }

    /// Spawns the server with explicit variables (the test owns the Redis it points at).
    pub async fn spawn_on(
        db: TestDb,
        redis: Option<TestRedis>,
        vars: HashMap<String, String>,
    ) -> Self {
        let config = Config::from_map(&vars).expect("test config");
        // As `xenios-server` starts its backend; only the listener differs (port 0).
        let backend = xenios_server::start(config).await.expect("backend");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(xenios_server::run(backend.clone(), listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            backend,
            db,
            redis,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET with the API key.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("x-api-key", API_KEY)
            .send()
            .await
            .unwrap()
    }

    /// Polls `/health/ready` until it answers `status` (bounded by `deadline`) and returns
    /// that answer's body.
    pub async fn wait_ready_status(&self, status: u16, deadline: Duration) -> serde_json::Value {
        let what = format!("{status} from /health/ready");
        wait_for(&what, deadline, || async {
            let r = self
                .client
                .get(self.url("/health/ready"))
                .send()
                .await
                .ok()?;
            if r.status().as_u16() == status {
                r.json::<serde_json::Value>().await.ok()
            } else {
                None
            }
        })
        .await
    }

    /// Signals graceful shutdown and waits for the server task to finish.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(h) => h.await.expect("server task panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.abort();
        }
    }
}

/// A local fake HTTP upstream (OpenRouter, a JWKS endpoint...) serving any poem endpoint on
/// port 0. Stops when dropped.
#[derive(Debug)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub base: String,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    pub async fn start<E>(endpoint: E) -> Self
    where
        E: poem::Endpoint + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
        let task = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor)
                .run(endpoint)
                .await;
        });
        Self {
            addr,
            base: format!("http://{addr}"),
            task,
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy in front of a real service, which a test can cut (refuse new connections and
/// break open ones, as when the service dies) and restore on the same port.
#[derive(Debug)]
pub struct TcpProxy {
    pub port: u16,
    target: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let mut p = Self {
            port: free_port(),
            target,
            task: None,
        };
        p.restore().await;
        p
    }

    /// Stops listening and breaks every proxied connection.
    pub fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&mut self) {
        self.cut();
        let port = self.port;
        let listener = wait_for(
            "the proxy port to be free",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .ok()
            },
        )
        .await;
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            // Connections live in the JoinSet: aborting this task drops it, which aborts them.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        conns.spawn(async move {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        }));
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// `url` with its host and port replaced by 127.0.0.1:`port`.
pub fn url_via_port(url: &str, port: u16) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_host(Some("127.0.0.1")).unwrap();
    u.set_port(Some(port)).unwrap();
    u.to_string()
}
