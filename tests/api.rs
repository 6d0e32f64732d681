//! API v1 end to end over HTTP, against a server on port 0, on both stores.

mod support;

use std::collections::HashSet;

use serde_json::{Value, json};
use support::TestServer;

on_both_stores!(
    a_sent_message_is_delivered_with_a_timestamp_for_every_status,
    a_national_number_is_read_in_the_organizations_region,
    a_scheduled_message_is_sent_at_its_time,
    a_message_can_be_canceled_until_it_is_handed_to_a_provider,
    an_idempotency_key_replays_the_original_response,
    pagination_walks_every_message_exactly_once,
    lists_filter_by_status_recipient_and_time,
    bad_input_gets_a_clear_problem_and_changes_nothing,
    a_revoked_key_is_refused,
    another_organization_sees_nothing,
    test_keys_reach_only_the_simulator_and_see_only_test_traffic,
    health_openapi_and_docs_are_served,
);

fn statuses(message: &Value) -> Vec<String> {
    message["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap().to_owned())
        .collect()
}

async fn a_sent_message_is_delivered_with_a_timestamp_for_every_status(s: &TestServer) {
    let response = s
        .client
        .post(s.url("/v1/messages"))
        .bearer_auth(&s.tenant.live_key)
        .json(&json!({"to": "+14155550100", "body": "Hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/messages/{}", created["id"].as_str().unwrap())
    );
    assert_eq!(created["status"], "queued");
    assert_eq!(created["to"], "+14155550100");
    assert_eq!(created["country"], "US");
    assert_eq!(created["encoding"], "GSM-7");
    assert_eq!(created["segments"], 1);
    assert_eq!(created["estimated_cost"], "0.0079");
    assert_eq!(created["currency"], "USD");
    assert_eq!(created["type"], "transactional");

    let delivered = s
        .wait_for(
            &s.tenant.live_key,
            created["id"].as_str().unwrap(),
            "delivered",
        )
        .await;
    assert_eq!(
        statuses(&delivered),
        ["queued", "sending", "sent", "delivered"]
    );
    let times: Vec<jiff::Timestamp> = delivered["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "timestamps in order: {times:?}"
    );
    assert_eq!(delivered["provider"], "simulator");
    assert!(
        delivered["provider_message_id"]
            .as_str()
            .unwrap()
            .starts_with("SM")
    );
    assert_eq!(delivered["attempts"], 1);
}

async fn a_national_number_is_read_in_the_organizations_region(s: &TestServer) {
    let (status, message) = s
        .send(
            &s.tenant.live_key,
            json!({"to": "(415) 555-0100", "body": "Hi"}),
        )
        .await;
    assert_eq!(status, 201, "{message}");
    assert_eq!(message["to"], "+14155550100");
    let (status, message) = s
        .send(
            &s.tenant.live_key,
            json!({"to": "+44 7911 123456", "body": "Hi"}),
        )
        .await;
    assert_eq!(
        (status, &message["country"]),
        (201, &json!("GG")),
        "{message}"
    );
}

async fn a_scheduled_message_is_sent_at_its_time(s: &TestServer) {
    let send_at = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(1_500);
    let (status, created) = s
        .send(
            &s.tenant.live_key,
            json!({"to": "+14155550100", "body": "Later", "send_at": send_at.to_string()}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "scheduled");
    let id = created["id"].as_str().unwrap();
    let delivered = s.wait_for(&s.tenant.live_key, id, "delivered").await;
    assert_eq!(
        statuses(&delivered),
        ["scheduled", "queued", "sending", "sent", "delivered"]
    );
    let queued_at: jiff::Timestamp = delivered["status_history"][1]["at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        queued_at >= send_at,
        "released at {queued_at}, due {send_at}"
    );
}

async fn a_message_can_be_canceled_until_it_is_handed_to_a_provider(s: &TestServer) {
    let key = &s.tenant.live_key;
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    let (_, scheduled) = s
        .send(
            key,
            json!({"to": "+14155550100", "body": "Later", "send_at": later}),
        )
        .await;
    let id = scheduled["id"].as_str().unwrap();
    let (status, canceled) = s.post(key, &format!("/v1/messages/{id}/cancel")).await;
    assert_eq!(
        (status, &canceled["status"]),
        (200, &json!("canceled")),
        "{canceled}"
    );
    let (status, again) = s.post(key, &format!("/v1/messages/{id}/cancel")).await;
    assert_eq!(
        (status, statuses(&again)),
        (200, vec!["scheduled".to_owned(), "canceled".to_owned()])
    );

    let (_, now) = s
        .send(key, json!({"to": "+14155550100", "body": "Now"}))
        .await;
    let id = now["id"].as_str().unwrap();
    s.wait_for(key, id, "delivered").await;
    let (status, problem) = s.post(key, &format!("/v1/messages/{id}/cancel")).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["type"], "/problems/not-cancelable");
    assert_eq!(problem["current_status"], "delivered");
    let (status, _) = s
        .post(
            key,
            "/v1/messages/00000000-0000-0000-0000-000000000000/cancel",
        )
        .await;
    assert_eq!(status, 404);
}

async fn an_idempotency_key_replays_the_original_response(s: &TestServer) {
    let key = &s.tenant.live_key;
    let send = |body: &'static str, idempotency: &'static str| {
        s.client
            .post(s.url("/v1/messages"))
            .bearer_auth(key)
            .header("Idempotency-Key", idempotency)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let first = send(
        r#"{"to":"+14155550100","body":"Order 42 shipped"}"#,
        "order-42",
    )
    .await
    .unwrap();
    assert_eq!(first.status().as_u16(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.bytes().await.unwrap();

    let replay = send(
        r#"{ "body": "Order 42 shipped", "to": "+14155550100" }"#,
        "order-42",
    )
    .await
    .unwrap();
    assert_eq!(replay.status().as_u16(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(
        replay.bytes().await.unwrap(),
        first_body,
        "the original response, byte for byte"
    );

    let reused = send(
        r#"{"to":"+14155550100","body":"Order 43 shipped"}"#,
        "order-42",
    )
    .await
    .unwrap();
    let (status, problem) = support::status_and_json(reused).await;
    assert_eq!(
        (status, &problem["type"]),
        (422, &json!("/problems/idempotency-key-reused"))
    );
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(
        s.message_count().await,
        1,
        "only the first request stored a message"
    );

    let other = send(
        r#"{"to":"+14155550100","body":"Order 43 shipped"}"#,
        "order-43",
    )
    .await
    .unwrap();
    assert_eq!(other.status().as_u16(), 201);
    assert_eq!(s.message_count().await, 2);
}

async fn pagination_walks_every_message_exactly_once(s: &TestServer) {
    let key = &s.tenant.test_key;
    let mut sent = Vec::new();
    for i in 0..23 {
        let (status, message) = s
            .send(key, json!({"to": "+14155550100", "body": format!("#{i}")}))
            .await;
        assert_eq!(status, 201);
        sent.push(message["id"].as_str().unwrap().to_owned());
    }
    sent.reverse();
    let mut seen = Vec::new();
    let mut path = "/v1/messages?limit=5".to_owned();
    loop {
        let (status, page) = s.get(key, &path).await;
        assert_eq!(status, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 5);
        seen.extend(data.iter().map(|m| m["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/messages?limit=5&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, sent, "newest first, each exactly once");
    let (_, default_page) = s.get(key, "/v1/messages").await;
    assert_eq!(default_page["data"].as_array().unwrap().len(), 20);
}

async fn lists_filter_by_status_recipient_and_time(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (_, a) = s
        .send(key, json!({"to": "+14155550100", "body": "a"}))
        .await;
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    let (_, b) = s
        .send(
            key,
            json!({"to": "+14155550101", "body": "b", "send_at": later}),
        )
        .await;
    s.wait_for(key, a["id"].as_str().unwrap(), "delivered")
        .await;

    let ids = |page: Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, scheduled) = s.get(key, "/v1/messages?status=scheduled").await;
    assert_eq!(ids(scheduled), [b["id"].as_str().unwrap()]);
    let (_, to) = s.get(key, "/v1/messages?to=%28415%29%20555-0100").await;
    assert_eq!(
        ids(to),
        [a["id"].as_str().unwrap()],
        "the filter number is normalised like `to`"
    );
    let after = a["created_at"].as_str().unwrap().replace('+', "%2B");
    let (_, newer) = s
        .get(key, &format!("/v1/messages?created_after={after}"))
        .await;
    assert_eq!(ids(newer), [b["id"].as_str().unwrap()]);
}

async fn bad_input_gets_a_clear_problem_and_changes_nothing(s: &TestServer) {
    let key = s.tenant.live_key.as_str();
    let json_post = |body: String| {
        s.client
            .post(s.url("/v1/messages"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
    };
    let oversized = format!(
        r#"{{"to":"+14155550100","body":"{}"}}"#,
        "a".repeat(70 * 1024)
    );
    // (case, request, status, field at fault)
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, Option<&str>)> = vec![
        (
            "no key",
            s.client
                .post(s.url("/v1/messages"))
                .json(&json!({"to": "+14155550100", "body": "x"})),
            401,
            None,
        ),
        (
            "malformed key",
            s.client
                .post(s.url("/v1/messages"))
                .header("authorization", "Bearer abc")
                .json(&json!({})),
            401,
            None,
        ),
        (
            "unknown key",
            s.client
                .post(s.url("/v1/messages"))
                .bearer_auth(format!("sk_live_{}", "A".repeat(32)))
                .json(&json!({})),
            401,
            None,
        ),
        (
            "malformed JSON",
            json_post(r#"{"to": "+14155550100", "body": "#.into()),
            400,
            None,
        ),
        (
            "unknown field",
            json_post(r#"{"to":"+14155550100","body":"x","colour":"red"}"#.into()),
            400,
            Some("colour"),
        ),
        (
            "missing to",
            json_post(r#"{"body":"x"}"#.into()),
            422,
            Some("to"),
        ),
        (
            "invalid number",
            json_post(r#"{"to":"+1 555","body":"x"}"#.into()),
            422,
            Some("to"),
        ),
        (
            "not a number",
            json_post(r#"{"to":"call me","body":"x"}"#.into()),
            422,
            Some("to"),
        ),
        (
            "empty body",
            json_post(r#"{"to":"+14155550100","body":""}"#.into()),
            422,
            Some("body"),
        ),
        (
            "NUL in body",
            json_post(r#"{"to":"+14155550100","body":"a\u0000b"}"#.into()),
            422,
            Some("body"),
        ),
        (
            "over max_segments",
            json_post(format!(
                r#"{{"to":"+14155550100","body":"{}","max_segments":1}}"#,
                "a".repeat(161)
            )),
            422,
            Some("body"),
        ),
        (
            "max_segments of the wrong type",
            json_post(r#"{"to":"+14155550100","body":"x","max_segments":"two"}"#.into()),
            422,
            Some("max_segments"),
        ),
        (
            "unknown type",
            json_post(r#"{"to":"+14155550100","body":"x","type":"spam"}"#.into()),
            422,
            Some("type"),
        ),
        ("oversized request", json_post(oversized), 413, None),
        (
            "send_at unparsable",
            json_post(r#"{"to":"+14155550100","body":"x","send_at":"tomorrow"}"#.into()),
            422,
            Some("send_at"),
        ),
        (
            "send_at long past",
            json_post(
                r#"{"to":"+14155550100","body":"x","send_at":"2001-01-01T00:00:00Z"}"#.into(),
            ),
            422,
            Some("send_at"),
        ),
        (
            "not JSON",
            s.client
                .post(s.url("/v1/messages"))
                .bearer_auth(key)
                .body("to=+14155550100&body=x")
                .header("content-type", "application/x-www-form-urlencoded"),
            415,
            None,
        ),
        (
            "bad idempotency key",
            json_post(r#"{"to":"+14155550100","body":"x"}"#.into()).header("Idempotency-Key", ""),
            400,
            Some("Idempotency-Key"),
        ),
        (
            "limit too large",
            s.client
                .get(s.url("/v1/messages?limit=101"))
                .bearer_auth(key),
            422,
            Some("limit"),
        ),
        (
            "bad cursor",
            s.client
                .get(s.url("/v1/messages?cursor=zzz"))
                .bearer_auth(key),
            422,
            Some("cursor"),
        ),
        (
            "unknown status filter",
            s.client
                .get(s.url("/v1/messages?status=lost"))
                .bearer_auth(key),
            422,
            Some("status"),
        ),
        (
            "unknown query parameter",
            s.client
                .get(s.url("/v1/messages?colour=red"))
                .bearer_auth(key),
            400,
            Some("colour"),
        ),
        (
            "not a message id",
            s.client.get(s.url("/v1/messages/42")).bearer_auth(key),
            404,
            None,
        ),
        (
            "no such route",
            s.client.get(s.url("/v1/nothing")).bearer_auth(key),
            404,
            None,
        ),
        (
            "wrong method",
            s.client.delete(s.url("/v1/messages")).bearer_auth(key),
            405,
            None,
        ),
    ];
    for (case, request, status, field) in cases {
        let response = request.send().await.unwrap();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let (got, problem) = support::status_and_json(response).await;
        assert_eq!(got, status, "{case}: {problem}");
        assert_eq!(content_type, "application/problem+json", "{case}");
        assert_eq!(problem["status"], status, "{case}");
        for member in ["type", "title", "detail"] {
            assert!(
                problem[member].as_str().is_some_and(|v| !v.is_empty()),
                "{case}: no {member} in {problem}"
            );
        }
        if let Some(field) = field {
            let fields: Vec<&str> = problem["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["field"].as_str().unwrap())
                .collect();
            assert!(
                fields.contains(&field),
                "{case}: expected {field} in {fields:?}"
            );
        }
    }
    assert_eq!(s.message_count().await, 0, "no bad request stored anything");
}

async fn a_revoked_key_is_refused(s: &TestServer) {
    let store = &s.engine.store;
    let key = herald_engine::keys::generate(
        s.tenant.org_id,
        herald_domain::message::Mode::Live,
        None,
        jiff::Timestamp::now(),
    );
    store.create_api_key(&key.record).await.unwrap();
    let (status, _) = s.get(&key.secret, "/v1/messages").await;
    assert_eq!(status, 200);
    store
        .revoke_api_key(key.record.id, jiff::Timestamp::now())
        .await
        .unwrap();
    let (status, problem) = s.get(&key.secret, "/v1/messages").await;
    assert_eq!(
        (status, &problem["type"]),
        (401, &json!("/problems/unauthorized"))
    );
    assert!(problem["detail"].as_str().unwrap().contains("revoked"));
    let (status, _) = s
        .send(&key.secret, json!({"to": "+14155550100", "body": "x"}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(s.message_count().await, 0);
}

async fn another_organization_sees_nothing(s: &TestServer) {
    let other = s.other_tenant("globex").await;
    let (_, message) = s
        .send(
            &s.tenant.live_key,
            json!({"to": "+14155550100", "body": "private"}),
        )
        .await;
    let id = message["id"].as_str().unwrap();

    let (status, problem) = s.get(&other.live_key, &format!("/v1/messages/{id}")).await;
    assert_eq!(
        (status, &problem["type"]),
        (404, &json!("/problems/not-found"))
    );
    let (status, _) = s
        .post(&other.live_key, &format!("/v1/messages/{id}/cancel"))
        .await;
    assert_eq!(status, 404);
    let (_, page) = s.get(&other.live_key, "/v1/messages").await;
    assert!(page["data"].as_array().unwrap().is_empty());
    let (_, page) = s
        .get(&other.live_key, "/v1/messages?to=%2B14155550100")
        .await;
    assert!(page["data"].as_array().unwrap().is_empty());
    let (status, _) = s
        .get(&s.tenant.live_key, &format!("/v1/messages/{id}"))
        .await;
    assert_eq!(status, 200, "the owner still sees it");
}

async fn test_keys_reach_only_the_simulator_and_see_only_test_traffic(s: &TestServer) {
    let (_, live) = s
        .send(
            &s.tenant.live_key,
            json!({"to": "+14155550100", "body": "live"}),
        )
        .await;
    let (status, test) = s
        .send(
            &s.tenant.test_key,
            json!({"to": "+14155550100", "body": "test"}),
        )
        .await;
    assert_eq!((status, &test["mode"]), (201, &json!("test")));
    let delivered = s
        .wait_for(
            &s.tenant.test_key,
            test["id"].as_str().unwrap(),
            "delivered",
        )
        .await;
    assert_eq!(delivered["provider"], "simulator");

    let (status, _) = s
        .get(
            &s.tenant.test_key,
            &format!("/v1/messages/{}", live["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, 404, "test keys do not see live traffic");
    let (_, page) = s.get(&s.tenant.test_key, "/v1/messages").await;
    let ids: HashSet<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, HashSet::from([test["id"].as_str().unwrap()]));
}

async fn health_openapi_and_docs_are_served(s: &TestServer) {
    let health: Value = s
        .client
        .get(s.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok", "database": "ok"}));
    let openapi: Value = s
        .client
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/messages",
        "/v1/messages/{id}",
        "/v1/messages/{id}/cancel",
        "/health",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} is documented");
    }
    assert!(openapi["components"]["schemas"]["CreateMessage"].is_object());
    assert!(openapi["components"]["securitySchemes"]["api_key"].is_object());
    let docs = s.client.get(s.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status().as_u16(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
    let page = s
        .client
        .get(s.url("/problems/validation-failed"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
}
