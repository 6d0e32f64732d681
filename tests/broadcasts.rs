//! Broadcasts through `/v1/broadcasts`: a mixed recipient set whose counts add up exactly
//! (duplicates, invalid, opted-out, not-permitted numbers), consent for promotional sends,
//! personalised template bodies listed by `broadcast_id`, 402 with nothing queued when credits
//! do not cover it, bad input named by field, a tenant wall, and a background broadcast over a
//! segment of 3,000 imported contacts, and cancellation. On both stores.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Backend, TestServer, status_and_json, test_config};

const OPERATOR: &str = "operator-token-for-broadcast-tests-0123456789";

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
    a_mixed_broadcast_counts_every_recipient_exactly_once,
    a_promotional_broadcast_reaches_only_contacts_who_consented,
    a_broadcast_the_credits_do_not_cover_is_refused_and_queues_nothing,
    bad_input_is_refused_by_field_and_stores_nothing,
    broadcasts_stay_within_their_organization,
    a_segment_of_thousands_is_resolved_in_the_background,
    a_background_broadcast_stops_at_the_first_batch_the_credits_refuse,
    the_api_reference_describes_broadcasts,
    numbers_repeated_across_batches_are_counted_as_duplicates,
    canceling_a_broadcast_cancels_its_unsent_messages_and_releases_their_credits,
);

async fn start(backend: Backend) -> Option<TestServer> {
    let mut config = test_config();
    config.operator_token = Some(herald_engine::keys::hash(OPERATOR));
    TestServer::start_with(backend, config).await
}

async fn post(s: &TestServer, key: &str, path: &str, body: Value) -> (u16, Value) {
    let response = s
        .client
        .post(s.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    status_and_json(response).await
}

async fn contact(s: &TestServer, key: &str, body: Value) -> String {
    let (status, created) = post(s, key, "/v1/contacts", body).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

fn counts(broadcast: &Value) -> Value {
    broadcast["counts"].clone()
}

/// The counts add up: every recipient resolved is in exactly one outcome.
fn assert_adds_up(broadcast: &Value) {
    let c = &broadcast["counts"];
    let sum: u64 = [
        "queued",
        "duplicates",
        "invalid",
        "opted_out",
        "no_consent",
        "not_permitted",
        "not_sent",
    ]
    .iter()
    .map(|k| c[k].as_u64().unwrap())
    .sum();
    assert_eq!(sum, c["requested"].as_u64().unwrap(), "{broadcast}");
}

/// Poll until the broadcast is no longer `resolving`.
async fn finished(s: &TestServer, key: &str, id: &str) -> Value {
    for _ in 0..600 {
        let (status, broadcast) = s.get(key, &format!("/v1/broadcasts/{id}")).await;
        assert_eq!(status, 200, "{broadcast}");
        assert_adds_up(&broadcast);
        if broadcast["status"] != "resolving" {
            return broadcast;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("broadcast {id} never finished resolving");
}

/// Every message of a broadcast, as `(to, body)`, sorted.
async fn messages_of(s: &TestServer, key: &str, id: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/messages?broadcast_id={id}&limit=100&cursor={c}"),
            None => format!("/v1/messages?broadcast_id={id}&limit=100"),
        };
        let (status, page) = s.get(key, &path).await;
        assert_eq!(status, 200, "{page}");
        for m in page["data"].as_array().unwrap() {
            assert_eq!(m["broadcast_id"], id, "{m}");
            out.push((
                m["to"].as_str().unwrap().to_owned(),
                m["body"].as_str().unwrap().to_owned(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    out.sort();
    out
}

async fn a_mixed_broadcast_counts_every_recipient_exactly_once(s: &TestServer) {
    let key = &s.tenant.live_key;
    let ann = contact(
        s,
        key,
        json!({"phone": "+14155550101", "first_name": "Ann"}),
    )
    .await;
    let bob = contact(
        s,
        key,
        json!({"phone": "+14155550102", "first_name": "Bob"}),
    )
    .await;
    let cid = contact(
        s,
        key,
        json!({"phone": "+14155550103", "first_name": "Cid"}),
    )
    .await;
    let (status, list) = post(s, key, "/v1/lists", json!({"name": "Course"})).await;
    assert_eq!(status, 201, "{list}");
    let list_id = list["id"].as_str().unwrap();
    let (status, added) = post(
        s,
        key,
        &format!("/v1/lists/{list_id}/members"),
        json!({"contact_ids": [ann, cid]}),
    )
    .await;
    assert_eq!(status, 200, "{added}");
    let (status, _) = post(s, key, "/v1/opt-outs", json!({"phone": "+14155550104"})).await;
    assert!(status == 200 || status == 201, "{status}");
    let (status, template) = post(
        s,
        key,
        "/v1/templates",
        json!({"name": "sale", "body": "Hi {{first_name | default: \"there\"}}, the sale ends {{day}}"}),
    )
    .await;
    assert_eq!(status, 201, "{template}");

    let (status, broadcast) = post(
        s,
        key,
        "/v1/broadcasts",
        json!({
            "template_id": template["id"],
            "variables": {"day": "Friday"},
            "recipients": [
                {"type": "phone", "phone": "(415) 555-0101"},
                {"type": "contact", "id": ann},
                {"type": "list", "id": list_id},
                {"type": "phone", "phone": "12345"},
                {"type": "phone", "phone": "+14155550104"},
                {"type": "phone", "phone": "+81312345678"},
                {"type": "contact", "id": bob},
                {"type": "phone", "phone": "+14155550199"},
            ],
        }),
    )
    .await;
    assert_eq!(status, 202, "{broadcast}");
    assert_adds_up(&broadcast);
    let id = broadcast["id"].as_str().unwrap();
    let done = finished(s, key, id).await;
    assert_eq!(done["status"], "queued", "{done}");
    assert_eq!(
        counts(&done),
        json!({"requested": 9, "queued": 4, "duplicates": 2, "invalid": 1, "opted_out": 1,
               "no_consent": 0, "not_permitted": 1, "not_sent": 0})
    );
    assert_eq!(
        messages_of(s, key, id).await,
        vec![
            ("+14155550101".into(), "Hi Ann, the sale ends Friday".into()),
            ("+14155550102".into(), "Hi Bob, the sale ends Friday".into()),
            ("+14155550103".into(), "Hi Cid, the sale ends Friday".into()),
            (
                "+14155550199".into(),
                "Hi there, the sale ends Friday".into()
            ),
        ]
    );
    assert_eq!(s.message_count().await, 4);

    // Listed with the others, newest first.
    let (status, page) = s.get(key, "/v1/broadcasts").await;
    assert_eq!(status, 200);
    assert_eq!(page["data"][0]["id"], id);
}

async fn a_promotional_broadcast_reaches_only_contacts_who_consented(s: &TestServer) {
    let key = &s.tenant.live_key;
    let ann = contact(
        s,
        key,
        json!({"phone": "+14155550101", "first_name": "Ann", "consent": true}),
    )
    .await;
    let bob = contact(s, key, json!({"phone": "+14155550102", "consent": false})).await;
    let (status, broadcast) = post(
        s,
        key,
        "/v1/broadcasts",
        json!({
            "type": "promotional",
            "body": "20% off this week",
            "recipients": [
                {"type": "contact", "id": ann},
                {"type": "contact", "id": bob},
                {"type": "phone", "phone": "+14155550199"},
                {"type": "phone", "phone": "+14155550101"},
            ],
        }),
    )
    .await;
    assert_eq!(status, 202, "{broadcast}");
    // Small enough to be resolved before the answer.
    assert_eq!(broadcast["status"], "queued", "{broadcast}");
    assert_eq!(
        counts(&broadcast),
        json!({"requested": 4, "queued": 1, "duplicates": 1, "invalid": 0, "opted_out": 0,
               "no_consent": 2, "not_permitted": 0, "not_sent": 0})
    );
    let id = broadcast["id"].as_str().unwrap();
    assert_eq!(
        messages_of(s, key, id).await,
        vec![("+14155550101".into(), "20% off this week".into())]
    );
    let (_, read) = s.get(key, &format!("/v1/broadcasts/{id}")).await;
    assert_eq!(counts(&read), counts(&broadcast));
}

async fn a_broadcast_the_credits_do_not_cover_is_refused_and_queues_nothing(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (status, granted) = post(
        s,
        OPERATOR,
        "/v1/credits",
        json!({"organization_id": s.tenant.org_id, "credits": 2, "reason": "top-up"}),
    )
    .await;
    assert_eq!(status, 201, "{granted}");
    let request = json!({
        "body": "Hello",
        "recipients": [
            {"type": "phone", "phone": "+14155550101"},
            {"type": "phone", "phone": "+14155550102"},
            {"type": "phone", "phone": "+14155550103"},
        ],
    });
    let (status, problem) = post(s, key, "/v1/broadcasts", request.clone()).await;
    assert_eq!(status, 402, "{problem}");
    assert_eq!(s.message_count().await, 0);
    let (_, page) = s.get(key, "/v1/broadcasts").await;
    assert_eq!(page["data"], json!([]));
    let (_, account) = s.get(key, "/v1/credits").await;
    assert_eq!(account["reserved"], 0, "{account}");

    // Within the balance it goes through, and a retry with its key answers the same broadcast.
    let two = json!({
        "body": "Hello",
        "recipients": [
            {"type": "phone", "phone": "+14155550101"},
            {"type": "phone", "phone": "+14155550102"},
        ],
    });
    let send = || {
        s.client
            .post(s.url("/v1/broadcasts"))
            .bearer_auth(key)
            .header("Idempotency-Key", "spring-sale")
            .json(&two)
            .send()
    };
    let (status, first) = status_and_json(send().await.unwrap()).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["counts"]["queued"], 2);
    let response = send().await.unwrap();
    assert_eq!(
        response
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("true".into())
    );
    let (status, again) = status_and_json(response).await;
    assert_eq!((status, &again["id"]), (202, &first["id"]));
    assert_eq!(s.message_count().await, 2);
}

async fn bad_input_is_refused_by_field_and_stores_nothing(s: &TestServer) {
    let key = &s.tenant.live_key;
    let other = s.other_tenant("globex").await;
    let theirs = contact(s, &other.live_key, json!({"phone": "+14155550101"})).await;
    let fields = |problem: &Value| -> Vec<(String, String)> {
        problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["field"].as_str().unwrap().to_owned(),
                    e["code"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let cases = [
        (
            json!({"body": "x", "recipients": []}),
            vec![("recipients", "required")],
        ),
        (
            json!({"recipients": [{"type": "phone", "phone": "+14155550101"}]}),
            vec![("body", "body_or_template")],
        ),
        (
            json!({"body": "x", "recipients": [
                {"type": "phone", "phone": "+14155550101"},
                {"type": "fax", "number": "1"},
                {"type": "contact", "id": "nope"},
                {"type": "list"},
                {"type": "phone", "phone": "+14155550101", "extra": 1},
            ]}),
            vec![
                ("recipients[1].type", "invalid_type"),
                ("recipients[2].id", "invalid_id"),
                ("recipients[3].id", "required"),
                ("recipients[4].extra", "unknown_field"),
            ],
        ),
        (
            json!({"body": "x", "recipients": [
                {"type": "phone", "phone": "+14155550101"},
                {"type": "contact", "id": theirs},
                {"type": "segment", "id": uuid::Uuid::now_v7()},
                {"type": "lead_status", "status": "astronaut"},
            ]}),
            vec![
                ("recipients[1].id", "unknown_contact"),
                ("recipients[2].id", "unknown_segment"),
                ("recipients[3].status", "unknown_lead_status"),
            ],
        ),
        (
            json!({"body": "x", "send_at": "tomorrow",
                   "recipients": [{"type": "phone", "phone": "+14155550101"}]}),
            vec![("send_at", "invalid_datetime")],
        ),
    ];
    for (body, expected) in cases {
        let (status, problem) = post(s, key, "/v1/broadcasts", body.clone()).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(
            problem["type"]
                .as_str()
                .map(|t| t.ends_with("validation-failed")),
            Some(true)
        );
        let expected: Vec<(String, String)> = expected
            .into_iter()
            .map(|(f, c)| (f.to_owned(), c.to_owned()))
            .collect();
        assert_eq!(fields(&problem), expected, "{body}");
    }
    // A template variable nothing can fill, for bare numbers of no contact.
    let (_, template) = post(
        s,
        key,
        "/v1/templates",
        json!({"name": "code", "body": "Your code is {{code}}"}),
    )
    .await;
    let (status, problem) = post(
        s,
        key,
        "/v1/broadcasts",
        json!({"template_id": template["id"],
               "recipients": [{"type": "phone", "phone": "+14155550150"}]}),
    )
    .await;
    assert_eq!((status, fields(&problem)[0].0.as_str()), (422, "variables"));
    let (status, _) = post(
        s,
        key,
        "/v1/broadcasts",
        json!({"body": "x", "recipients": [], "colour": "red"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(s.message_count().await, 0);
    let (_, page) = s.get(key, "/v1/broadcasts").await;
    assert_eq!(page["data"], json!([]));
}

async fn broadcasts_stay_within_their_organization(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (status, broadcast) = post(
        s,
        key,
        "/v1/broadcasts",
        json!({"body": "Hello", "recipients": [{"type": "phone", "phone": "+14155550101"}]}),
    )
    .await;
    assert_eq!(status, 202, "{broadcast}");
    let id = broadcast["id"].as_str().unwrap();
    let other = s.other_tenant("globex").await;
    let (status, problem) = s
        .get(&other.live_key, &format!("/v1/broadcasts/{id}"))
        .await;
    assert_eq!(status, 404, "{problem}");
    let (_, page) = s.get(&other.live_key, "/v1/broadcasts").await;
    assert_eq!(page["data"], json!([]));
    let (_, page) = s
        .get(&other.live_key, &format!("/v1/messages?broadcast_id={id}"))
        .await;
    assert_eq!(page["data"], json!([]));
    // Test keys see test traffic only.
    let (status, _) = s
        .get(&s.tenant.test_key, &format!("/v1/broadcasts/{id}"))
        .await;
    assert_eq!(status, 404);
    assert_eq!(s.get(key, "/v1/broadcasts/not-an-id").await.0, 404);

    // A test key's broadcast is test traffic: its messages only reach the simulator, and live
    // keys do not see it.
    let test_key = &s.tenant.test_key;
    let (status, test) = post(
        s,
        test_key,
        "/v1/broadcasts",
        json!({"body": "Hello", "recipients": [{"type": "phone", "phone": "+14155550102"}]}),
    )
    .await;
    assert_eq!((status, &test["mode"]), (202, &json!("test")), "{test}");
    let test_id = test["id"].as_str().unwrap();
    assert_eq!(
        messages_of(s, test_key, test_id).await,
        vec![("+14155550102".into(), "Hello".into())]
    );
    assert_eq!(
        s.get(key, &format!("/v1/broadcasts/{test_id}")).await.0,
        404
    );
    let (status, _) = s.get(key, "/v1/messages?broadcast_id=nope").await;
    assert_eq!(status, 422);
}

async fn a_segment_of_thousands_is_resolved_in_the_background(s: &TestServer) {
    let key = &s.tenant.live_key;
    let mut csv = String::from("phone,first_name,group\n");
    for i in 0..3_000 {
        csv.push_str(&format!("+1415300{i:04},P{i},bulk\n"));
    }
    // Two rows that are not in the segment.
    csv.push_str("+14153010000,Out,other\n+14153010001,Out2,other\n");
    let response = s
        .client
        .post(s.url("/v1/contacts/imports?map=group:custom.group"))
        .bearer_auth(key)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    let (status, report) = status_and_json(response).await;
    assert_eq!(status, 201, "{report}");
    assert_eq!(report["created"], 3_002, "{report}");
    let (status, segment) = post(
        s,
        key,
        "/v1/segments",
        json!({"name": "bulk", "rule": {"field": "custom.group", "op": "eq", "value": "bulk"}}),
    )
    .await;
    assert_eq!(status, 201, "{segment}");
    let (status, _) = post(s, key, "/v1/opt-outs", json!({"phone": "+14153000007"})).await;
    assert!(status == 200 || status == 201);

    let (status, broadcast) = post(
        s,
        key,
        "/v1/broadcasts",
        json!({"body": "Hello {{first_name}}",
        "recipients": [
            {"type": "segment", "id": segment["id"]},
            {"type": "phone", "phone": "+14153000001"},
        ]}),
    )
    .await;
    assert_eq!(status, 202, "{broadcast}");
    assert_eq!(broadcast["status"], "resolving");
    let id = broadcast["id"].as_str().unwrap();
    let done = finished(s, key, id).await;
    assert_eq!(done["status"], "queued", "{done}");
    assert_eq!(
        counts(&done),
        json!({"requested": 3_001, "queued": 2_999, "duplicates": 1, "invalid": 0,
               "opted_out": 1, "no_consent": 0, "not_permitted": 0, "not_sent": 0})
    );
    assert_eq!(s.message_count().await, 2_999);
    let listed = messages_of(s, key, id).await;
    assert_eq!(listed.len(), 2_999);
    assert!(!listed.iter().any(|(to, _)| to == "+14153000007"));
}

async fn a_background_broadcast_stops_at_the_first_batch_the_credits_refuse(s: &TestServer) {
    let key = &s.tenant.live_key;
    let mut csv = String::from("phone,lead_status\n");
    for i in 0..2_500 {
        csv.push_str(&format!("+1415300{i:04},new\n"));
    }
    let response = s
        .client
        .post(s.url("/v1/contacts/imports"))
        .bearer_auth(key)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    let (status, report) = status_and_json(response).await;
    assert_eq!(
        (status, &report["created"]),
        (201, &json!(2_500)),
        "{report}"
    );
    let (status, granted) = post(
        s,
        OPERATOR,
        "/v1/credits",
        json!({"organization_id": s.tenant.org_id, "credits": 1_500}),
    )
    .await;
    assert_eq!(status, 201, "{granted}");

    let (status, broadcast) = post(
        s,
        key,
        "/v1/broadcasts",
        json!({"body": "Hello", "recipients": [{"type": "lead_status", "status": "new"}]}),
    )
    .await;
    assert_eq!(status, 202, "{broadcast}");
    let id = broadcast["id"].as_str().unwrap();
    let done = finished(s, key, id).await;
    // The first batch of 1,000 fits; the second does not and stops the broadcast: it is
    // counted not sent, and the last 500 contacts are never resolved.
    assert_eq!(done["status"], "partially_queued", "{done}");
    assert_eq!(done["error"], "insufficient_credits");
    assert_eq!(
        counts(&done),
        json!({"requested": 2_000, "queued": 1_000, "duplicates": 0, "invalid": 0,
               "opted_out": 0, "no_consent": 0, "not_permitted": 0, "not_sent": 1_000})
    );
    assert!(done["finished_at"].is_string());
    assert_eq!(s.message_count().await, 1_000);
    // The queued thousand hold (or, once sent, used) their credits; nothing else does.
    let (_, account) = s.get(key, "/v1/credits").await;
    assert_eq!(account["available"], 500, "{account}");
}

async fn the_api_reference_describes_broadcasts(s: &TestServer) {
    let openapi: Value = s
        .client
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let post = &openapi["paths"]["/v1/broadcasts"]["post"];
    assert!(post["responses"]["202"].is_object(), "{post}");
    assert!(post["responses"]["402"].is_object(), "{post}");
    assert!(openapi["paths"]["/v1/broadcasts"]["get"].is_object());
    assert!(openapi["paths"]["/v1/broadcasts/{id}"]["get"].is_object());
    assert!(openapi["paths"]["/v1/broadcasts/{id}/cancel"]["post"]["responses"]["409"].is_object());
    assert!(openapi["components"]["schemas"]["BroadcastView"].is_object());
    let params = openapi["paths"]["/v1/messages"]["get"]["parameters"]
        .as_array()
        .unwrap();
    assert!(params.iter().any(|p| p["name"] == "broadcast_id"));
}

async fn numbers_repeated_across_batches_are_counted_as_duplicates(s: &TestServer) {
    let key = &s.tenant.live_key;
    // 1,500 entries: more than one batch, so resolved in the background; the last 300 repeat
    // numbers of the first batch in another format.
    let mut recipients: Vec<Value> = (0..1_200)
        .map(|i| json!({"type": "phone", "phone": format!("+1415300{i:04}")}))
        .collect();
    recipients
        .extend((0..300).map(|i| json!({"type": "phone", "phone": format!("(415) 300-{i:04}")})));
    let (status, broadcast) = post(
        s,
        key,
        "/v1/broadcasts",
        json!({"body": "Hello", "recipients": recipients}),
    )
    .await;
    assert_eq!(status, 202, "{broadcast}");
    assert_eq!(broadcast["status"], "resolving");
    let done = finished(s, key, broadcast["id"].as_str().unwrap()).await;
    assert_eq!(
        counts(&done),
        json!({"requested": 1_500, "queued": 1_200, "duplicates": 300, "invalid": 0,
               "opted_out": 0, "no_consent": 0, "not_permitted": 0, "not_sent": 0})
    );
    assert_eq!(s.message_count().await, 1_200);
}

async fn canceling_a_broadcast_cancels_its_unsent_messages_and_releases_their_credits(
    s: &TestServer,
) {
    let key = &s.tenant.live_key;
    let (status, _) = post(
        s,
        OPERATOR,
        "/v1/credits",
        json!({"organization_id": s.tenant.org_id, "credits": 10}),
    )
    .await;
    assert_eq!(status, 201);
    let send_at = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(2)).to_string();
    let (status, broadcast) = post(
        s,
        key,
        "/v1/broadcasts",
        json!({"body": "Tomorrow's class is moved", "send_at": send_at, "recipients": [
            {"type": "phone", "phone": "+14155550101"},
            {"type": "phone", "phone": "+14155550102"},
            {"type": "phone", "phone": "+14155550103"},
        ]}),
    )
    .await;
    assert_eq!(
        (status, &broadcast["status"]),
        (202, &json!("queued")),
        "{broadcast}"
    );
    let id = broadcast["id"].as_str().unwrap();
    let (_, account) = s.get(key, "/v1/credits").await;
    assert_eq!(account["reserved"], 3, "{account}");

    // Another organization cannot see it, let alone cancel it.
    let other = s.other_tenant("globex").await;
    let path = format!("/v1/broadcasts/{id}/cancel");
    let (status, problem) = post(s, &other.live_key, &path, json!({})).await;
    assert_eq!(status, 404, "{problem}");
    assert_eq!(
        post(s, key, "/v1/broadcasts/not-an-id/cancel", json!({}))
            .await
            .0,
        404
    );

    let (status, canceled) = post(s, key, &path, json!({})).await;
    assert_eq!(status, 200, "{canceled}");
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(canceled["canceled"], 3);
    assert!(canceled["finished_at"].is_string(), "{canceled}");
    // The counts still say what was queued; the cancellation is counted beside them.
    assert_eq!(canceled["counts"]["queued"], 3);
    assert_adds_up(&canceled);
    let (_, page) = s.get(key, &format!("/v1/messages?broadcast_id={id}")).await;
    let statuses: Vec<&Value> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["status"])
        .collect();
    assert_eq!(statuses, vec!["canceled"; 3], "{page}");
    let (_, account) = s.get(key, "/v1/credits").await;
    assert_eq!(
        (&account["reserved"], &account["balance"]),
        (&json!(0), &json!(10)),
        "{account}"
    );

    // Canceling again changes nothing.
    let (status, again) = post(s, key, &path, json!({})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["canceled"], 3);

    // A broadcast that failed before queueing anything has nothing to cancel.
    let mut csv = String::from("phone,lead_status\n");
    for i in 0..20 {
        csv.push_str(&format!("+1415301{i:04},lost\n"));
    }
    let response = s
        .client
        .post(s.url("/v1/contacts/imports"))
        .bearer_auth(key)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_json(response).await.0, 201);
    let (status, big) = post(
        s,
        key,
        "/v1/broadcasts",
        json!({"body": "x".repeat(1_000), "recipients": [{"type": "lead_status", "status": "lost"}]}),
    )
    .await;
    assert_eq!(status, 202, "{big}");
    let failed = finished(s, key, big["id"].as_str().unwrap()).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let (status, problem) = post(
        s,
        key,
        &format!("/v1/broadcasts/{}/cancel", big["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["current_status"], "failed", "{problem}");
}
