//! Drips and triggers on a manual clock, on both stores: steps waiting their delay and local
//! time, contacts leaving on STOP and on reply, each step sent once when two runners race,
//! named events firing once per idempotency key, `contact.created` with a filter and
//! `contact.age` at a local time. The runner is stepped by hand ([`runner::tick`]).

mod support;

use std::sync::Arc;

use herald_domain::message::Mode;
use herald_domain::phone::Region;
use herald_engine::automation::drips::{self, DripSpec, EnrolRequest, Step};
use herald_engine::automation::runner;
use herald_engine::automation::triggers::{self, EventRequest, TriggerSpec};
use herald_engine::clock::{Clock, ManualClock};
use herald_engine::{Engine, EngineConfig};
use herald_providers::simulator::SimulatorConfig;
use herald_store::{
    ContactPatch, ContactUpsert, Drip, EnrollmentState, InboundMessage, Message, MessageFilter,
    Organization, Scope, Store, Trigger,
};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, json};
use support::Place;
use uuid::Uuid;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

struct World {
    engine: Arc<Engine>,
    clock: Arc<ManualClock>,
    org: Organization,
    scope: Scope,
    place: Place,
}

fn t0() -> Timestamp {
    "2026-05-01T09:00:00Z".parse().unwrap()
}

async fn world(backend: Backend) -> Option<World> {
    let place = Place::new(matches!(backend, Backend::Postgres)).await?;
    let store = place.connect().await;
    let clock = Arc::new(ManualClock::new(t0()));
    let org = Organization {
        id: Uuid::now_v7(),
        name: "acme".into(),
        default_region: Region::parse("US").unwrap(),
        created_at: t0(),
    };
    store.create_organization(&org, &[]).await.unwrap();
    let scope = Scope {
        org_id: org.id,
        mode: Mode::Live,
    };
    let config = EngineConfig {
        simulator: SimulatorConfig {
            auto_report: false,
            seed: Some(1),
            ..SimulatorConfig::default()
        },
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::new(store, clock.clone(), config, None));
    Some(World {
        engine,
        clock,
        org,
        scope,
        place,
    })
}

fn phone(i: usize) -> String {
    format!("+1415300{i:04}")
}

impl World {
    async fn done(self) {
        drop(self.engine);
        self.place.remove().await;
    }

    fn store(&self) -> &dyn Store {
        self.engine.store.as_ref()
    }

    /// Contacts for `phones` (US numbers) in `zone`, with `lead_status`; their ids.
    async fn contacts(&self, phones: &[String], zone: &str, lead_status: &str) -> Vec<Uuid> {
        let rows: Vec<ContactUpsert> = phones
            .iter()
            .map(|phone| ContactUpsert {
                phone: phone.clone(),
                country: Some(Region::parse("US").unwrap()),
                patch: ContactPatch {
                    first_name: Some(Some("Ada".into())),
                    time_zone: Some(Some(zone.to_owned())),
                    lead_status: Some(lead_status.to_owned()),
                    ..ContactPatch::default()
                },
            })
            .collect();
        self.store()
            .upsert_contacts(self.org.id, &rows, "new", self.clock.now())
            .await
            .unwrap();
        let mut ids = Vec::new();
        for phone in phones {
            let contact = self
                .store()
                .find_contact_by_phone(self.org.id, phone)
                .await
                .unwrap()
                .unwrap();
            ids.push(contact.id);
        }
        ids
    }

    async fn drip(&self, spec: DripSpec) -> Drip {
        match drips::create(&self.engine, &self.org, self.scope, None, spec, None)
            .await
            .unwrap()
            .unwrap()
        {
            drips::Created::Created(drip) => drip,
            other => panic!("{other:?}"),
        }
    }

    async fn trigger(&self, spec: TriggerSpec) -> Trigger {
        match triggers::create(&self.engine, &self.org, self.scope, None, spec, None)
            .await
            .unwrap()
            .unwrap()
        {
            triggers::Created::Created(trigger) => trigger,
            other => panic!("{other:?}"),
        }
    }

    async fn tick(&self) -> runner::Pass {
        runner::tick(&self.engine).await.unwrap()
    }

    /// Every message stored, oldest first.
    async fn messages(&self) -> Vec<Message> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store()
                .list_messages(self.scope, &MessageFilter::default(), after, 500)
                .await
                .unwrap();
            all.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        all.sort_by_key(|m| m.id);
        all
    }

    async fn to(&self, phone: &str) -> Vec<Message> {
        self.messages()
            .await
            .into_iter()
            .filter(|m| m.to == phone)
            .collect()
    }

    /// `from` texts the organization `body`, as a provider's inbound webhook would deliver
    /// it; STOP puts the number on the suppression list.
    async fn reply(&self, from: &str, body: &str) {
        let now = self.clock.now();
        let message = InboundMessage {
            id: Uuid::now_v7(),
            org_id: self.org.id,
            provider: "simulator".into(),
            provider_message_id: format!("SIM{}", Uuid::now_v7().simple()),
            from: from.to_owned(),
            to: "simulator".into(),
            body: body.to_owned(),
            received_at: now,
        };
        self.store().insert_inbound(&message).await.unwrap();
        if body.eq_ignore_ascii_case("stop") {
            self.store()
                .opt_out(self.org.id, from, "keyword", Some(message.id), now)
                .await
                .unwrap();
        }
    }

    fn advance(&self, by: SignedDuration) {
        self.clock.advance(by);
    }
}

fn body_step(delay: Option<&str>, at: Option<&str>, body: &str) -> Step {
    Step {
        delay: delay.map(str::to_owned),
        at: at.map(|t| t.parse().unwrap()),
        body: Some(body.to_owned()),
        ..Step::default()
    }
}

fn onboarding(exit_on_reply: bool) -> DripSpec {
    DripSpec {
        name: "Onboarding".into(),
        exit_on_reply,
        steps: vec![
            body_step(None, None, "Welcome aboard"),
            body_step(Some("P1D"), Some("10:00"), "Day two tips"),
            body_step(Some("P2D"), None, "How is it going?"),
        ],
        ..DripSpec::default()
    }
}

/// Steps wait their delay and local time; STOP and a reply take a contact out before the next
/// step, with nothing more sent to them; the rest go to the end; per-step stats add up.
async fn drip_exits_on_stop_and_reply(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let phones = [phone(1), phone(2), phone(3)];
    let ids = w.contacts(&phones, "Europe/Paris", "new").await;
    let drip = w.drip(onboarding(true)).await;
    let enrolled = drips::enrol(
        &w.engine,
        &w.org,
        &drip,
        &EnrolRequest {
            contacts: ids.clone(),
            ..EnrolRequest::default()
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(enrolled.enrolled, 3);

    // Step 0 is due at once; a second pass at the same moment sends nothing more.
    assert_eq!(w.tick().await.steps, 3);
    assert_eq!(w.tick().await.steps, 0);
    assert_eq!(w.messages().await.len(), 3);
    let page = w
        .store()
        .list_enrollments(w.org.id, drip.id, None, 10)
        .await
        .unwrap();
    // Day two at 10:00 Paris (CEST, UTC+2) is 08:00Z on 2 May.
    let day_two: Timestamp = "2026-05-02T08:00:00Z".parse().unwrap();
    for e in &page.items {
        assert_eq!(e.step, 1);
        assert_eq!(e.next_at, Some(day_two), "{e:?}");
    }

    // The first texts STOP, the second replies; both during the wait.
    w.advance(SignedDuration::from_hours(2));
    w.reply(&phones[0], "STOP").await;
    w.reply(&phones[1], "thanks, got it").await;

    // Not yet due: nothing happens a minute before.
    w.clock.set(day_two - SignedDuration::from_mins(1));
    assert_eq!(w.tick().await, runner::Pass::default());
    w.clock.set(day_two);
    let pass = w.tick().await;
    assert_eq!((pass.steps, pass.exited), (1, 2), "{pass:?}");
    assert_eq!(w.to(&phones[0]).await.len(), 1);
    assert_eq!(w.to(&phones[1]).await.len(), 1);
    assert_eq!(w.to(&phones[2]).await.len(), 2);

    w.advance(SignedDuration::from_hours(48));
    let pass = w.tick().await;
    assert_eq!((pass.steps, pass.completed), (1, 1), "{pass:?}");
    let last = w.to(&phones[2]).await;
    assert_eq!(
        last.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["Welcome aboard", "Day two tips", "How is it going?"]
    );

    // Long after: nothing more for anyone.
    w.advance(SignedDuration::from_hours(24 * 30));
    assert_eq!(w.tick().await, runner::Pass::default());
    assert_eq!(w.messages().await.len(), 5);

    let states: Vec<(String, EnrollmentState, Option<String>)> = w
        .store()
        .list_enrollments(w.org.id, drip.id, None, 10)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.phone, e.state, e.reason))
        .collect();
    assert!(states.contains(&(
        phones[0].clone(),
        EnrollmentState::Exited,
        Some("opted_out".into())
    )));
    assert!(states.contains(&(
        phones[1].clone(),
        EnrollmentState::Exited,
        Some("replied".into())
    )));
    assert!(states.contains(&(phones[2].clone(), EnrollmentState::Completed, None)));

    let stats = w.store().drip_stats(w.org.id, drip.id).await.unwrap();
    assert_eq!((stats.enrolled, stats.active, stats.completed), (3, 0, 1));
    assert_eq!(stats.exited.get("opted_out"), Some(&1));
    assert_eq!(stats.exited.get("replied"), Some(&1));
    let taken: Vec<(u32, u64)> = stats.steps.iter().map(|s| (s.step, s.taken)).collect();
    assert_eq!(taken, [(0, 3), (1, 1), (2, 1)]);
    assert!(
        stats.steps.iter().all(|s| s.pending == s.taken),
        "{stats:?}"
    );

    // Enrolling the same contacts again enrols no one: a number goes through a drip once.
    let again = drips::enrol(
        &w.engine,
        &w.org,
        &drip,
        &EnrolRequest {
            contacts: ids,
            ..EnrolRequest::default()
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!((again.enrolled, again.already), (0, 3));
    w.done().await;
}

/// With `exit_on_reply` off, a reply does not stop the drip; STOP still does.
async fn drip_continues_after_reply_when_told(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let phones = [phone(4), phone(5)];
    w.contacts(&phones, "America/New_York", "new").await;
    let drip = w.drip(onboarding(false)).await;
    drips::enrol(
        &w.engine,
        &w.org,
        &drip,
        &EnrolRequest {
            phones: phones.to_vec(),
            ..EnrolRequest::default()
        },
    )
    .await
    .unwrap()
    .unwrap();
    w.tick().await;
    w.reply(&phones[0], "what is this?").await;
    w.reply(&phones[1], "stop").await;
    for _ in 0..4 {
        w.advance(SignedDuration::from_hours(24));
        w.tick().await;
    }
    assert_eq!(w.to(&phones[0]).await.len(), 3);
    assert_eq!(w.to(&phones[1]).await.len(), 1);
    w.done().await;
}

/// Two runners taking the same due steps at once send each step once.
async fn racing_runners_send_each_step_once(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let phones: Vec<String> = (100..160).map(phone).collect();
    let drip = w
        .drip(DripSpec {
            name: "Race".into(),
            steps: vec![
                body_step(None, None, "one"),
                body_step(Some("PT1H"), None, "two"),
            ],
            ..DripSpec::default()
        })
        .await;
    drips::enrol(
        &w.engine,
        &w.org,
        &drip,
        &EnrolRequest {
            phones: phones.clone(),
            ..EnrolRequest::default()
        },
    )
    .await
    .unwrap()
    .unwrap();
    let (a, b) = tokio::join!(runner::tick(&w.engine), runner::tick(&w.engine));
    assert_eq!(a.unwrap().steps + b.unwrap().steps, 60);
    w.advance(SignedDuration::from_hours(1));
    let (a, b) = tokio::join!(runner::tick(&w.engine), runner::tick(&w.engine));
    assert_eq!(a.unwrap().steps + b.unwrap().steps, 60);
    let messages = w.messages().await;
    assert_eq!(messages.len(), 120);
    for phone in &phones {
        let bodies: Vec<&str> = messages
            .iter()
            .filter(|m| &m.to == phone)
            .map(|m| m.body.as_str())
            .collect();
        assert_eq!(bodies, ["one", "two"]);
    }
    w.done().await;
}

/// A named event fires each listening trigger once per idempotency key, however often (or
/// however concurrently) it is posted; its data fills the template.
async fn events_fire_once_per_key(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let ids = w.contacts(&[phone(7)], "UTC", "new").await;
    let input = herald_engine::templates::TemplateInput {
        name: Some("shipped".into()),
        body: Some("Hi {{first_name}}, order {{order}} has shipped".into()),
        ..Default::default()
    };
    let stored = herald_engine::templates::new_template(w.org.id, &input, w.clock.now()).unwrap();
    herald_engine::templates::create(w.store(), &stored, None, w.clock.now())
        .await
        .unwrap();
    let trigger = w
        .trigger(TriggerSpec {
            name: "Shipping notice".into(),
            event: "order.shipped".into(),
            template_id: Some(stored.id),
            ..TriggerSpec::default()
        })
        .await;
    let event = |order: &str| EventRequest {
        name: "order.shipped".into(),
        contact_id: Some(ids[0]),
        data: Map::from_iter([("order".to_owned(), json!(order))]),
        ..EventRequest::default()
    };
    let post = |e: EventRequest, key: Option<&str>| {
        triggers::record_event(&w.engine, &w.org, w.scope, e, key.map(str::to_owned))
    };

    let first = post(event("A-1"), Some("ship-A-1")).await.unwrap().unwrap();
    assert_eq!(first.firings.len(), 1);
    assert!(!first.firings[0].1);
    assert_eq!(first.firings[0].0.outcome, "sent");
    // The same key again, and twice at once: the same firing, nothing more sent.
    let again = post(event("A-1"), Some("ship-A-1")).await.unwrap().unwrap();
    assert_eq!(again.firings[0].0.id, first.firings[0].0.id);
    assert!(again.firings[0].1);
    let (x, y) = tokio::join!(
        post(event("A-1"), Some("ship-A-1")),
        post(event("A-1"), Some("ship-A-1"))
    );
    assert!(x.unwrap().unwrap().firings[0].1 && y.unwrap().unwrap().firings[0].1);
    let messages = w.messages().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body, "Hi Ada, order A-1 has shipped");
    assert_eq!(Some(messages[0].id), first.firings[0].0.message_id);

    // A new key concurrently posted twice fires once.
    let (x, y) = tokio::join!(
        post(event("B-2"), Some("ship-B-2")),
        post(event("B-2"), Some("ship-B-2"))
    );
    let fresh = [x.unwrap().unwrap(), y.unwrap().unwrap()];
    assert_eq!(fresh.iter().filter(|o| !o.firings[0].1).count(), 1);
    assert_eq!(w.messages().await.len(), 2);

    // Without a key, each post is its own event.
    post(event("C-3"), None).await.unwrap().unwrap();
    post(event("C-3"), None).await.unwrap().unwrap();
    assert_eq!(w.messages().await.len(), 4);

    // An event nobody listens for fires nothing; a switched-off trigger does not fire.
    let other = EventRequest {
        name: "order.returned".into(),
        ..event("D-4")
    };
    assert!(
        post(other, Some("r"))
            .await
            .unwrap()
            .unwrap()
            .firings
            .is_empty()
    );
    triggers::update(
        &w.engine,
        &w.org,
        w.scope,
        trigger.id,
        Map::from_iter([("active".to_owned(), json!(false))]),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        post(event("E-5"), Some("e"))
            .await
            .unwrap()
            .unwrap()
            .firings
            .is_empty()
    );
    assert_eq!(w.messages().await.len(), 4);

    // Bad input is named by field and changes nothing.
    let bad = post(
        EventRequest {
            name: "contact.created".into(),
            contact_id: Some(Uuid::now_v7()),
            phone: Some("+14155550100".into()),
            ..EventRequest::default()
        },
        None,
    )
    .await
    .unwrap()
    .unwrap_err();
    let fields: Vec<&str> = bad.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["name", "contact_id"]);
    w.done().await;
}

/// An event can enrol its contact in a drip, once per key; a number already in the drip is
/// not enrolled twice.
async fn event_enrols_in_drip(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let drip = w.drip(onboarding(true)).await;
    w.trigger(TriggerSpec {
        name: "Signed up".into(),
        event: "signup".into(),
        drip_id: Some(drip.id),
        ..TriggerSpec::default()
    })
    .await;
    let signup = || EventRequest {
        name: "signup".into(),
        phone: Some("(415) 300-0009".into()),
        ..EventRequest::default()
    };
    let post = |key: &'static str| {
        triggers::record_event(&w.engine, &w.org, w.scope, signup(), Some(key.to_owned()))
    };
    let first = post("u1").await.unwrap().unwrap();
    assert_eq!(first.firings[0].0.outcome, "enrolled");
    let second = post("u2").await.unwrap().unwrap();
    assert_eq!(second.firings[0].0.outcome, "already_enrolled");
    assert_eq!(
        second.firings[0].0.enrollment_id,
        first.firings[0].0.enrollment_id
    );
    assert_eq!(w.tick().await.steps, 1);
    assert_eq!(w.to(&phone(9)).await.len(), 1);
    w.done().await;
}

/// `contact.created` fires once for each contact created after it that matches its filter.
async fn contact_created_with_filter(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    w.contacts(&[phone(20)], "UTC", "new").await;
    w.advance(SignedDuration::from_secs(1));
    let trigger = w
        .trigger(TriggerSpec {
            name: "Welcome leads".into(),
            event: "contact.created".into(),
            filter: Some(json!({"field": "lead_status", "op": "eq", "value": "lead"})),
            body: Some("Thanks for your interest".into()),
            ..TriggerSpec::default()
        })
        .await;
    assert_eq!(w.tick().await.fired, 0);
    w.advance(SignedDuration::from_secs(1));
    w.contacts(&[phone(21), phone(22)], "UTC", "lead").await;
    w.contacts(&[phone(23)], "UTC", "customer").await;
    w.advance(SignedDuration::from_secs(1));
    assert_eq!(w.tick().await.fired, 2);
    assert_eq!(w.tick().await.fired, 0);
    w.advance(SignedDuration::from_mins(10));
    assert_eq!(w.tick().await.fired, 0);
    let sent: Vec<String> = w.messages().await.into_iter().map(|m| m.to).collect();
    assert_eq!(sent.len(), 2);
    assert!(sent.contains(&phone(21)) && sent.contains(&phone(22)));
    let firings = w
        .store()
        .list_firings(w.org.id, trigger.id, None, 10)
        .await
        .unwrap();
    assert_eq!(firings.items.len(), 2);
    assert!(firings.items.iter().all(|f| f.outcome == "sent"));
    w.done().await;
}

/// `contact.age` fires N days after creation at a local time in each contact's own zone,
/// once.
async fn contact_age_at_local_time(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    // Created 1 May 09:00Z: 18:00 in Tokyo, 05:00 in New York.
    w.contacts(&[phone(30)], "Asia/Tokyo", "new").await;
    w.contacts(&[phone(31)], "America/New_York", "new").await;
    w.trigger(TriggerSpec {
        name: "Day-two follow-up".into(),
        event: "contact.age".into(),
        days: Some(2),
        at: Some("10:00".parse().unwrap()),
        body: Some("Still thinking it over?".into()),
        ..TriggerSpec::default()
    })
    .await;
    // 3 May 10:00 in Tokyo is 01:00Z; in New York (EDT) 14:00Z.
    let tokyo: Timestamp = "2026-05-03T01:00:00Z".parse().unwrap();
    let new_york: Timestamp = "2026-05-03T14:00:00Z".parse().unwrap();
    let mut fired = Vec::new();
    let mut at = t0();
    while at < "2026-05-05T00:00:00Z".parse().unwrap() {
        at += SignedDuration::from_mins(30);
        w.clock.set(at);
        let pass = w.tick().await;
        for _ in 0..pass.fired {
            fired.push(at);
        }
    }
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert_eq!(fired[0], tokyo);
    assert_eq!(fired[1], new_york);
    let messages = w.messages().await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].to, phone(30));
    assert_eq!(messages[1].to, phone(31));
    w.done().await;
}

/// Run each case on both stores.
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_stores!(
    drip_exits_on_stop_and_reply,
    drip_continues_after_reply_when_told,
    racing_runners_send_each_step_once,
    events_fire_once_per_key,
    event_enrols_in_drip,
    contact_created_with_filter,
    contact_age_at_local_time,
);
