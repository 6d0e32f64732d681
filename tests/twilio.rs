//! Live traffic through the Twilio adapter to a recording server that answers as Twilio does,
//! and Twilio's signed status callbacks back into Herald, on both stores.

mod support;

use herald_providers::twilio::signature;
use serde_json::{Value, json};
use support::fake_twilio::{FakeTwilio, start_fake};
use support::{Backend, TestServer};

const TOKEN: &str = "twilio-test-token";

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// POST a status callback to `url` signed with `token`.
async fn callback(
    s: &TestServer,
    url: &str,
    params: &[(&str, &str)],
    token: Option<&str>,
) -> (u16, Value) {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut request = s.client.post(url).form(&params);
    if let Some(token) = token {
        request = request.header(
            "X-Twilio-Signature",
            signature::compute(token, url, &params),
        );
    }
    support::status_and_json(request.send().await.unwrap()).await
}

fn statuses(message: &Value) -> Vec<&str> {
    message["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect()
}

macro_rules! on_both_stores_with_twilio {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (fake, base) = super::start_fake().await;
                    let server = super::TestServer::start_with_twilio(super::Backend::Sqlite, &base, super::TOKEN).await.unwrap();
                    super::$case(&server, &fake).await;
                    server.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (fake, base) = super::start_fake().await;
                    let Some(server) = super::TestServer::start_with_twilio(super::Backend::Postgres, &base, super::TOKEN).await else { return };
                    super::$case(&server, &fake).await;
                    server.stop().await;
                }
            )*
        }
    };
}

on_both_stores_with_twilio!(
    live_messages_reach_twilio_and_signed_callbacks_deliver_them,
    unsigned_or_forged_callbacks_are_refused_and_change_nothing,
    sha256_signatures_count_only_when_the_settings_header_names_them,
    twilio_refusals_fail_or_retry_as_their_codes_say,
    test_keys_still_reach_only_the_simulator,
    inbound_messages_reach_the_organization_that_lists_the_number,
    estimates_use_twilios_prices_and_settled_messages_record_what_twilio_charged,
);

async fn live_messages_reach_twilio_and_signed_callbacks_deliver_them(
    s: &TestServer,
    fake: &FakeTwilio,
) {
    let key = &s.tenant.live_key;
    let (status, created) = s
        .send(key, json!({"to": "+14155550100", "body": "Hello"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let sent = s.wait_for(key, id, "sent").await;
    assert_eq!(sent["provider"], "twilio");

    let request = fake.received.lock().unwrap()[0].clone();
    assert_eq!(
        request.path,
        "/2010-04-01/Accounts/ACtest00000000000000000000000000/Messages.json"
    );
    let credentials = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("ACtest00000000000000000000000000:{TOKEN}"),
    );
    assert_eq!(
        request.authorization.as_deref(),
        Some(format!("Basic {credentials}").as_str())
    );
    assert_eq!(field(&request.form, "To"), Some("+14155550100"));
    assert_eq!(field(&request.form, "Body"), Some("Hello"));
    assert_eq!(field(&request.form, "From"), Some("+15005550006"));
    let callback_url = field(&request.form, "StatusCallback").unwrap().to_owned();
    assert_eq!(callback_url, s.url(&format!("/hooks/twilio/status?m={id}")));
    let sid = request.sid.clone().unwrap();
    assert_eq!(sent["provider_message_id"], sid.as_str());

    let delivered = [
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "delivered"),
        ("To", "+14155550100"),
        ("AccountSid", "ACtest00000000000000000000000000"),
        ("ApiVersion", "2010-04-01"),
    ];
    assert_eq!(
        callback(s, &callback_url, &delivered, Some(TOKEN)).await.0,
        200
    );
    let message = s.wait_for(key, id, "delivered").await;
    assert_eq!(
        statuses(&message),
        ["queued", "sending", "sent", "delivered"]
    );

    // A repeat and a late `sent` are acknowledged and change nothing.
    assert_eq!(
        callback(s, &callback_url, &delivered, Some(TOKEN)).await.0,
        200
    );
    let late = [("MessageSid", sid.as_str()), ("MessageStatus", "sent")];
    assert_eq!(callback(s, &callback_url, &late, Some(TOKEN)).await.0, 200);
    let (_, again) = s.get(key, &format!("/v1/messages/{id}")).await;
    assert_eq!(statuses(&again), ["queued", "sending", "sent", "delivered"]);
}

async fn unsigned_or_forged_callbacks_are_refused_and_change_nothing(
    s: &TestServer,
    _: &FakeTwilio,
) {
    let key = &s.tenant.live_key;
    let (_, created) = s
        .send(key, json!({"to": "+14155550100", "body": "Hello"}))
        .await;
    let id = created["id"].as_str().unwrap();
    let sent = s.wait_for(key, id, "sent").await;
    let sid = sent["provider_message_id"].as_str().unwrap().to_owned();
    let url = s.url(&format!("/hooks/twilio/status?m={id}"));
    let delivered = [("MessageSid", sid.as_str()), ("MessageStatus", "delivered")];

    let (status, problem) = callback(s, &url, &delivered, None).await;
    assert_eq!(
        (status, &problem["type"]),
        (403, &json!("/problems/forbidden"))
    );
    assert_eq!(
        callback(s, &url, &delivered, Some("not-the-token")).await.0,
        403
    );
    // Signed for another message's URL, then sent to this one.
    let other = s.url(&format!("/hooks/twilio/status?m={}", uuid::Uuid::now_v7()));
    let params: Vec<(String, String)> = delivered
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let forged = s
        .client
        .post(&url)
        .header(
            "X-Twilio-Signature",
            signature::compute(TOKEN, &other, &params),
        )
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    // Signed, then a parameter changed.
    let signature = signature::compute(TOKEN, &url, &params);
    let tampered = [("MessageSid", sid.as_str()), ("MessageStatus", "failed")];
    let response = s
        .client
        .post(&url)
        .header("X-Twilio-Signature", signature)
        .form(&tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);

    let (_, message) = s.get(key, &format!("/v1/messages/{id}")).await;
    assert_eq!(
        (message["status"].as_str(), statuses(&message).len()),
        (Some("sent"), 3)
    );
}

async fn sha256_signatures_count_only_when_the_settings_header_names_them(
    s: &TestServer,
    _: &FakeTwilio,
) {
    use signature::Algorithm::{Sha1, Sha256};
    let key = &s.tenant.live_key;
    let (_, created) = s
        .send(key, json!({"to": "+14155550100", "body": "Hello"}))
        .await;
    let id = created["id"].as_str().unwrap();
    let sent = s.wait_for(key, id, "sent").await;
    let sid = sent["provider_message_id"].as_str().unwrap().to_owned();
    let url = s.url(&format!("/hooks/twilio/status?m={id}"));
    let params = vec![
        ("MessageSid".to_owned(), sid.clone()),
        ("MessageStatus".to_owned(), "delivered".to_owned()),
    ];
    let post = |algorithm, settings: Option<&'static str>| {
        let mut request = s
            .client
            .post(&url)
            .header(
                "X-Twilio-Signature",
                signature::compute_with(algorithm, TOKEN, &url, &params),
            )
            .form(&params);
        if let Some(settings) = settings {
            request = request.header("X-Twilio-Webhooks-Signature-Settings", settings);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };

    // The wrong algorithm for what the header says, or one Herald cannot check: refused.
    assert_eq!(post(Sha256, None).await, 403);
    assert_eq!(post(Sha1, Some("algorithm=HMAC-SHA256")).await, 403);
    assert_eq!(post(Sha256, Some("algorithm=ED25519")).await, 403);
    let (_, unchanged) = s.get(key, &format!("/v1/messages/{id}")).await;
    assert_eq!(unchanged["status"], "sent");

    assert_eq!(post(Sha256, Some("algorithm=HMAC-SHA256")).await, 200);
    let message = s.wait_for(key, id, "delivered").await;
    assert_eq!(
        statuses(&message),
        ["queued", "sending", "sent", "delivered"]
    );
}

async fn twilio_refusals_fail_or_retry_as_their_codes_say(s: &TestServer, fake: &FakeTwilio) {
    let key = &s.tenant.live_key;
    // Refusals about the message itself fail it at once with Twilio's code: 21211 invalid
    // number, 21614 not a mobile number.
    for (to, status, code) in [("+14155550123", 400, 21211), ("+14155550132", 400, 21614)] {
        fake.refuse(to, status, code);
        let (_, created) = s.send(key, json!({"to": to, "body": "Hi"})).await;
        let failed = s
            .wait_for(key, created["id"].as_str().unwrap(), "failed")
            .await;
        assert_eq!(failed["error_code"], code.to_string(), "{to}");
        assert_eq!(
            failed["attempts"], 1,
            "{code}: a permanent refusal is not retried"
        );
    }

    // 21610, the recipient unsubscribed at Twilio: suppressed, and the number goes on the
    // organization's suppression list, so nothing more is tried.
    fake.refuse("+14155550131", 400, 21610);
    let (_, created) = s
        .send(key, json!({"to": "+14155550131", "body": "Hi"}))
        .await;
    let suppressed = s
        .wait_for(key, created["id"].as_str().unwrap(), "suppressed")
        .await;
    assert_eq!(suppressed["error_code"], "21610");
    let (_, list) = s.get(key, "/v1/opt-outs").await;
    assert_eq!(list["data"][0]["phone"], "+14155550131", "{list}");
    assert_eq!(list["data"][0]["source"], "twilio:21610");
    let before = fake.received.lock().unwrap().len();
    let (_, again) = s
        .send(key, json!({"to": "+14155550131", "body": "Hi again"}))
        .await;
    let again = s
        .wait_for(key, again["id"].as_str().unwrap(), "suppressed")
        .await;
    assert_eq!(again["error_code"], "opted_out");
    assert_eq!(
        fake.received.lock().unwrap().len(),
        before,
        "not even tried"
    );

    // Throttling (20429, 30022 under 429 or 400) and server errors are retried, then sent.
    for (to, status, code) in [
        ("+14155550124", 503, 20500),
        ("+14155550125", 429, 20429),
        ("+14155550126", 400, 30022),
        ("+14155550127", 500, 20500),
    ] {
        fake.refuse(to, status, code);
        let (_, busy) = s.send(key, json!({"to": to, "body": "Hi"})).await;
        let sent = s.wait_for(key, busy["id"].as_str().unwrap(), "sent").await;
        assert_eq!(sent["attempts"], 2, "{to}");
        assert_eq!(
            statuses(&sent),
            ["queued", "sending", "queued", "sending", "sent"],
            "{to}"
        );
        assert_eq!(sent["status_history"][2]["error_code"], code.to_string());
    }
}

async fn test_keys_still_reach_only_the_simulator(s: &TestServer, fake: &FakeTwilio) {
    let key = &s.tenant.test_key;
    let (_, created) = s
        .send(key, json!({"to": "+14155550100", "body": "Test"}))
        .await;
    let delivered = s
        .wait_for(key, created["id"].as_str().unwrap(), "delivered")
        .await;
    assert_eq!(delivered["provider"], "simulator");
    assert!(
        fake.received.lock().unwrap().is_empty(),
        "nothing reached Twilio"
    );
}

async fn inbound_messages_reach_the_organization_that_lists_the_number(
    s: &TestServer,
    _: &FakeTwilio,
) {
    let url = s.url("/hooks/twilio/inbound");
    let post = |to: &'static str, sid: &'static str| {
        let params: Vec<(String, String)> = [
            ("MessageSid", sid),
            ("From", "+14155550199"),
            ("To", to),
            ("Body", "Hello back"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let request = s
            .client
            .post(&url)
            .header(
                "X-Twilio-Signature",
                signature::compute(TOKEN, &url, &params),
            )
            .form(&params);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // No organization lists the number yet: refused, so Twilio reports the failure.
    assert_eq!(post("+15005550006", "SMin1").await, 404);

    // The organization names the number as a sender of one of its Twilio accounts.
    let other = s.other_tenant("globex").await;
    let account = json!({
        "name": "numbers",
        "kind": "twilio",
        "credentials": {"account_sid": "AC0123456789abcdef0123456789abcdef", "auth_token": "0123456789abcdef0123456789abcdef"},
        "senders": [{"type": "phone_number", "value": "+15005550006"}],
    });
    let response = s
        .client
        .post(s.url("/v1/providers"))
        .bearer_auth(&other.live_key)
        .json(&account)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(post("+15005550006", "SMin2").await, 200);

    let (_, theirs) = s.get(&other.live_key, "/v1/inbound").await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 1, "{theirs}");
    assert_eq!(theirs["data"][0]["provider"], "twilio");
    let (_, ours) = s.get(&s.tenant.live_key, "/v1/inbound").await;
    assert!(ours["data"].as_array().unwrap().is_empty());
}

async fn estimates_use_twilios_prices_and_settled_messages_record_what_twilio_charged(
    s: &TestServer,
    fake: &FakeTwilio,
) {
    let key = &s.tenant.live_key;
    let configured = s
        .engine
        .config
        .intake
        .prices
        .estimate(
            herald_domain::phone::Region::parse("FR").ok(),
            herald_domain::message::MessageType::Transactional,
            1,
        )
        .to_string();
    fake.set_price("FR", "0.0800");

    // The first message to France is estimated with the configured price while Twilio's is
    // fetched in the background; later ones use Twilio's (the highest of its carriers').
    let (_, first) = s
        .send(key, json!({"to": "+33612345678", "body": "Bonjour"}))
        .await;
    assert_eq!(first["estimated_cost"], configured.as_str());
    let mut learned = None;
    for _ in 0..200 {
        let (_, next) = s
            .send(key, json!({"to": "+33612345679", "body": "Bonjour"}))
            .await;
        if next["estimated_cost"] == "0.08" {
            learned = Some(next);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let learned = learned.expect("Twilio's price was never used");
    // Kept in the store for the next start.
    let cached = s.engine.store.cached_prices("twilio").await.unwrap();
    assert!(
        cached
            .iter()
            .any(|(region, price, _)| region.to_string() == "FR" && price.to_string() == "0.08"),
        "{cached:?}"
    );

    // A failing Pricing API leaves the configured prices in force.
    fake.set_pricing_down(true);
    let (status, germany) = s
        .send(key, json!({"to": "+4915112345678", "body": "Hallo"}))
        .await;
    assert_eq!(status, 201, "{germany}");
    assert_ne!(germany["estimated_cost"], "0.08");

    // Once delivered, what Twilio charged becomes the message's actual cost: from the
    // message resource, asked a little after the final status...
    let id = learned["id"].as_str().unwrap();
    let sent = s.wait_for(key, id, "sent").await;
    let sid = sent["provider_message_id"].as_str().unwrap().to_owned();
    fake.set_charge(&sid, "-0.07900");
    let url = s.url(&format!("/hooks/twilio/status?m={id}"));
    let delivered = [("MessageSid", sid.as_str()), ("MessageStatus", "delivered")];
    assert_eq!(callback(s, &url, &delivered, Some(TOKEN)).await.0, 200);
    let mut charged = Value::Null;
    for _ in 0..200 {
        let (_, message) = s.get(key, &format!("/v1/messages/{id}")).await;
        if !message["actual_cost"].is_null() {
            charged = message;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(charged["actual_cost"], "0.079", "{charged}");
    assert_eq!(charged["status"], "delivered");

    // ...or from the callback itself when it carries the price.
    let other = first["id"].as_str().unwrap();
    let sent = s.wait_for(key, other, "sent").await;
    let sid = sent["provider_message_id"].as_str().unwrap().to_owned();
    let url = s.url(&format!("/hooks/twilio/status?m={other}"));
    let priced = [
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "delivered"),
        ("Price", "-0.0750"),
        ("PriceUnit", "USD"),
    ];
    assert_eq!(callback(s, &url, &priced, Some(TOKEN)).await.0, 200);
    let message = s.wait_for(key, other, "delivered").await;
    assert_eq!(message["actual_cost"], "0.075");
}
