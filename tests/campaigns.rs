//! Campaigns through `/v1/campaigns`: create, edit and delete with bad input named by field and
//! nothing changed; the lifecycle with 409 and the current status; a campaign run to the end
//! with its books, recipients and analytics; estimates of saved and unsaved campaigns; the live
//! event stream; and a tenant wall. On both stores.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Backend, TestServer, status_and_json};

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let server = TestServer::start(super::Backend::Sqlite).await.unwrap();
                    super::$case(&server).await;
                    server.stop().await;
                }
            )*
            use super::TestServer;
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(server) = TestServer::start(super::Backend::Postgres).await else { return };
                    super::$case(&server).await;
                    server.stop().await;
                }
            )*
            use super::TestServer;
        }
    };
}

on_both_stores!(
    a_campaign_runs_to_the_end_with_balanced_books,
    an_ab_test_sends_its_winner_and_shows_it,
    bad_input_is_refused_by_field_and_changes_nothing,
    illegal_transitions_answer_409_with_the_current_status,
    estimates_count_recipients_segments_cost_and_credits,
    the_event_stream_reports_progress_and_status,
    campaigns_stay_within_their_organization,
    the_api_reference_describes_campaigns,
);

async fn post(s: &TestServer, key: &str, path: &str, body: Value) -> (u16, Value) {
    s.call(reqwest::Method::POST, key, path, Some(body)).await
}

fn phones(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("+1415555{i:04}")).collect()
}

async fn create(s: &TestServer, body: Value) -> Value {
    let (status, campaign) = post(s, &s.tenant.live_key, "/v1/campaigns", body).await;
    assert_eq!(status, 201, "{campaign}");
    campaign
}

/// Poll the campaign until it is `status`.
async fn wait_for(s: &TestServer, id: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, campaign) = s
            .get(&s.tenant.live_key, &format!("/v1/campaigns/{id}"))
            .await;
        assert_eq!(code, 200, "{campaign}");
        if campaign["status"] == status {
            return campaign;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {status}: {campaign}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_balanced(books: &Value) {
    let sum: u64 = [
        "pending",
        "sent",
        "delivered",
        "failed",
        "suppressed",
        "canceled",
    ]
    .iter()
    .map(|k| books[k].as_u64().unwrap())
    .sum();
    assert_eq!(sum, books["audience"].as_u64().unwrap(), "{books}");
}

/// An A/B test with no wait: the winner is chosen as soon as the run sends (with nothing to go
/// on yet, the first variant), everyone outside the test gets it, and the run shows it.
async fn an_ab_test_sends_its_winner_and_shows_it(s: &TestServer) {
    let key = &s.tenant.live_key;
    let campaign = create(
        s,
        json!({
            "name": "Subject lines",
            "variants": [
                {"name": "short", "body": "Hi!"},
                {"name": "long", "body": "Hello and welcome aboard!"}
            ],
            "ab_test": {"fraction": 0.1, "wait": "PT0S", "metric": "delivery_rate"},
            "audience": {"phones": phones(40)}
        }),
    )
    .await;
    assert_eq!(campaign["ab_test"]["fraction"], 0.1);
    let id = campaign["id"].as_str().unwrap();
    let (status, started) = s.post(key, &format!("/v1/campaigns/{id}/start")).await;
    assert_eq!(status, 200, "{started}");
    let done = wait_for(s, id, "completed").await;
    let run = &done["current_run"];
    assert_balanced(&run["books"]);
    assert_eq!(run["ab_winner"]["name"], "short", "{run}");
    assert_eq!(run["ab_winner"]["variant"], 0, "{run}");
    let run_id = run["id"].as_str().unwrap();
    let (status, page) = s
        .get(
            key,
            &format!("/v1/campaigns/{id}/runs/{run_id}/recipients?limit=100"),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let bodies: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies.len(), 40);
    // Only the test fraction could get the long one.
    let long = bodies.iter().filter(|b| **b != "Hi!").count();
    assert!(long < 20, "{long} of 40 got the losing variant");
}

async fn a_campaign_runs_to_the_end_with_balanced_books(s: &TestServer) {
    let key = &s.tenant.live_key;
    // One opted out: in the audience, suppressed.
    let (status, _) = post(s, key, "/v1/opt-outs", json!({"phone": "+14155559999"})).await;
    assert!(status == 200 || status == 201, "{status}");
    let mut audience = phones(20);
    audience.push("+14155559999".into());
    audience.push(audience[0].clone()); // a duplicate counts once
    let campaign = create(
        s,
        json!({
            "name": "Welcome",
            "description": "First message",
            "kind": "blast",
            "priority": "high",
            "variants": [
                {"name": "short", "body": "Hi!", "weight": 1},
                {"name": "long", "body": "Hello and welcome aboard!", "weight": 1}
            ],
            "audience": {"phones": audience},
            "throttle": {"batch_size": 5},
            "max_retries": 2
        }),
    )
    .await;
    assert_eq!(campaign["status"], "draft");
    assert_eq!(campaign["name"], "Welcome");
    assert_eq!(campaign["throttle"]["batch_size"], 5);
    let id = campaign["id"].as_str().unwrap();

    let (status, started) = s.post(key, &format!("/v1/campaigns/{id}/start")).await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["status"], "running");
    let done = wait_for(s, id, "completed").await;
    let books = &done["current_run"]["books"];
    assert_balanced(books);
    assert_eq!(books["audience"], 21, "{books}");
    assert_eq!(books["suppressed"], 1, "{books}");
    assert_eq!(books["pending"], 0, "{books}");

    let run = done["current_run"]["id"].as_str().unwrap();
    let (status, page) = s
        .get(
            key,
            &format!("/v1/campaigns/{id}/runs/{run}/recipients?limit=100"),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let rows = page["data"].as_array().unwrap();
    assert_eq!(rows.len(), 21);
    let suppressed: Vec<&Value> = rows
        .iter()
        .filter(|r| r["status"] == "suppressed")
        .collect();
    assert_eq!(suppressed.len(), 1);
    assert_eq!(suppressed[0]["reason"], "opted_out");
    for row in rows.iter().filter(|r| r["status"] != "suppressed") {
        assert!(row["message_id"].is_string(), "{row}");
        assert_eq!(row["provider"], "simulator", "{row}");
        let body = row["body"].as_str().unwrap();
        assert!(body == "Hi!" || body == "Hello and welcome aboard!");
    }

    let (status, analytics) = s
        .get(key, &format!("/v1/campaigns/{id}/analytics?bucket=hour"))
        .await;
    assert_eq!(status, 200, "{analytics}");
    assert_eq!(analytics["sent"], 20, "{analytics}");
    assert_eq!(analytics["suppressed"], 1);
    assert_eq!(analytics["variants"].as_array().unwrap().len(), 2);
    let per_variant: u64 = analytics["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["recipients"].as_u64().unwrap())
        .sum();
    assert_eq!(per_variant, 20);
    assert_eq!(analytics["providers"][0]["provider"], "simulator");
    assert!(!analytics["timeline"].as_array().unwrap().is_empty());

    // Over: it cannot be edited or started again.
    let (status, problem) = s
        .call(
            reqwest::Method::PATCH,
            key,
            &format!("/v1/campaigns/{id}"),
            Some(json!({"name": "Again"})),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["current_status"], "completed");
}

async fn bad_input_is_refused_by_field_and_changes_nothing(s: &TestServer) {
    let key = &s.tenant.live_key;
    let cases = [
        (json!({"name": "", "body": "x"}), "name"),
        (json!({"name": "n"}), "body"),
        (
            json!({"name": "n", "body": "x", "template_id": "0190f7a4-7d4e-7c4a-9a65-3c1d2e4f5a6b"}),
            "body",
        ),
        (
            json!({"name": "n", "body": "x", "audience": {"lists": ["0190f7a4-7d4e-7c4a-9a65-3c1d2e4f5a6b"]}}),
            "audience.lists[0].id",
        ),
        (
            json!({"name": "n", "body": "x", "schedule": {"at": "2030-01-01T10:00:00", "timezone": "Mars/Olympus"}}),
            "schedule.timezone",
        ),
        (
            json!({"name": "n", "body": "x", "schedule": {"at": "2030-01-01T10:00:00"}, "recurrence": {"rrule": "FREQ=MINUTELY"}}),
            "recurrence.rrule",
        ),
        (
            json!({"name": "n", "body": "x", "throttle": {"send_rate_per_minute": 0}}),
            "throttle.send_rate_per_minute",
        ),
        (
            json!({"name": "n", "variants": [{"name": "a", "body": "x"}]}),
            "variants",
        ),
        (json!({"name": "n", "body": "x", "colour": "red"}), "colour"),
        (
            json!({"name": "n", "variants": [{"name": "a", "body": "x"}, {"name": "b", "body": "y"}],
                   "ab_test": {"fraction": 0.9, "wait": "PT1H"}}),
            "ab_test.fraction",
        ),
        (
            json!({"name": "n", "variants": [{"name": "a", "body": "x"}, {"name": "b", "body": "y"}],
                   "ab_test": {"fraction": 0.1, "wait": "soon"}}),
            "ab_test.wait",
        ),
        (
            json!({"name": "n", "body": "x", "ab_test": {"fraction": 0.1, "wait": "PT1H"}}),
            "ab_test",
        ),
    ];
    for (body, field) in cases {
        let (status, problem) = post(s, key, "/v1/campaigns", body.clone()).await;
        assert_eq!(status, 422, "{body}: {problem}");
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.iter().any(|f| f.starts_with(field)),
            "{body}: {problem}"
        );
    }
    let (_, list) = s.get(key, "/v1/campaigns").await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        0,
        "nothing was stored"
    );

    // An edit that is refused leaves the campaign as it was.
    let campaign = create(s, json!({"name": "n", "body": "x"})).await;
    let id = campaign["id"].as_str().unwrap();
    let (status, problem) = s
        .call(
            reqwest::Method::PATCH,
            key,
            &format!("/v1/campaigns/{id}"),
            Some(json!({"name": "m", "throttle": {"batch_size": 0}})),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let (_, after) = s.get(key, &format!("/v1/campaigns/{id}")).await;
    assert_eq!(after["name"], "n");
    assert_eq!(after["updated_at"], campaign["updated_at"]);
    // Scheduling needs an audience and a schedule.
    let (status, problem) = s.post(key, &format!("/v1/campaigns/{id}/schedule")).await;
    assert_eq!(status, 422, "{problem}");
    let (_, after) = s.get(key, &format!("/v1/campaigns/{id}")).await;
    assert_eq!(after["status"], "draft");
}

async fn illegal_transitions_answer_409_with_the_current_status(s: &TestServer) {
    let key = &s.tenant.live_key;
    let campaign = create(
        s,
        json!({"name": "n", "body": "x", "audience": {"phones": phones(2)},
               "schedule": {"at": "2099-01-01T09:00:00", "timezone": "Europe/Paris"}}),
    )
    .await;
    let id = campaign["id"].as_str().unwrap();
    for action in ["pause", "resume"] {
        let (status, problem) = s.post(key, &format!("/v1/campaigns/{id}/{action}")).await;
        assert_eq!(status, 409, "{action}: {problem}");
        assert_eq!(problem["current_status"], "draft");
        assert_eq!(
            problem["type"].as_str().unwrap().rsplit('/').next(),
            Some("campaign-state")
        );
    }
    let (status, scheduled) = s.post(key, &format!("/v1/campaigns/{id}/schedule")).await;
    assert_eq!(status, 200, "{scheduled}");
    assert_eq!(scheduled["status"], "scheduled");
    assert_eq!(scheduled["next_run_at"], "2099-01-01T08:00:00Z");
    assert_eq!(scheduled["next_occurrences"][0], "2099-01-01T08:00:00Z");
    let (status, problem) = s.post(key, &format!("/v1/campaigns/{id}/schedule")).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["current_status"], "scheduled");
    let (status, cancelled) = s.post(key, &format!("/v1/campaigns/{id}/cancel")).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    for action in ["schedule", "start", "pause", "resume", "cancel"] {
        let (status, problem) = s.post(key, &format!("/v1/campaigns/{id}/{action}")).await;
        assert_eq!(status, 409, "{action}: {problem}");
        assert_eq!(problem["current_status"], "cancelled");
    }
    let (status, _) = s
        .call(
            reqwest::Method::DELETE,
            key,
            &format!("/v1/campaigns/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = s.get(key, &format!("/v1/campaigns/{id}")).await;
    assert_eq!(status, 404);
}

async fn estimates_count_recipients_segments_cost_and_credits(s: &TestServer) {
    let key = &s.tenant.live_key;
    let mut audience = phones(10);
    audience.push(audience[1].clone());
    audience.push("not a number".into());
    let body = json!({
        "name": "Estimate me",
        "variants": [
            {"name": "one", "body": "short", "weight": 1},
            {"name": "two", "body": "x".repeat(200), "weight": 1}
        ],
        "audience": {"phones": audience}
    });
    let (status, estimate) = post(s, key, "/v1/campaigns/estimate", body.clone()).await;
    assert_eq!(status, 200, "{estimate}");
    assert_eq!(estimate["audience"], 10, "{estimate}");
    assert_eq!(estimate["recipients"], 10);
    assert_eq!(estimate["duplicates"], 1);
    assert_eq!(estimate["invalid"], 1);
    let variants = estimate["variants"].as_array().unwrap();
    let one = variants[0]["recipients"].as_u64().unwrap();
    let two = variants[1]["recipients"].as_u64().unwrap();
    assert_eq!(one + two, 10);
    // 200 GSM characters are two segments.
    assert_eq!(variants[1]["segments"].as_u64().unwrap(), 2 * two);
    assert_eq!(estimate["segments"].as_u64().unwrap(), one + 2 * two);
    assert_eq!(estimate["by_country"][0]["country"], "US");
    assert_eq!(estimate["credits"]["balance_ok"], true);
    // Nothing stored by an estimate.
    let (_, list) = s.get(key, "/v1/campaigns").await;
    assert!(list["data"].as_array().unwrap().is_empty());
    // A saved campaign estimates the same split (its id fixes the assignment).
    let campaign = create(s, body).await;
    let id = campaign["id"].as_str().unwrap();
    let (status, saved) = post(s, key, &format!("/v1/campaigns/{id}/estimate"), json!({})).await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["recipients"], 10);
}

async fn the_event_stream_reports_progress_and_status(s: &TestServer) {
    let key = &s.tenant.live_key;
    let campaign = create(
        s,
        json!({"name": "Live", "body": "x", "audience": {"phones": phones(30)},
               "throttle": {"send_rate_per_minute": 600, "batch_size": 10}}),
    )
    .await;
    let id = campaign["id"].as_str().unwrap().to_owned();
    let response = s
        .client
        .get(s.url(&format!("/v1/campaigns/{id}/events")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (status, _) = s.post(key, &format!("/v1/campaigns/{id}/start")).await;
    assert_eq!(status, 200);
    let mut response = response;
    let mut text = String::new();
    let mut statuses = Vec::new();
    let mut progress = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            let name = event
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or_default()
                .to_owned();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let data: Value = serde_json::from_str(data).unwrap();
            assert_balanced(&data["books"]);
            match name.as_str() {
                "status" => statuses.push(data["status"].as_str().unwrap().to_owned()),
                "progress" => progress += 1,
                _ => {}
            }
        }
    }
    assert!(statuses.contains(&"running".to_owned()), "{statuses:?}");
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("completed"),
        "{statuses:?}"
    );
    // 30 at 600 a minute take about three seconds: progress came every second meanwhile.
    assert!(progress >= 3, "{progress} progress events");
}

async fn campaigns_stay_within_their_organization(s: &TestServer) {
    let campaign = create(
        s,
        json!({"name": "Mine", "body": "x", "audience": {"phones": phones(1)}}),
    )
    .await;
    let id = campaign["id"].as_str().unwrap();
    let other = s.other_tenant("globex").await;
    let key = &other.live_key;
    for path in [
        format!("/v1/campaigns/{id}"),
        format!("/v1/campaigns/{id}/analytics"),
        format!("/v1/campaigns/{id}/runs"),
        format!("/v1/campaigns/{id}/events"),
    ] {
        let (status, problem) = s.get(key, &path).await;
        assert_eq!(status, 404, "{path}: {problem}");
    }
    for action in ["schedule", "start", "pause", "resume", "cancel", "estimate"] {
        let (status, _) = s.post(key, &format!("/v1/campaigns/{id}/{action}")).await;
        assert_eq!(status, 404, "{action}");
    }
    let (status, _) = s
        .call(
            reqwest::Method::PATCH,
            key,
            &format!("/v1/campaigns/{id}"),
            Some(json!({"name": "theirs"})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .call(
            reqwest::Method::DELETE,
            key,
            &format!("/v1/campaigns/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (_, list) = s.get(key, "/v1/campaigns").await;
    assert!(list["data"].as_array().unwrap().is_empty());
    // A campaign cannot reach another organization's list either.
    let (status, list) = post(s, &s.tenant.live_key, "/v1/lists", json!({"name": "vip"})).await;
    assert_eq!(status, 201, "{list}");
    let (status, problem) = post(
        s,
        key,
        "/v1/campaigns",
        json!({"name": "n", "body": "x", "audience": {"lists": [list["id"]]}}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "audience.lists[0].id");
    // And the owner's is untouched.
    let (_, mine) = s
        .get(&s.tenant.live_key, &format!("/v1/campaigns/{id}"))
        .await;
    assert_eq!(mine["name"], "Mine");
    assert_eq!(mine["status"], "draft");
}

async fn the_api_reference_describes_campaigns(s: &TestServer) {
    let response = s.client.get(s.url("/openapi.json")).send().await.unwrap();
    let (_, doc) = status_and_json(response).await;
    for path in [
        "/v1/campaigns",
        "/v1/campaigns/{id}",
        "/v1/campaigns/{id}/pause",
        "/v1/campaigns/{id}/estimate",
        "/v1/campaigns/estimate",
        "/v1/campaigns/{id}/analytics",
        "/v1/campaigns/{id}/events",
        "/v1/campaigns/{id}/runs/{run_id}/recipients",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    let _ = Backend::Sqlite;
}
