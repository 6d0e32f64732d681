//! Organizations' own provider accounts carry their live traffic: an account added through
//! `/v1/providers` and named by a route in `/v1/routes` sends to Twilio (a recording server
//! answering as Twilio does) with its own credentials, and its callbacks, signed with its own
//! auth token, settle the messages — on both stores, without touching other organizations.

mod support;

use herald_providers::twilio::signature;
use serde_json::{Value, json};
use support::fake_twilio::{FakeTwilio, start_fake};
use support::{Backend, TestServer};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "the-organizations-own-token";

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (fake, base) = super::start_fake().await;
                    let server = super::TestServer::start(super::Backend::Sqlite).await.unwrap();
                    super::$case(&server, &fake, &base).await;
                    server.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (fake, base) = super::start_fake().await;
                    let Some(server) = super::TestServer::start(super::Backend::Postgres).await else { return };
                    super::$case(&server, &fake, &base).await;
                    server.stop().await;
                }
            )*
        }
    };
}

on_both_stores!(
    an_organizations_twilio_account_sends_and_its_callbacks_settle,
    callbacks_must_be_signed_by_the_account_that_sent,
    inbound_messages_are_kept_once_for_the_accounts_organization,
    stop_help_and_start_from_a_recipient_are_honoured,
);

async fn json_request(
    s: &TestServer,
    method: reqwest::Method,
    key: &str,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let response = s
        .client
        .request(method, s.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    support::status_and_json(response).await
}

/// Add a Twilio account pointing at the recording server and route everything through it.
async fn own_twilio(s: &TestServer, key: &str, base: &str) -> String {
    let (status, account) = json_request(
        s,
        reqwest::Method::POST,
        key,
        "/v1/providers",
        &json!({
            "name": "own",
            "kind": "twilio",
            "credentials": {"account_sid": SID, "auth_token": TOKEN, "base_url": base},
            "senders": [{"type": "phone_number", "value": "+15005550006"}],
        }),
    )
    .await;
    assert_eq!(status, 201, "{account}");
    let id = account["id"].as_str().unwrap().to_owned();
    let (status, route) = json_request(
        s,
        reqwest::Method::PUT,
        key,
        "/v1/routes/default",
        &json!({"providers": [id]}),
    )
    .await;
    assert_eq!(status, 200, "{route}");
    id
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn callback(s: &TestServer, url: &str, params: &[(&str, &str)], token: &str) -> u16 {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.client
        .post(url)
        .header(
            "X-Twilio-Signature",
            signature::compute(token, url, &params),
        )
        .form(&params)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn an_organizations_twilio_account_sends_and_its_callbacks_settle(
    s: &TestServer,
    fake: &FakeTwilio,
    base: &str,
) {
    let key = &s.tenant.live_key;
    let account = own_twilio(s, key, base).await;

    let (status, created) = s
        .send(key, json!({"to": "+14155550100", "body": "Hello"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let sent = s.wait_for(key, id, "sent").await;
    assert_eq!(sent["provider"], format!("twilio/{account}"));

    let request = fake.received.lock().unwrap()[0].clone();
    assert_eq!(
        request.path,
        format!("/2010-04-01/Accounts/{SID}/Messages.json")
    );
    let credentials = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{SID}:{TOKEN}"),
    );
    assert_eq!(
        request.authorization.as_deref(),
        Some(format!("Basic {credentials}").as_str())
    );
    assert_eq!(field(&request.form, "From"), Some("+15005550006"));
    let callback_url = field(&request.form, "StatusCallback").unwrap().to_owned();
    assert_eq!(
        callback_url,
        s.url(&format!("/hooks/twilio/accounts/{account}/status?m={id}"))
    );

    let sid = request.sid.unwrap();
    let delivered = [("MessageSid", sid.as_str()), ("MessageStatus", "delivered")];
    assert_eq!(callback(s, &callback_url, &delivered, TOKEN).await, 200);
    s.wait_for(key, id, "delivered").await;

    // Another organization without routes still sends through the server's providers (here
    // the simulator), and its test traffic never reaches the account.
    let other = s.other_tenant("globex").await;
    let (_, theirs) = s
        .send(&other.live_key, json!({"to": "+14155550101", "body": "Hi"}))
        .await;
    let theirs = s
        .wait_for(&other.live_key, theirs["id"].as_str().unwrap(), "delivered")
        .await;
    assert_eq!(theirs["provider"], "simulator");
    let (_, test) = s
        .send(
            &s.tenant.test_key,
            json!({"to": "+14155550102", "body": "Hi"}),
        )
        .await;
    let test = s
        .wait_for(
            &s.tenant.test_key,
            test["id"].as_str().unwrap(),
            "delivered",
        )
        .await;
    assert_eq!(test["provider"], "simulator");
    assert_eq!(fake.accepted(), 1);
}

async fn callbacks_must_be_signed_by_the_account_that_sent(
    s: &TestServer,
    fake: &FakeTwilio,
    base: &str,
) {
    let key = &s.tenant.live_key;
    let account = own_twilio(s, key, base).await;
    let (_, created) = s
        .send(key, json!({"to": "+14155550100", "body": "Hello"}))
        .await;
    let id = created["id"].as_str().unwrap();
    s.wait_for(key, id, "sent").await;
    let sid = fake.received.lock().unwrap()[0].sid.clone().unwrap();
    let url = s.url(&format!("/hooks/twilio/accounts/{account}/status?m={id}"));
    let delivered = [("MessageSid", sid.as_str()), ("MessageStatus", "delivered")];

    // Signed with another token (say, the server's own account's): refused.
    assert_eq!(callback(s, &url, &delivered, "some-other-token").await, 403);
    // An account that does not exist.
    let nowhere = s.url(&format!(
        "/hooks/twilio/accounts/{}/status?m={id}",
        uuid::Uuid::now_v7()
    ));
    assert_eq!(callback(s, &nowhere, &delivered, TOKEN).await, 404);
    let (_, message) = s.get(key, &format!("/v1/messages/{id}")).await;
    assert_eq!(message["status"], "sent");

    // Another organization's own account, correctly signed, cannot move this message.
    let other = s.other_tenant("globex").await;
    let theirs = own_twilio(s, &other.live_key, base).await;
    let foreign = s.url(&format!("/hooks/twilio/accounts/{theirs}/status?m={id}"));
    assert_eq!(callback(s, &foreign, &delivered, TOKEN).await, 200);
    let (_, message) = s.get(key, &format!("/v1/messages/{id}")).await;
    assert_eq!(message["status"], "sent");

    assert_eq!(callback(s, &url, &delivered, TOKEN).await, 200);
    s.wait_for(key, id, "delivered").await;
}

async fn inbound_messages_are_kept_once_for_the_accounts_organization(
    s: &TestServer,
    _: &FakeTwilio,
    base: &str,
) {
    let key = &s.tenant.live_key;
    let account = own_twilio(s, key, base).await;
    let url = s.url(&format!("/hooks/twilio/accounts/{account}/inbound"));
    let inbound = [
        ("MessageSid", "SMinbound0000000000000000000000001"),
        ("AccountSid", SID),
        ("From", "+14155550199"),
        ("To", "+15005550006"),
        ("Body", "Réservé — see you then"),
        ("NumMedia", "0"),
    ];
    let post = |token: Option<&'static str>| {
        let params: Vec<(String, String)> = inbound
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut request = s.client.post(&url).form(&params);
        if let Some(token) = token {
            request = request.header(
                "X-Twilio-Signature",
                signature::compute(token, &url, &params),
            );
        }
        async move { request.send().await.unwrap() }
    };
    let list = |key: String| async move {
        let (status, page) = s.get(&key, "/v1/inbound").await;
        assert_eq!(status, 200, "{page}");
        page["data"].as_array().unwrap().clone()
    };

    assert_eq!(post(None).await.status().as_u16(), 403);
    assert_eq!(post(Some("wrong-token")).await.status().as_u16(), 403);
    assert!(list(key.clone()).await.is_empty());

    let answer = post(Some(TOKEN)).await;
    assert_eq!(answer.status().as_u16(), 200);
    assert!(
        answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    let twiml = answer.text().await.unwrap();
    assert!(twiml.ends_with("<Response/>"), "{twiml}");
    // Twilio retries a webhook it thinks failed: the same message is kept once.
    assert_eq!(post(Some(TOKEN)).await.status().as_u16(), 200);

    let received = list(key.clone()).await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["from"], "+14155550199");
    assert_eq!(received[0]["to"], "+15005550006");
    assert_eq!(received[0]["body"], "Réservé — see you then");
    assert_eq!(received[0]["provider"], format!("twilio/{account}"));
    // Another organization and test keys see none of it.
    let other = s.other_tenant("globex").await;
    assert!(list(other.live_key.clone()).await.is_empty());
    assert!(list(s.tenant.test_key.clone()).await.is_empty());
}

async fn stop_help_and_start_from_a_recipient_are_honoured(
    s: &TestServer,
    fake: &FakeTwilio,
    base: &str,
) {
    let key = &s.tenant.live_key;
    let account = own_twilio(s, key, base).await;
    let url = s.url(&format!("/hooks/twilio/accounts/{account}/inbound"));
    let text = |sid: &'static str, body: &'static str| {
        let params: Vec<(String, String)> = [
            ("MessageSid", sid),
            ("From", "+14155550199"),
            ("To", "+15005550006"),
            ("Body", body),
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
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            response.text().await.unwrap()
        }
    };
    let listed = || async {
        let (_, page) = s.get(key, "/v1/opt-outs").await;
        page["data"].as_array().unwrap().clone()
    };

    assert!(text("SMk1", " Stop ").await.ends_with("<Response/>"));
    let list = listed().await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        (&list[0]["phone"], &list[0]["source"]),
        (&json!("+14155550199"), &json!("keyword"))
    );
    let (_, created) = s
        .send(key, json!({"to": "+14155550199", "body": "Sale today"}))
        .await;
    let suppressed = s
        .wait_for(key, created["id"].as_str().unwrap(), "suppressed")
        .await;
    assert_eq!(suppressed["error_code"], "opted_out");
    assert_eq!(fake.accepted(), 0, "nothing went to Twilio");

    let help = text("SMk2", "help").await;
    assert!(
        help.contains("<Message>acme: ") && help.contains("Reply STOP"),
        "{help}"
    );
    // A sentence that merely contains a keyword is just a message.
    text("SMk3", "please don't stop").await;
    assert_eq!(listed().await.len(), 1);

    text("SMk4", "START").await;
    assert!(listed().await.is_empty());
    let (_, created) = s
        .send(key, json!({"to": "+14155550199", "body": "Welcome back"}))
        .await;
    s.wait_for(key, created["id"].as_str().unwrap(), "sent")
        .await;
    assert_eq!(fake.accepted(), 1);

    // The history names each change, what caused it and the message that asked for it.
    let (status, history) = s.get(key, "/v1/opt-outs/%2B14155550199/history").await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["opted_out"], false);
    let (_, inbound) = s.get(key, "/v1/inbound").await;
    let id_of = |sid: &str| {
        inbound["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["provider_message_id"] == sid)
            .map(|m| m["id"].clone())
            .unwrap()
    };
    let events = history["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{history}");
    assert_eq!(
        (
            &events[0]["action"],
            &events[0]["source"],
            &events[0]["message_id"]
        ),
        (&json!("opt_out"), &json!("keyword"), &id_of("SMk1"))
    );
    assert_eq!(
        (&events[1]["action"], &events[1]["message_id"]),
        (&json!("opt_in"), &id_of("SMk4"))
    );
}
