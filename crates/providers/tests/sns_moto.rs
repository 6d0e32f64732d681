//! The SNS adapter against moto's SNS server, a third-party implementation of the AWS APIs run
//! on loopback: what it stores and records is what a publish put on the wire, its IAM checks
//! SigV4 signatures and policies, and its opt-out list is the one SNS-speaking clients are
//! tested against.
//!
//! Each test starts its own `moto_server` ([`herald_providers::test_support::Moto`]) and stops
//! it when done. If moto cannot be installed or started the tests fail; they never skip.

use base64::Engine as _;
use herald_domain::encoding::Encoding;
use herald_domain::message::MessageType;
use herald_domain::money::Amount;
use herald_providers::sns::{ACCOUNT_PROBLEM, Sns};
use herald_providers::test_support::Moto;
use herald_providers::{Outbound, Provider, SendError};
use serde_json::Value;
use uuid::Uuid;

/// Numbers moto's SNS starts with on its opt-out list (`moto/sns/models.py`).
const MOTO_OPTED_OUT: [&str; 8] = [
    "+447420500600",
    "+447420505401",
    "+447632960543",
    "+447632960028",
    "+447700900149",
    "+447700900550",
    "+447700900545",
    "+447700900907",
];

fn outbound(to: &str, body: &str, kind: MessageType) -> Outbound {
    Outbound {
        message_id: Uuid::now_v7(),
        to: to.into(),
        from: None,
        body: body.into(),
        encoding: Encoding::Gsm7,
        segments: 1,
        kind,
        attempt: 1,
    }
}

/// The text between `<tag>` and `</tag>` in an XML answer.
fn xml_field(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
        + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>")).unwrap();
    xml[start..end].to_owned()
}

/// The form fields of a recorded request body.
fn recorded_form(entry: &Value) -> Vec<(String, String)> {
    let body = entry["body"].as_str().unwrap_or_default();
    let body = if entry["body_encoded"].as_bool() == Some(true) {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap(),
        )
        .unwrap()
    } else {
        body.to_owned()
    };
    reqwest::Url::parse(&format!("http://form/?{body}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The `MessageAttributes` of a recorded publish, as (name, data type, value).
fn message_attributes(form: &[(String, String)]) -> Vec<(String, String, String)> {
    let field = |name: String| {
        form.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    (1..)
        .map_while(|i| {
            let prefix = format!("MessageAttributes.entry.{i}");
            let name = field(format!("{prefix}.Name"))?;
            Some((
                name,
                field(format!("{prefix}.Value.DataType")).unwrap_or_default(),
                field(format!("{prefix}.Value.StringValue")).unwrap_or_default(),
            ))
        })
        .collect()
}

#[tokio::test]
async fn a_published_sms_reaches_moto_with_its_recipient_and_body() {
    let moto = Moto::start().await;
    moto.post("/moto-api/reset").await;
    let sns = moto.sns().await;
    let accepted = sns
        .send(&outbound(
            "+15555550100",
            "Your code is 123456",
            MessageType::Transactional,
        ))
        .await
        .unwrap();
    assert!(!accepted.provider_message_id.is_empty());
    assert_eq!(accepted.cost, None);

    let data = moto.data().await;
    let sms = data["sns"]["SMS"]
        .as_array()
        .unwrap_or_else(|| panic!("no sns.SMS in moto's data: {data}"));
    assert_eq!(sms.len(), 1, "{sms:?}");
    let text = sms[0].to_string();
    assert!(text.contains("+15555550100"), "{text}");
    assert!(text.contains("Your code is 123456"), "{text}");
    assert!(text.contains(&accepted.provider_message_id), "{text}");
}

#[tokio::test]
async fn a_publish_carries_the_sms_type_sender_and_max_price() {
    let moto = Moto::start_with(&[("MOTO_ENABLE_RECORDING", "1")]).await;
    moto.post("/moto-api/recorder/reset-recording").await;
    moto.post("/moto-api/recorder/start-recording").await;
    let mut config = moto.config();
    config.sender_id = Some("Herald".into());
    config.max_price = Some(Amount::parse("0.05").unwrap());
    let sns = Sns::new(config).await;
    sns.send(&outbound(
        "+15555550100",
        "50% off today",
        MessageType::Promotional,
    ))
    .await
    .unwrap();
    let mut named = outbound(
        "+15555550101",
        "Your order shipped",
        MessageType::Transactional,
    );
    named.from = Some("Shop".into());
    sns.send(&named).await.unwrap();
    let mut numbered = outbound("+15555550102", "Reply YES", MessageType::Transactional);
    numbered.from = Some("+15555550199".into());
    sns.send(&numbered).await.unwrap();

    let recording = moto.get("/moto-api/recorder/download-recording").await;
    let publishes: Vec<Vec<(String, String)>> = recording
        .lines()
        .map(|line| recorded_form(&serde_json::from_str(line).unwrap()))
        .filter(|form| form.contains(&("Action".into(), "Publish".into())))
        .collect();
    assert_eq!(publishes.len(), 3, "{recording}");
    let attributes = |form: &[(String, String)]| {
        let mut attributes = message_attributes(form);
        attributes.sort();
        attributes
    };
    let own = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        attributes(&publishes[0]),
        [
            own("AWS.SNS.SMS.MaxPrice", "Number", "0.05"),
            own("AWS.SNS.SMS.SMSType", "String", "Promotional"),
            own("AWS.SNS.SMS.SenderID", "String", "Herald"),
        ]
    );
    assert!(publishes[0].contains(&("PhoneNumber".into(), "+15555550100".into())));
    assert_eq!(
        attributes(&publishes[1]),
        [
            own("AWS.SNS.SMS.MaxPrice", "Number", "0.05"),
            own("AWS.SNS.SMS.SMSType", "String", "Transactional"),
            own("AWS.SNS.SMS.SenderID", "String", "Shop"),
        ]
    );
    assert_eq!(
        attributes(&publishes[2]),
        [
            own("AWS.MM.SMS.OriginationNumber", "String", "+15555550199"),
            own("AWS.SNS.SMS.MaxPrice", "Number", "0.05"),
            own("AWS.SNS.SMS.SMSType", "String", "Transactional"),
        ]
    );
}

#[tokio::test]
async fn with_strict_signatures_only_the_right_secret_can_publish() {
    // The three IAM calls below are the only ones moto lets through without checking.
    let moto = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]).await;
    moto.iam(&[("Action", "CreateUser"), ("UserName", "herald")])
        .await;
    let key = moto
        .iam(&[("Action", "CreateAccessKey"), ("UserName", "herald")])
        .await;
    let policy = r#"{"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sns:Publish", "Resource": "*"}]}"#;
    moto.iam(&[
        ("Action", "PutUserPolicy"),
        ("UserName", "herald"),
        ("PolicyName", "publish-sms"),
        ("PolicyDocument", policy),
    ])
    .await;
    let access_key_id = xml_field(&key, "AccessKeyId");
    let secret = xml_field(&key, "SecretAccessKey");

    let with_keys = |id: &str, secret: &str| Sns::new(moto.config().with_keys(id, secret));
    let message = outbound("+15555550100", "Signed", MessageType::Transactional);

    // A refusal first: it shows moto now checks every request, so the success after it counts.
    let wrong = with_keys(&access_key_id, &format!("{secret}x")).await;
    match wrong.send(&message).await {
        Err(SendError::Transient { code, message, .. }) => {
            assert_eq!(code, ACCOUNT_PROBLEM);
            assert!(message.contains("SignatureDoesNotMatch"), "{message}");
        }
        other => panic!("a wrong secret: {other:?}"),
    }

    let right = with_keys(&access_key_id, &secret).await;
    right
        .send(&message)
        .await
        .expect("the right secret publishes");

    let unknown = with_keys("AKIAUNKNOWNKEY000000", &secret).await;
    match unknown.send(&message).await {
        Err(SendError::Transient { code, message, .. }) => {
            assert_eq!(code, ACCOUNT_PROBLEM);
            assert!(message.contains("InvalidClientTokenId"), "{message}");
        }
        other => panic!("an unknown key: {other:?}"),
    }

    // The key may publish and nothing else.
    match right.opted_out_numbers().await {
        Err(SendError::Transient { code, message, .. }) => {
            assert_eq!(code, ACCOUNT_PROBLEM);
            assert!(message.contains("AccessDenied"), "{message}");
        }
        other => panic!("an action the policy does not allow: {other:?}"),
    }
    let data = moto.data().await;
    assert_eq!(
        data["sns"]["SMS"].as_array().map(Vec::len),
        Some(1),
        "{data}"
    );
}

#[tokio::test]
async fn the_opt_out_list_can_be_read_checked_and_opted_back_into() {
    let moto = Moto::start().await;
    moto.post("/moto-api/reset").await;
    let sns = moto.sns().await;

    let mut listed = sns.opted_out_numbers().await.unwrap();
    listed.sort();
    let mut expected = MOTO_OPTED_OUT.map(str::to_owned).to_vec();
    expected.sort();
    assert_eq!(listed, expected);

    sns.opt_in("+447420500600").await.unwrap();
    let listed = sns.opted_out_numbers().await.unwrap();
    assert_eq!(listed.len(), MOTO_OPTED_OUT.len() - 1);
    assert!(!listed.contains(&"+447420500600".to_owned()));

    // Moto answers this check by a rule of its own, not from the list above: every number
    // ending in 99 has opted out, and no other.
    assert!(sns.is_opted_out("+15555550199").await.unwrap());
    assert!(!sns.is_opted_out("+15555550100").await.unwrap());

    match sns.is_opted_out("not a number").await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "InvalidParameter"),
        other => panic!("a malformed number: {other:?}"),
    }
}

#[tokio::test]
async fn with_the_check_on_an_opted_out_number_fails_instead_of_vanishing() {
    let moto = Moto::start().await;
    moto.post("/moto-api/reset").await;
    let mut config = moto.config();
    config.check_opt_out = true;
    let sns = Sns::new(config).await;
    // Moto says every number ending in 99 has opted out (see above).
    match sns
        .send(&outbound("+15555550199", "Hi", MessageType::Promotional))
        .await
    {
        Err(SendError::Permanent { code, .. }) => {
            assert_eq!(code, herald_providers::sns::OPTED_OUT)
        }
        other => panic!("an opted-out number: {other:?}"),
    }
    assert!(
        moto.data().await["sns"]["SMS"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "nothing was published"
    );
    sns.send(&outbound("+15555550100", "Hi", MessageType::Promotional))
        .await
        .expect("other numbers still go out");
}

#[tokio::test]
async fn an_invalid_phone_number_fails_for_good() {
    let moto = Moto::start().await;
    moto.post("/moto-api/reset").await;
    let sns = moto.sns().await;
    for to in [
        "+0441234567",
        "+1 555 0100",
        "+1234567890123456",
        "not a number",
    ] {
        match sns
            .send(&outbound(to, "Hi", MessageType::Transactional))
            .await
        {
            Err(SendError::Permanent { code, message }) => {
                assert!(
                    code == "InvalidParameter" || code == "InvalidParameterValue",
                    "{to}: {code} {message}"
                );
            }
            other => panic!("{to}: {other:?}"),
        }
    }
    let data = moto.data().await;
    assert!(
        data["sns"]["SMS"].as_array().is_none_or(Vec::is_empty),
        "nothing was sent: {data}"
    );
}
