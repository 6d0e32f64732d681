//! Credits, spend limits, usage and geo permissions through the API, on both stores: the
//! operator grants with its token (organization keys get 403), a send that would overdraw is
//! 402 and stores nothing, parallel sends never overdraw, credits are consumed on sending and
//! released on cancel, a destination outside the allow-list is refused, usage adds up, and
//! another organization sees none of it.

mod support;

use std::collections::BTreeMap;

use serde_json::{Value, json};
use support::{Backend, TestServer, create_plain_tenant, status_and_json, test_config};

const OPERATOR: &str = "operator-token-for-tests-0123456789";

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let server = super::start(super::Backend::Sqlite).await.unwrap();
                    super::$case(&server).await;
                    server.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(server) = super::start(super::Backend::Postgres).await else { return };
                    super::$case(&server).await;
                    server.stop().await;
                }
            )*
        }
    };
}

on_both_stores!(
    only_the_operator_grants_credits_and_bad_grants_change_nothing,
    a_send_that_would_overdraw_is_refused_with_402_and_stores_nothing,
    parallel_sends_against_a_small_balance_never_overdraw,
    credits_are_consumed_when_sent_and_released_when_cancelled,
    the_spend_limit_refuses_with_402,
    a_message_to_an_opted_out_number_is_suppressed_before_queueing,
    destinations_outside_the_allow_list_are_refused,
    usage_counts_a_months_messages_by_country_and_type,
    the_api_reference_describes_credits_usage_and_geo,
);

async fn start(backend: Backend) -> Option<TestServer> {
    let mut config = test_config();
    config.operator_token = Some(herald_engine::keys::hash(OPERATOR));
    TestServer::start_with(backend, config).await
}

async fn call(
    s: &TestServer,
    method: reqwest::Method,
    token: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let response = s
        .client
        .request(method, s.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    status_and_json(response).await
}

async fn grant(s: &TestServer, org_id: uuid::Uuid, credits: i64) -> Value {
    let (status, body) = call(
        s,
        reqwest::Method::POST,
        OPERATOR,
        "/v1/credits",
        json!({"organization_id": org_id, "credits": credits, "reason": "top-up"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn credits(s: &TestServer, key: &str) -> Value {
    let (status, body) = s.get(key, "/v1/credits").await;
    assert_eq!(status, 200, "{body}");
    body
}

fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn only_the_operator_grants_credits_and_bad_grants_change_nothing(s: &TestServer) {
    let key = &s.tenant.live_key;
    let before = credits(s, key).await;
    assert_eq!(
        (&before["metered"], &before["balance"], &before["available"]),
        (&json!(false), &json!(0), &json!(0))
    );

    let body = json!({"organization_id": s.tenant.org_id, "credits": 10});
    let (status, problem) = call(s, reqwest::Method::POST, key, "/v1/credits", body.clone()).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["type"], "/problems/operator-required");
    let response = s
        .client
        .post(s.url("/v1/credits"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let (status, _) = call(
        s,
        reqwest::Method::PUT,
        key,
        "/v1/credits/limit",
        json!({"organization_id": s.tenant.org_id, "monthly_spend_limit": "1.00"}),
    )
    .await;
    assert_eq!(status, 403);

    let post = |body: Value| call(s, reqwest::Method::POST, OPERATOR, "/v1/credits", body);
    let (status, problem) = post(json!({"credits": "ten"})).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(fields(&problem), vec!["organization_id", "credits"]);
    let (status, problem) = post(json!({"organization_id": s.tenant.org_id, "credits": 0})).await;
    assert_eq!(
        (status, fields(&problem)),
        (422, vec!["credits".to_owned()])
    );
    let (status, _) = post(json!({"organization_id": s.tenant.org_id, "credits": 1.5})).await;
    assert_eq!(status, 422);
    let (status, problem) =
        post(json!({"organization_id": s.tenant.org_id, "credits": 5, "extra": 1})).await;
    assert_eq!(status, 400, "{problem}");
    let (status, problem) =
        post(json!({"organization_id": uuid::Uuid::now_v7(), "credits": 5})).await;
    assert_eq!(status, 404, "{problem}");
    let (status, problem) = post(json!({"organization_id": s.tenant.org_id, "credits": -1})).await;
    assert_eq!(
        (status, fields(&problem)),
        (422, vec!["credits".to_owned()])
    );
    assert_eq!(credits(s, key).await, before, "nothing changed");

    let granted = grant(s, s.tenant.org_id, 10).await;
    assert_eq!(
        (
            &granted["credits"],
            &granted["organization_id"],
            &granted["reason"]
        ),
        (&json!(10), &json!(s.tenant.org_id), &json!("top-up"))
    );
    let after = credits(s, key).await;
    assert_eq!(
        (&after["metered"], &after["balance"], &after["available"]),
        (&json!(true), &json!(10), &json!(10))
    );

    // A retried grant with its Idempotency-Key is answered, not granted again.
    let keyed = |body: Value| {
        s.client
            .post(s.url("/v1/credits"))
            .bearer_auth(OPERATOR)
            .header("Idempotency-Key", "invoice-42")
            .json(&body)
            .send()
    };
    let body = json!({"organization_id": s.tenant.org_id, "credits": 5});
    let (status, first) = status_and_json(keyed(body.clone()).await.unwrap()).await;
    assert_eq!(status, 201, "{first}");
    let replay = keyed(body).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let (status, second) = status_and_json(replay).await;
    assert_eq!((status, &second), (201, &first));
    let (status, problem) = status_and_json(
        keyed(json!({"organization_id": s.tenant.org_id, "credits": 6}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(credits(s, key).await["balance"], 15);

    // Another organization's key sees its own account, untouched.
    let other = s.other_tenant("other").await;
    let theirs = credits(s, &other.live_key).await;
    assert_eq!(
        (&theirs["balance"], &theirs["metered"]),
        (&json!(0), &json!(false))
    );
}

async fn a_send_that_would_overdraw_is_refused_with_402_and_stores_nothing(s: &TestServer) {
    let key = &s.tenant.live_key;
    grant(s, s.tenant.org_id, 2).await;
    // 161 GSM-7 characters: two segments.
    let (status, sent) = s
        .send(key, json!({"to": "+14155550100", "body": "x".repeat(161)}))
        .await;
    assert_eq!((status, &sent["segments"]), (201, &json!(2)), "{sent}");
    let before = s.message_count().await;

    let response = s
        .client
        .post(s.url("/v1/messages"))
        .bearer_auth(key)
        .header("Idempotency-Key", "overdraw-1")
        .json(&json!({"to": "+14155550101", "body": "Hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let (status, problem) = status_and_json(response).await;
    assert_eq!(status, 402, "{problem}");
    assert_eq!(problem["type"], "/problems/insufficient-credits");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("needs 1 credits and 0 are available"),
        "{problem}"
    );
    assert_eq!(s.message_count().await, before, "nothing was queued");

    // Test keys reach only the simulator and use no credits.
    let (status, _) = s
        .send(
            &s.tenant.test_key,
            json!({"to": "+14155550101", "body": "Hello"}),
        )
        .await;
    assert_eq!(status, 201);
}

async fn parallel_sends_against_a_small_balance_never_overdraw(s: &TestServer) {
    grant(s, s.tenant.org_id, 5).await;
    let mut sends = Vec::new();
    for i in 0..24 {
        let client = s.client.clone();
        let url = s.url("/v1/messages");
        let key = s.tenant.live_key.clone();
        sends.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(key)
                .json(&json!({"to": format!("+1415555{:04}", 200 + i), "body": "Flash sale"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = BTreeMap::new();
    for send in sends {
        *statuses.entry(send.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(201, 5), (402, 19)]));
    assert_eq!(s.message_count().await, 5);
    let account = credits(s, &s.tenant.live_key).await;
    let (balance, reserved) = (
        account["balance"].as_i64().unwrap(),
        account["reserved"].as_i64().unwrap(),
    );
    assert!(reserved <= balance && balance >= 0, "{account}");
    assert_eq!(account["available"], 0, "{account}");
}

async fn credits_are_consumed_when_sent_and_released_when_cancelled(s: &TestServer) {
    let key = &s.tenant.live_key;
    grant(s, s.tenant.org_id, 3).await;
    let (_, sent) = s
        .send(key, json!({"to": "+14155550100", "body": "Hello"}))
        .await;
    s.wait_for(key, sent["id"].as_str().unwrap(), "delivered")
        .await;
    let account = credits(s, key).await;
    assert_eq!(
        (&account["balance"], &account["reserved"]),
        (&json!(2), &json!(0))
    );

    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    let (status, scheduled) = s
        .send(
            key,
            json!({"to": "+14155550101", "body": "Later", "send_at": later}),
        )
        .await;
    assert_eq!(status, 201, "{scheduled}");
    assert_eq!(credits(s, key).await["reserved"], 1);
    let id = scheduled["id"].as_str().unwrap();
    let (status, _) = s.post(key, &format!("/v1/messages/{id}/cancel")).await;
    assert_eq!(status, 200);
    let account = credits(s, key).await;
    assert_eq!(
        (&account["balance"], &account["reserved"]),
        (&json!(2), &json!(0))
    );
}

async fn the_spend_limit_refuses_with_402(s: &TestServer) {
    let key = &s.tenant.live_key;
    grant(s, s.tenant.org_id, 100).await;
    let put = |body: Value| call(s, reqwest::Method::PUT, OPERATOR, "/v1/credits/limit", body);
    let (status, problem) =
        put(json!({"organization_id": s.tenant.org_id, "monthly_spend_limit": "abc"})).await;
    assert_eq!(
        (status, fields(&problem)),
        (422, vec!["monthly_spend_limit".to_owned()])
    );
    let (_, sent) = s
        .send(key, json!({"to": "+14155550100", "body": "Hello"}))
        .await;
    let cost = sent["estimated_cost"].as_str().unwrap().to_owned();
    let (status, account) =
        put(json!({"organization_id": s.tenant.org_id, "monthly_spend_limit": cost})).await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["monthly_spend_limit"], json!(cost));
    assert_eq!(account["month_spend"], json!(cost));

    let (status, problem) = s
        .send(key, json!({"to": "+14155550101", "body": "Hello"}))
        .await;
    assert_eq!(status, 402, "{problem}");
    assert_eq!(problem["type"], "/problems/spend-limit-reached");
    assert_eq!(s.message_count().await, 1);

    let (status, _) =
        put(json!({"organization_id": s.tenant.org_id, "monthly_spend_limit": null})).await;
    assert_eq!(status, 200);
    let (status, _) = s
        .send(key, json!({"to": "+14155550101", "body": "Hello"}))
        .await;
    assert_eq!(status, 201);
}

async fn a_message_to_an_opted_out_number_is_suppressed_before_queueing(s: &TestServer) {
    let key = &s.tenant.live_key;
    grant(s, s.tenant.org_id, 1).await;
    let (status, _) = call(
        s,
        reqwest::Method::POST,
        key,
        "/v1/opt-outs",
        json!({"phone": "+14155550100"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, message) = s
        .send(key, json!({"to": "+14155550100", "body": "Hello"}))
        .await;
    assert_eq!(status, 201, "{message}");
    assert_eq!(message["status"], "suppressed");
    assert_eq!(message["error_code"], "opted_out");
    let statuses: Vec<&str> = message["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["queued", "suppressed"]);
    let (_, stored) = s
        .get(
            key,
            &format!("/v1/messages/{}", message["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(stored["status"], "suppressed");
    // It reserved nothing: the one credit still buys a message to someone else.
    assert_eq!(credits(s, key).await["reserved"], 0);
    let (status, _) = s
        .send(key, json!({"to": "+14155550101", "body": "Hello"}))
        .await;
    assert_eq!(status, 201);
}

async fn destinations_outside_the_allow_list_are_refused(s: &TestServer) {
    let plain = create_plain_tenant(s.engine.store.as_ref(), "plain").await;
    let key = &plain.live_key;
    let (status, geo) = s.get(key, "/v1/settings/geo").await;
    assert_eq!(status, 200);
    assert_eq!(geo, json!({"countries": ["US"], "default": true}));

    let (status, problem) = s
        .send(key, json!({"to": "+33612345678", "body": "Bonjour"}))
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "to");
    assert_eq!(problem["errors"][0]["code"], "country_not_permitted");
    assert!(
        problem["detail"].as_str().unwrap().contains("FR"),
        "{problem}"
    );
    let count = || async { s.engine.store.count_messages(plain.org_id).await.unwrap() };
    assert_eq!(count().await, 0);

    let put = async |key: &str, body: Value| {
        call(s, reqwest::Method::PUT, key, "/v1/settings/geo", body).await
    };
    for bad in [
        json!({}),
        json!({"countries": []}),
        json!({"countries": ["FR", "ZZ"]}),
        json!({"countries": ["FR", 7]}),
    ] {
        let (status, problem) = put(key, bad.clone()).await;
        assert_eq!(
            (status, fields(&problem)),
            (422, vec!["countries".to_owned()]),
            "{bad}"
        );
    }
    let (status, _) = put(key, json!({"countries": ["FR"], "other": 1})).await;
    assert_eq!(status, 400);
    let (status, _) = put(&plain.test_key, json!({"countries": ["FR"]})).await;
    assert_eq!(status, 403);
    assert_eq!(s.get(key, "/v1/settings/geo").await.1["default"], true);

    let (status, geo) = put(key, json!({"countries": ["us", "FR", "US"]})).await;
    assert_eq!(status, 200, "{geo}");
    assert_eq!(geo, json!({"countries": ["FR", "US"], "default": false}));
    let (status, _) = s
        .send(key, json!({"to": "+33612345678", "body": "Bonjour"}))
        .await;
    assert_eq!(status, 201);
    // Another organization's allow-list is its own.
    assert_eq!(
        s.get(&s.tenant.live_key, "/v1/settings/geo").await.1["countries"],
        json!(["CA", "DE", "FR", "GB", "GG", "US"])
    );
}

async fn usage_counts_a_months_messages_by_country_and_type(s: &TestServer) {
    let key = &s.tenant.live_key;
    for (to, body) in [
        ("+14155550100", "x".repeat(161)),
        ("+14155550101", "Hello".to_owned()),
        ("+447420500600", "Hello".to_owned()),
    ] {
        let (status, _) = s.send(key, json!({"to": to, "body": body})).await;
        assert_eq!(status, 201);
    }
    let (status, _) = s
        .send(
            key,
            json!({"to": "+14155550102", "body": "Sale", "type": "promotional"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, usage) = s.get(key, "/v1/usage").await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(
        (&usage["messages"], &usage["segments"]),
        (&json!(4), &json!(5))
    );
    let lines = usage["data"].as_array().unwrap();
    let line = |country: &str, kind: &str| {
        lines
            .iter()
            .find(|l| l["country"] == country && l["type"] == kind)
            .unwrap_or_else(|| panic!("no {country}/{kind} in {usage}"))
            .clone()
    };
    let us = line("US", "transactional");
    assert_eq!((&us["messages"], &us["segments"]), (&json!(2), &json!(3)));
    assert_eq!(line("GB", "transactional")["messages"], 1);
    assert_eq!(line("US", "promotional")["messages"], 1);
    assert_eq!(lines.len(), 3);

    let month = usage["month"].as_str().unwrap().to_owned();
    let (status, same) = s.get(key, &format!("/v1/usage?month={month}")).await;
    // Only `sent` may have moved meanwhile: the dispatcher is running.
    assert_eq!(
        (status, &same["messages"], &same["segments"], &same["month"]),
        (200, &json!(4), &json!(5), &json!(month))
    );
    let (status, empty) = s.get(key, "/v1/usage?month=2020-01").await;
    assert_eq!((status, &empty["messages"]), (200, &json!(0)));
    let (status, problem) = s.get(key, "/v1/usage?month=2026-13").await;
    assert_eq!((status, fields(&problem)), (422, vec!["month".to_owned()]));
    let (status, _) = s.get(key, "/v1/usage?year=2026").await;
    assert_eq!(status, 400);

    // Test traffic and other organizations are counted apart.
    let (_, test_usage) = s.get(&s.tenant.test_key, "/v1/usage").await;
    assert_eq!(test_usage["messages"], 0);
    let other = s.other_tenant("other").await;
    let (_, theirs) = s.get(&other.live_key, "/v1/usage").await;
    assert_eq!(
        (&theirs["messages"], &theirs["data"]),
        (&json!(0), &json!([]))
    );
}

async fn the_api_reference_describes_credits_usage_and_geo(s: &TestServer) {
    let openapi: Value = s
        .client
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = &openapi["paths"];
    for (path, method) in [
        ("/v1/credits", "get"),
        ("/v1/credits", "post"),
        ("/v1/credits/limit", "put"),
        ("/v1/credits/metering", "put"),
        ("/v1/usage", "get"),
        ("/v1/settings/geo", "get"),
        ("/v1/settings/geo", "put"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
    assert!(paths["/v1/messages"]["post"]["responses"]["402"].is_object());
    assert_eq!(
        paths["/v1/credits"]["post"]["security"][0]["operator_token"],
        json!([])
    );
    for slug in [
        "insufficient-credits",
        "spend-limit-reached",
        "operator-required",
    ] {
        let page = s
            .client
            .get(s.url(&format!("/problems/{slug}")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status().as_u16(), 200, "{slug}");
    }
}
