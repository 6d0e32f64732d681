//! Every request shape the Twilio adapter sends is accepted by Stoplight Prism serving Twilio's
//! own OpenAPI description of the 2010-04-01 API (`fixtures/twilio_api_v2010.json`): Prism
//! answers 201 to a request that keeps the contract and 422 (or 401) to one that breaks it.
//!
//! Prism is installed by `tools/prism.sh` into `.tools/prism` and started with `node` directly,
//! so the process stopped at the end is the server itself. When Prism cannot be installed or
//! started the test fails: a contract test that skips proves nothing.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald_domain::encoding::Encoding;
use herald_providers::twilio::{Twilio, TwilioConfig};
use herald_providers::{Lookup, LookupQuery, Outbound, Provider, SendError};
use uuid::Uuid;

/// A syntactically valid account: the contract requires `^AC[0-9a-fA-F]{32}$`.
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

/// A running Prism mock server, stopped when dropped.
struct Prism {
    child: Child,
    base: String,
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Prism {
    async fn start() -> Prism {
        let install = Command::new(repository().join("tools/prism.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("tools/prism.sh must run (it needs node and npm)");
        assert!(
            install.status.success(),
            "Prism could not be installed: tools/prism.sh failed"
        );
        let entry = String::from_utf8(install.stdout).unwrap().trim().to_owned();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spec =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/twilio_api_v2010.json");
        let child = Command::new("node")
            .arg(&entry)
            .args(["mock", "-h", "127.0.0.1", "-p", &port.to_string()])
            .arg(&spec)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node must start Prism");
        let prism = Prism {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        // Prism parses the 1.8 MB description before it listens: wait until it answers.
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if client
                .get(format!("{}/2010-04-01/Accounts.json", prism.base))
                .send()
                .await
                .is_ok()
            {
                return prism;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Prism did not start listening within 60 s");
    }
}

fn outbound(from: Option<&str>, body: &str) -> Outbound {
    Outbound {
        message_id: Uuid::now_v7(),
        to: "+14155550100".into(),
        from: from.map(str::to_owned),
        body: body.into(),
        encoding: Encoding::Gsm7,
        segments: 1,
        kind: herald_domain::message::MessageType::Transactional,
        attempt: 1,
    }
}

fn twilio(base: &str, configure: impl FnOnce(&mut TwilioConfig)) -> Twilio {
    let mut config = TwilioConfig::new(ACCOUNT, "a-token");
    config.base_url = base.to_owned();
    config.status_callback = Some("https://herald.example.org/hooks/twilio/status".into());
    configure(&mut config);
    Twilio::new(config).unwrap()
}

#[tokio::test]
async fn every_request_the_adapter_makes_keeps_twilios_contract() {
    let prism = Prism::start().await;
    let base = prism.base.as_str();

    // Prism answers a valid send with the example from the description, whose sid is this.
    let accepted = |result: Result<herald_providers::Accepted, SendError>, case: &str| {
        let accepted = result.unwrap_or_else(|e| panic!("{case}: Prism refused it: {e:?}"));
        assert!(accepted.provider_message_id.starts_with("SM"), "{case}");
    };

    let plain = twilio(base, |_| {});
    accepted(
        plain.send(&outbound(Some("+15005550006"), "Hello")).await,
        "From with a status callback",
    );
    accepted(
        plain
            .send(&outbound(
                Some("+15005550006"),
                &"Réservé — ça va? 😀".repeat(40),
            ))
            .await,
        "a long UCS-2 body",
    );
    let service = twilio(base, |c| {
        c.messaging_service_sid = Some("MG0123456789abcdef0123456789abcdef".into())
    });
    accepted(
        service.send(&outbound(None, "Hello")).await,
        "MessagingServiceSid",
    );
    let priced = twilio(base, |c| {
        c.from = Some("+15005550006".into());
        c.max_price = Some("0.05".into());
        c.validity_period = Some(3600);
    });
    accepted(
        priced.send(&outbound(None, "Hello")).await,
        "MaxPrice and ValidityPeriod",
    );
    let alphanumeric = twilio(base, |_| {});
    accepted(
        alphanumeric.send(&outbound(Some("Herald"), "Hello")).await,
        "an alphanumeric sender ID",
    );

    // Asking about a message whose fate was not recorded uses the message resource.
    let found = plain
        .lookup(&LookupQuery {
            message_id: Uuid::now_v7(),
            provider_message_id: Some("SM0123456789abcdef0123456789abcdef".into()),
            to: "+14155550100".into(),
        })
        .await
        .expect("Prism answers a lookup");
    assert!(matches!(found, Lookup::Found { .. }), "{found:?}");
}

#[tokio::test]
async fn prism_really_checks_the_contract() {
    let prism = Prism::start().await;
    let url = format!("{}/2010-04-01/Accounts/{ACCOUNT}/Messages.json", prism.base);
    let client = reqwest::Client::new();

    // Without `To` the request breaks the contract.
    let missing_to = client
        .post(&url)
        .basic_auth(ACCOUNT, Some("a-token"))
        .form(&[("From", "+15005550006"), ("Body", "Hi")])
        .send()
        .await
        .unwrap();
    assert_eq!(missing_to.status().as_u16(), 422);
    // Without credentials it breaks the security requirement.
    let anonymous = client
        .post(&url)
        .form(&[("To", "+14155550100"), ("Body", "Hi")])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    // And the adapter reports such a refusal as permanent: retrying cannot fix the request.
    let malformed = twilio(&prism.base, |c| {
        c.messaging_service_sid = Some("MG-not-a-service".into())
    });
    let refused = malformed.send(&outbound(None, "Hello")).await;
    assert!(
        matches!(refused, Err(SendError::Permanent { ref code, .. }) if code == "422"),
        "{refused:?}"
    );
}
