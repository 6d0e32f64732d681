//! The suppression list through `/v1/opt-outs`: a number on it receives nothing more from the
//! organization — not even messages already queued — until it is taken off; other
//! organizations are not affected. On both stores.

mod support;

use serde_json::{Value, json};
use support::{Backend, TestServer};

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let server = super::TestServer::start(super::Backend::Sqlite).await.unwrap();
                    super::$case(&server).await;
                    server.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(server) = super::TestServer::start(super::Backend::Postgres).await else { return };
                    super::$case(&server).await;
                    server.stop().await;
                }
            )*
        }
    };
}

on_both_stores!(
    an_opted_out_number_receives_nothing_until_taken_off,
    a_simulated_stop_suppresses_queued_messages_and_start_resumes_them,
    an_organizations_own_words_and_help_text_are_honoured,
    bad_input_changes_nothing_and_lists_page,
);

async fn add(s: &TestServer, key: &str, body: Value) -> (u16, Value) {
    let response = s
        .client
        .post(s.url("/v1/opt-outs"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    support::status_and_json(response).await
}

async fn remove(s: &TestServer, key: &str, phone: &str) -> u16 {
    s.client
        .delete(s.url(&format!("/v1/opt-outs/{}", phone.replace('+', "%2B"))))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn listed(s: &TestServer, key: &str) -> Vec<String> {
    let (status, page) = s.get(key, "/v1/opt-outs?limit=100").await;
    assert_eq!(status, 200, "{page}");
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["phone"].as_str().unwrap().to_owned())
        .collect()
}

async fn an_opted_out_number_receives_nothing_until_taken_off(s: &TestServer) {
    let key = &s.tenant.live_key;
    // Queued before the opt-out (scheduled a little later), sent after it: suppressed too.
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2)).to_string();
    let (_, queued) = s
        .send(
            key,
            json!({"to": "+14155550100", "body": "Hello", "send_at": later}),
        )
        .await;

    let (status, entry) = add(s, key, json!({"phone": "+14155550100"})).await;
    assert_eq!(status, 201, "{entry}");
    assert_eq!(entry["source"], "api");
    // The same number written nationally (the organization's region is US): already there.
    let (status, again) = add(s, key, json!({"phone": "(415) 555-0100"})).await;
    assert_eq!((status, &again["phone"]), (200, &json!("+14155550100")));

    let (_, created) = s
        .send(key, json!({"to": "+14155550100", "body": "Hello"}))
        .await;
    let id = created["id"].as_str().unwrap();
    let message = s.wait_for(key, id, "suppressed").await;
    assert_eq!(message["error_code"], "opted_out");
    assert!(message["provider"].is_null(), "{message}");
    let queued = s
        .wait_for(key, queued["id"].as_str().unwrap(), "suppressed")
        .await;
    assert_eq!(queued["error_code"], "opted_out");
    let uuid = id.parse().unwrap();
    assert_eq!(s.engine.simulator.times_accepted(uuid), 0);

    // With an Idempotency-Key, a retry is answered exactly as the first request was: the
    // suppressed record, not the `queued` a send would otherwise have answered.
    let keyed = || {
        s.client
            .post(s.url("/v1/messages"))
            .bearer_auth(key)
            .header("idempotency-key", "stop-then-retry")
            .json(&json!({"to": "+14155550100", "body": "Hello again"}))
            .send()
    };
    let first = keyed().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "suppressed", "{first}");
    let replay = keyed().await.unwrap();
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay, first);

    // Another organization's messages to the same number go out.
    let other = s.other_tenant("globex").await;
    assert!(listed(s, &other.live_key).await.is_empty());
    let (_, theirs) = s
        .send(&other.live_key, json!({"to": "+14155550100", "body": "Hi"}))
        .await;
    s.wait_for(&other.live_key, theirs["id"].as_str().unwrap(), "delivered")
        .await;
    // …and it cannot take this organization's number off.
    assert_eq!(remove(s, &other.live_key, "+14155550100").await, 404);

    // Taken off: sends resume.
    assert_eq!(remove(s, key, "+14155550100").await, 204);
    assert_eq!(remove(s, key, "+14155550100").await, 404);
    let (_, resumed) = s
        .send(key, json!({"to": "+14155550100", "body": "Welcome back"}))
        .await;
    s.wait_for(key, resumed["id"].as_str().unwrap(), "delivered")
        .await;
}

async fn bad_input_changes_nothing_and_lists_page(s: &TestServer) {
    let key = &s.tenant.live_key;
    for (body, status, field) in [
        (json!({}), 422, Some("phone")),
        (json!({"phone": ""}), 422, Some("phone")),
        (json!({"phone": "not a number"}), 422, Some("phone")),
        (json!({"phone": "+14155550100", "extra": 1}), 400, None),
    ] {
        let (got, problem) = add(s, key, body.clone()).await;
        assert_eq!(got, status, "{body}: {problem}");
        if let Some(field) = field {
            assert_eq!(problem["errors"][0]["field"], field, "{body}");
        }
    }
    let (status, problem) = add(s, &s.tenant.test_key, json!({"phone": "+14155550100"})).await;
    assert_eq!(
        (status, &problem["type"]),
        (403, &json!("/problems/live-key-required"))
    );
    assert_eq!(remove(s, key, "garbage").await, 422);
    assert!(listed(s, key).await.is_empty(), "nothing was added");

    for phone in ["+14155550103", "+14155550101", "+14155550102"] {
        assert_eq!(add(s, key, json!({"phone": phone})).await.0, 201);
    }
    let (_, first) = s.get(key, "/v1/opt-outs?limit=2").await;
    let phones: Vec<&str> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["phone"].as_str().unwrap())
        .collect();
    assert_eq!(phones, ["+14155550101", "+14155550102"]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = s
        .get(key, &format!("/v1/opt-outs?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(second["data"][0]["phone"], "+14155550103");
    assert!(second["next_cursor"].is_null());
    let (status, _) = s.get(key, "/v1/opt-outs?cursor=%%%").await;
    assert_eq!(status, 422);
    // Test keys may read the list.
    assert_eq!(listed(s, &s.tenant.test_key).await.len(), 3);
}

async fn reply(s: &TestServer, key: &str, body: Value) -> (u16, Value) {
    let response = s
        .client
        .post(s.url("/v1/simulator/inbound"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    support::status_and_json(response).await
}

async fn a_simulated_stop_suppresses_queued_messages_and_start_resumes_them(s: &TestServer) {
    let key = &s.tenant.live_key;
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2)).to_string();
    let (_, queued) = s
        .send(
            key,
            json!({"to": "+14155550123", "body": "Tomorrow's offer", "send_at": later}),
        )
        .await;

    let (status, stop) = reply(s, key, json!({"from": "+14155550123", "body": " stop "})).await;
    assert_eq!(status, 201, "{stop}");
    assert!(stop["reply"].is_null());
    assert_eq!(stop["message"]["provider"], "simulator");
    assert_eq!(listed(s, key).await, ["+14155550123"]);
    let suppressed = s
        .wait_for(key, queued["id"].as_str().unwrap(), "suppressed")
        .await;
    assert_eq!(
        suppressed["error_code"], "opted_out",
        "queued before the STOP, sent after it"
    );
    let (_, after) = s
        .send(key, json!({"to": "+14155550123", "body": "Still there?"}))
        .await;
    s.wait_for(key, after["id"].as_str().unwrap(), "suppressed")
        .await;

    let (_, help) = reply(s, key, json!({"from": "+14155550123", "body": "HELP"})).await;
    assert!(
        help["reply"].as_str().unwrap().starts_with("acme: "),
        "{help}"
    );

    let (status, _) = reply(s, key, json!({"from": "+14155550123", "body": "start"})).await;
    assert_eq!(status, 201);
    assert!(listed(s, key).await.is_empty());
    let (_, resumed) = s
        .send(key, json!({"to": "+14155550123", "body": "Welcome back"}))
        .await;
    s.wait_for(key, resumed["id"].as_str().unwrap(), "delivered")
        .await;
    let (_, history) = s.get(key, "/v1/opt-outs/%2B14155550123/history").await;
    assert_eq!(
        history["events"][0]["message_id"], stop["message"]["id"],
        "the STOP is named as the cause: {history}"
    );

    // Bad replies and test keys change nothing.
    let (status, problem) = reply(s, key, json!({"from": "12", "body": "STOP"})).await;
    assert_eq!(
        (status, problem["errors"][0]["field"].as_str()),
        (422, Some("from"))
    );
    let (status, _) = reply(
        s,
        key,
        json!({"from": "+14155550123", "body": "STOP", "x": 1}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = reply(
        s,
        &s.tenant.test_key,
        json!({"from": "+14155550123", "body": "STOP"}),
    )
    .await;
    assert_eq!(status, 403);
    assert!(listed(s, key).await.is_empty());
    let (_, inbound) = s.get(key, "/v1/inbound").await;
    assert_eq!(
        inbound["data"].as_array().unwrap().len(),
        3,
        "STOP, HELP and START only"
    );
}

async fn an_organizations_own_words_and_help_text_are_honoured(s: &TestServer) {
    let key = &s.tenant.live_key;
    let put = |key: String, body: Value| {
        let request = s
            .client
            .put(s.url("/v1/settings/keywords"))
            .bearer_auth(key)
            .json(&body);
        async move { support::status_and_json(request.send().await.unwrap()).await }
    };
    let (status, defaults) = s.get(key, "/v1/settings/keywords").await;
    assert_eq!(status, 200);
    assert_eq!(
        defaults,
        json!({"help_text": null, "opt_out_words": [], "opt_in_words": []})
    );
    for (body, field) in [
        (json!({"opt_out_words": ["two words"]}), "opt_out_words[0]"),
        (json!({"opt_out_words": ["start"]}), "opt_out_words[0]"),
        (
            json!({"opt_out_words": ["HALT"], "opt_in_words": ["halt"]}),
            "opt_in_words[0]",
        ),
        (json!({"help_text": "x".repeat(321)}), "help_text"),
    ] {
        let (status, problem) = put(key.clone(), body.clone()).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
    }
    let (status, _) = put(
        s.tenant.test_key.clone(),
        json!({"opt_out_words": ["HALT"]}),
    )
    .await;
    assert_eq!(status, 403);
    let (_, unchanged) = s.get(key, "/v1/settings/keywords").await;
    assert_eq!(unchanged, defaults, "refused changes change nothing");

    let (status, saved) = put(
        key.clone(),
        json!({"help_text": "Acme: alerts. Reply STOPPEN to stop.",
               "opt_out_words": ["Stoppen"], "opt_in_words": ["anmelden"]}),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["opt_out_words"], json!(["STOPPEN"]));

    let (_, help) = reply(s, key, json!({"from": "+14155550124", "body": "help"})).await;
    assert_eq!(help["reply"], "Acme: alerts. Reply STOPPEN to stop.");
    reply(s, key, json!({"from": "+14155550124", "body": "stoppen!"})).await;
    assert_eq!(listed(s, key).await, ["+14155550124"]);
    reply(s, key, json!({"from": "+14155550124", "body": "Anmelden"})).await;
    assert!(listed(s, key).await.is_empty());

    // Another organization's words are its own.
    let other = s.other_tenant("globex").await;
    reply(
        s,
        &other.live_key,
        json!({"from": "+14155550124", "body": "stoppen"}),
    )
    .await;
    assert!(listed(s, &other.live_key).await.is_empty());
}
