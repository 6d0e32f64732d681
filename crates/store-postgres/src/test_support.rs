//! Throwaway PostgreSQL databases for tests (feature `test-support`): each call to
//! [`fresh_database`] creates an empty database on the server named by
//! `HERALD_TEST_POSTGRES_URL` (default [`DEFAULT_URL`]) and [`TestDatabase::drop_database`]
//! removes it again.
//!
//! When the server cannot be reached the tests are skipped, with one notice per test binary
//! written straight to the process's stderr (which the test harness does not capture, so the
//! skip is visible in `cargo test` output). CI sets `HERALD_TEST_POSTGRES_REQUIRED=1` so that
//! an unreachable server fails the tests instead of skipping them silently.

use std::io::Write;
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor};
use uuid::Uuid;

/// The server (and an existing database on it) that test databases are created from.
pub const URL_VAR: &str = "HERALD_TEST_POSTGRES_URL";
/// `1` or `true`: fail instead of skipping when the server is unreachable.
pub const REQUIRED_VAR: &str = "HERALD_TEST_POSTGRES_REQUIRED";
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Long enough for a loaded CI machine, short enough that a missing server costs little.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

static SKIP_NOTICE: Once = Once::new();

/// An empty database created for one test. Call [`TestDatabase::drop_database`] when done; if
/// the test panics first, dropping the value removes the database on a helper thread.
#[derive(Debug)]
pub struct TestDatabase {
    admin: PgConnectOptions,
    name: String,
    url: String,
    dropped: bool,
}

impl TestDatabase {
    /// A URL for [`crate::PostgresStore::connect`] (or `herald serve`) on this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Remove the database, disconnecting anything still connected to it.
    pub async fn drop_database(mut self) {
        self.dropped = true;
        if let Err(e) = drop_now(&self.admin, &self.name).await {
            panic!("failed to drop test database {}: {e}", self.name);
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Drop cannot await, and may run on a runtime worker where blocking on that runtime is
        // not allowed: use a short-lived runtime on a thread of its own.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(drop_now(&admin, &name))
                .map_err(std::io::Error::other)
        });
        if let Ok(Err(e)) = cleanup.join() {
            let _ = writeln!(
                std::io::stderr(),
                "failed to drop test database {}: {e}",
                self.name
            );
        }
    }
}

/// Create an empty database, or `None` (after a one-time notice) when PostgreSQL is
/// unreachable and not required. Panics on an invalid URL, when the server is required but
/// unreachable, or when it answers but refuses to create the database.
pub async fn fresh_database() -> Option<TestDatabase> {
    let url = std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let admin = PgConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("{URL_VAR} is not a valid PostgreSQL URL ({url:?}): {e}"))
        .application_name("herald-tests");
    let mut conn = match connect(&admin).await {
        Ok(conn) => conn,
        Err(error) => {
            let server = describe(&admin);
            if required() {
                panic!(
                    "PostgreSQL is required ({REQUIRED_VAR}) but unreachable at {server}: {error}"
                );
            }
            SKIP_NOTICE.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "\nNOTICE: PostgreSQL tests SKIPPED: cannot reach {server}: {error}\n\
                     NOTICE: start PostgreSQL or point {URL_VAR} at one; set {REQUIRED_VAR}=1 \
                     to fail instead of skipping.\n"
                );
            });
            return None;
        }
    };
    let name = format!("herald_test_{}", Uuid::new_v4().simple());
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "failed to create test database {name} on {}: {e}",
                describe(&admin)
            )
        });
    let _ = conn.close().await;
    let url = admin.clone().database(&name).to_url_lossy().to_string();
    Some(TestDatabase {
        admin,
        name,
        url,
        dropped: false,
    })
}

fn required() -> bool {
    std::env::var(REQUIRED_VAR).is_ok_and(|v| matches!(v.trim(), "1" | "true"))
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

async fn drop_now(admin: &PgConnectOptions, name: &str) -> Result<(), String> {
    let mut conn = connect(admin).await?;
    conn.execute(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .await
    .map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    Ok(())
}

/// Where the server is, without the password a URL may carry.
fn describe(options: &PgConnectOptions) -> String {
    let database = options.get_database().unwrap_or("(default database)");
    match options.get_socket() {
        Some(socket) => format!("{}@{}/{database}", options.get_username(), socket.display()),
        None => format!(
            "{}@{}:{}/{database}",
            options.get_username(),
            options.get_host(),
            options.get_port()
        ),
    }
}
