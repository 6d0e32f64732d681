//! Quiet hours: a promotional message sent while its recipient should be asleep is held until
//! their window opens — in the contact's own time zone, else in every zone of the number's
//! country — and never dropped; transactional messages go at once. The clock is held still.
//! On both stores.

mod support;

use std::sync::Arc;

use herald_engine::clock::ManualClock;
use serde_json::{Value, json};
use support::{Backend, TestServer};

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let clock = std::sync::Arc::new(super::ManualClock::new(super::night()));
                    let server = super::TestServer::start_with_clock(super::Backend::Sqlite, super::config(), clock.clone()).await.unwrap();
                    super::$case(&server, &clock).await;
                    server.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let clock = std::sync::Arc::new(super::ManualClock::new(super::night()));
                    let Some(server) = super::TestServer::start_with_clock(super::Backend::Postgres, super::config(), clock.clone()).await else { return };
                    super::$case(&server, &clock).await;
                    server.stop().await;
                }
            )*
        }
    };
}

on_both_stores!(
    promotions_wait_for_the_recipients_morning_and_transactional_messages_do_not,
    a_per_country_window_overrides_the_default,
);

/// 01:00 UTC on a December Tuesday: 02:00 in Paris, 10:00 in Tokyo.
fn night() -> jiff::Timestamp {
    "2026-12-01T01:00:00Z".parse().unwrap()
}

fn config() -> herald_engine::EngineConfig {
    let mut config = support::test_config();
    config.intake.quiet_hours.countries.insert(
        herald_domain::phone::Region::parse("IN").unwrap(),
        "10:00-20:00".parse().unwrap(),
    );
    config
}

/// The tenant sends to the United States, France and India.
async fn allow_destinations(s: &TestServer) {
    let response = s
        .client
        .put(s.url("/v1/settings/geo"))
        .bearer_auth(&s.tenant.live_key)
        .json(&json!({"countries": ["US", "FR", "IN"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

async fn contact(s: &TestServer, phone: &str, zone: &str) {
    let response = s
        .client
        .post(s.url("/v1/contacts"))
        .bearer_auth(&s.tenant.live_key)
        .json(&json!({"phone": phone, "time_zone": zone}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
}

async fn send(s: &TestServer, to: &str, kind: &str) -> Value {
    let (status, message) = s
        .send(
            &s.tenant.live_key,
            json!({"to": to, "body": "Spring sale", "type": kind}),
        )
        .await;
    assert_eq!(status, 201, "{message}");
    message
}

async fn promotions_wait_for_the_recipients_morning_and_transactional_messages_do_not(
    s: &TestServer,
    clock: &Arc<ManualClock>,
) {
    allow_destinations(s).await;
    contact(s, "+33612345678", "Europe/Paris").await;
    contact(s, "+14155550100", "Asia/Tokyo").await;

    let paris = send(s, "+33612345678", "promotional").await;
    assert_eq!(paris["status"], "scheduled");
    assert_eq!(paris["send_at"], "2026-12-01T08:00:00Z", "09:00 in Paris");

    let tokyo = send(s, "+14155550100", "promotional").await;
    assert_eq!(
        tokyo["status"], "queued",
        "the contact's own zone decides, not the number's country: 10:00 in Tokyo"
    );

    let code = send(s, "+33612345678", "transactional").await;
    assert_eq!(
        code["status"], "queued",
        "transactional messages are exempt"
    );
    assert!(code["send_at"].is_null());

    // A promotion scheduled for the middle of the night moves to the morning after it.
    let (status, later) = s
        .send(
            &s.tenant.live_key,
            json!({"to": "+33612345678", "body": "Later", "type": "promotional",
                   "send_at": "2026-12-01T22:30:00Z"}),
        )
        .await;
    assert_eq!(status, 201, "{later}");
    assert_eq!(later["send_at"], "2026-12-02T08:00:00Z");

    // A US number that is no contact, at 14:00 UTC (09:00 in New York, 04:00 in Honolulu):
    // 09:00 must have come in every US zone, the last being Honolulu (UTC-10) at 19:00 UTC.
    clock.set("2026-12-01T14:00:00Z".parse().unwrap());
    let us = send(s, "+12125550199", "promotional").await;
    assert_eq!(us["status"], "scheduled");
    assert_eq!(us["send_at"], "2026-12-01T19:00:00Z");
}

async fn a_per_country_window_overrides_the_default(s: &TestServer, clock: &Arc<ManualClock>) {
    allow_destinations(s).await;
    // 04:00 UTC is 09:30 in India: inside the default window, not inside India's 10:00-20:00.
    clock.set("2026-12-01T04:00:00Z".parse().unwrap());
    let india = send(s, "+919876543210", "promotional").await;
    assert_eq!(india["status"], "scheduled");
    assert_eq!(india["send_at"], "2026-12-01T04:30:00Z");
    // 09:30 in Paris is inside the default window.
    clock.set("2026-12-01T08:30:00Z".parse().unwrap());
    let paris = send(s, "+33612345678", "promotional").await;
    assert_eq!(paris["status"], "queued");
}
