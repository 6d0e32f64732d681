//! Live traffic through the SNS adapter to moto's SNS server, forwarded delivery status logs
//! back into Herald, and failover between Twilio and SNS — on both stores.

mod support;

use std::time::Duration;

use herald_engine::routing::BreakerConfig;
use herald_providers::sns::status;
use herald_providers::test_support::Moto;
use serde_json::{Value, json};
use support::fake_twilio::start_fake;
use support::{Backend, TestServer};

const SECRET: &str = "sns-webhook-secret-for-tests";

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_stores!(
    sns_sends_and_signed_status_logs_settle_messages,
    forged_stale_replayed_and_malformed_logs_change_nothing,
    a_failing_twilio_account_fails_over_to_sns_and_back,
    an_organizations_sns_account_sends_and_takes_its_own_logs,
    an_sns_accounts_opt_outs_are_imported_and_opting_back_in_reaches_sns,
    sns_opt_outs_are_also_imported_on_a_schedule,
);

/// A delivery status log as SNS writes it.
fn log(sns_id: &str, status: &str, price: &str, response: &str) -> Value {
    json!({
        "notification": {"messageId": sns_id, "timestamp": "2026-11-21 04:00:00.000"},
        "delivery": {
            "phoneCarrier": "Example",
            "mnc": 260,
            "numberOfMessageParts": 1,
            "destination": "+14155550100",
            "priceInUSD": price.parse::<f64>().unwrap(),
            "smsType": "Transactional",
            "mcc": 310,
            "providerResponse": response,
            "dwellTimeMs": 455,
            "dwellTimeMsUntilDeviceAck": 1292
        },
        "status": status
    })
}

/// POST `body` to the status hook, signed at `at` (Unix seconds) with `secret`.
async fn post_log(s: &TestServer, body: &Value, secret: &str, at: i64) -> (u16, Value) {
    let body = serde_json::to_vec(body).unwrap();
    post_raw(s, body, secret, at).await
}

async fn post_raw(s: &TestServer, body: Vec<u8>, secret: &str, at: i64) -> (u16, Value) {
    let signature = status::sign(secret.as_bytes(), at, &body);
    let response = s
        .client
        .post(s.url("/hooks/sns/status"))
        .header(status::TIMESTAMP_HEADER, at.to_string())
        .header(status::SIGNATURE_HEADER, signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    support::status_and_json(response).await
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn statuses(message: &Value) -> Vec<&str> {
    message["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect()
}

/// Add an SNS account on `moto` for the organization of `key`, with `webhook_secret` if given:
/// the response's status and body.
async fn add_sns_account(
    s: &TestServer,
    key: &str,
    moto: &Moto,
    webhook_secret: Option<&str>,
) -> (u16, Value) {
    let mut credentials = json!({
        "region": "us-east-1",
        "access_key_id": "AKIAHERALDTEST000000",
        "secret_access_key": "herald-test-secret",
        "endpoint": moto.url,
    });
    if let Some(secret) = webhook_secret {
        credentials["webhook_secret"] = json!(secret);
    }
    let response = s
        .client
        .post(s.url("/v1/providers"))
        .bearer_auth(key)
        .json(&json!({"name": "aws", "kind": "sns", "credentials": credentials}))
        .send()
        .await
        .unwrap();
    support::status_and_json(response).await
}

async fn sns_server(backend: Backend, moto: &Moto) -> Option<TestServer> {
    TestServer::start_with_providers(
        backend,
        support::test_config(),
        None,
        Some((moto.config(), SECRET.into())),
    )
    .await
}

async fn sns_sends_and_signed_status_logs_settle_messages(backend: Backend) {
    let moto = Moto::start().await;
    let Some(s) = sns_server(backend, &moto).await else {
        return;
    };
    let key = &s.tenant.live_key;
    let (status, created) = s
        .send(
            key,
            json!({"to": "+14155550100", "body": "Hello from Herald"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let sent = s.wait_for(key, id, "sent").await;
    assert_eq!(sent["provider"], "sns");
    let sns_id = sent["provider_message_id"].as_str().unwrap().to_owned();
    let stored = moto.sms().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].contains("+14155550100") && stored[0].contains("Hello from Herald"));
    assert!(stored[0].contains(&sns_id), "{stored:?}");

    let success = log(
        &sns_id,
        "SUCCESS",
        "0.00645",
        "Message has been accepted by phone",
    );
    assert_eq!(post_log(&s, &success, SECRET, now()).await.0, 200);
    let delivered = s.wait_for(key, id, "delivered").await;
    assert_eq!(delivered["actual_cost"], "0.00645");
    assert_eq!(
        statuses(&delivered),
        ["queued", "sending", "sent", "delivered"]
    );

    // The same log again (signed anew), and a late contradictory one: acknowledged, no change.
    assert_eq!(post_log(&s, &success, SECRET, now() + 1).await.0, 200);
    let failure = log(
        &sns_id,
        "FAILURE",
        "0.00645",
        "Phone is currently unreachable",
    );
    assert_eq!(
        post_log(&s, &json!([failure]), SECRET, now() + 2).await.0,
        200
    );
    let (_, again) = s.get(key, &format!("/v1/messages/{id}")).await;
    assert_eq!(statuses(&again), ["queued", "sending", "sent", "delivered"]);

    // A batch settles several messages at once; a failure keeps SNS's reason.
    let mut ids = Vec::new();
    for to in ["+14155550101", "+14155550102"] {
        let (_, created) = s.send(key, json!({"to": to, "body": "Hi"})).await;
        let id = created["id"].as_str().unwrap().to_owned();
        let sent = s.wait_for(key, &id, "sent").await;
        ids.push((id, sent["provider_message_id"].as_str().unwrap().to_owned()));
    }
    let batch = json!([
        log(
            &ids[0].1,
            "SUCCESS",
            "0.00581",
            "Message has been accepted by phone"
        ),
        log(
            &ids[1].1,
            "FAILURE",
            "0.00581",
            "Phone carrier has blocked this message"
        ),
    ]);
    assert_eq!(post_log(&s, &batch, SECRET, now()).await.0, 200);
    s.wait_for(key, &ids[0].0, "delivered").await;
    let failed = s.wait_for(key, &ids[1].0, "failed").await;
    assert!(
        failed["error_message"]
            .as_str()
            .unwrap_or_default()
            .contains("blocked"),
        "{failed}"
    );
    s.stop().await;
}

async fn forged_stale_replayed_and_malformed_logs_change_nothing(backend: Backend) {
    let moto = Moto::start().await;
    let Some(s) = sns_server(backend, &moto).await else {
        return;
    };
    let key = &s.tenant.live_key;
    let (_, created) = s
        .send(key, json!({"to": "+14155550100", "body": "Hello"}))
        .await;
    let id = created["id"].as_str().unwrap();
    let sent = s.wait_for(key, id, "sent").await;
    let sns_id = sent["provider_message_id"].as_str().unwrap().to_owned();
    let success = log(
        &sns_id,
        "SUCCESS",
        "0.00645",
        "Message has been accepted by phone",
    );

    let (status, problem) = post_log(&s, &success, "not-the-secret", now()).await;
    assert_eq!(
        (status, &problem["type"]),
        (403, &json!("/problems/forbidden"))
    );
    assert_eq!(
        post_log(&s, &success, SECRET, now() - 600).await.0,
        403,
        "stale"
    );
    assert_eq!(
        post_log(&s, &success, SECRET, now() + 600).await.0,
        403,
        "future"
    );
    let unsigned = s
        .client
        .post(s.url("/hooks/sns/status"))
        .json(&success)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 403);
    // Signed but not a delivery log: the entry at fault is named, and nothing is recorded —
    // not even the valid entry before it.
    let batch = json!([success.clone(), {"notification": {}, "status": "SUCCESS"}]);
    let (status, problem) = post_log(&s, &batch, SECRET, now()).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "body");
    assert!(
        problem["detail"].as_str().unwrap().contains('1'),
        "{problem}"
    );
    let (_, unchanged) = s.get(key, &format!("/v1/messages/{id}")).await;
    assert_eq!(unchanged["status"], "sent");

    // Accepted once; the identical signed request again is a replay.
    let body = serde_json::to_vec(&success).unwrap();
    let at = now();
    assert_eq!(post_raw(&s, body.clone(), SECRET, at).await.0, 200);
    let (status, problem) = post_raw(&s, body, SECRET, at).await;
    assert_eq!(status, 403, "{problem}");
    s.wait_for(key, id, "delivered").await;
    s.stop().await;
}

async fn a_failing_twilio_account_fails_over_to_sns_and_back(backend: Backend) {
    let moto = Moto::start().await;
    let (twilio, twilio_base) = start_fake().await;
    let mut config = support::test_config();
    config.dispatcher.retry.base = Duration::from_millis(20);
    config.dispatcher.retry.max = Duration::from_millis(100);
    config.routing.breaker = BreakerConfig {
        failures_to_open: 2,
        // Long enough that the sends below finish while the breaker is open, even on a slow
        // machine; the wait for recovery below polls past it.
        cool_down: Duration::from_secs(5),
    };
    let Some(s) = TestServer::start_with_providers(
        backend,
        config,
        Some((twilio_base, "twilio-token".into())),
        Some((moto.config(), SECRET.into())),
    )
    .await
    else {
        return;
    };
    let key = &s.tenant.live_key;
    let send = |to: &'static str| {
        let s = &s;
        async move {
            let (status, created) = s.send(key, json!({"to": to, "body": "Hi"})).await;
            assert_eq!(status, 201, "{created}");
            let id = created["id"].as_str().unwrap().to_owned();
            s.wait_for(key, &id, "sent").await
        }
    };

    // Twilio first, while it is well.
    assert_eq!(send("+14155550100").await["provider"], "twilio");

    // Twilio goes down: the retry of each message moves to SNS, and once Twilio's breaker opens
    // new messages go to SNS on their first attempt.
    twilio.set_down(true);
    for to in ["+14155550101", "+14155550102", "+14155550103"] {
        let sent = send(to).await;
        assert_eq!(sent["provider"], "sns", "{sent}");
    }
    let resting = send("+14155550104").await;
    assert_eq!(
        (resting["provider"].as_str(), resting["attempts"].as_u64()),
        (Some("sns"), Some(1)),
        "{resting}"
    );
    assert_eq!(moto.sms().await.len(), 4);

    // Twilio recovers; after the cool-down a probe finds it well and traffic returns.
    twilio.set_down(false);
    let mut back = None;
    for attempt in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let to: &'static str = Box::leak(format!("+141555502{attempt:02}").into_boxed_str());
        let sent = send(to).await;
        if sent["provider"] == "twilio" {
            back = Some(sent);
            break;
        }
    }
    assert!(back.is_some(), "traffic never returned to Twilio");
    assert_eq!(send("+14155550111").await["provider"], "twilio");
    // Nothing was sent twice: each message reached exactly one provider, once.
    let (_, list) = s.get(key, "/v1/messages?limit=100").await;
    let messages = list["data"].as_array().unwrap().len();
    assert_eq!(twilio.accepted() + moto.sms().await.len(), messages);
    s.stop().await;
}

async fn an_organizations_sns_account_sends_and_takes_its_own_logs(backend: Backend) {
    let moto = Moto::start().await;
    // No server-level SNS: the organization brings its own account.
    let Some(s) = TestServer::start(backend).await else {
        return;
    };
    let key = &s.tenant.live_key;
    let account_secret = "the-accounts-own-webhook-secret";
    let (status, account) = add_sns_account(&s, key, &moto, Some(account_secret)).await;
    assert_eq!(status, 201, "{account}");
    assert_eq!(account["credentials"]["webhook_secret"], "set");
    assert!(!account.to_string().contains(account_secret));
    let account_id = account["id"].as_str().unwrap().to_owned();
    let response = s
        .client
        .put(s.url("/v1/routes/default"))
        .bearer_auth(key)
        .json(&json!({"providers": [account_id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    let (_, created) = s
        .send(key, json!({"to": "+14155550100", "body": "Via our AWS"}))
        .await;
    let id = created["id"].as_str().unwrap();
    let sent = s.wait_for(key, id, "sent").await;
    assert_eq!(sent["provider"], format!("sns/{account_id}"));
    assert_eq!(moto.sms().await.len(), 1);
    let sns_id = sent["provider_message_id"].as_str().unwrap().to_owned();
    let success = log(
        &sns_id,
        "SUCCESS",
        "0.00645",
        "Message has been accepted by phone",
    );

    let hook = format!("/hooks/sns/accounts/{account_id}/status");
    let post = |secret: &'static str, path: String| {
        let body = serde_json::to_vec(&success).unwrap();
        let at = now();
        let signature = status::sign(secret.as_bytes(), at, &body);
        let request = s
            .client
            .post(s.url(&path))
            .header(status::TIMESTAMP_HEADER, at.to_string())
            .header(status::SIGNATURE_HEADER, signature)
            .body(body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Signed with another secret: refused. The server has no SNS hook of its own.
    assert_eq!(post("some-other-secret-entirely", hook.clone()).await, 403);
    assert_eq!(post(account_secret, "/hooks/sns/status".into()).await, 404);
    let (_, unchanged) = s.get(key, &format!("/v1/messages/{id}")).await;
    assert_eq!(unchanged["status"], "sent");

    assert_eq!(post(account_secret, hook).await, 200);
    let delivered = s.wait_for(key, id, "delivered").await;
    assert_eq!(delivered["actual_cost"], "0.00645");
    s.stop().await;
}

async fn an_sns_accounts_opt_outs_are_imported_and_opting_back_in_reaches_sns(backend: Backend) {
    let moto = Moto::start().await;
    let Some(s) = TestServer::start(backend).await else {
        return;
    };
    let key = &s.tenant.live_key;
    let (_, account) = add_sns_account(&s, key, &moto, None).await;
    let id = account["id"].as_str().unwrap().to_owned();
    let sync = |key: String, id: String| {
        let request = s
            .client
            .post(s.url(&format!("/v1/providers/{id}/opt-outs/sync")))
            .bearer_auth(key);
        async move { support::status_and_json(request.send().await.unwrap()).await }
    };
    let sns = herald_providers::sns::Sns::new(moto.config()).await;
    let at_sns = sns.opted_out_numbers().await.unwrap();
    assert!(at_sns.contains(&"+447420500600".to_owned()), "{at_sns:?}");

    // Test keys and other organizations cannot import.
    assert_eq!(sync(s.tenant.test_key.clone(), id.clone()).await.0, 403);
    let other = s.other_tenant("globex").await;
    assert_eq!(sync(other.live_key.clone(), id.clone()).await.0, 404);

    let (status, imported) = sync(key.clone(), id.clone()).await;
    assert_eq!(status, 200, "{imported}");
    assert_eq!(imported["imported"], at_sns.len());
    let (_, list) = s.get(key, "/v1/opt-outs?limit=100").await;
    let listed: Vec<(&str, &str)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["phone"].as_str().unwrap(), o["source"].as_str().unwrap()))
        .collect();
    assert_eq!(listed.len(), at_sns.len());
    let source = format!("sns/{id}");
    assert!(listed.iter().all(|(_, from)| *from == source), "{listed:?}");
    // A second import adds nothing.
    assert_eq!(sync(key.clone(), id.clone()).await.1["imported"], 0);

    // The organization takes a number off: SNS is told to deliver to it again.
    let response = s
        .client
        .delete(s.url("/v1/opt-outs/%2B447420500600"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let at_sns = sns.opted_out_numbers().await.unwrap();
    assert!(!at_sns.contains(&"+447420500600".to_owned()), "{at_sns:?}");
    s.stop().await;
}

async fn sns_opt_outs_are_also_imported_on_a_schedule(backend: Backend) {
    let moto = Moto::start().await;
    let mut config = support::test_config();
    config.sns_opt_out_sync = Duration::from_millis(200);
    let Some(s) = TestServer::start_with(backend, config).await else {
        return;
    };
    let key = &s.tenant.live_key;
    assert_eq!(add_sns_account(&s, key, &moto, None).await.0, 201);
    let at_sns = herald_providers::sns::Sns::new(moto.config())
        .await
        .opted_out_numbers()
        .await
        .unwrap();
    let mut listed = 0;
    for _ in 0..400 {
        let (_, list) = s.get(key, "/v1/opt-outs?limit=100").await;
        listed = list["data"].as_array().unwrap().len();
        if listed == at_sns.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(listed, at_sns.len(), "the schedule imported SNS's list");
    // Another organization's list stays empty.
    let other = s.other_tenant("globex").await;
    let (_, theirs) = s.get(&other.live_key, "/v1/opt-outs").await;
    assert!(theirs["data"].as_array().unwrap().is_empty());
    s.stop().await;
}
