//! Lists and segments through `/v1/lists` and `/v1/segments`: CRUD, bulk membership counts, a
//! segment over custom fields, tags, a list and message history selecting exactly the right
//! contacts, rules refused with the path of each bad node, the wall between organizations, and
//! concurrent changes that are all kept. On both stores.

mod support;

use std::sync::Arc;

use futures::future::join_all;
use herald_engine::clock::{Clock, ManualClock};
use herald_store::InboundMessage;
use jiff::Timestamp;
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

/// Cases on a server whose clock stands still, so every change falls within one clock tick.
macro_rules! on_both_stores_with_a_still_clock {
    ($($case:ident),* $(,)?) => {
        mod sqlite_still_clock {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let server = super::TestServer::start_with_clock(super::Backend::Sqlite, super::support::test_config(), super::still_clock()).await.unwrap();
                    super::$case(&server).await;
                    server.stop().await;
                }
            )*
        }
        mod postgres_still_clock {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(server) = super::TestServer::start_with_clock(super::Backend::Postgres, super::support::test_config(), super::still_clock()).await else { return };
                    super::$case(&server).await;
                    server.stop().await;
                }
            )*
        }
    };
}

fn still_clock() -> Arc<dyn Clock> {
    Arc::new(ManualClock::new(Timestamp::now()))
}

on_both_stores_with_a_still_clock!(
    concurrent_changes_to_a_list_are_all_kept,
    concurrent_changes_to_a_segment_are_all_kept,
);

on_both_stores!(
    lists_are_created_renamed_paged_and_deleted,
    members_are_added_and_removed_in_bulk_with_counts,
    a_segment_selects_contacts_by_custom_fields_tags_lists_and_history,
    segments_are_saved_changed_and_deleted,
    bad_rules_are_refused_with_the_path_of_each_bad_node,
    another_organization_gets_404_and_cannot_use_our_contacts,
);

async fn post(s: &TestServer, key: &str, path: &str, body: Value) -> (u16, Value) {
    s.call(reqwest::Method::POST, key, path, Some(body)).await
}

async fn patch(s: &TestServer, key: &str, path: &str, body: Value) -> (u16, Value) {
    s.call(reqwest::Method::PATCH, key, path, Some(body)).await
}

async fn delete(s: &TestServer, key: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    s.call(reqwest::Method::DELETE, key, path, body).await
}

/// A contact created through `/v1/contacts`, with the fields segments read.
struct Person {
    id: Uuid,
    phone: String,
}

async fn contact(s: &TestServer, key: &str, phone: &str, tags: &[&str], custom: Value) -> Person {
    let (status, created) = post(
        s,
        key,
        "/v1/contacts",
        json!({"phone": phone, "tags": tags, "custom": custom}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    Person {
        id: created["id"].as_str().unwrap().parse().unwrap(),
        phone: created["phone"].as_str().unwrap().to_owned(),
    }
}

fn field_errors(problem: &Value) -> Vec<(String, String)> {
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

fn ids(values: &Value) -> Vec<String> {
    let mut ids: Vec<String> = values
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

async fn lists_are_created_renamed_paged_and_deleted(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (status, course) = post(
        s,
        key,
        "/v1/lists",
        json!({"name": "Course participants", "description": "Spring course"}),
    )
    .await;
    assert_eq!(status, 201, "{course}");
    assert_eq!(course["member_count"], 0);
    let course_id = course["id"].as_str().unwrap().to_owned();

    // Bad input is refused with the field at fault, and creates nothing.
    let (status, problem) = post(s, key, "/v1/lists", json!({"name": "  "})).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_errors(&problem),
        vec![("name".into(), "required".into())]
    );
    let (status, _) = post(s, key, "/v1/lists", json!({"name": "x", "colour": "red"})).await;
    assert_eq!(status, 400);
    let (status, problem) = post(s, key, "/v1/lists", json!({"name": "Course participants"})).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(
        field_errors(&problem),
        vec![("name".into(), "name_taken".into())]
    );

    // An Idempotency-Key replays the first response.
    let retry = |name: &'static str| {
        s.client
            .post(s.url("/v1/lists"))
            .bearer_auth(key)
            .header("Idempotency-Key", "guests-1")
            .json(&json!({ "name": name }))
            .send()
    };
    let first = retry("Event guests").await.unwrap();
    assert_eq!(first.status(), 201);
    let (_, guests) = support::status_and_json(first).await;
    let again = retry("Event guests").await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let (status, replayed) = support::status_and_json(again).await;
    assert_eq!((status, &replayed["id"]), (201, &guests["id"]));
    let (status, problem) = support::status_and_json(retry("Other").await.unwrap()).await;
    assert_eq!(status, 422, "{problem}");

    let (status, page) = s.get(key, "/v1/lists?limit=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"][0]["id"], course["id"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = s
        .get(key, &format!("/v1/lists?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(rest["data"][0]["id"], guests["id"]);
    assert!(rest["next_cursor"].is_null());

    let path = format!("/v1/lists/{course_id}");
    let (status, renamed) = patch(
        s,
        key,
        &path,
        json!({"name": "Autumn course", "description": null}),
    )
    .await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["name"], "Autumn course");
    assert!(renamed["description"].is_null());
    let (status, problem) = patch(s, key, &path, json!({"name": "Event guests"})).await;
    assert_eq!(status, 409, "{problem}");
    let (_, read) = s.get(key, &path).await;
    assert_eq!(read["name"], "Autumn course");

    assert_eq!(delete(s, key, &path, None).await.0, 204);
    assert_eq!(s.get(key, &path).await.0, 404);
    assert_eq!(delete(s, key, &path, None).await.0, 404);
    assert_eq!(s.get(key, "/v1/lists/not-an-id").await.0, 404);
}

/// Bursts of ten renames and ten description changes of the row at `path`, all at once. Each
/// answer is the row as its request wrote it, or a 503 from a request that gave up on a row
/// others kept changing (a burst leaves many). Every write moves `updated_at` forward, so it
/// orders the writes; replayed in that order, each answer must hold every earlier write's
/// field, and the row must end with the last name and the last description: no acknowledged
/// change was lost. Three bursts make it all but certain that both kinds get through.
async fn concurrent_renames_and_descriptions_are_all_kept(s: &TestServer, path: &str) {
    let key = &s.tenant.live_key;
    let (status, before) = s.get(key, path).await;
    assert_eq!(status, 200, "{before}");
    let mut written = Vec::new();
    for burst in 0..3 {
        let changes: Vec<(&str, String)> = (0..10)
            .map(|i| ("name", format!("Name {burst}.{i}")))
            .chain((0..10).map(|i| ("description", format!("Description {burst}.{i}"))))
            .collect();
        let answers = join_all(
            changes
                .iter()
                .map(|(field, value)| patch(s, key, path, json!({ *field: value }))),
        )
        .await;
        for ((field, value), (status, answer)) in changes.into_iter().zip(answers) {
            match status {
                200 => {
                    assert_eq!(answer[field], value.as_str(), "{answer}");
                    let at: Timestamp = answer["updated_at"].as_str().unwrap().parse().unwrap();
                    written.push((at, field, value, answer));
                }
                503 => assert_eq!(answer["type"], "/problems/unavailable", "{answer}"),
                _ => panic!("{status}: {answer}"),
            }
        }
    }
    written.sort_by_key(|(at, ..)| *at);
    let times: Vec<Timestamp> = written.iter().map(|(at, ..)| *at).collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "every write has its own updated_at: {times:?}"
    );
    for kind in ["name", "description"] {
        assert!(
            written.iter().any(|(_, field, ..)| *field == kind),
            "some {kind} change got through: {written:?}"
        );
    }
    let mut name = before["name"].clone();
    let mut description = before["description"].clone();
    for (_, field, value, answer) in &written {
        match *field {
            "name" => name = json!(value),
            _ => description = json!(value),
        }
        assert_eq!(
            (&answer["name"], &answer["description"]),
            (&name, &description),
            "each write kept the writes before it"
        );
    }
    let (status, after) = s.get(key, path).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        (&after["name"], &after["description"]),
        (&name, &description)
    );
    assert_eq!(
        after,
        written.last().unwrap().3,
        "the row is the last write"
    );
}

async fn concurrent_changes_to_a_list_are_all_kept(s: &TestServer) {
    let key = &s.tenant.live_key;
    let (status, list) = post(
        s,
        key,
        "/v1/lists",
        json!({"name": "Course", "description": "Spring"}),
    )
    .await;
    assert_eq!(status, 201, "{list}");
    let path = format!("/v1/lists/{}", list["id"].as_str().unwrap());
    concurrent_renames_and_descriptions_are_all_kept(s, &path).await;
}

async fn concurrent_changes_to_a_segment_are_all_kept(s: &TestServer) {
    let key = &s.tenant.live_key;
    let rule = json!({"field": "tag", "op": "eq", "value": "vip"});
    let (status, segment) = post(
        s,
        key,
        "/v1/segments",
        json!({"name": "VIPs", "description": "Tagged vip", "rule": rule}),
    )
    .await;
    assert_eq!(status, 201, "{segment}");
    let path = format!("/v1/segments/{}", segment["id"].as_str().unwrap());
    concurrent_renames_and_descriptions_are_all_kept(s, &path).await;
    let (_, after) = s.get(key, &path).await;
    assert_eq!(after["rule"], rule, "the rule no request changed is kept");
}

async fn members_are_added_and_removed_in_bulk_with_counts(s: &TestServer) {
    let key = &s.tenant.live_key;
    let other = s.other_tenant("globex").await;
    let ann = contact(s, key, "+14155550101", &[], json!({})).await;
    let bob = contact(s, key, "+14155550102", &[], json!({})).await;
    let foreign = contact(s, &other.live_key, "+14155550103", &[], json!({})).await;
    let (_, list) = post(s, key, "/v1/lists", json!({"name": "Guests"})).await;
    let members = format!("/v1/lists/{}/members", list["id"].as_str().unwrap());

    // A malformed id refuses the whole request: nothing is added.
    let (status, problem) = post(
        s,
        key,
        &members,
        json!({"contact_ids": [ann.id.to_string(), "nope"]}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_errors(&problem),
        vec![("contact_ids/1".into(), "invalid_id".into())]
    );
    let (status, problem) = post(s, key, &members, json!({"contact_ids": []})).await;
    assert_eq!(
        (status, field_errors(&problem)),
        (422, vec![("contact_ids".into(), "invalid_count".into())])
    );
    let (_, page) = s.get(key, &members).await;
    assert_eq!(page["data"], json!([]));

    let nobody = Uuid::now_v7();
    let (status, added) = post(
        s,
        key,
        &members,
        json!({"contact_ids": [ann.id, bob.id, ann.id, foreign.id, nobody]}),
    )
    .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(
        added,
        json!({"added": 2, "already": 0, "unknown": 2, "unknown_ids": [foreign.id, nobody]})
    );
    let (_, again) = post(s, key, &members, json!({"contact_ids": [bob.id]})).await;
    assert_eq!(
        again,
        json!({"added": 0, "already": 1, "unknown": 0, "unknown_ids": []})
    );

    let (_, first) = s.get(key, &format!("{members}?limit=1")).await;
    assert_eq!(first["data"][0]["id"], json!(ann.id));
    assert_eq!(first["data"][0]["phone"], "+14155550101");
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = s
        .get(key, &format!("{members}?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(second["data"][0]["id"], json!(bob.id));
    assert!(second["next_cursor"].is_null());
    let (_, read) = s
        .get(key, &format!("/v1/lists/{}", list["id"].as_str().unwrap()))
        .await;
    assert_eq!(read["member_count"], 2);

    let (status, removed) = delete(
        s,
        key,
        &members,
        Some(json!({"contact_ids": [ann.id, foreign.id]})),
    )
    .await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(
        removed,
        json!({"removed": 1, "absent": 0, "unknown": 1, "unknown_ids": [foreign.id]})
    );
    let (_, page) = s.get(key, &members).await;
    assert_eq!(ids(&page["data"]), vec![bob.id.to_string()]);

    // A deleted contact leaves the list with it.
    let (status, _) = delete(s, key, &format!("/v1/contacts/{}", bob.id), None).await;
    assert_eq!(status, 204);
    let (_, page) = s.get(key, &members).await;
    assert_eq!(page["data"], json!([]));
    let (_, read) = s
        .get(key, &format!("/v1/lists/{}", list["id"].as_str().unwrap()))
        .await;
    assert_eq!(read["member_count"], 0);
}

async fn a_segment_selects_contacts_by_custom_fields_tags_lists_and_history(s: &TestServer) {
    let key = &s.tenant.live_key;
    let org = s.tenant.org_id;
    let big = json!({"total_sales": 60000});
    // Matches everything.
    let ann = contact(s, key, "+14155550111", &["vip"], big.clone()).await;
    // Not in the list.
    let bob = contact(s, key, "+14155550112", &["vip"], big.clone()).await;
    // The sales figure is a string, not a number: never compared with one.
    let cid = contact(
        s,
        key,
        "+14155550113",
        &["vip"],
        json!({"total_sales": "60000"}),
    )
    .await;
    // Never messaged.
    let dan = contact(s, key, "+14155550114", &["vip"], big.clone()).await;
    // Not a VIP.
    let eve = contact(s, key, "+14155550115", &["course"], big.clone()).await;
    // Sold too little.
    let fay = contact(
        s,
        key,
        "+14155550116",
        &["vip"],
        json!({"total_sales": 100}),
    )
    .await;

    let (_, list) = post(s, key, "/v1/lists", json!({"name": "Course"})).await;
    let list_id = list["id"].as_str().unwrap().to_owned();
    let (status, added) = post(
        s,
        key,
        &format!("/v1/lists/{list_id}/members"),
        json!({"contact_ids": [ann.id, cid.id, dan.id, eve.id, fay.id]}),
    )
    .await;
    assert_eq!((status, &added["added"]), (200, &json!(5)), "{added}");
    for phone in [&ann.phone, &bob.phone, &cid.phone, &eve.phone, &fay.phone] {
        let (status, sent) = s.send(key, json!({"to": phone, "body": "Hello"})).await;
        assert_eq!(status, 201, "{sent}");
        s.wait_for(key, sent["id"].as_str().unwrap(), "delivered")
            .await;
    }
    // Bob replied.
    s.engine
        .store
        .insert_inbound(&InboundMessage {
            id: Uuid::now_v7(),
            org_id: org,
            provider: "simulator".into(),
            provider_message_id: "in-bob".into(),
            from: bob.phone.clone(),
            to: "+14155550000".into(),
            body: "Yes please".into(),
            received_at: Timestamp::now(),
        })
        .await
        .unwrap();

    let rule = json!({"and": [
        {"field": "custom.total_sales", "op": "gte", "value": 50000},
        {"field": "tag", "op": "eq", "value": "vip"},
        {"field": "list", "op": "eq", "value": list_id},
        {"field": "last_message_days", "op": "lte", "value": 90},
        {"field": "delivered_count", "op": "gte", "value": 1},
    ]});
    let (status, preview) = post(s, key, "/v1/segments/preview", json!({ "rule": rule })).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["count"], 1);
    assert_eq!(ids(&preview["sample"]), vec![ann.id.to_string()]);

    let (status, segment) = post(
        s,
        key,
        "/v1/segments",
        json!({"name": "Engaged VIPs", "rule": rule}),
    )
    .await;
    assert_eq!(status, 201, "{segment}");
    let (status, saved) = post(
        s,
        key,
        &format!("/v1/segments/{}/preview", segment["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["count"], 1);
    assert_eq!(saved["sample"][0]["phone"], "+14155550111");

    // `or`, `not`, replies and `exists`.
    let rule = json!({"or": [
        {"field": "replied", "op": "eq", "value": true},
        {"not": {"field": "last_message_days", "op": "exists"}},
    ]});
    let (_, preview) = post(s, key, "/v1/segments/preview", json!({ "rule": rule })).await;
    let mut expected = vec![bob.id.to_string(), dan.id.to_string()];
    expected.sort();
    assert_eq!(ids(&preview["sample"]), expected);
    assert_eq!(preview["count"], 2);
    let rule = json!({"field": "custom.total_sales", "op": "ne", "value": 60000});
    let (_, preview) = post(s, key, "/v1/segments/preview", json!({ "rule": rule })).await;
    // Only the number that differs: a string figure is another type, not another value.
    assert_eq!(ids(&preview["sample"]), vec![fay.id.to_string()]);
}

async fn segments_are_saved_changed_and_deleted(s: &TestServer) {
    let key = &s.tenant.live_key;
    let rule = json!({"field": "tag", "op": "eq", "value": "vip"});
    let (status, segment) = post(
        s,
        key,
        "/v1/segments",
        json!({"name": "VIPs", "description": "Tagged vip", "rule": rule}),
    )
    .await;
    assert_eq!(status, 201, "{segment}");
    assert_eq!(segment["rule"], rule);
    let path = format!("/v1/segments/{}", segment["id"].as_str().unwrap());

    // An Idempotency-Key replays the first creation instead of making another.
    let create = || {
        s.client
            .post(s.url("/v1/segments"))
            .bearer_auth(key)
            .header("Idempotency-Key", "seg-1")
            .json(&json!({"name": "Consenting", "rule": {"field": "consent", "op": "eq", "value": true}}))
            .send()
    };
    let (status, first) = support::status_and_json(create().await.unwrap()).await;
    assert_eq!(status, 201, "{first}");
    let replay = create().await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let (_, again) = support::status_and_json(replay).await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        delete(
            s,
            key,
            &format!("/v1/segments/{}", first["id"].as_str().unwrap()),
            None
        )
        .await
        .0,
        204
    );
    let (status, problem) = post(
        s,
        key,
        "/v1/segments",
        json!({"name": "VIPs", "rule": rule}),
    )
    .await;
    assert_eq!(status, 409, "{problem}");

    let new_rule = json!({"field": "consent", "op": "eq", "value": true});
    let (status, changed) = patch(s, key, &path, json!({"rule": new_rule})).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["rule"], new_rule);
    assert_eq!(changed["name"], "VIPs");
    // A bad rule in a change is refused and changes nothing.
    let (status, problem) = patch(
        s,
        key,
        &path,
        json!({"name": "Renamed", "rule": {"field": "consent", "op": "gt", "value": 1}}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_errors(&problem),
        vec![("rule/op".into(), "operator_not_allowed_for_field".into())]
    );
    let (_, read) = s.get(key, &path).await;
    assert_eq!((&read["name"], &read["rule"]), (&json!("VIPs"), &new_rule));

    let (_, page) = s.get(key, "/v1/segments").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);

    let (_, openapi) = s.get(key, "/openapi.json").await;
    for path in [
        "/v1/lists",
        "/v1/lists/{id}",
        "/v1/lists/{id}/members",
        "/v1/segments",
        "/v1/segments/{id}",
        "/v1/segments/{id}/preview",
        "/v1/segments/preview",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} is documented");
    }
    assert_eq!(delete(s, key, &path, None).await.0, 204);
    assert_eq!(s.get(key, &path).await.0, 404);
    assert_eq!(
        post(s, key, &format!("{path}/preview"), json!({})).await.0,
        404
    );
}

async fn bad_rules_are_refused_with_the_path_of_each_bad_node(s: &TestServer) {
    let key = &s.tenant.live_key;
    let rule = json!({"and": [
        {"field": "shoe_size", "op": "eq", "value": 42},
        {"field": "custom.total_sales", "op": "gte", "value": true},
        {"or": [{"field": "tag", "op": "like", "value": "vip"}]},
        {"not": {"field": "created_at", "op": "within_days", "value": "soon"}},
    ]});
    let (status, problem) = post(
        s,
        key,
        "/v1/segments",
        json!({"name": "Broken", "rule": rule}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["type"], "/problems/validation-failed", "{problem}");
    assert_eq!(
        field_errors(&problem),
        vec![
            ("rule/and/0/field".into(), "unknown_field".into()),
            ("rule/and/1/value".into(), "wrong_type".into()),
            ("rule/and/2/or/0/op".into(), "unknown_operator".into()),
            ("rule/and/3/not/value".into(), "wrong_type".into()),
        ]
    );
    let (_, page) = s.get(key, "/v1/segments").await;
    assert_eq!(page["data"], json!([]), "nothing was saved");

    // A list the organization does not have is named too.
    let (_, list) = post(s, key, "/v1/lists", json!({"name": "Real"})).await;
    let missing = Uuid::now_v7().to_string();
    let listed = json!({"or": [
        {"field": "list", "op": "in", "value": [list["id"], missing]},
        {"not": {"field": "list", "op": "eq", "value": missing}},
    ]});
    let (status, problem) = post(
        s,
        key,
        "/v1/segments",
        json!({"name": "Listed", "rule": listed}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        field_errors(&problem),
        vec![
            ("rule/or/0/value/1".into(), "unknown_list".into()),
            ("rule/or/1/not/value".into(), "unknown_list".into()),
        ]
    );

    let (status, problem) = post(s, key, "/v1/segments/preview", json!({ "rule": rule })).await;
    assert_eq!(status, 422);
    assert_eq!(field_errors(&problem).len(), 4);
    let (status, problem) = post(s, key, "/v1/segments/preview", json!({})).await;
    assert_eq!(
        (status, field_errors(&problem)),
        (422, vec![("rule".into(), "required".into())])
    );
    let (status, problem) = post(
        s,
        key,
        "/v1/segments/preview",
        json!({"rule": {"field": "tag", "op": "eq", "value": "vip", "extra": 1}}),
    )
    .await;
    assert_eq!(
        (status, field_errors(&problem)),
        (422, vec![("rule/extra".into(), "unknown_key".into())])
    );
    let (status, _) = post(s, key, "/v1/segments/preview", json!({"rules": {}})).await;
    assert_eq!(status, 400);
}

async fn another_organization_gets_404_and_cannot_use_our_contacts(s: &TestServer) {
    let key = &s.tenant.live_key;
    let other = s.other_tenant("globex").await;
    let theirs = &other.live_key;
    let ours = contact(s, key, "+14155550121", &["vip"], json!({})).await;
    let (_, list) = post(s, key, "/v1/lists", json!({"name": "Ours"})).await;
    let list_path = format!("/v1/lists/{}", list["id"].as_str().unwrap());
    let rule = json!({"field": "tag", "op": "eq", "value": "vip"});
    let (_, segment) = post(
        s,
        key,
        "/v1/segments",
        json!({"name": "Ours", "rule": rule}),
    )
    .await;
    let segment_path = format!("/v1/segments/{}", segment["id"].as_str().unwrap());
    let members = json!({"contact_ids": [ours.id]});

    assert_eq!(s.get(theirs, &list_path).await.0, 404);
    assert_eq!(
        patch(s, theirs, &list_path, json!({"name": "x"})).await.0,
        404
    );
    assert_eq!(
        post(s, theirs, &format!("{list_path}/members"), members.clone())
            .await
            .0,
        404
    );
    assert_eq!(s.get(theirs, &format!("{list_path}/members")).await.0, 404);
    assert_eq!(delete(s, theirs, &list_path, None).await.0, 404);
    assert_eq!(s.get(theirs, &segment_path).await.0, 404);
    assert_eq!(
        patch(s, theirs, &segment_path, json!({"name": "x"}))
            .await
            .0,
        404
    );
    assert_eq!(
        post(s, theirs, &format!("{segment_path}/preview"), json!({}))
            .await
            .0,
        404
    );
    assert_eq!(delete(s, theirs, &segment_path, None).await.0, 404);
    let (_, their_lists) = s.get(theirs, "/v1/lists").await;
    assert_eq!(their_lists["data"], json!([]));

    // Their own list cannot take our contact, and their rules never see it.
    let (_, their_list) = post(s, theirs, "/v1/lists", json!({"name": "Theirs"})).await;
    let (status, added) = post(
        s,
        theirs,
        &format!("/v1/lists/{}/members", their_list["id"].as_str().unwrap()),
        members,
    )
    .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(
        added,
        json!({"added": 0, "already": 0, "unknown": 1, "unknown_ids": [ours.id]})
    );
    let (_, preview) = post(s, theirs, "/v1/segments/preview", json!({ "rule": rule })).await;
    assert_eq!(preview, json!({"count": 0, "sample": []}));

    // Ours are all still there.
    assert_eq!(s.get(key, &list_path).await.0, 200);
    let (_, preview) = post(s, key, &format!("{segment_path}/preview"), json!({})).await;
    assert_eq!(preview["count"], 1);
}
