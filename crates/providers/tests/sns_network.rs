//! How the SNS adapter classifies failures below SNS itself, on real loopback sockets: a
//! connection that is refused cannot have delivered anything and is retried; a connection that
//! never answers may have, so it is left to reconciliation and never resent by the SDK.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald_domain::encoding::Encoding;
use herald_domain::message::MessageType;
use herald_providers::sns::{Sns, SnsConfig};
use herald_providers::{Outbound, Provider, SendError};
use uuid::Uuid;

fn outbound() -> Outbound {
    Outbound {
        message_id: Uuid::now_v7(),
        to: "+15555550100".into(),
        from: None,
        body: "Hi".into(),
        encoding: Encoding::Gsm7,
        segments: 1,
        kind: MessageType::Transactional,
        attempt: 1,
    }
}

fn config(endpoint: String) -> SnsConfig {
    let mut config = SnsConfig::new("us-east-1").with_keys("testing", "testing");
    config.endpoint_url = Some(endpoint);
    config
}

#[tokio::test]
async fn a_refused_connection_is_retried_as_nothing_was_sent() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let sns = Sns::new(config(format!("http://127.0.0.1:{port}"))).await;
    match sns.send(&outbound()).await {
        Err(SendError::Transient { code, .. }) => assert_eq!(code, "connect"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_publish_that_gets_no_answer_is_unanswered_and_sent_only_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    // Takes every connection and never answers; the sockets stay open until the test ends.
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming() {
            counted.fetch_add(1, Ordering::SeqCst);
            open.push(stream);
        }
    });

    let mut config = config(endpoint);
    config.timeout = Duration::from_millis(500);
    let sns = Sns::new(config).await;
    match sns.send(&outbound()).await {
        Err(SendError::Unanswered { code, .. }) => assert_eq!(code, "timeout"),
        other => panic!("{other:?}"),
    }
    // Room for a retry, had the SDK been allowed one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}
