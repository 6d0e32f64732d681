//! Message templates through `/v1/templates` and `POST /v1/messages`: saved only when their body
//! parses (errors say where), walled off per organization, previewed with the same encoding,
//! segment and cost rules a send uses, and sent only when every required variable has a value
//! — on both stores.

mod support;

use herald_domain::encoding::analyze;
use herald_domain::message::MessageType;
use herald_domain::money::{Amount, Currency, Price, PriceTable};
use herald_domain::phone::Region;
use herald_store::Contact;
use serde_json::{Value, json};
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
    templates_are_created_read_listed_changed_and_deleted,
    malformed_bodies_are_refused_with_their_position_and_change_nothing,
    another_organizations_key_finds_none_of_the_templates,
    previews_count_and_price_like_the_domain_and_a_send,
    sends_with_a_template_render_it_and_count_its_use,
    a_send_missing_a_required_variable_stores_nothing,
);

/// A server whose price table charges France more than the default, so a preview's price shows
/// which country it was computed for.
async fn priced_server(backend: Backend) -> Option<TestServer> {
    let mut config = support::test_config();
    let france = Price {
        transactional: Amount::from_micros(50_000),
        promotional: Amount::from_micros(60_000),
    };
    config.intake.prices = PriceTable::new(Currency::USD, Price::flat(Amount::from_micros(7_900)))
        .with_region(Region::parse("FR").unwrap(), france);
    TestServer::start_with(backend, config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_are_priced_for_the_destinations_country_on_sqlite() {
    let server = priced_server(Backend::Sqlite).await.unwrap();
    previews_are_priced_for_the_destinations_country(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_are_priced_for_the_destinations_country_on_postgres() {
    let Some(server) = priced_server(Backend::Postgres).await else {
        return;
    };
    previews_are_priced_for_the_destinations_country(&server).await;
    server.stop().await;
}

async fn create(s: &TestServer, key: &str, body: Value) -> (u16, Value) {
    s.call(reqwest::Method::POST, key, "/v1/templates", Some(body))
        .await
}

async fn patch(s: &TestServer, key: &str, id: &str, body: Value) -> (u16, Value) {
    let path = format!("/v1/templates/{id}");
    s.call(reqwest::Method::PATCH, key, &path, Some(body)).await
}

async fn preview(s: &TestServer, key: &str, path: &str, body: Value) -> (u16, Value) {
    s.call(reqwest::Method::POST, key, path, Some(body)).await
}

/// `(field, code)` of each error in a problem.
fn errors(problem: &Value) -> Vec<(String, String)> {
    problem["errors"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().to_owned(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(f, c)| ((*f).to_owned(), (*c).to_owned()))
        .collect()
}

async fn names(s: &TestServer, key: &str, query: &str) -> Vec<String> {
    let (status, page) = s.get(key, &format!("/v1/templates{query}")).await;
    assert_eq!(status, 200, "{page}");
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn templates_are_created_read_listed_changed_and_deleted(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (status, created) = create(
        s,
        key,
        json!({
            "name": "reminder",
            "category": "appointments",
            "body": "Hi {{first_name | default: \"there\"}}, see you {{ when }}.",
            "variables": [{"name": "when", "description": "Day and time", "example": "Monday 9:00"}],
        }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["active"], true);
    assert_eq!(created["usage_count"], 0);
    assert_eq!(created["last_used_at"], Value::Null);
    assert_eq!(
        created["variables"],
        json!([
            {"name": "first_name", "required": false, "default": "there", "description": null, "example": null},
            {"name": "when", "required": true, "default": null, "description": "Day and time", "example": "Monday 9:00"},
        ])
    );
    let (status, read) = s.get(key, &format!("/v1/templates/{id}")).await;
    assert_eq!((status, &read), (200, &created));

    // A second template with the same name is a conflict; another name is fine.
    let (status, problem) = create(s, key, json!({"name": "reminder", "body": "x"})).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(errors(&problem), pairs(&[("name", "name_taken")]));
    let (status, _) = create(
        s,
        key,
        json!({"name": "otp", "category": "otp", "body": "Code {{code}}", "active": false}),
    )
    .await;
    assert_eq!(status, 201);

    assert_eq!(names(s, key, "").await, ["reminder", "otp"]);
    assert_eq!(names(s, key, "?category=otp").await, ["otp"]);
    assert_eq!(names(s, key, "?active=true").await, ["reminder"]);
    assert_eq!(names(s, key, "?active=false&category=otp").await, ["otp"]);
    let (status, first) = s.get(key, "/v1/templates?limit=1").await;
    assert_eq!(status, 200);
    let cursor = first["next_cursor"].as_str().unwrap();
    assert_eq!(
        names(s, key, &format!("?limit=1&cursor={cursor}")).await,
        ["otp"]
    );
    let (status, problem) = s.get(key, "/v1/templates?active=yes&limit=0").await;
    assert_eq!(status, 422);
    assert_eq!(
        errors(&problem),
        pairs(&[("limit", "invalid_limit"), ("active", "invalid_boolean")])
    );

    // Only the fields given change; `null` clears the category.
    let (status, changed) = patch(s, key, &id, json!({"name": "visit", "category": null})).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["name"], "visit");
    assert_eq!(changed["category"], Value::Null);
    assert_eq!(changed["body"], created["body"]);
    assert_eq!(changed["variables"], created["variables"]);
    assert_ne!(changed["updated_at"], created["updated_at"]);
    let (status, problem) = patch(s, key, &id, json!({"name": "otp"})).await;
    assert_eq!(status, 409, "{problem}");
    let (status, problem) = patch(s, key, &id, json!({"body": "Hi"})).await;
    assert_eq!(
        status, 422,
        "a declared variable the body no longer uses: {problem}"
    );
    assert_eq!(
        errors(&problem),
        pairs(&[("variables[0].name", "unused_variable")])
    );
    let (status, problem) = patch(s, key, &id, json!({"colour": "red"})).await;
    assert_eq!(status, 400, "{problem}");
    let (_, after) = s.get(key, &format!("/v1/templates/{id}")).await;
    assert_eq!(after, changed, "refused changes changed nothing");

    // An Idempotency-Key replays the creation instead of failing on the taken name.
    let body = json!({"name": "welcome", "body": "Welcome!"});
    let send = |body: &Value| {
        s.client
            .post(s.url("/v1/templates"))
            .bearer_auth(key)
            .header("Idempotency-Key", "welcome-1")
            .json(body)
            .send()
    };
    let (status, first) = support::status_and_json(send(&body).await.unwrap()).await;
    assert_eq!(status, 201);
    let replay = send(&body).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let (status, again) = support::status_and_json(replay).await;
    assert_eq!((status, &again), (201, &first));
    let (status, _) =
        support::status_and_json(send(&json!({"name": "other", "body": "x"})).await.unwrap()).await;
    assert_eq!(status, 422, "the key with another request");

    let path = format!("/v1/templates/{id}");
    assert_eq!(
        s.call(reqwest::Method::DELETE, key, &path, None).await.0,
        204
    );
    assert_eq!(
        s.call(reqwest::Method::DELETE, key, &path, None).await.0,
        404
    );
    assert_eq!(s.get(key, &format!("/v1/templates/{id}")).await.0, 404);
    assert_eq!(s.get(key, "/v1/templates/not-an-id").await.0, 404);
    assert_eq!(names(s, key, "").await, ["otp", "welcome"]);

    // Every route is in the OpenAPI document, with its methods.
    let (_, openapi) = s.get(key, "/openapi.json").await;
    let paths = &openapi["paths"];
    for (path, methods) in [
        ("/v1/templates", &["get", "post"][..]),
        ("/v1/templates/{id}", &["get", "patch", "delete"][..]),
        ("/v1/templates/{id}/preview", &["post"][..]),
        ("/v1/templates/preview", &["post"][..]),
    ] {
        for method in methods {
            assert!(paths[path][method].is_object(), "{method} {path}");
        }
    }
    let send = &openapi["components"]["schemas"]["CreateMessage"]["properties"];
    assert!(send["template_id"].is_object() && send["variables"].is_object());
}

async fn malformed_bodies_are_refused_with_their_position_and_change_nothing(s: &TestServer) {
    let key = &s.tenant.live_key;
    let cases = [
        ("Hi {{ first_name", "unclosed_tag", 1, 4, 3),
        ("Hi }} there", "unexpected_close", 1, 4, 3),
        ("Hi {{ }}", "empty_variable", 1, 7, 6),
        ("Hi {{ first name }}", "invalid_variable", 1, 13, 12),
        ("Hi\n{{ name | upper }}", "unknown_filter", 2, 11, 13),
        ("{{ name | default: 'x' }}", "malformed_default", 1, 20, 19),
    ];
    for (body, code, line, column, offset) in cases {
        let (status, problem) = create(s, key, json!({"name": "t", "body": body})).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(errors(&problem), pairs(&[("body", code)]), "{body}");
        assert_eq!(
            problem["position"],
            json!({"line": line, "column": column, "offset": offset}),
            "{body}"
        );
        let message = problem["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("line {line}, column {column} (offset {offset})")),
            "{message}"
        );
        // An unsaved preview refuses it the same way.
        let (status, draft) = preview(s, key, "/v1/templates/preview", json!({"body": body})).await;
        assert_eq!((status, &draft["position"]), (422, &problem["position"]));
    }
    assert!(names(s, key, "").await.is_empty(), "nothing was stored");

    // Other bad input is named by field too.
    let (status, problem) = create(s, key, json!({"body": "x"})).await;
    assert_eq!(status, 422);
    assert_eq!(errors(&problem), pairs(&[("name", "required")]));
    let (status, problem) = create(
        s,
        key,
        json!({"name": "t", "body": "{{a}}", "variables": [{"name": "b"}]}),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(
        errors(&problem),
        pairs(&[("variables[0].name", "unused_variable")])
    );
    let (status, _) = create(s, key, json!({"name": "t", "body": "x", "extra": 1})).await;
    assert_eq!(status, 400);

    // A saved template's body is checked again when it changes.
    let (_, saved) = create(s, key, json!({"name": "ok", "body": "Hi {{name}}"})).await;
    let id = saved["id"].as_str().unwrap();
    let (status, problem) = patch(s, key, id, json!({"body": "Hi {{name"})).await;
    assert_eq!(status, 422);
    assert_eq!(problem["position"]["offset"], 3);
    assert_eq!(s.get(key, &format!("/v1/templates/{id}")).await.1, saved);
}

async fn another_organizations_key_finds_none_of_the_templates(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (_, saved) = create(s, key, json!({"name": "mine", "body": "Hi {{name}}"})).await;
    let id = saved["id"].as_str().unwrap();
    let other = s.other_tenant("other").await;
    let theirs = &other.live_key;
    let path = format!("/v1/templates/{id}");

    assert_eq!(s.get(theirs, &path).await.0, 404);
    assert_eq!(patch(s, theirs, id, json!({"body": "pwned"})).await.0, 404);
    assert_eq!(
        preview(s, theirs, &format!("{path}/preview"), json!({}))
            .await
            .0,
        404
    );
    assert_eq!(
        s.call(reqwest::Method::DELETE, theirs, &path, None).await.0,
        404
    );
    assert!(names(s, theirs, "").await.is_empty());
    // Their send cannot use it: it reads as a template that does not exist.
    let (status, problem) = s
        .send(
            theirs,
            json!({"to": "+14155550100", "template_id": id, "variables": {"name": "x"}}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        errors(&problem),
        pairs(&[("template_id", "unknown_template")])
    );
    // The same name is free for them.
    assert_eq!(
        create(s, theirs, json!({"name": "mine", "body": "x"}))
            .await
            .0,
        201
    );

    assert_eq!(s.get(key, &path).await.1, saved, "still there, unchanged");
}

async fn contact(s: &TestServer, org_id: Uuid, phone: &str) -> Contact {
    let now = jiff::Timestamp::now();
    let custom = json!({"plan": "gold", "visits": 3});
    let contact = Contact {
        id: Uuid::now_v7(),
        org_id,
        phone: phone.into(),
        country: None,
        first_name: Some("Zoë".into()),
        last_name: Some("Lind".into()),
        email: None,
        time_zone: None,
        language: None,
        lead_status: "new".into(),
        tags: vec![],
        custom: custom.as_object().unwrap().clone(),
        consent: true,
        consent_source: None,
        consent_at: None,
        created_at: now,
        updated_at: now,
    };
    s.engine
        .store
        .create_contact(&contact, None, contact.created_at)
        .await
        .unwrap()
        .unwrap();
    contact
}

/// The price the engine's own price book gives.
fn price(s: &TestServer, country: &str, kind: MessageType, segments: u32) -> Value {
    let region = Region::parse(country).unwrap();
    json!(s.engine.prices.estimate(Some(region), kind, segments))
}

async fn previews_count_and_price_like_the_domain_and_a_send(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (_, saved) = create(
        s,
        key,
        json!({"name": "t", "body": "Hello {{first_name}}, your {{plan}} plan: {{note | default: \"ok\"}}"}),
    )
    .await;
    let path = format!("/v1/templates/{}/preview", saved["id"].as_str().unwrap());

    // GSM-7 text stays GSM-7; one character outside it makes the whole body UCS-2.
    let (status, gsm) = preview(
        s,
        key,
        &path,
        json!({"variables": {"first_name": "Ann", "plan": "basic"}, "to": "+33612345678"}),
    )
    .await;
    assert_eq!(status, 200, "{gsm}");
    let text = "Hello Ann, your basic plan: ok";
    let info = analyze(text);
    assert_eq!(gsm["body"], text);
    assert_eq!(gsm["encoding"], "GSM-7");
    assert_eq!(gsm["segments"], info.segments);
    assert_eq!(gsm["characters"], info.characters);
    assert_eq!(gsm["missing"], json!([]));
    assert_eq!(gsm["to"], "+33612345678");
    assert_eq!(gsm["country"], "FR");
    assert_eq!(
        gsm["estimated_cost"],
        price(s, "FR", MessageType::Transactional, 1)
    );
    assert_eq!(gsm["currency"], s.engine.prices.currency().as_str());

    let (_, ucs) = preview(
        s,
        key,
        &path,
        json!({"variables": {"first_name": "Łukasz", "plan": "basic"}, "type": "promotional", "to": "+14155550100"}),
    )
    .await;
    assert_eq!(ucs["encoding"], "UCS-2");
    assert_eq!(
        ucs["segments"],
        analyze(ucs["body"].as_str().unwrap()).segments
    );
    assert_eq!(
        ucs["estimated_cost"],
        price(s, "US", MessageType::Promotional, 1)
    );

    // A long value makes a multipart message, counted and priced per segment.
    let long = "x".repeat(300);
    let (_, multi) = preview(
        s,
        key,
        &path,
        json!({"variables": {"first_name": long, "plan": "basic"}, "to": "+14155550100"}),
    )
    .await;
    let info = analyze(multi["body"].as_str().unwrap());
    assert_eq!(info.segments, 3);
    assert_eq!(multi["segments"], 3);
    assert_eq!(multi["characters"], info.characters);
    assert_eq!(
        multi["estimated_cost"],
        price(s, "US", MessageType::Transactional, 3)
    );

    // Missing variables are listed, not refused; without a destination there is no price.
    let (status, partial) = preview(s, key, &path, json!({"variables": {"plan": 7}})).await;
    assert_eq!(status, 200, "{partial}");
    assert_eq!(partial["body"], "Hello {{first_name}}, your 7 plan: ok");
    assert_eq!(partial["missing"], json!(["first_name"]));
    assert_eq!(partial["estimated_cost"], Value::Null);

    // A contact fills variables and is the destination; the request's variables win.
    let person = contact(s, s.tenant.org_id, "+14155550123").await;
    let (status, filled) = preview(
        s,
        key,
        &path,
        json!({"contact_id": person.id, "variables": {"plan": "silver"}}),
    )
    .await;
    assert_eq!(status, 200, "{filled}");
    assert_eq!(filled["body"], "Hello Zoë, your silver plan: ok");
    assert_eq!(filled["to"], "+14155550123");

    // Bad options are named; another organization's contact does not exist.
    let stranger = s.other_tenant("other").await;
    let theirs = contact(s, stranger.org_id, "+14155550124").await;
    let (status, problem) = preview(
        s,
        key,
        &path,
        json!({"contact_id": theirs.id, "to": "12", "variables": {"plan": [1]}}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        errors(&problem),
        pairs(&[
            ("contact_id", "unknown_contact"),
            ("to", problem["errors"][1]["code"].as_str().unwrap()),
            ("variables.plan", "invalid_variable"),
        ])
    );

    // An unsaved body previews the same way, and the send costs what the preview said.
    let body = "Hi {{name}}, ✓ confirmed";
    let (status, draft) = preview(
        s,
        key,
        "/v1/templates/preview",
        json!({"body": body, "variables": {"name": "Bo"}, "to": "+14155550100"}),
    )
    .await;
    assert_eq!(status, 200, "{draft}");
    assert_eq!(draft["encoding"], "UCS-2");
    let (_, unsaved) = create(s, key, json!({"name": "draft", "body": body})).await;
    let (status, sent) = s
        .send(
            key,
            json!({"to": "+14155550100", "template_id": unsaved["id"], "variables": {"name": "Bo"}}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    for field in ["body", "encoding", "segments", "estimated_cost", "currency"] {
        assert_eq!(sent[field], draft[field], "{field}");
    }
}

async fn sends_with_a_template_render_it_and_count_its_use(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (_, saved) = create(
        s,
        key,
        json!({"name": "visit", "body": "Hi {{first_name}}, {{visits}} visits on {{plan}}. Code {{code}}"}),
    )
    .await;
    let id = saved["id"].as_str().unwrap();

    let (status, sent) = s
        .send(
            key,
            json!({"to": "+14155550100", "template_id": id, "variables": {"first_name": "Al", "visits": 2, "plan": "free", "code": true}}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["body"], "Hi Al, 2 visits on free. Code true");
    assert_eq!(sent["to"], "+14155550100");

    // To a contact: its phone is the recipient and its fields fill the template.
    let person = contact(s, s.tenant.org_id, "+14155550123").await;
    let (status, sent) = s
        .send(
            key,
            json!({"contact_id": person.id, "template_id": id, "variables": {"code": "X1"}}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["body"], "Hi Zoë, 3 visits on gold. Code X1");
    assert_eq!(sent["to"], "+14155550123");
    s.wait_for(key, sent["id"].as_str().unwrap(), "delivered")
        .await;

    let (_, used) = s.get(key, &format!("/v1/templates/{id}")).await;
    assert_eq!(used["usage_count"], 2);
    assert!(used["last_used_at"].is_string());
    assert_eq!(
        used["updated_at"], saved["updated_at"],
        "use is not an edit"
    );

    // A replayed send is not counted again.
    let body = json!({"to": "+14155550100", "template_id": id, "variables": {"first_name": "A", "visits": 1, "plan": "p", "code": 1}});
    for _ in 0..2 {
        let response = s
            .client
            .post(s.url("/v1/messages"))
            .bearer_auth(key)
            .header("Idempotency-Key", "tpl-1")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let (_, used) = s.get(key, &format!("/v1/templates/{id}")).await;
    assert_eq!(used["usage_count"], 3);
}

async fn a_send_missing_a_required_variable_stores_nothing(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (_, saved) = create(
        s,
        key,
        json!({"name": "otp", "body": "{{greeting | default: \"Hi\"}} {{name}}, code {{code}}"}),
    )
    .await;
    let id = saved["id"].as_str().unwrap();
    let before = s.message_count().await;

    let (status, problem) = s
        .send(key, json!({"to": "+14155550100", "template_id": id}))
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        errors(&problem),
        pairs(&[("variables", "missing_variables")])
    );
    let message = problem["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("name, code"), "{message}");

    // Other fields are still checked in the same answer.
    let (status, problem) = s
        .send(
            key,
            json!({"to": "12", "template_id": id, "variables": {"name": "x"}}),
        )
        .await;
    assert_eq!(status, 422);
    let fields: Vec<_> = errors(&problem).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["variables", "to"]);

    let refused = [
        (
            json!({"to": "+14155550100", "template_id": id, "body": "x"}),
            ("template_id", "conflicting_fields"),
        ),
        (
            json!({"to": "+14155550100", "body": "x", "variables": {"a": 1}}),
            ("variables", "template_required"),
        ),
        (
            json!({"to": "+14155550100", "template_id": Uuid::now_v7(), "variables": {}}),
            ("template_id", "unknown_template"),
        ),
        (
            json!({"to": "+14155550100", "template_id": "nope"}),
            ("template_id", "unknown_template"),
        ),
        (
            json!({"contact_id": Uuid::now_v7(), "template_id": id}),
            ("contact_id", "unknown_contact"),
        ),
        (
            json!({"to": "+14155550100", "contact_id": Uuid::now_v7(), "body": "x"}),
            ("contact_id", "conflicting_fields"),
        ),
    ];
    for (body, expected) in refused {
        let (status, problem) = s.send(key, body.clone()).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(errors(&problem), pairs(&[expected]), "{body}");
    }

    // An inactive template cannot be sent until it is active again.
    assert_eq!(patch(s, key, id, json!({"active": false})).await.0, 200);
    let full =
        json!({"to": "+14155550100", "template_id": id, "variables": {"name": "A", "code": 1}});
    let (status, problem) = s.send(key, full.clone()).await;
    assert_eq!(status, 422);
    assert_eq!(
        errors(&problem),
        pairs(&[("template_id", "inactive_template")])
    );

    assert_eq!(s.message_count().await, before, "nothing was queued");
    let (_, unused) = s.get(key, &format!("/v1/templates/{id}")).await;
    assert_eq!(unused["usage_count"], 0);

    assert_eq!(patch(s, key, id, json!({"active": true})).await.0, 200);
    let (status, sent) = s.send(key, full).await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["body"], "Hi A, code 1");
    assert_eq!(s.message_count().await, before + 1);
}

async fn previews_are_priced_for_the_destinations_country(s: &TestServer) {
    let key = &s.tenant.live_key;
    // 200 GSM-7 characters: two segments.
    let body = format!("{}{{{{x}}}}", "a".repeat(199));
    let (status, saved) = create(s, key, json!({"name": "long", "body": body})).await;
    assert_eq!(status, 201, "{saved}");
    let path = format!("/v1/templates/{}/preview", saved["id"].as_str().unwrap());
    let cases = [
        ("+33612345678", "transactional", "FR", 100_000),
        ("+33612345678", "promotional", "FR", 120_000),
        ("+14155550100", "promotional", "US", 15_800),
    ];
    for (to, kind, country, micros) in cases {
        let request = json!({"variables": {"x": "b"}, "to": to, "type": kind});
        let (status, priced) = preview(s, key, &path, request).await;
        assert_eq!(status, 200, "{priced}");
        assert_eq!(priced["segments"], 2);
        assert_eq!(priced["country"], country);
        assert_eq!(
            priced["estimated_cost"],
            json!(Amount::from_micros(micros)),
            "{to} {kind}"
        );
    }
}
