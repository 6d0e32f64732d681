//! Provider accounts and routes through API v1, end to end over HTTP, on both stores: the whole
//! life of an account, credentials that never come back out and are never stored in clear,
//! bad input that changes nothing, and tenants that never see each other's accounts.

mod support;

use serde_json::{Value, json};
use support::{Backend, TestServer, status_and_json};
use uuid::Uuid;

on_both_stores!(
    an_account_is_created_listed_read_changed_and_deleted,
    credentials_are_never_returned_and_never_stored_in_clear,
    bad_input_gets_a_clear_problem_and_changes_nothing,
    another_organization_never_sees_or_touches_an_account,
    test_keys_may_read_but_not_change_accounts_or_routes,
    routes_are_set_replaced_and_deleted_and_keep_their_accounts,
    lists_of_accounts_are_paginated,
    an_idempotency_key_makes_adding_an_account_safe_to_retry,
);

const AUTH_TOKEN: &str = "tw1l10-S3CRET-auth-token";
const AWS_SECRET: &str = "aws/S3CRET+access+key+abcdef";

fn account_sid() -> String {
    format!("AC{}", "1a".repeat(16))
}

fn twilio(name: &str) -> Value {
    json!({
        "name": name,
        "kind": "twilio",
        "credentials": {"account_sid": account_sid(), "auth_token": AUTH_TOKEN},
        "senders": [
            {"type": "phone_number", "value": "+14155550100"},
            {"type": "messaging_service_sid", "value": format!("MG{}", "2b".repeat(16))},
        ],
        "rate_limit": {"messages_per_second": 5, "per_sender_messages_per_second": 1},
    })
}

fn sns(name: &str) -> Value {
    json!({
        "name": name,
        "kind": "sns",
        "credentials": {
            "region": "eu-west-1",
            "access_key_id": "AKIAIOSFODNN7EXAMPLE",
            "secret_access_key": AWS_SECRET,
            "endpoint": "http://127.0.0.1:4566",
        },
        "senders": [{"type": "alphanumeric_id", "value": "ACME"}],
    })
}

async fn request(
    s: &TestServer,
    method: reqwest::Method,
    key: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = s.client.request(method, s.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(body);
    }
    status_and_json(request.send().await.unwrap()).await
}

async fn create(s: &TestServer, key: &str, body: &Value) -> (u16, Value) {
    request(s, reqwest::Method::POST, key, "/v1/providers", Some(body)).await
}

async fn patch(s: &TestServer, key: &str, id: &str, body: &Value) -> (u16, Value) {
    let path = format!("/v1/providers/{id}");
    request(s, reqwest::Method::PATCH, key, &path, Some(body)).await
}

async fn delete(s: &TestServer, key: &str, path: &str) -> (u16, Value) {
    request(s, reqwest::Method::DELETE, key, path, None).await
}

async fn put_route(s: &TestServer, key: &str, path: &str, providers: Value) -> (u16, Value) {
    let body = json!({ "providers": providers });
    request(s, reqwest::Method::PUT, key, path, Some(&body)).await
}

async fn count(s: &TestServer, key: &str) -> usize {
    let (status, page) = s.get(key, "/v1/providers?limit=100").await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().unwrap().len()
}

fn id(account: &Value) -> String {
    account["id"].as_str().unwrap().to_owned()
}

async fn an_account_is_created_listed_read_changed_and_deleted(s: &TestServer) {
    let key = &s.tenant.live_key;
    let response = s
        .client
        .post(s.url("/v1/providers"))
        .bearer_auth(key)
        .json(&twilio("twilio-us"))
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let (status, created) = status_and_json(response).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(location, format!("/v1/providers/{}", id(&created)));
    assert_eq!(created["name"], "twilio-us");
    assert_eq!(created["kind"], "twilio");
    assert_eq!(created["enabled"], true);
    assert_eq!(
        created["credentials"],
        json!({"account_sid": account_sid(), "auth_token": "set"})
    );
    assert_eq!(
        created["senders"][0],
        json!({"type": "phone_number", "value": "+14155550100"})
    );
    assert_eq!(created["senders"][1]["type"], "messaging_service_sid");
    assert_eq!(
        created["rate_limit"],
        json!({"messages_per_second": 5.0, "segments_per_second": null, "per_sender_messages_per_second": 1.0})
    );

    let (status, read) = s.get(key, &location).await;
    assert_eq!((status, &read), (200, &created));
    let (_, page) = s.get(key, "/v1/providers").await;
    assert_eq!(page["data"], json!([created]));
    assert_eq!(page["next_cursor"], Value::Null);

    let (status, changed) = patch(
        s,
        key,
        &id(&created),
        &json!({"name": "twilio-main", "enabled": false, "rate_limit": {"segments_per_second": 20}}),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["name"], "twilio-main");
    assert_eq!(changed["enabled"], false);
    assert_eq!(
        changed["rate_limit"]["messages_per_second"], 5.0,
        "left as it was"
    );
    assert_eq!(changed["rate_limit"]["segments_per_second"], 20.0);
    assert_eq!(changed["senders"], created["senders"], "left as it was");
    assert_eq!(changed["credentials"], created["credentials"]);

    let new_sid = format!("AC{}", "3c".repeat(16));
    let (status, rotated) = patch(
        s,
        key,
        &id(&created),
        &json!({"credentials": {"account_sid": new_sid, "auth_token": "rotated-token-123"},
                "senders": []}),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(
        rotated["credentials"],
        json!({"account_sid": new_sid, "auth_token": "set"})
    );
    assert_eq!(rotated["senders"], json!([]));
    let (_, credentials) = s
        .engine
        .provider_credentials(s.tenant.org_id, id(&created).parse().unwrap())
        .await
        .unwrap()
        .expect("the account exists");
    match credentials {
        herald_engine::accounts::Credentials::Twilio {
            account_sid,
            auth_token,
            ..
        } => assert_eq!(
            (account_sid.as_str(), auth_token.expose()),
            (new_sid.as_str(), "rotated-token-123"),
            "the rotated credentials are the ones sealed"
        ),
        other => panic!("expected Twilio credentials, got {other:?}"),
    }

    let (status, simulator) = create(
        s,
        key,
        &json!({"name": "sim", "kind": "simulator", "senders": [{"type": "alphanumeric_id", "value": "Herald"}]}),
    )
    .await;
    assert_eq!(status, 201, "{simulator}");
    assert_eq!(simulator["credentials"], json!({}));
    assert_eq!(
        simulator["rate_limit"]["messages_per_second"], 10.0,
        "the default"
    );

    let (status, _) = delete(s, key, &location).await;
    assert_eq!(status, 204);
    let (status, problem) = s.get(key, &location).await;
    assert_eq!(
        (status, &problem["type"]),
        (404, &json!("/problems/not-found"))
    );
    let (status, _) = delete(s, key, &location).await;
    assert_eq!(status, 404);
    assert_eq!(count(s, key).await, 1);

    let (_, openapi) = s.get(key, "/openapi.json").await;
    for path in [
        "/v1/providers",
        "/v1/providers/{id}",
        "/v1/routes",
        "/v1/routes/{country}",
        "/v1/routes/{country}/{prefix}",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} is documented");
    }
}

async fn credentials_are_never_returned_and_never_stored_in_clear(s: &TestServer) {
    let key = &s.tenant.live_key;
    let mut bodies = Vec::new();
    let (status, twilio) = create(s, key, &twilio("twilio")).await;
    assert_eq!(status, 201, "{twilio}");
    bodies.push(twilio.to_string());
    let (status, sns) = create(s, key, &sns("sns")).await;
    assert_eq!(status, 201, "{sns}");
    bodies.push(sns.to_string());
    assert_eq!(
        sns["credentials"],
        json!({"region": "eu-west-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE",
               "secret_access_key": "set", "endpoint": "http://127.0.0.1:4566"})
    );
    for path in [
        "/v1/providers".to_owned(),
        format!("/v1/providers/{}", id(&twilio)),
        format!("/v1/providers/{}", id(&sns)),
    ] {
        let text = s
            .client
            .get(s.url(&path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        bodies.push(text);
    }
    let (_, patched) = patch(s, key, &id(&sns), &json!({"name": "sns-eu"})).await;
    bodies.push(patched.to_string());
    for body in &bodies {
        assert!(
            !body.contains(AUTH_TOKEN) && !body.contains(AWS_SECRET),
            "a secret leaked: {body}"
        );
    }

    for row in raw_rows(s).await {
        for secret in [AUTH_TOKEN, AWS_SECRET] {
            assert!(!contains(&row, secret), "{secret} is stored in clear");
        }
    }
    if let Some(path) = s.database_url.strip_prefix("sqlite://") {
        // Nothing on disk either: the database file and its write-ahead log.
        for suffix in ["", "-wal"] {
            if let Ok(bytes) = std::fs::read(format!("{path}{suffix}")) {
                for secret in [AUTH_TOKEN, AWS_SECRET] {
                    assert!(!contains(&bytes, secret), "{secret} is on disk in clear");
                }
            }
        }
    }

    let (_, opened) = s
        .engine
        .provider_credentials(s.tenant.org_id, id(&sns).parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    match opened {
        herald_engine::accounts::Credentials::Sns {
            secret_access_key,
            region,
            ..
        } => {
            assert_eq!(
                (secret_access_key.expose(), region.as_str()),
                (AWS_SECRET, "eu-west-1")
            );
        }
        other => panic!("expected SNS credentials, got {other:?}"),
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every provider account row as the database holds it, each column's bytes concatenated.
async fn raw_rows(s: &TestServer) -> Vec<Vec<u8>> {
    use sqlx::Row;
    const SQL: &str =
        "SELECT name, credentials_shown, senders, sealed_credentials FROM provider_accounts";
    let rows: Vec<(String, String, String, Vec<u8>)> = if s.database_url.starts_with("sqlite:") {
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&s.database_url)
            .await
            .unwrap();
        sqlx::query(SQL)
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    } else {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&s.database_url)
            .await
            .unwrap();
        sqlx::query(SQL)
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    };
    assert!(!rows.is_empty());
    rows.into_iter()
        .map(|(name, shown, senders, sealed)| {
            assert!(sealed.len() > 25, "credentials are sealed, not left empty");
            [
                name.into_bytes(),
                shown.into_bytes(),
                senders.into_bytes(),
                sealed,
            ]
            .concat()
        })
        .collect()
}

async fn bad_input_gets_a_clear_problem_and_changes_nothing(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (_, existing) = create(s, key, &twilio("existing")).await;
    let with = |field: &str, value: Value| {
        let mut body = twilio("new");
        body[field] = value;
        body
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (with("kind", json!("smpp")), 422, "kind"),
        (json!({"name": "x"}), 422, "kind"),
        (with("name", json!("  ")), 422, "name"),
        (with("name", json!("existing")), 409, "name"),
        (with("colour", json!("red")), 400, "colour"),
        (
            with(
                "credentials",
                json!({"account_sid": account_sid(), "auth_token": AUTH_TOKEN, "pin": "1"}),
            ),
            400,
            "credentials.pin",
        ),
        (
            with(
                "credentials",
                json!({"account_sid": "AC123", "auth_token": AUTH_TOKEN}),
            ),
            422,
            "credentials.account_sid",
        ),
        (
            with("credentials", json!({"account_sid": account_sid()})),
            422,
            "credentials.auth_token",
        ),
        (
            with(
                "credentials",
                json!({"account_sid": account_sid(), "auth_token": 5}),
            ),
            422,
            "credentials.auth_token",
        ),
        (
            with(
                "credentials",
                json!({"account_sid": account_sid(), "auth_token": AUTH_TOKEN, "base_url": "ftp://x"}),
            ),
            422,
            "credentials.base_url",
        ),
        (with("credentials", Value::Null), 422, "credentials"),
        (
            with(
                "senders",
                json!([{"type": "phone_number", "value": "4155550100"}]),
            ),
            422,
            "senders[0]",
        ),
        (
            with(
                "senders",
                json!([{"type": "phone_number", "value": "+1555"}]),
            ),
            422,
            "senders[0]",
        ),
        (
            with("senders", json!([{"type": "pigeon", "value": "x"}])),
            422,
            "senders[0]",
        ),
        (
            with(
                "senders",
                json!([{"type": "alphanumeric_id", "value": "MUCH TOO LONG ID"}]),
            ),
            422,
            "senders[0]",
        ),
        (
            with(
                "senders",
                json!([{"type": "phone_number", "value": "+14155550100", "x": 1}]),
            ),
            400,
            "senders[0].x",
        ),
        (
            with("rate_limit", json!({"messages_per_second": 0})),
            422,
            "rate_limit.messages_per_second",
        ),
        (
            with("rate_limit", json!({"messages_per_second": -3})),
            422,
            "rate_limit.messages_per_second",
        ),
        (
            with("rate_limit", json!({"per_sender_messages_per_second": 0})),
            422,
            "rate_limit.per_sender_messages_per_second",
        ),
        (
            with("rate_limit", json!({"messages_per_second": "fast"})),
            422,
            "rate_limit.messages_per_second",
        ),
        (with("enabled", json!("yes")), 422, "enabled"),
        (
            json!({"name": "s", "kind": "sns", "credentials": {"region": "Mars", "access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": AWS_SECRET}}),
            422,
            "credentials.region",
        ),
        (
            json!({"name": "s", "kind": "sns", "credentials": {"region": "eu-west-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": AWS_SECRET},
                   "senders": [{"type": "messaging_service_sid", "value": format!("MG{}", "2b".repeat(16))}]}),
            422,
            "senders[0]",
        ),
        (
            json!({"name": "sim", "kind": "simulator", "credentials": {"auth_token": "x"}}),
            400,
            "credentials.auth_token",
        ),
    ];
    for (body, status, field) in &cases {
        let (got, problem) = create(s, key, body).await;
        assert_eq!(got, *status, "{body} → {problem}");
        assert_eq!(problem["errors"][0]["field"], *field, "{body} → {problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    for raw in ["{", "[]", ""] {
        let response = s
            .client
            .post(s.url("/v1/providers"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{raw:?}");
    }
    assert_eq!(count(s, key).await, 1, "no bad request stored anything");

    let account = id(&existing);
    let patches: Vec<(Value, u16, &str)> = vec![
        (json!({"kind": "sns"}), 422, "kind"),
        (json!({"name": ""}), 422, "name"),
        (
            json!({"credentials": {"auth_token": "only-the-token"}}),
            422,
            "credentials.account_sid",
        ),
        (
            json!({"rate_limit": {"messages_per_second": 0}}),
            422,
            "rate_limit.messages_per_second",
        ),
        (
            json!({"senders": [{"type": "phone_number", "value": "+1"}], "name": "renamed"}),
            422,
            "senders[0]",
        ),
        (json!({"id": Uuid::now_v7()}), 400, "id"),
    ];
    for (body, status, field) in &patches {
        let (got, problem) = patch(s, key, &account, body).await;
        assert_eq!(
            (got, &problem["errors"][0]["field"]),
            (*status, &json!(field)),
            "{body} → {problem}"
        );
    }
    let (_, unchanged) = s.get(key, &format!("/v1/providers/{account}")).await;
    assert_eq!(unchanged, existing, "no bad change applied");
    let (status, _) = patch(s, key, "not-a-uuid", &json!({"name": "x"})).await;
    assert_eq!(status, 404);
    let (status, problem) = s.get(key, "/v1/providers?limit=0&cursor=zz").await;
    assert_eq!(status, 422, "{problem}");
    let (status, _) = s.get(key, "/v1/providers?colour=red").await;
    assert_eq!(status, 400);
}

async fn another_organization_never_sees_or_touches_an_account(s: &TestServer) {
    let (_, mine) = create(s, &s.tenant.live_key, &twilio("mine")).await;
    let path = format!("/v1/providers/{}", id(&mine));
    let other = s.other_tenant("intruder").await;
    let key = &other.live_key;

    let (status, _) = s.get(key, &path).await;
    assert_eq!(status, 404);
    let (_, page) = s.get(key, "/v1/providers").await;
    assert_eq!(page["data"], json!([]));
    let (status, _) = patch(s, key, &id(&mine), &json!({"name": "stolen"})).await;
    assert_eq!(status, 404);
    let (status, _) = delete(s, key, &path).await;
    assert_eq!(status, 404);
    let (status, problem) = put_route(s, key, "/v1/routes/US", json!([id(&mine)])).await;
    assert_eq!(
        (status, &problem["errors"][0]["field"]),
        (422, &json!("providers[0]")),
        "{problem}"
    );
    let (_, routes) = s.get(key, "/v1/routes").await;
    assert_eq!(routes["data"], json!([]));
    assert!(
        s.engine
            .provider_credentials(other.org_id, id(&mine).parse().unwrap())
            .await
            .unwrap()
            .is_none(),
        "credentials are scoped by organization too"
    );

    let (status, read) = s.get(&s.tenant.live_key, &path).await;
    assert_eq!((status, &read), (200, &mine), "untouched");
    let (status, theirs) = create(s, key, &twilio("mine")).await;
    assert_eq!(
        status, 201,
        "names are unique per organization only: {theirs}"
    );
}

async fn test_keys_may_read_but_not_change_accounts_or_routes(s: &TestServer) {
    let (_, account) = create(s, &s.tenant.live_key, &twilio("live")).await;
    let test = &s.tenant.test_key;
    let path = format!("/v1/providers/{}", id(&account));
    let (status, read) = s.get(test, &path).await;
    assert_eq!((status, &read), (200, &account));
    let (status, _) = s.get(test, "/v1/routes").await;
    assert_eq!(status, 200);

    let forbidden = [
        create(s, test, &twilio("test")).await,
        patch(s, test, &id(&account), &json!({"name": "x"})).await,
        delete(s, test, &path).await,
        put_route(s, test, "/v1/routes/default", json!([id(&account)])).await,
        delete(s, test, "/v1/routes/default").await,
    ];
    for (status, problem) in forbidden {
        assert_eq!(
            (status, &problem["type"]),
            (403, &json!("/problems/live-key-required"))
        );
    }
    assert_eq!(count(s, test).await, 1);
}

async fn routes_are_set_replaced_and_deleted_and_keep_their_accounts(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (_, a) = create(s, key, &twilio("a")).await;
    let (_, b) = create(s, key, &sns("b")).await;
    let (a, b) = (id(&a), id(&b));

    let (status, us) = put_route(s, key, "/v1/routes/US", json!([b, a])).await;
    assert_eq!(status, 200, "{us}");
    assert_eq!(
        (&us["country"], &us["prefix"], &us["providers"]),
        (&json!("US"), &Value::Null, &json!([b, a]))
    );
    let (status, sf) = put_route(s, key, "/v1/routes/US/1415", json!([a])).await;
    assert_eq!((status, &sf["prefix"]), (200, &json!("1415")), "{sf}");
    let (status, fallback) = put_route(s, key, "/v1/routes/default", json!([a])).await;
    assert_eq!(
        (status, &fallback["country"]),
        (200, &Value::Null),
        "{fallback}"
    );
    let (_, page) = s.get(key, "/v1/routes").await;
    assert_eq!(page["data"], json!([fallback, us, sf]));
    assert_eq!(page["next_cursor"], Value::Null);

    let (status, replaced) = put_route(s, key, "/v1/routes/us", json!([a])).await;
    assert_eq!(
        (status, &replaced["country"], &replaced["providers"]),
        (200, &json!("US"), &json!([a]))
    );

    let stranger = Uuid::now_v7().to_string();
    let bad: Vec<(&str, Value, u16, &str)> = vec![
        ("/v1/routes/XX", json!([a]), 422, "country"),
        ("/v1/routes/USA", json!([a]), 422, "country"),
        ("/v1/routes/US/44", json!([a]), 422, "prefix"),
        ("/v1/routes/US/14x5", json!([a]), 422, "prefix"),
        ("/v1/routes/default/1", json!([a]), 422, "prefix"),
        ("/v1/routes/GB", json!([a, stranger]), 422, "providers[1]"),
        (
            "/v1/routes/GB",
            json!([a, "not-an-id"]),
            422,
            "providers[1]",
        ),
        ("/v1/routes/GB", json!([a, a]), 422, "providers[1]"),
        ("/v1/routes/GB", json!([]), 422, "providers"),
    ];
    for (path, providers, status, field) in &bad {
        let (got, problem) = put_route(s, key, path, providers.clone()).await;
        assert_eq!(
            (got, &problem["errors"][0]["field"]),
            (*status, &json!(field)),
            "{path} → {problem}"
        );
    }
    let (status, problem) = request(
        s,
        reqwest::Method::PUT,
        key,
        "/v1/routes/GB",
        Some(&json!({"providers": [a], "weight": 1})),
    )
    .await;
    assert_eq!(
        (status, &problem["errors"][0]["field"]),
        (400, &json!("weight"))
    );
    let (status, problem) = request(
        s,
        reqwest::Method::PUT,
        key,
        "/v1/routes/GB",
        Some(&json!({})),
    )
    .await;
    assert_eq!(
        (status, &problem["errors"][0]["field"]),
        (422, &json!("providers"))
    );
    let (_, after) = s.get(key, "/v1/routes").await;
    assert_eq!(
        after["data"].as_array().unwrap().len(),
        3,
        "no bad route stored: {after}"
    );

    let (status, problem) = delete(s, key, &format!("/v1/providers/{a}")).await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &json!("/problems/provider-in-use")),
        "{problem}"
    );
    assert_eq!(problem["routes"], json!(["default", "US", "US/1415"]));
    let (status, _) = delete(s, key, "/v1/routes/US/1415").await;
    assert_eq!(status, 204);
    let (status, _) = delete(s, key, "/v1/routes/US/1415").await;
    assert_eq!(status, 404);
    let (status, _) = delete(s, key, "/v1/routes/default").await;
    assert_eq!(status, 204);
    put_route(s, key, "/v1/routes/US", json!([b])).await;
    let (status, _) = delete(s, key, &format!("/v1/providers/{a}")).await;
    assert_eq!(status, 204, "no route uses it any more");
}

async fn lists_of_accounts_are_paginated(s: &TestServer) {
    let key = &s.tenant.live_key;
    let mut created = Vec::new();
    for i in 0..7 {
        let (status, account) = create(
            s,
            key,
            &json!({"name": format!("sim {i}"), "kind": "simulator"}),
        )
        .await;
        assert_eq!(status, 201);
        created.push(id(&account));
    }
    let mut seen = Vec::new();
    let mut path = "/v1/providers?limit=3".to_owned();
    loop {
        let (status, page) = s.get(key, &path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page["data"].as_array().unwrap().iter().map(id));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/providers?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, created, "in creation order, each exactly once");
}

async fn an_idempotency_key_makes_adding_an_account_safe_to_retry(s: &TestServer) {
    let key = &s.tenant.live_key;
    let post = |body: String, idempotency: &'static str| {
        s.client
            .post(s.url("/v1/providers"))
            .bearer_auth(key)
            .header("Idempotency-Key", idempotency)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let sid = account_sid();
    let first = post(
        format!(r#"{{"name":"a","kind":"twilio","credentials":{{"account_sid":"{sid}","auth_token":"{AUTH_TOKEN}"}}}}"#),
        "add-a",
    )
    .await
    .unwrap();
    assert_eq!(first.status().as_u16(), 201);
    let location = first.headers()["location"].clone();
    let first_body = first.bytes().await.unwrap();

    let replay = post(
        format!(r#"{{ "credentials": {{"auth_token":"{AUTH_TOKEN}", "account_sid":"{sid}"}}, "kind":"twilio", "name":"a" }}"#),
        "add-a",
    )
    .await
    .unwrap();
    assert_eq!(replay.status().as_u16(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.headers()["location"], location);
    assert_eq!(
        replay.bytes().await.unwrap(),
        first_body,
        "the original response"
    );

    let other = post(r#"{"name":"b","kind":"simulator"}"#.to_owned(), "add-a")
        .await
        .unwrap();
    let (status, problem) = status_and_json(other).await;
    assert_eq!(
        (status, &problem["type"]),
        (422, &json!("/problems/idempotency-key-reused"))
    );
    let message_key = s
        .client
        .post(s.url("/v1/messages"))
        .bearer_auth(key)
        .header("Idempotency-Key", "shared")
        .json(&json!({"to": "+14155550100", "body": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(message_key.status().as_u16(), 201);
    let (status, _) = status_and_json(
        post(r#"{"name":"c","kind":"simulator"}"#.to_owned(), "shared")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "a message's key never replays as an account");
    assert_eq!(
        count(s, key).await,
        1,
        "only the first request added an account"
    );
}

/// A server without a secret key refuses credentials with secrets, and still takes simulator
/// accounts.
async fn without_a_secret_key_secrets_are_refused(backend: Backend) {
    let mut config = support::test_config();
    config.secret_key = None;
    let Some(s) = TestServer::start_with(backend, config).await else {
        return;
    };
    let key = &s.tenant.live_key;
    let (status, problem) = create(&s, key, &twilio("twilio")).await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &json!("/problems/secret-key-missing")),
        "{problem}"
    );
    assert_eq!(count(&s, key).await, 0);
    let (status, simulator) = create(&s, key, &json!({"name": "sim", "kind": "simulator"})).await;
    assert_eq!(status, 201, "{simulator}");
    let (status, problem) = patch(&s, key, &id(&simulator), &json!({"name": "renamed"})).await;
    assert_eq!((status, &problem["name"]), (200, &json!("renamed")));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_key_secrets_are_refused_on_sqlite() {
    without_a_secret_key_secrets_are_refused(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_key_secrets_are_refused_on_postgres() {
    without_a_secret_key_secrets_are_refused(Backend::Postgres).await;
}
