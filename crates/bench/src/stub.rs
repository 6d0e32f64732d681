//! The provider stub benchmarks send to: one server speaking both Twilio's Messages API and
//! Kannel's generic HTTP SMSC protocol, so Herald and Kannel are measured against the same peer.
//!
//! - `POST /2010-04-01/Accounts/{sid}/Messages.json`: answers 201 with a Twilio message
//!   resource and, when the request names a `StatusCallback`, posts a signed `delivered`
//!   callback there after the report delay.
//! - `GET /kannel/send?to=…&text=…`: answers `Sent. ID: …` and, after the report delay, reports
//!   delivery to Kannel's SMSC port (`?dlr-mid=ID&dlr-mask=1`).
//! - `GET /kannel/dlr?id=…`: where Kannel forwards delivery reports to the application; counted.
//! - `GET /stats`: the counters, with the time of the first and last event of each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_providers::twilio::signature;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How the stub behaves.
#[derive(Clone, Debug)]
pub struct StubConfig {
    pub auth_token: String,
    /// From acceptance to the delivery report.
    pub report_delay: Duration,
    /// Added before every answer to a send, like a real provider's response time.
    pub latency: Duration,
    /// Where Kannel's SMSC takes delivery reports (`http://127.0.0.1:13015/`).
    pub kannel_dlr_url: Option<String>,
    /// Delivery reports being posted at once.
    pub max_callbacks_in_flight: usize,
}

impl Default for StubConfig {
    fn default() -> Self {
        StubConfig {
            auth_token: "stub-auth-token".into(),
            report_delay: Duration::ZERO,
            latency: Duration::ZERO,
            kannel_dlr_url: None,
            max_callbacks_in_flight: 64,
        }
    }
}

/// A count and when its first and last increments happened (microseconds since the epoch).
#[derive(Default)]
struct Counter {
    count: AtomicU64,
    first: AtomicU64,
    last: AtomicU64,
}

impl Counter {
    fn tick(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let _ = self
            .first
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last.fetch_max(now, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> CounterStats {
        CounterStats {
            count: self.count.load(Ordering::Relaxed),
            first_us: self.first.load(Ordering::Relaxed),
            last_us: self.last.load(Ordering::Relaxed),
        }
    }
}

/// A counter as `/stats` shows it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterStats {
    pub count: u64,
    pub first_us: u64,
    pub last_us: u64,
}

impl CounterStats {
    /// Events per second between the first and the last.
    pub fn rate(&self) -> f64 {
        let span = self.last_us.saturating_sub(self.first_us).max(1) as f64 / 1e6;
        self.count as f64 / span
    }
}

/// Everything the stub has counted.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StubStats {
    /// Messages accepted through the Twilio API.
    pub twilio_submits: CounterStats,
    /// Status callbacks Herald acknowledged with 2xx.
    pub twilio_callbacks_ok: CounterStats,
    pub twilio_callbacks_failed: u64,
    /// Messages accepted through the Kannel SMSC protocol.
    pub kannel_submits: CounterStats,
    /// Delivery reports Kannel's SMSC port acknowledged.
    pub kannel_dlrs_sent: CounterStats,
    /// Delivery reports Kannel forwarded to the application.
    pub kannel_dlrs_received: CounterStats,
}

#[derive(Default)]
struct Counters {
    twilio_submits: Counter,
    twilio_callbacks_ok: Counter,
    twilio_callbacks_failed: AtomicU64,
    kannel_submits: Counter,
    kannel_dlrs_sent: Counter,
    kannel_dlrs_received: Counter,
}

/// A report to send once due.
enum Report {
    Twilio {
        url: String,
        params: Vec<(String, String)>,
    },
    Kannel {
        url: String,
    },
}

#[derive(Clone)]
struct Stub {
    config: Arc<StubConfig>,
    counters: Arc<Counters>,
    reports: mpsc::UnboundedSender<(tokio::time::Instant, Report)>,
}

/// Serve on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: StubConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (reports, queue) = mpsc::unbounded_channel();
    let counters = Arc::new(Counters::default());
    let config = Arc::new(config);
    tokio::spawn(report_loop(queue, config.clone(), counters.clone()));
    let stub = Stub {
        config,
        counters,
        reports,
    };
    let app = Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            post(twilio_send),
        )
        .route("/kannel/send", get(kannel_send).post(kannel_send))
        .route("/kannel/dlr", get(kannel_dlr))
        .route("/stats", get(stats))
        .with_state(stub);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Bind `address` and serve until `shutdown`; returns the bound address once listening.
pub async fn spawn(
    address: SocketAddr,
    config: StubConfig,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = serve(listener, config, shutdown).await {
            tracing::error!(%error, "the stub failed");
        }
    });
    Ok(bound)
}

async fn twilio_send(State(stub): State<Stub>, Path(sid): Path<String>, body: Bytes) -> Response {
    if !stub.config.latency.is_zero() {
        tokio::time::sleep(stub.config.latency).await;
    }
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a form").into_response();
    };
    let get = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (Some(to), Some(_body)) = (get("To"), get("Body")) else {
        let error = serde_json::json!({"code": 21604, "message": "A 'To' phone number is required.", "status": 400});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    };
    let message_sid = format!("SM{}", Uuid::new_v4().simple());
    stub.counters.twilio_submits.tick();
    if let Some(callback) = get("StatusCallback") {
        let from = get("From").unwrap_or_default();
        let params = vec![
            ("AccountSid".to_owned(), sid.clone()),
            ("ApiVersion".to_owned(), "2010-04-01".to_owned()),
            ("From".to_owned(), from),
            ("MessageSid".to_owned(), message_sid.clone()),
            ("MessageStatus".to_owned(), "delivered".to_owned()),
            ("SmsSid".to_owned(), message_sid.clone()),
            ("SmsStatus".to_owned(), "delivered".to_owned()),
            ("To".to_owned(), to.clone()),
        ];
        let due = tokio::time::Instant::now() + stub.config.report_delay;
        let _ = stub.reports.send((
            due,
            Report::Twilio {
                url: callback,
                params,
            },
        ));
    }
    let resource = serde_json::json!({
        "sid": message_sid,
        "account_sid": sid,
        "to": to,
        "status": "queued",
        "api_version": "2010-04-01",
        "num_segments": "1",
        "direction": "outbound-api",
    });
    (StatusCode::CREATED, Json(resource)).into_response()
}

async fn kannel_send(State(stub): State<Stub>) -> Response {
    if !stub.config.latency.is_zero() {
        tokio::time::sleep(stub.config.latency).await;
    }
    let id = Uuid::new_v4().simple().to_string();
    stub.counters.kannel_submits.tick();
    if let Some(dlr) = &stub.config.kannel_dlr_url {
        let url = format!("{dlr}?dlr-mid={id}&dlr-mask=1");
        let due = tokio::time::Instant::now() + stub.config.report_delay;
        let _ = stub.reports.send((due, Report::Kannel { url }));
    }
    (StatusCode::OK, format!("Sent. ID: {id}")).into_response()
}

async fn kannel_dlr(
    State(stub): State<Stub>,
    Query(_): Query<Vec<(String, String)>>,
) -> StatusCode {
    stub.counters.kannel_dlrs_received.tick();
    StatusCode::OK
}

async fn stats(State(stub): State<Stub>) -> Json<StubStats> {
    let c = &stub.counters;
    Json(StubStats {
        twilio_submits: c.twilio_submits.snapshot(),
        twilio_callbacks_ok: c.twilio_callbacks_ok.snapshot(),
        twilio_callbacks_failed: c.twilio_callbacks_failed.load(Ordering::Relaxed),
        kannel_submits: c.kannel_submits.snapshot(),
        kannel_dlrs_sent: c.kannel_dlrs_sent.snapshot(),
        kannel_dlrs_received: c.kannel_dlrs_received.snapshot(),
    })
}

/// Send reports when due, with at most `max_callbacks_in_flight` requests at once. Reports all
/// have the same delay, so they fall due in the order they were queued.
async fn report_loop(
    mut queue: mpsc::UnboundedReceiver<(tokio::time::Instant, Report)>,
    config: Arc<StubConfig>,
    counters: Arc<Counters>,
) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.max_callbacks_in_flight)
        .build();
    let Ok(client) = client else { return };
    let permits = Arc::new(Semaphore::new(config.max_callbacks_in_flight.max(1)));
    while let Some((due, report)) = queue.recv().await {
        tokio::time::sleep_until(due).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let client = client.clone();
        let counters = counters.clone();
        let token = config.auth_token.clone();
        tokio::spawn(async move {
            let _permit = permit;
            deliver(&client, &token, &counters, report).await;
        });
    }
}

/// Post one report, retrying a refused one a few times as providers do.
async fn deliver(client: &reqwest::Client, auth_token: &str, counters: &Counters, report: Report) {
    for attempt in 0..5 {
        let result = match &report {
            Report::Twilio { url, params } => {
                let signature = signature::compute(auth_token, url, params);
                client
                    .post(url)
                    .header("X-Twilio-Signature", signature)
                    .form(params)
                    .send()
                    .await
            }
            Report::Kannel { url } => client.get(url).send().await,
        };
        match result {
            Ok(response) if response.status().is_success() => {
                match report {
                    Report::Twilio { .. } => counters.twilio_callbacks_ok.tick(),
                    Report::Kannel { .. } => counters.kannel_dlrs_sent.tick(),
                }
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(100 << attempt)).await,
        }
    }
    counters
        .twilio_callbacks_failed
        .fetch_add(1, Ordering::Relaxed);
}

/// Read a running stub's counters.
pub async fn fetch_stats(client: &reqwest::Client, base: &str) -> anyhow::Result<StubStats> {
    Ok(client
        .get(format!("{base}/stats"))
        .send()
        .await?
        .json()
        .await?)
}
