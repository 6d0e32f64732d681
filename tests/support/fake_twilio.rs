//! A recording server that answers Twilio's Messages API as Twilio does: it keeps every
//! request for assertions and refuses the sends it is told to, per recipient or all at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{Value, json};

/// What the fake Twilio received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub authorization: Option<String>,
    pub form: Vec<(String, String)>,
    pub sid: Option<String>,
}

/// An HTTP status and Twilio's error body.
type Refusal = (StatusCode, Value);

#[derive(Clone, Default)]
pub struct FakeTwilio {
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Refusals to answer, in order, for sends to a recipient before accepting them.
    script: Arc<Mutex<HashMap<String, Vec<Refusal>>>>,
    /// While set, every send is answered 503, as during an outage.
    down: Arc<AtomicBool>,
    /// Pricing API: outbound price by ISO country; answered 500 while `pricing_down`.
    prices: Arc<Mutex<HashMap<String, String>>>,
    pricing_down: Arc<AtomicBool>,
    /// What each message (by sid) was charged, once set: the message resource's `price`.
    charges: Arc<Mutex<HashMap<String, String>>>,
}

impl FakeTwilio {
    /// Refuse the next sends to `to` with Twilio's error `code` under HTTP `status`.
    pub fn refuse(&self, to: &str, status: u16, code: i64) {
        let body = json!({"code": code, "message": format!("error {code}"), "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status});
        self.script
            .lock()
            .unwrap()
            .entry(to.to_owned())
            .or_default()
            .push((StatusCode::from_u16(status).unwrap(), body));
    }

    /// Answer every send with 503 (`true`) or as scripted (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// List `price` (e.g. `"0.0800"`) as the outbound SMS price to `country`.
    pub fn set_price(&self, country: &str, price: &str) {
        self.prices
            .lock()
            .unwrap()
            .insert(country.to_owned(), price.to_owned());
    }

    pub fn set_pricing_down(&self, down: bool) {
        self.pricing_down.store(down, Ordering::SeqCst);
    }

    /// Let the message resource of `sid` say it cost `price` (Twilio writes `"-0.0832"`).
    pub fn set_charge(&self, sid: &str, price: &str) {
        self.charges
            .lock()
            .unwrap()
            .insert(sid.to_owned(), price.to_owned());
    }

    /// How many sends were answered 201.
    pub fn accepted(&self) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.sid.is_some())
            .count()
    }

    /// The next scripted refusal for `to`, consuming it.
    fn next_refusal(&self, to: &str) -> Option<Refusal> {
        let mut script = self.script.lock().unwrap();
        let answers = script.get_mut(to)?;
        (!answers.is_empty()).then(|| answers.remove(0))
    }
}

async fn messages(
    State(fake): State<FakeTwilio>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap();
    let to = form
        .iter()
        .find(|(k, _)| k == "To")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let mut received = Received {
        path: uri.path().to_owned(),
        authorization: headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
        form,
        sid: None,
    };
    let outage = fake.down.load(Ordering::SeqCst).then(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"code": 20500, "message": "Service Unavailable", "status": 503}),
        )
    });
    let response = if let Some((status, error)) = outage.or_else(|| fake.next_refusal(&to)) {
        (status, Json(error)).into_response()
    } else {
        let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
        received.sid = Some(sid.clone());
        (
            StatusCode::CREATED,
            Json(json!({"sid": sid, "status": "queued", "to": to})),
        )
            .into_response()
    };
    fake.received.lock().unwrap().push(received);
    response
}

/// `GET /v2/Messaging/Countries/{iso}`: the Pricing API's answer, shaped as Twilio's.
async fn country_prices(
    State(fake): State<FakeTwilio>,
    axum::extract::Path(iso): axum::extract::Path<String>,
) -> Response {
    if fake.pricing_down.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let Some(price) = fake.prices.lock().unwrap().get(&iso).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    Json(json!({
        "country": iso,
        "iso_country": iso,
        "price_unit": "USD",
        "outbound_sms_prices": [
            {"carrier": "Cheap", "mcc": "208", "mnc": "01", "prices": [
                {"number_type": "local", "base_price": "0.0100", "current_price": "0.0100"}
            ]},
            {"carrier": "Dear", "mcc": "208", "mnc": "10", "prices": [
                {"number_type": "local", "base_price": price, "current_price": price}
            ]}
        ],
        "inbound_sms_prices": [],
        "url": format!("https://pricing.twilio.com/v2/Messaging/Countries/{iso}")
    }))
    .into_response()
}

/// `GET …/Messages/{sid}.json`: the message resource, with its price once set.
async fn message_resource(
    State(fake): State<FakeTwilio>,
    axum::extract::Path((_, file)): axum::extract::Path<(String, String)>,
) -> Response {
    let sid = file.trim_end_matches(".json");
    let price = fake.charges.lock().unwrap().get(sid).cloned();
    Json(json!({"sid": sid, "status": "delivered", "error_code": null, "price": price, "price_unit": "USD"}))
        .into_response()
}

pub async fn start_fake() -> (FakeTwilio, String) {
    let fake = FakeTwilio::default();
    let app = Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            axum::routing::post(messages),
        )
        .route(
            "/2010-04-01/Accounts/{account}/Messages/{file}",
            axum::routing::get(message_resource),
        )
        .route(
            "/v2/Messaging/Countries/{iso}",
            axum::routing::get(country_prices),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, base)
}
