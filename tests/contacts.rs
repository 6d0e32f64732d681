//! Contacts through `/v1/contacts`: CRUD with filters and a tenant wall, creations replayed by
//! their `Idempotency-Key`, bad input that changes nothing, CSV import with an exact per-row
//! report, export that imports back, and a GDPR export and erasure after which the number is
//! nowhere in the database. On both stores.

mod support;

use herald_store::InboundMessage;
use serde_json::{Value, json};
use sqlx::Row;
use support::{Backend, TestServer};
use uuid::Uuid;

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
    contacts_are_created_listed_changed_and_deleted_within_their_organization,
    an_idempotency_key_replays_a_contact_creation_and_makes_no_second_contact,
    bad_input_is_refused_field_by_field_and_changes_nothing,
    an_import_reports_exactly_its_broken_rows_and_merges_the_rest,
    an_import_with_an_unusable_header_imports_nothing,
    an_export_imports_back_into_the_same_contacts,
    an_erased_person_leaves_no_number_anywhere_in_the_database,
);

async fn create(s: &TestServer, key: &str, body: Value) -> (u16, Value) {
    s.call(reqwest::Method::POST, key, "/v1/contacts", Some(body))
        .await
}

/// A creation with an `Idempotency-Key`, its body sent as written.
async fn create_with_key(
    s: &TestServer,
    key: &str,
    idempotency_key: &str,
    body: &str,
) -> reqwest::Response {
    s.client
        .post(s.url("/v1/contacts"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("Idempotency-Key", idempotency_key)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn import(s: &TestServer, key: &str, query: &str, csv: &str) -> (u16, Value) {
    let response = s
        .client
        .post(s.url(&format!("/v1/contacts/imports{query}")))
        .bearer_auth(key)
        .header("content-type", "text/csv")
        .body(csv.to_owned())
        .send()
        .await
        .unwrap();
    support::status_and_json(response).await
}

fn field_codes(problem: &Value) -> Vec<(String, String)> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    (
                        e["field"].as_str().unwrap().to_owned(),
                        e["code"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn all_contacts(s: &TestServer, key: &str) -> Vec<Value> {
    let (status, page) = s.get(key, "/v1/contacts?limit=100").await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().unwrap().clone()
}

async fn contacts_are_created_listed_changed_and_deleted_within_their_organization(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (status, ada) = create(
        s,
        key,
        json!({"phone": "(415) 555-0100", "first_name": "Ada", "last_name": "Lovelace",
               "email": "Ada@Example.com", "time_zone": "Europe/London", "language": "en",
               "tags": ["vip", "course-a"], "custom": {"total_sales": 52000},
               "consent": true, "consent_source": "web form"}),
    )
    .await;
    assert_eq!(status, 201, "{ada}");
    assert_eq!(ada["phone"], "+14155550100");
    assert_eq!(ada["country"], "US");
    assert_eq!(ada["email"], "ada@example.com");
    assert_eq!(ada["lead_status"], "new");
    assert_eq!(ada["tags"], json!(["course-a", "vip"]));
    assert_eq!(ada["consent"], true);
    assert_eq!(ada["consent_source"], "web form");
    assert!(ada["consent_at"].is_string());
    let id = ada["id"].as_str().unwrap();

    let (status, bob) = create(
        s,
        key,
        json!({"phone": "+14155550101", "first_name": "Bob", "lead_status": "customer"}),
    )
    .await;
    assert_eq!(status, 201, "{bob}");

    let (status, page) = s.get(key, "/v1/contacts?tag=vip").await;
    assert_eq!(status, 200);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["id"], id);
    let (_, page) = s.get(key, "/v1/contacts?lead_status=customer").await;
    assert_eq!(page["data"][0]["id"], bob["id"]);
    let (_, page) = s.get(key, "/v1/contacts?q=LOVE").await;
    assert_eq!(page["data"][0]["id"], id);
    let (_, page) = s.get(key, "/v1/contacts?limit=1").await;
    assert_eq!(page["data"][0]["id"], id, "oldest first");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = s
        .get(key, &format!("/v1/contacts?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(rest["data"][0]["id"], bob["id"]);
    assert!(rest["next_cursor"].is_null());

    let (status, changed) = s.call(reqwest::Method::PATCH,
        key,
        &format!("/v1/contacts/{id}"),
        Some(json!({"last_name": null, "custom": {"city": "London"}, "lead_status": "qualified"})),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert!(changed["last_name"].is_null());
    assert_eq!(
        changed["custom"],
        json!({"total_sales": 52000, "city": "London"})
    );
    assert_eq!(changed["first_name"], "Ada", "fields left out stay");
    let (_, read) = s.get(key, &format!("/v1/contacts/{id}")).await;
    assert_eq!(read, changed);

    // Another organization's key sees none of it.
    let other = s.other_tenant("globex").await;
    let path = format!("/v1/contacts/{id}");
    assert_eq!(s.get(&other.live_key, &path).await.0, 404);
    assert_eq!(
        s.call(
            reqwest::Method::PATCH,
            &other.live_key,
            &path,
            Some(json!({"first_name": "X"}))
        )
        .await
        .0,
        404
    );
    assert_eq!(
        s.call(reqwest::Method::DELETE, &other.live_key, &path, None)
            .await
            .0,
        404
    );
    assert_eq!(
        s.get(&other.live_key, &format!("{path}/export")).await.0,
        404
    );
    assert!(all_contacts(s, &other.live_key).await.is_empty());
    let (status, theirs) = create(s, &other.live_key, json!({"phone": "+14155550100"})).await;
    assert_eq!(
        status, 201,
        "the same number is another organization's own contact: {theirs}"
    );

    let (status, _) = s.call(reqwest::Method::DELETE, key, &path, None).await;
    assert_eq!(status, 204);
    assert_eq!(s.get(key, &path).await.0, 404);
    assert_eq!(s.get(key, "/v1/contacts/not-a-uuid").await.0, 404);
}

async fn an_idempotency_key_replays_a_contact_creation_and_makes_no_second_contact(s: &TestServer) {
    let key = &s.tenant.live_key;
    let body = r#"{"phone": "+14155550100", "first_name": "Ada", "custom": {"a": 1, "b": 2}}"#;
    let first = create_with_key(s, key, "ada-1", body).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let first_body = first.text().await.unwrap();
    let ada: Value = serde_json::from_str(&first_body).unwrap();
    assert_eq!(
        location,
        format!("/v1/contacts/{}", ada["id"].as_str().unwrap()).as_str()
    );

    // The same request, spelled differently, replays the first response byte for byte.
    let respelled = r#"{"custom":{"b":2,"a":1},"first_name":"Ada","phone":"+14155550100"}"#;
    let again = create_with_key(s, key, "ada-1", respelled).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location);
    assert_eq!(again.text().await.unwrap(), first_body);
    assert_eq!(all_contacts(s, key).await.len(), 1, "no second contact");

    // The key with another request is refused, and creates nothing.
    let other = r#"{"phone": "+14155550101", "first_name": "Bob"}"#;
    let (status, problem) =
        support::status_and_json(create_with_key(s, key, "ada-1", other).await).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        problem["type"], "/problems/idempotency-key-reused",
        "{problem}"
    );
    assert_eq!(
        field_codes(&problem),
        vec![("Idempotency-Key".into(), "idempotency_key_reused".into())]
    );
    // Without the key, the number already taken is the 409 it always was.
    let (status, problem) = create(s, key, json!({"phone": "+14155550100"})).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(all_contacts(s, key).await.len(), 1);

    // A refused create keeps no key: neither a taken number nor bad input uses it up.
    let (status, problem) =
        support::status_and_json(create_with_key(s, key, "bob-1", body).await).await;
    assert_eq!(status, 409, "{problem}");
    let (status, problem) =
        support::status_and_json(create_with_key(s, key, "bob-1", r#"{"phone": "12"}"#).await)
            .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(field_codes(&problem)[0].0, "phone");
    let bob = create_with_key(s, key, "bob-1", other).await;
    assert_eq!(bob.status(), 201);
    assert!(bob.headers().get("idempotent-replayed").is_none());
    assert_eq!(all_contacts(s, key).await.len(), 2);

    // Another organization's key of the same name is its own.
    let globex = s.other_tenant("globex").await;
    let theirs = create_with_key(s, &globex.live_key, "ada-1", body).await;
    assert_eq!(theirs.status(), 201);
    assert!(theirs.headers().get("idempotent-replayed").is_none());
    let (_, theirs) = support::status_and_json(theirs).await;
    assert_ne!(theirs["id"], ada["id"]);

    let (status, problem) = support::status_and_json(create_with_key(s, key, "", body).await).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(field_codes(&problem)[0].0, "Idempotency-Key");
}

async fn bad_input_is_refused_field_by_field_and_changes_nothing(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (status, problem) = create(
        s,
        key,
        json!({"phone": "12", "email": "nope", "time_zone": "Mars/Base", "lead_status": "hot",
               "custom": {"bad key": 1, "list": [1]}}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_codes(&problem)
            .iter()
            .map(|(f, _)| f.as_str())
            .collect::<Vec<_>>(),
        [
            "phone",
            "email",
            "time_zone",
            "lead_status",
            "custom.bad key",
            "custom.list"
        ]
    );
    let (status, problem) = create(s, key, json!({"first_name": "Ada"})).await;
    assert_eq!(
        (status, field_codes(&problem)[0].1.as_str()),
        (422, "required")
    );
    let (status, _) = create(s, key, json!({"phone": "+14155550100", "nickname": "x"})).await;
    assert_eq!(status, 400, "unknown fields are refused");
    assert!(all_contacts(s, key).await.is_empty(), "nothing was stored");

    let (_, ada) = create(
        s,
        key,
        json!({"phone": "+14155550100", "first_name": "Ada"}),
    )
    .await;
    let (status, problem) = create(s, key, json!({"phone": "+1 415 555 0100"})).await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains(ada["id"].as_str().unwrap())
    );
    let (_, bob) = create(s, key, json!({"phone": "+14155550101"})).await;
    let path = format!("/v1/contacts/{}", bob["id"].as_str().unwrap());
    let (status, _) = s
        .call(
            reqwest::Method::PATCH,
            key,
            &path,
            Some(json!({"phone": "+14155550100"})),
        )
        .await;
    assert_eq!(status, 409, "a number another contact has");
    let (status, problem) = s
        .call(
            reqwest::Method::PATCH,
            key,
            &path,
            Some(json!({"first_name": "Bob", "email": "broken"})),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let (_, unchanged) = s.get(key, &path).await;
    assert_eq!(unchanged, bob, "a refused change changes nothing");
    let (status, problem) = s
        .get(key, "/v1/contacts?created_after=yesterday&limit=0")
        .await;
    assert_eq!(status, 422);
    assert_eq!(field_codes(&problem).len(), 2, "{problem}");
    let (status, _) = s
        .call(
            reqwest::Method::DELETE,
            key,
            &format!("{path}?erase=maybe"),
            None,
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(s.get(key, &path).await.0, 200);
}

async fn an_import_reports_exactly_its_broken_rows_and_merges_the_rest(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (_, existing) = create(
        s,
        key,
        json!({"phone": "+14155550100", "first_name": "Ada", "custom": {"visits": 1}}),
    )
    .await;
    // Line 1 is the header; lines 3, 5, 6, 7 and 9 are broken.
    let csv = "\
Mobile,First Name,Email,Status,Tags,Consent,Sales,Zone
+14155550100,,ada@example.com,customer,vip;course-a,yes,52000,Europe/London
12,Bob,bob@example.com,new,,,,
(415) 555-0102,Cy,,,,,007,
+14155550103,Dee,not-an-email,,,,,
+14155550104,Eve,,hot,,maybe,,
,,,,,,,
+14155550105,Fay,,,,,,America/New_York
+14155550106,Gus,,,,,,Atlantis/Nowhere
";
    let (status, report) =
        import(s, key, "?map=Sales:custom.total_sales,Zone:time_zone", csv).await;
    assert_eq!(status, 201, "{report}");
    assert_eq!(report["status"], "completed");
    assert_eq!(
        (
            report["rows"].as_u64(),
            report["created"].as_u64(),
            report["updated"].as_u64(),
            report["invalid"].as_u64()
        ),
        (Some(8), Some(2), Some(1), Some(5)),
        "{report}"
    );
    let (status, errors) = s.get(key, report["errors_url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    let listed: Vec<(u64, String, String)> = errors["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap(),
                e["field"].as_str().unwrap().to_owned(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (3, "phone".into(), "too_short".into()),
            (5, "email".into(), "invalid_email".into()),
            (6, "consent".into(), "invalid_boolean".into()),
            (6, "lead_status".into(), "unknown_lead_status".into()),
            (7, "row".into(), "empty_row".into()),
            (9, "time_zone".into(), "unknown_time_zone".into()),
        ],
        "{errors}"
    );
    for e in errors["data"].as_array().unwrap() {
        assert!(
            !e["message"].as_str().unwrap().contains("not-an-email"),
            "the report never quotes the file's values"
        );
    }
    let csv_report = s
        .client
        .get(s.url(report["errors_url"].as_str().unwrap()))
        .bearer_auth(key)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        csv_report.lines().count(),
        7,
        "header and six errors: {csv_report}"
    );

    let contacts = all_contacts(s, key).await;
    assert_eq!(contacts.len(), 3);
    let ada = &contacts[0];
    assert_eq!(ada["id"], existing["id"], "merged by number");
    assert_eq!(ada["first_name"], "Ada", "an empty cell changes nothing");
    assert_eq!(ada["lead_status"], "customer");
    assert_eq!(ada["tags"], json!(["course-a", "vip"]));
    assert_eq!(ada["custom"], json!({"visits": 1, "total_sales": 52000}));
    assert_eq!(
        (ada["consent"].as_bool(), ada["consent_source"].as_str()),
        (Some(true), Some("import"))
    );
    assert_eq!(contacts[1]["phone"], "+14155550102");
    assert_eq!(
        contacts[1]["custom"],
        json!({"total_sales": "007"}),
        "leading zeros stay text"
    );
    assert_eq!(contacts[2]["time_zone"], "America/New_York");

    // The same file again changes nothing but still reports its broken rows.
    let (_, again) = import(s, key, "?map=Sales:custom.total_sales,Zone:time_zone", csv).await;
    assert_eq!(
        (
            again["created"].as_u64(),
            again["updated"].as_u64(),
            again["unchanged"].as_u64(),
            again["invalid"].as_u64()
        ),
        (Some(0), Some(0), Some(3), Some(5)),
        "{again}"
    );
    let other = s.other_tenant("globex").await;
    assert_eq!(
        s.get(&other.live_key, report["errors_url"].as_str().unwrap())
            .await
            .0,
        404
    );
    assert_eq!(
        s.get(
            &other.live_key,
            &format!("/v1/contacts/imports/{}", report["id"].as_str().unwrap())
        )
        .await
        .0,
        404
    );
}

async fn an_import_with_an_unusable_header_imports_nothing(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (status, problem) = import(
        s,
        key,
        "",
        "phone,Nickname,first_name,firstname\n+14155550100,x,A,B\n",
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_codes(&problem),
        [
            ("columns[1]".to_owned(), "unknown_column".to_owned()),
            ("columns[3]".to_owned(), "duplicate_column".to_owned())
        ]
    );
    let (status, problem) = import(s, key, "", "first_name\nAda\n").await;
    assert_eq!(
        (status, field_codes(&problem)[0].1.as_str()),
        (422, "phone_column_missing")
    );
    let (status, _) = import(s, key, "?map=phone", "phone\n+14155550100\n").await;
    assert_eq!(status, 422, "a mapping without a field");
    let (status, problem) =
        import(s, key, "?map=Cell:mobile_phone_2", "Cell\n+14155550100\n").await;
    assert_eq!(
        (status, field_codes(&problem)[0].1.as_str()),
        (422, "unknown_field")
    );
    let response = s
        .client
        .post(s.url("/v1/contacts/imports"))
        .bearer_auth(key)
        .json(&json!({"phone": "+14155550100"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let (status, problem) = import(s, key, "", "").await;
    assert_eq!(
        (status, field_codes(&problem)[0].1.as_str()),
        (422, "no_header")
    );
    assert!(all_contacts(s, key).await.is_empty());
}

async fn an_export_imports_back_into_the_same_contacts(s: &TestServer) {
    let key = &s.tenant.live_key;
    for i in 0..150 {
        let (status, c) = create(
            s,
            key,
            json!({"phone": format!("+1415555{i:04}"), "first_name": format!("Name, \"{i}\""),
                   "tags": ["t1", "t2"], "custom": {"n": i, "flag": i % 2 == 0, "city": "Paris"},
                   "consent": i % 3 == 0}),
        )
        .await;
        assert_eq!(status, 201, "{c}");
    }
    let exported = s
        .client
        .get(s.url("/v1/contacts/export"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(exported.status().as_u16(), 200);
    assert!(
        exported.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = exported.text().await.unwrap();
    assert_eq!(
        csv.lines().count(),
        151,
        "a header and one line per contact"
    );

    let (status, json_export) = s.get(key, "/v1/contacts/export?format=json").await;
    assert_eq!(status, 200);
    let originals = all_contacts_paged(s, key).await;
    assert_eq!(json_export.as_array().unwrap(), &originals);

    // The CSV's `custom` column holds JSON; an import reads custom fields one per column, so
    // the file is mapped: the export's own id, country and dates are left out.
    let other = s.other_tenant("globex").await;
    let (status, report) = import(
        s,
        &other.live_key,
        "?map=id:ignore,country:ignore,consent_at:ignore,created_at:ignore,custom:ignore",
        &csv,
    )
    .await;
    assert_eq!(status, 201, "{report}");
    assert_eq!(
        (report["created"].as_u64(), report["invalid"].as_u64()),
        (Some(150), Some(0)),
        "{report}"
    );
    let copies = all_contacts_paged(s, &other.live_key).await;
    for (original, copy) in originals.iter().zip(&copies) {
        for field in ["phone", "first_name", "tags", "lead_status", "consent"] {
            assert_eq!(original[field], copy[field], "{field}");
        }
    }
}

async fn all_contacts_paged(s: &TestServer, key: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut path = "/v1/contacts?limit=100".to_owned();
    loop {
        let (status, page) = s.get(key, &path).await;
        assert_eq!(status, 200);
        all.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/contacts?limit=100&cursor={cursor}"),
            None => return all,
        }
    }
}

async fn an_erased_person_leaves_no_number_anywhere_in_the_database(s: &TestServer) {
    let key = &s.tenant.live_key;
    // Created with a key: the key's replayed response quotes the number and the name too.
    let (status, ada) = support::status_and_json(
        create_with_key(
            s,
            key,
            "adalinda-1",
            r#"{"phone": "+14155550100", "first_name": "Adalinda", "email": "adalinda@example.com"}"#,
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{ada}");
    let id = ada["id"].as_str().unwrap();
    let (status, sent) = s
        .send(
            &s.tenant.test_key,
            json!({"to": "+14155550100", "body": "Your code is 739146"}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    s.wait_for(
        &s.tenant.test_key,
        sent["id"].as_str().unwrap(),
        "delivered",
    )
    .await;
    let request = s
        .client
        .post(s.url("/v1/messages"))
        .bearer_auth(key)
        .header("idempotency-key", "erase-me")
        .json(&json!({"to": "+14155550100", "body": "Hello Adalinda"}))
        .send()
        .await
        .unwrap();
    assert_eq!(request.status().as_u16(), 201);
    s.engine
        .store
        .insert_inbound(&InboundMessage {
            id: Uuid::now_v7(),
            org_id: s.tenant.org_id,
            provider: "twilio".into(),
            provider_message_id: "SM-erase".into(),
            from: "+14155550100".into(),
            to: "+14155559999".into(),
            body: "Thanks, this is Adalinda".into(),
            received_at: jiff::Timestamp::now(),
        })
        .await
        .unwrap();
    let (status, _) = s
        .call(
            reqwest::Method::POST,
            key,
            "/v1/opt-outs",
            Some(json!({"phone": "+14155550100"})),
        )
        .await;
    assert_eq!(status, 201);

    let (status, export) = s.get(key, &format!("/v1/contacts/{id}/export")).await;
    assert_eq!(status, 200, "{export}");
    assert_eq!(export["contact"]["id"], id);
    assert_eq!(export["messages"].as_array().unwrap().len(), 2, "{export}");
    assert_eq!(export["inbound"][0]["body"], "Thanks, this is Adalinda");
    assert_eq!(export["opt_out"]["source"], "api");
    assert_eq!(export["opt_out_history"][0]["action"], "opt_out");

    let before = search_every_text_column(s, &["4155550100", "Adalinda", "739146"]).await;
    for place in [
        "messages.recipient has 4155550100",
        "messages.body has 739146",
        "contacts.first_name has Adalinda",
        "inbound_messages.from_number has 4155550100",
        "opt_outs.phone has 4155550100",
        "idempotency_keys.response has Adalinda",
    ] {
        assert!(
            before.iter().any(|f| f == place),
            "the search finds {place}: {before:?}"
        );
    }

    let (status, erased) = s
        .call(
            reqwest::Method::DELETE,
            key,
            &format!("/v1/contacts/{id}?erase=true"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        (
            erased["messages_redacted"].as_u64(),
            erased["inbound_redacted"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(s.get(key, &format!("/v1/contacts/{id}")).await.0, 404);

    let found = search_every_text_column(s, &["4155550100", "Adalinda", "739146"]).await;
    assert!(found.is_empty(), "personal data left behind: {found:?}");

    // The opt-out still holds: a new send to the number is suppressed, not delivered.
    let (status, again) = s
        .send(key, json!({"to": "+14155550100", "body": "Back?"}))
        .await;
    assert_eq!(status, 201, "{again}");
    s.wait_for(key, again["id"].as_str().unwrap(), "suppressed")
        .await;
}

/// Every text-like column of every table that contains one of `needles`, as `table.column`.
async fn search_every_text_column(s: &TestServer, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    if s.database_url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(&s.database_url).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name != '_sqlx_migrations'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for table in tables {
            let columns = sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA table_info({table})")))
                .fetch_all(&pool)
                .await
                .unwrap();
            for column in columns {
                let name: String = column.get("name");
                for needle in needles {
                    let sql = format!(
                        "SELECT count(*) FROM {table} WHERE instr(CAST({name} AS TEXT), ?1) > 0"
                    );
                    let hits: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                        .bind(*needle)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                    if hits > 0 {
                        found.push(format!("{table}.{name} has {needle}"));
                    }
                }
            }
        }
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(&s.database_url).await.unwrap();
        let columns: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text, data_type::text \
             FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name != '_sqlx_migrations' \
             AND data_type IN ('text', 'jsonb', 'character varying', 'bytea')",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for (table, name, data_type) in columns {
            // Bytes (stored API responses) are searched as the text they hold.
            let text = if data_type == "bytea" {
                format!("encode({name}, 'escape')")
            } else {
                format!("{name}::text")
            };
            for needle in needles {
                let sql = format!("SELECT count(*) FROM {table} WHERE strpos({text}, $1) > 0");
                let hits: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(*needle)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                if hits > 0 {
                    found.push(format!("{table}.{name} has {needle}"));
                }
            }
        }
        pool.close().await;
    }
    found
}
