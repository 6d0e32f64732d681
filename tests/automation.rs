//! Automation through the API: a drip that contacts leave by texting STOP or replying, events
//! that fire once per `Idempotency-Key`, a `contact.created` trigger, bad input named by field
//! with nothing changed, and a tenant wall. On both stores, on a clock the tests move.

mod support;

use std::sync::Arc;
use std::time::Duration;

use herald_engine::clock::ManualClock;
use jiff::{SignedDuration, Timestamp};
use reqwest::Method;
use serde_json::{Value, json};
use support::{Backend, TestServer, status_and_json};

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let clock = super::clock();
                    let server = super::TestServer::start_with_clock(super::Backend::Sqlite, super::support::test_config(), clock.clone()).await.unwrap();
                    super::$case(&server, &clock).await;
                    server.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let clock = super::clock();
                    let Some(server) = super::TestServer::start_with_clock(super::Backend::Postgres, super::support::test_config(), clock.clone()).await else { return };
                    super::$case(&server, &clock).await;
                    server.stop().await;
                }
            )*
        }
    };
}

on_both_stores!(
    a_drip_is_left_by_stop_and_by_reply,
    events_fire_once_per_idempotency_key,
    a_new_contact_sets_off_its_trigger,
    bad_input_is_refused_by_field_and_changes_nothing,
    automation_stays_within_its_organization,
    the_api_reference_describes_automation,
);

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Timestamp::now()))
}

async fn call(s: &TestServer, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    s.call(method, &s.tenant.live_key, path, body).await
}

async fn post(s: &TestServer, path: &str, body: Value) -> (u16, Value) {
    call(s, Method::POST, path, Some(body)).await
}

async fn contact(s: &TestServer, phone: &str) -> String {
    let (status, contact) = post(
        s,
        "/v1/contacts",
        json!({"phone": phone, "first_name": "Ada", "time_zone": "Europe/Paris"}),
    )
    .await;
    assert_eq!(status, 201, "{contact}");
    contact["id"].as_str().unwrap().to_owned()
}

/// Poll `path` until `done` holds for it (the runner works in the background).
async fn until(s: &TestServer, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, value) = call(s, Method::GET, path, None).await;
        assert_eq!(status, 200, "{value}");
        if done(&value) {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn messages_to(s: &TestServer, phone: &str) -> Vec<Value> {
    let (status, page) = call(
        s,
        Method::GET,
        &format!("/v1/messages?to={}&limit=100", phone.replace('+', "%2B")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().unwrap().clone()
}

async fn a_drip_is_left_by_stop_and_by_reply(s: &TestServer, clock: &Arc<ManualClock>) {
    let stopper = "+14155550101";
    let replier = "+14155550102";
    let stayer = "+14155550103";
    let mut ids = Vec::new();
    for phone in [stopper, replier, stayer] {
        ids.push(contact(s, phone).await);
    }
    let (status, drip) = post(
        s,
        "/v1/drips",
        json!({
            "name": "Onboarding",
            "steps": [
                {"body": "Welcome aboard"},
                {"delay": "P1D", "at": "10:00", "body": "Day two"},
            ],
        }),
    )
    .await;
    assert_eq!(status, 201, "{drip}");
    assert_eq!(drip["status"], "active");
    assert_eq!(drip["exit_on_reply"], true);
    let id = drip["id"].as_str().unwrap();
    let (status, enrolled) = post(
        s,
        &format!("/v1/drips/{id}/enrollments"),
        json!({"contacts": ids}),
    )
    .await;
    assert_eq!(status, 200, "{enrolled}");
    assert_eq!(enrolled, json!({"enrolled": 3, "already": 0, "invalid": 0}));

    // The first step goes out at once.
    let enrollments = until(s, &format!("/v1/drips/{id}/enrollments"), |page| {
        page["data"]
            .as_array()
            .is_some_and(|all| all.iter().all(|e| e["step"] == 1))
    })
    .await;
    assert_eq!(messages_to(s, stayer).await[0]["body"], "Welcome aboard");

    clock.advance(SignedDuration::from_mins(5));
    for (from, body) in [(stopper, "STOP"), (replier, "thanks!")] {
        let (status, reply) = post(
            s,
            "/v1/simulator/inbound",
            json!({"from": from, "body": body}),
        )
        .await;
        assert_eq!(status, 201, "{reply}");
    }
    // They leave at once, before their next step is due.
    let (_, now) = call(s, Method::GET, &format!("/v1/drips/{id}/enrollments"), None).await;
    let states: Vec<(Value, Value, Value)> = now["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["phone"].clone(), e["state"].clone(), e["reason"].clone()))
        .collect();
    assert!(
        states.contains(&(json!(stopper), json!("exited"), json!("opted_out"))),
        "{now}"
    );
    assert!(
        states.contains(&(json!(replier), json!("exited"), json!("replied"))),
        "{now}"
    );
    assert!(
        states.contains(&(json!(stayer), json!("active"), Value::Null)),
        "{now}"
    );
    clock.advance(SignedDuration::from_hours(48));
    let page = until(s, &format!("/v1/drips/{id}/enrollments"), |page| {
        page["data"]
            .as_array()
            .is_some_and(|all| all.iter().all(|e| e["state"] != "active"))
    })
    .await;
    let state_of = |phone: &str| {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["phone"] == phone)
            .map(|e| (e["state"].clone(), e["reason"].clone()))
            .unwrap()
    };
    assert_eq!(state_of(stopper), (json!("exited"), json!("opted_out")));
    assert_eq!(state_of(replier), (json!("exited"), json!("replied")));
    assert_eq!(state_of(stayer), (json!("completed"), Value::Null));
    assert_eq!(messages_to(s, stopper).await.len(), 1);
    assert_eq!(messages_to(s, replier).await.len(), 1);
    assert_eq!(messages_to(s, stayer).await.len(), 2);

    let (_, drip) = call(s, Method::GET, &format!("/v1/drips/{id}"), None).await;
    let stats = &drip["stats"];
    assert_eq!(stats["enrolled"], 3);
    assert_eq!(stats["completed"], 1);
    assert_eq!(stats["exited"], json!({"opted_out": 1, "replied": 1}));
    assert_eq!(stats["steps"][0]["taken"], 3);
    assert_eq!(stats["steps"][1]["taken"], 1);

    // One enrolment, with the messages of its steps.
    let first = enrollments["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["phone"] == stayer)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, one) = call(
        s,
        Method::GET,
        &format!("/v1/drips/{id}/enrollments/{first}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["steps"].as_array().unwrap().len(), 2);
    assert_eq!(one["steps"][1]["outcome"], "sent");
}

async fn events_fire_once_per_idempotency_key(s: &TestServer, _clock: &Arc<ManualClock>) {
    let contact_id = contact(s, "+14155550111").await;
    let (status, template) = post(
        s,
        "/v1/templates",
        json!({"name": "shipped", "body": "Hi {{first_name}}, order {{order}} shipped"}),
    )
    .await;
    assert_eq!(status, 201, "{template}");
    let (status, trigger) = post(
        s,
        "/v1/triggers",
        json!({"name": "Shipping", "event": "order.shipped", "template_id": template["id"]}),
    )
    .await;
    assert_eq!(status, 201, "{trigger}");
    let event =
        json!({"name": "order.shipped", "contact_id": contact_id, "data": {"order": "A-17"}});
    let fire = || async {
        let response = s
            .client
            .post(s.url("/v1/events"))
            .bearer_auth(&s.tenant.live_key)
            .header("Idempotency-Key", "order-A-17-shipped")
            .json(&event)
            .send()
            .await
            .unwrap();
        status_and_json(response).await
    };
    let (status, first) = fire().await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["key"], "order-A-17-shipped");
    assert_eq!(first["firings"][0]["outcome"], "sent");
    assert_eq!(first["firings"][0]["replayed"], false);
    let (a, b) = tokio::join!(fire(), fire());
    for (status, again) in [a, b] {
        assert_eq!(status, 202, "{again}");
        assert_eq!(again["firings"][0]["id"], first["firings"][0]["id"]);
        assert_eq!(again["firings"][0]["replayed"], true);
    }
    let sent = messages_to(s, "+14155550111").await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["body"], "Hi Ada, order A-17 shipped");
    assert_eq!(sent[0]["id"], first["firings"][0]["message_id"]);

    let trigger_id = trigger["id"].as_str().unwrap();
    let (status, firings) = call(
        s,
        Method::GET,
        &format!("/v1/triggers/{trigger_id}/firings"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{firings}");
    assert_eq!(firings["data"].as_array().unwrap().len(), 1);
}

async fn a_new_contact_sets_off_its_trigger(s: &TestServer, clock: &Arc<ManualClock>) {
    let (status, trigger) = post(
        s,
        "/v1/triggers",
        json!({
            "name": "Welcome",
            "event": "contact.created",
            "filter": {"field": "lead_status", "op": "eq", "value": "new"},
            "body": "Welcome to Acme",
        }),
    )
    .await;
    assert_eq!(status, 201, "{trigger}");
    clock.advance(SignedDuration::from_secs(1));
    contact(s, "+14155550121").await;
    let id = trigger["id"].as_str().unwrap();
    until(s, &format!("/v1/triggers/{id}/firings"), |page| {
        page["data"].as_array().is_some_and(|all| all.len() == 1)
    })
    .await;
    // Later passes fire nothing more.
    clock.advance(SignedDuration::from_mins(2));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(messages_to(s, "+14155550121").await.len(), 1);
}

async fn bad_input_is_refused_by_field_and_changes_nothing(
    s: &TestServer,
    _clock: &Arc<ManualClock>,
) {
    let cases = [
        ("/v1/drips", json!({"name": "x", "steps": []}), "steps"),
        (
            "/v1/drips",
            json!({"name": "x", "steps": [{"delay": "two days", "body": "hi"}]}),
            "steps[0].delay",
        ),
        (
            "/v1/drips",
            json!({"name": "x", "steps": [{"template_id": "0195f1c4-0000-7000-8000-000000000000"}]}),
            "steps[0].template_id",
        ),
        (
            "/v1/drips",
            json!({"name": "x", "steps": [{"body": "hi"}], "colour": "red"}),
            "colour",
        ),
        (
            "/v1/triggers",
            json!({"name": "x", "event": "contact.age", "body": "hi"}),
            "days",
        ),
        (
            "/v1/triggers",
            json!({"name": "x", "event": "signup", "drip_id": "0195f1c4-0000-7000-8000-000000000000"}),
            "drip_id",
        ),
        (
            "/v1/triggers",
            json!({"name": "x", "event": "contact.created", "filter": {"field": "shoe_size", "op": "eq", "value": 9}, "body": "hi"}),
            "filter/field",
        ),
        (
            "/v1/events",
            json!({"name": "signup", "contact_id": "0195f1c4-0000-7000-8000-000000000000", "phone": "+14155550100"}),
            "contact_id",
        ),
    ];
    for (path, body, field) in cases {
        let (status, problem) = post(s, path, body.clone()).await;
        assert_eq!(status, 422, "{path} {body}: {problem}");
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.iter().any(|f| f.starts_with(field)),
            "{path} {body}: {fields:?}"
        );
    }
    for path in ["/v1/drips", "/v1/triggers"] {
        let (_, page) = call(s, Method::GET, path, None).await;
        assert_eq!(page["data"], json!([]), "{path}");
    }
    assert_eq!(s.message_count().await, 0);

    // Enrolments naming what is not there, or no one, enrol no one.
    let (_, drip) = post(
        s,
        "/v1/drips",
        json!({"name": "x", "steps": [{"body": "hi"}]}),
    )
    .await;
    let path = format!("/v1/drips/{}/enrollments", drip["id"].as_str().unwrap());
    for (body, field) in [
        (
            json!({"lists": ["0195f1c4-0000-7000-8000-000000000000"]}),
            "lists[0].id",
        ),
        (
            json!({"phones": ["+14155550100"], "segments": ["0195f1c4-0000-7000-8000-000000000001"]}),
            "segments[0].id",
        ),
        (json!({}), "contacts"),
        (json!({"people": []}), "people"),
    ] {
        let (status, problem) = post(s, &path, body.clone()).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{body}: {problem}");
    }
    let (_, page) = call(s, Method::GET, &path, None).await;
    assert_eq!(page["data"], json!([]));
}

async fn automation_stays_within_its_organization(s: &TestServer, _clock: &Arc<ManualClock>) {
    let contact_id = contact(s, "+14155550131").await;
    let (_, drip) = post(
        s,
        "/v1/drips",
        json!({"name": "Mine", "steps": [{"body": "hi"}]}),
    )
    .await;
    let (_, trigger) = post(
        s,
        "/v1/triggers",
        json!({"name": "Mine", "event": "signup", "drip_id": drip["id"]}),
    )
    .await;
    let drip_id = drip["id"].as_str().unwrap();
    let trigger_id = trigger["id"].as_str().unwrap();
    let other = s.other_tenant("other").await;
    for (method, path, body) in [
        (Method::GET, format!("/v1/drips/{drip_id}"), None),
        (
            Method::PATCH,
            format!("/v1/drips/{drip_id}"),
            Some(json!({"status": "paused"})),
        ),
        (Method::DELETE, format!("/v1/drips/{drip_id}"), None),
        (
            Method::POST,
            format!("/v1/drips/{drip_id}/enrollments"),
            Some(json!({"phones": ["+14155550199"]})),
        ),
        (
            Method::GET,
            format!("/v1/drips/{drip_id}/enrollments"),
            None,
        ),
        (Method::GET, format!("/v1/triggers/{trigger_id}"), None),
        (
            Method::PATCH,
            format!("/v1/triggers/{trigger_id}"),
            Some(json!({"active": false})),
        ),
        (Method::DELETE, format!("/v1/triggers/{trigger_id}"), None),
        (
            Method::GET,
            format!("/v1/triggers/{trigger_id}/firings"),
            None,
        ),
    ] {
        let (status, problem) = s.call(method.clone(), &other.live_key, &path, body).await;
        assert_eq!(status, 404, "{method} {path}: {problem}");
    }
    // Another organization cannot name this one's drip or contact.
    let (status, problem) = s
        .call(
            Method::POST,
            &other.live_key,
            "/v1/triggers",
            Some(json!({"name": "Theirs", "event": "signup", "drip_id": drip_id})),
        )
        .await;
    assert_eq!(
        (status, problem["errors"][0]["field"].clone()),
        (422, json!("drip_id"))
    );
    let (status, problem) = s
        .call(
            Method::POST,
            &other.live_key,
            "/v1/events",
            Some(json!({"name": "signup", "contact_id": contact_id})),
        )
        .await;
    assert_eq!(
        (status, problem["errors"][0]["field"].clone()),
        (422, json!("contact_id"))
    );
    // Its own event of the same name sets off none of this organization's triggers.
    let (status, outcome) = s
        .call(
            Method::POST,
            &other.live_key,
            "/v1/events",
            Some(json!({"name": "signup", "phone": "+14155550131"})),
        )
        .await;
    assert_eq!(status, 202, "{outcome}");
    assert_eq!(outcome["firings"], json!([]));
    // Everything of this organization is as it was.
    let (status, mine) = call(s, Method::GET, &format!("/v1/drips/{drip_id}"), None).await;
    assert_eq!((status, mine["status"].clone()), (200, json!("active")));
    assert_eq!(mine["stats"]["enrolled"], 0);
    let (status, mine) = call(s, Method::GET, &format!("/v1/triggers/{trigger_id}"), None).await;
    assert_eq!((status, mine["active"].clone()), (200, json!(true)));
}

async fn the_api_reference_describes_automation(s: &TestServer, _clock: &Arc<ManualClock>) {
    let response = s.client.get(s.url("/openapi.json")).send().await.unwrap();
    let (_, doc) = status_and_json(response).await;
    for path in [
        "/v1/drips",
        "/v1/drips/{id}",
        "/v1/drips/{id}/enrollments",
        "/v1/drips/{id}/enrollments/{enrollment_id}",
        "/v1/triggers",
        "/v1/triggers/{id}",
        "/v1/triggers/{id}/firings",
        "/v1/events",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    let _ = Backend::Sqlite;
}
