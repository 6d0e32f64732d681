//! Campaigns on a manual clock, on both stores: the lifecycle matrix, exact pause and resume
//! under load, cancel releasing credits, a crash mid-run, recipients' local times across a DST
//! change, recurrence, the throttle and A/B assignment. The runner and the dispatcher are
//! stepped by hand ([`runner::tick`], `dispatch_once`), so nothing waits on wall time.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_domain::message::Mode;
use herald_domain::phone::Region;
use herald_engine::campaigns::{
    self, Action, AudienceSpec, CampaignSpec, Created, Refused, Schedule, Throttle, Variant, runner,
};
use herald_engine::clock::{Clock, ManualClock};
use herald_engine::{Engine, EngineConfig};
use herald_providers::simulator::SimulatorConfig;
use herald_store::{
    Campaign, CampaignStatus, ContactPatch, ContactUpsert, CreditGrant, MessageFilter,
    Organization, RunBooks, Scope, Store, month_of,
};
use jiff::{SignedDuration, Timestamp};
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

fn engine_on(store: Arc<dyn Store>, clock: Arc<ManualClock>) -> Arc<Engine> {
    let config = EngineConfig {
        simulator: SimulatorConfig {
            auto_report: false,
            seed: Some(1),
            ..SimulatorConfig::default()
        },
        ..EngineConfig::default()
    };
    Arc::new(Engine::new(store, clock, config, None))
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
    Some(World {
        engine: engine_on(store, clock.clone()),
        clock,
        org,
        scope,
        place,
    })
}

impl World {
    async fn done(self) {
        drop(self.engine);
        self.place.remove().await;
    }

    async fn create(&self, spec: CampaignSpec) -> Campaign {
        match campaigns::create(&self.engine, &self.org, self.scope, None, spec, None)
            .await
            .unwrap()
            .unwrap()
        {
            Created::Created(campaign) => campaign,
            other => panic!("{other:?}"),
        }
    }

    async fn act(&self, id: Uuid, action: Action) -> Result<Campaign, Refused> {
        campaigns::act(&self.engine, &self.org, self.scope, id, action)
            .await
            .unwrap()
    }

    async fn campaign(&self, id: Uuid) -> Campaign {
        self.engine
            .store
            .get_campaign(self.scope, id)
            .await
            .unwrap()
            .unwrap()
    }

    async fn books(&self, id: Uuid) -> RunBooks {
        let campaign = self.campaign(id).await;
        let run = campaign.current_run.expect("a run");
        let books = self.engine.store.run_books(run).await.unwrap();
        assert_eq!(books.accounted(), books.audience, "{books:?}");
        books
    }

    /// One runner pass and one dispatcher batch, with reports delivered.
    async fn step(&self) {
        runner::tick(&self.engine).await.unwrap();
        self.engine.dispatcher.dispatch_once().await.unwrap();
    }

    /// Step until the campaign leaves `running` (at most `steps` times).
    async fn run_out(&self, id: Uuid, steps: usize) -> Campaign {
        for _ in 0..steps {
            self.step().await;
            let campaign = self.campaign(id).await;
            if campaign.status != CampaignStatus::Running {
                return campaign;
            }
        }
        panic!(
            "still running after {steps} steps: {:?}",
            self.books(id).await
        );
    }

    async fn add_contacts(&self, phones: &[String], zone: Option<&str>) {
        let rows: Vec<ContactUpsert> = phones
            .iter()
            .map(|phone| ContactUpsert {
                phone: phone.clone(),
                country: Some(Region::parse("US").unwrap()),
                patch: ContactPatch {
                    time_zone: zone.map(|z| Some(z.to_owned())),
                    ..ContactPatch::default()
                },
            })
            .collect();
        self.engine
            .store
            .upsert_contacts(self.org.id, &rows, "new", self.clock.now())
            .await
            .unwrap();
    }

    /// How many times the provider took a message for each number.
    async fn accepted_per_number(&self) -> HashMap<String, u32> {
        let mut counts = HashMap::new();
        let mut after = None;
        loop {
            let page = self
                .engine
                .store
                .list_messages(self.scope, &MessageFilter::default(), after, 500)
                .await
                .unwrap();
            for m in &page.items {
                if self.engine.simulator.times_accepted(m.id) > 0 {
                    *counts.entry(m.to.clone()).or_insert(0) +=
                        self.engine.simulator.times_accepted(m.id);
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        counts
    }
}

fn phone(i: usize) -> String {
    format!("+1415300{i:04}")
}

fn phones(n: usize) -> Vec<String> {
    (0..n).map(phone).collect()
}

fn spec(audience: Vec<String>) -> CampaignSpec {
    CampaignSpec {
        name: "Spring sale".into(),
        body: Some("20% off this week".into()),
        audience: AudienceSpec {
            phones: audience,
            ..AudienceSpec::default()
        },
        ..CampaignSpec::default()
    }
}

/// Every action from every status: allowed ones move the campaign, the others are refused
/// with the current status and change nothing.
async fn lifecycle_matrix(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let mut scheduled = spec(phones(3));
    scheduled.schedule = Some(campaigns::Schedule {
        at: "2026-05-02T09:00:00".parse().unwrap(),
        timezone: "UTC".into(),
        recipient_time_zone: false,
    });
    // A campaign in each status.
    async fn in_status(w: &World, base: &CampaignSpec, status: CampaignStatus) -> Uuid {
        let c = w.create(base.clone()).await;
        match status {
            CampaignStatus::Draft => {}
            CampaignStatus::Scheduled => {
                w.act(c.id, Action::Schedule).await.unwrap();
            }
            CampaignStatus::Running => {
                w.act(c.id, Action::Start).await.unwrap();
            }
            CampaignStatus::Paused => {
                w.act(c.id, Action::Start).await.unwrap();
                w.act(c.id, Action::Pause).await.unwrap();
            }
            CampaignStatus::Completed => {
                w.act(c.id, Action::Start).await.unwrap();
                let done = w.run_out(c.id, 20).await;
                assert_eq!(done.status, CampaignStatus::Completed);
            }
            CampaignStatus::Cancelled => {
                w.act(c.id, Action::Cancel).await.unwrap();
            }
        }
        assert_eq!(w.campaign(c.id).await.status, status);
        c.id
    }
    use Action::*;
    use CampaignStatus::*;
    let allowed: &[(CampaignStatus, Action, CampaignStatus)] = &[
        (Draft, Schedule, Scheduled),
        (Draft, Start, Running),
        (Draft, Cancel, Cancelled),
        (Scheduled, Start, Running),
        (Scheduled, Cancel, Cancelled),
        (Running, Pause, Paused),
        (Running, Cancel, Cancelled),
        (Paused, Resume, Running),
        (Paused, Cancel, Cancelled),
    ];
    for from in CampaignStatus::ALL {
        for action in [Schedule, Start, Pause, Resume, Cancel] {
            let id = in_status(&w, &scheduled, from).await;
            let before = w.campaign(id).await;
            let outcome = w.act(id, action).await;
            match allowed.iter().find(|(f, a, _)| *f == from && *a == action) {
                Some((_, _, to)) => {
                    let after = outcome.unwrap_or_else(|e| panic!("{from} {action:?}: {e:?}"));
                    assert_eq!(after.status, *to, "{from} {action:?}");
                }
                None => {
                    match outcome {
                        Err(Refused::State(status)) => assert_eq!(status, from),
                        other => panic!("{from} {action:?} should be refused: {other:?}"),
                    }
                    let after = w.campaign(id).await;
                    assert_eq!(after.status, before.status);
                    assert_eq!(after.updated_at, before.updated_at);
                }
            }
        }
    }
    // Editing only in draft and scheduled.
    for from in CampaignStatus::ALL {
        let id = in_status(&w, &scheduled, from).await;
        let mut patch = serde_json::Map::new();
        patch.insert("name".into(), "Renamed".into());
        let edited = campaigns::update(&w.engine, &w.org, w.scope, id, patch)
            .await
            .unwrap();
        match from {
            Draft | Scheduled => assert_eq!(edited.unwrap().name, "Renamed"),
            _ => assert!(
                matches!(edited, Err(Refused::State(s)) if s == from),
                "{from}: {edited:?}"
            ),
        }
    }
    w.done().await;
}

/// Pause while messages are being released and sent: after the acknowledgement, not one more
/// message reaches the provider; resume then sends each remaining recipient exactly once.
async fn pause_under_load_then_resume(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let audience = 300;
    let mut s = spec(phones(audience));
    s.throttle = Throttle {
        send_rate_per_minute: None,
        batch_size: Some(40),
    };
    let c = w.create(s).await;
    w.act(c.id, Action::Start).await.unwrap();

    // The runner and a dispatcher work continuously in the background.
    let stop = tokio_util::sync::CancellationToken::new();
    let background = {
        let engine = w.engine.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                runner::tick(&engine).await.unwrap();
                engine.dispatcher.dispatch_once().await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    // Let it get going.
    while w.engine.simulator.total_accepted() < 50 {
        tokio::task::yield_now().await;
    }
    let paused = w.act(c.id, Action::Pause).await.unwrap();
    assert_eq!(paused.status, CampaignStatus::Paused);
    let at_ack = w.engine.simulator.total_accepted();
    // Keep the background busy a good while: nothing more may go.
    for _ in 0..200 {
        tokio::task::yield_now().await;
        w.clock.advance(SignedDuration::from_millis(100));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        w.engine.simulator.total_accepted(),
        at_ack,
        "messages were handed to the provider after the pause was acknowledged"
    );
    let books = w.books(c.id).await;
    assert!(books.pending > 0, "{books:?}");
    assert!(at_ack < audience as u64);

    w.act(c.id, Action::Resume).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if w.campaign(c.id).await.status == CampaignStatus::Completed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            w.books(c.id).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.cancel();
    background.await.unwrap();
    let sent = w.accepted_per_number().await;
    assert_eq!(sent.len(), audience, "every recipient reached");
    assert!(sent.values().all(|n| *n == 1), "someone got it twice");
    let books = w
        .engine
        .store
        .run_books(w.campaign(c.id).await.current_run.unwrap())
        .await
        .unwrap();
    assert_eq!(books.sent + books.delivered, audience as u64, "{books:?}");
    assert_eq!(books.accounted(), books.audience);
    w.done().await;
}

/// Cancel releases what queued messages reserved, and the books show the rest canceled.
async fn cancel_releases_credits(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let store = w.engine.store.clone();
    store
        .grant_credits(
            &CreditGrant {
                id: Uuid::now_v7(),
                org_id: w.org.id,
                credits: 1_000,
                reason: None,
                granted_by: "test".into(),
                created_at: t0(),
            },
            None,
            &month_of(t0()),
        )
        .await
        .unwrap()
        .unwrap();
    let mut s = spec(phones(100));
    s.throttle.batch_size = Some(30);
    let c = w.create(s).await;
    w.act(c.id, Action::Start).await.unwrap();
    runner::tick(&w.engine).await.unwrap(); // snapshot and the first release
    let month = month_of(w.clock.now());
    let account = store
        .credit_account(w.org.id, &month)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(account.reserved, 30);
    let books = w.books(c.id).await;
    assert_eq!((books.audience, books.pending), (100, 100));

    w.act(c.id, Action::Cancel).await.unwrap();
    let account = store
        .credit_account(w.org.id, &month)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(account.reserved, 0, "cancel released every reservation");
    assert_eq!(account.balance, 1_000);
    let books = w.books(c.id).await;
    assert_eq!((books.canceled, books.pending), (100, 0), "{books:?}");
    // Nothing more happens.
    w.step().await;
    assert_eq!(w.engine.simulator.total_accepted(), 0);
    w.done().await;
}

/// A process dies in the middle of a run (its runtime dropped, no cleanup); another takes the
/// run over once the lease runs out and finishes it: everyone once, books balanced throughout.
fn crash_mid_run(backend: Backend) {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(w) = main.block_on(world(backend)) else {
        return;
    };
    let audience = 2_500;
    let id = main.block_on(async {
        w.add_contacts(&phones(audience), None).await;
        let mut s = spec(Vec::new());
        s.audience.lead_statuses = vec!["new".into()];
        s.throttle.batch_size = Some(200);
        w.create(s).await.id
    });

    // Process A starts the campaign, releases a few batches and is gone.
    let process_a = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    process_a.block_on(async {
        let store = w.place.connect().await;
        let engine = engine_on(store.clone(), Arc::new(ManualClock::new(t0())));
        campaigns::act(&engine, &w.org, w.scope, id, Action::Start)
            .await
            .unwrap()
            .unwrap();
        for _ in 0..3 {
            runner::tick(&engine).await.unwrap();
            engine.dispatcher.dispatch_once().await.unwrap();
        }
        // A release in flight when the process dies.
        let tick = tokio::spawn({
            let engine = engine.clone();
            async move { runner::tick(&engine).await }
        });
        tokio::task::yield_now().await;
        drop(tick);
    });
    drop(process_a);

    main.block_on(async {
        let books = w.books(id).await;
        assert!(books.pending > 0, "finished before the crash: {books:?}");
        // Process B: leaves the run alone while A's lease could be live, then takes it over.
        w.clock.set(t0() + SignedDuration::from_secs(10));
        runner::tick(&w.engine).await.unwrap();
        let held = w.books(id).await;
        assert_eq!(held.pending, books.pending, "took over a live lease");
        w.clock
            .set(t0() + runner::LEASE + SignedDuration::from_secs(1));
        // A's claimed messages come back once their dispatcher lease runs out too.
        w.clock.advance(SignedDuration::from_secs(120));
        w.engine.maintenance.tick_once().await.unwrap();
        let done = w.run_out(id, 200).await;
        assert_eq!(done.status, CampaignStatus::Completed);
        let books = w.books(id).await;
        assert_eq!(books.audience, audience as u64);
        assert_eq!(books.pending, 0);
        // Each recipient has exactly one message.
        let run = done.current_run.unwrap();
        let mut seen = HashSet::new();
        let mut after = None;
        loop {
            let rows = w
                .engine
                .store
                .list_recipients(w.scope, run, after, 500)
                .await
                .unwrap();
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                assert!(r.message_id.is_some(), "{r:?}");
                assert!(seen.insert(r.message_id.unwrap()));
            }
            after = rows.last().map(|r| r.seq);
        }
        assert_eq!(seen.len(), audience);
        assert_eq!(
            w.engine.store.count_messages(w.org.id).await.unwrap(),
            audience as u64
        );
    });
    main.block_on(w.done());
}

/// A 10:00 campaign in recipients' own zones: Tokyo, Paris and New York, on the day New York
/// moves its clocks forward. Each goes at 10:00 local, released only once due.
async fn local_time_across_zones_and_dst(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    // 2027-03-14: New York springs forward at 02:00 (EST → EDT); Paris and Tokyo do not.
    w.clock.set("2027-03-13T00:00:00Z".parse().unwrap());
    w.add_contacts(&[phone(1)], Some("Asia/Tokyo")).await;
    w.add_contacts(&[phone(2)], Some("Europe/Paris")).await;
    w.add_contacts(&[phone(3)], Some("America/New_York")).await;
    let mut s = spec(Vec::new());
    s.audience.lead_statuses = vec!["new".into()];
    s.schedule = Some(Schedule {
        at: "2027-03-14T10:00:00".parse().unwrap(),
        timezone: "Europe/Paris".into(),
        recipient_time_zone: true,
    });
    let c = w.create(s).await;
    let scheduled = w.act(c.id, Action::Schedule).await.unwrap();
    // The run starts where 10:00 comes first (UTC+14).
    let starts: Timestamp = "2027-03-13T20:00:00Z".parse().unwrap();
    assert_eq!(scheduled.next_run_at, Some(starts));

    w.clock.set(starts - SignedDuration::from_secs(1));
    runner::tick(&w.engine).await.unwrap();
    assert_eq!(w.campaign(c.id).await.status, CampaignStatus::Scheduled);
    w.clock.set(starts);
    runner::tick(&w.engine).await.unwrap(); // starts the run
    runner::tick(&w.engine).await.unwrap(); // snapshot
    let campaign = w.campaign(c.id).await;
    assert_eq!(campaign.status, CampaignStatus::Running);
    let run = campaign.current_run.unwrap();
    let rows = w
        .engine
        .store
        .list_recipients(w.scope, run, None, 10)
        .await
        .unwrap();
    let due: HashMap<String, Timestamp> =
        rows.iter().map(|r| (r.phone.clone(), r.due_at)).collect();
    let tokyo: Timestamp = "2027-03-14T01:00:00Z".parse().unwrap();
    let paris: Timestamp = "2027-03-14T09:00:00Z".parse().unwrap();
    // After the change: EDT, UTC-4.
    let new_york: Timestamp = "2027-03-14T14:00:00Z".parse().unwrap();
    assert_eq!(due[&phone(1)], tokyo);
    assert_eq!(due[&phone(2)], paris);
    assert_eq!(due[&phone(3)], new_york);

    for (at, expected) in [(tokyo, 1), (paris, 2), (new_york, 3)] {
        w.clock.set(at - SignedDuration::from_secs(1));
        w.step().await;
        assert_eq!(
            w.engine.simulator.total_accepted(),
            expected - 1,
            "before {at}"
        );
        w.clock.set(at);
        w.step().await;
        assert_eq!(w.engine.simulator.total_accepted(), expected, "at {at}");
    }
    w.clock.advance(SignedDuration::from_secs(1));
    let done = w.run_out(c.id, 5).await;
    assert_eq!(done.status, CampaignStatus::Completed);
    w.done().await;
}

/// Weekly on Monday, Wednesday and Friday at 09:00 Paris until a date: one run per occurrence,
/// each with its own snapshot; the wall-clock time holds across the change to summer time.
async fn recurrence_runs_each_occurrence(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    w.clock.set("2027-03-24T12:00:00Z".parse().unwrap());
    let mut s = spec(phones(2));
    s.schedule = Some(Schedule {
        at: "2027-03-26T09:00:00".parse().unwrap(),
        timezone: "Europe/Paris".into(),
        recipient_time_zone: false,
    });
    s.recurrence = Some(campaigns::RecurrenceSpec {
        rrule: "FREQ=WEEKLY;BYDAY=MO,WE,FR;UNTIL=20270402T235959Z".into(),
    });
    let c = w.create(s).await;
    let scheduled = w.act(c.id, Action::Schedule).await.unwrap();
    // Friday 26th is winter time (08:00Z); Paris moves on Sunday 28th; then 07:00Z.
    let expected: Vec<Timestamp> = [
        "2027-03-26T08:00:00Z",
        "2027-03-29T07:00:00Z",
        "2027-03-31T07:00:00Z",
        "2027-04-02T07:00:00Z",
    ]
    .iter()
    .map(|t| t.parse().unwrap())
    .collect();
    assert_eq!(scheduled.next_run_at, Some(expected[0]));
    let spec = CampaignSpec::from_campaign(&scheduled).unwrap();
    let shown: Vec<Timestamp> = campaigns::occurrences_after(&spec, w.clock.now(), 10)
        .into_iter()
        .map(|o| o.at)
        .collect();
    assert_eq!(shown, expected);

    for (i, at) in expected.iter().enumerate() {
        w.clock.set(*at);
        let mut runs = 0;
        for _ in 0..10 {
            w.step().await;
            let campaign = w.campaign(c.id).await;
            runs = campaign.runs;
            if campaign.status != CampaignStatus::Running && campaign.runs as usize == i + 1 {
                break;
            }
        }
        assert_eq!(runs as usize, i + 1);
        let campaign = w.campaign(c.id).await;
        let last = i + 1 == expected.len();
        if last {
            assert_eq!(campaign.status, CampaignStatus::Completed);
        } else {
            assert_eq!(campaign.status, CampaignStatus::Scheduled);
            assert_eq!(campaign.next_run_at, Some(expected[i + 1]));
        }
        assert_eq!(w.books(c.id).await.audience, 2);
    }
    // Each run sent to both recipients once: 4 runs, 8 messages.
    assert_eq!(w.engine.simulator.total_accepted(), 8);
    w.done().await;
}

/// 60 per minute in batches of 10: counted in every sliding minute, never more than 60.
async fn throttle_holds_in_every_minute(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let mut s = spec(phones(200));
    s.throttle = Throttle {
        send_rate_per_minute: Some(60),
        batch_size: Some(10),
    };
    let c = w.create(s).await;
    w.act(c.id, Action::Start).await.unwrap();
    let mut sends: Vec<Timestamp> = Vec::new();
    let mut before = 0;
    for _ in 0..(5 * 60) {
        w.step().await;
        let now = w.engine.simulator.total_accepted();
        for _ in before..now {
            sends.push(w.clock.now());
        }
        before = now;
        w.clock.advance(SignedDuration::from_secs(1));
    }
    for (i, start) in sends.iter().enumerate() {
        let in_window = sends[i..]
            .iter()
            .take_while(|t| **t < *start + SignedDuration::from_mins(1))
            .count();
        assert!(
            in_window <= 60,
            "{in_window} sent in the minute from {start}"
        );
    }
    // And the throttle is not a stall: 200 at 60 a minute take a little over three minutes.
    assert_eq!(sends.len(), 200);
    let span = sends.last().unwrap().duration_since(sends[0]);
    assert!(span >= SignedDuration::from_mins(3), "{span:?}");
    assert!(span < SignedDuration::from_mins(4), "{span:?}");
    w.done().await;
}

/// Variants are assigned by weight, the same way every time; stats come per variant.
async fn ab_variants_by_weight(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let mut s = spec(phones(400));
    s.body = None;
    s.variants = vec![
        Variant {
            name: "A".into(),
            body: Some("Sale: 20% off".into()),
            template_id: None,
            weight: 3,
        },
        Variant {
            name: "B".into(),
            body: Some("This week only: 20% off everything".into()),
            template_id: None,
            weight: 1,
        },
    ];
    let c = w.create(s).await;
    w.act(c.id, Action::Start).await.unwrap();
    w.run_out(c.id, 50).await;
    let run = w.campaign(c.id).await.current_run.unwrap();
    let rows = w
        .engine
        .store
        .list_recipients(w.scope, run, None, 1_000)
        .await
        .unwrap();
    for r in &rows {
        assert_eq!(
            r.variant,
            campaigns::assign_variant(c.id, &r.phone, &[3, 1]),
            "assignment is the engine's"
        );
        let expected = if r.variant == 0 {
            "Sale: 20% off"
        } else {
            "This week only: 20% off everything"
        };
        assert_eq!(r.body.as_deref(), Some(expected));
    }
    let b = rows.iter().filter(|r| r.variant == 1).count() as f64;
    // 400 draws at p = 0.25: mean 100, σ ≈ 8.7; within 4σ.
    assert!((b - 100.0).abs() < 35.0, "{b} of 400 got B");
    let campaign = w.campaign(c.id).await;
    let analytics =
        campaigns::report::analytics(&w.engine, &campaign, campaigns::report::Bucket::Minute)
            .await
            .unwrap();
    assert_eq!(analytics.variants.len(), 2);
    assert_eq!(analytics.variants[1].recipients, b as u64);
    assert_eq!(
        analytics.variants[0].recipients + analytics.variants[1].recipients,
        400
    );
    assert_eq!(analytics.sent, 400);
    w.done().await;
}

#[test]
fn assignment_is_deterministic_and_proportional() {
    let id = Uuid::now_v7();
    let weights = [70, 20, 10];
    let mut counts = [0usize; 3];
    let n = 20_000;
    for i in 0..n {
        let p = format!("+1415{i:07}");
        let v = campaigns::assign_variant(id, &p, &weights);
        assert_eq!(v, campaigns::assign_variant(id, &p, &weights));
        counts[usize::from(v)] += 1;
    }
    let total: u32 = weights.iter().sum();
    let shares = weights.iter().map(|w| f64::from(*w) / f64::from(total));
    for (count, share) in counts.iter().zip(shares) {
        let expected = share * n as f64;
        let sigma = (n as f64 * share * (1.0 - share)).sqrt();
        assert!(
            (*count as f64 - expected).abs() < 4.0 * sigma,
            "{count} vs {expected}"
        );
    }
}

/// With an A/B test, only the test fraction goes out first; after the wait, the variant with
/// the most replies per message goes to everyone else, each recipient reached once.
async fn ab_test_sends_the_winner_to_the_rest(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let mut s = spec(phones(400));
    s.body = None;
    s.variants = vec![
        Variant {
            name: "A".into(),
            body: Some("Sale: 20% off".into()),
            template_id: None,
            weight: 1,
        },
        Variant {
            name: "B".into(),
            body: Some("This week only: 20% off everything".into()),
            template_id: None,
            weight: 1,
        },
    ];
    s.ab_test = Some(campaigns::AbTest {
        fraction: 0.2,
        wait: "PT2H".into(),
        metric: campaigns::WinnerMetric::Replies,
    });
    let c = w.create(s).await;
    w.act(c.id, Action::Start).await.unwrap();
    for _ in 0..20 {
        w.step().await;
    }
    // Only the test group went out; the rest wait, and the run is not over.
    let first = w.accepted_per_number().await;
    let tested = first.len();
    // 400 draws at p = 0.2: mean 80, σ = 8; within 4σ.
    assert!((tested as f64 - 80.0).abs() < 32.0, "{tested} tested");
    assert_eq!(w.campaign(c.id).await.status, CampaignStatus::Running);
    let books = w.books(c.id).await;
    assert_eq!(books.pending, 400 - tested as u64, "{books:?}");

    // Everyone who got B replies; nobody who got A does.
    let run = w.campaign(c.id).await.current_run.unwrap();
    let rows = w
        .engine
        .store
        .list_recipients(w.scope, run, None, 1_000)
        .await
        .unwrap();
    w.clock.advance(SignedDuration::from_mins(30));
    for r in rows
        .iter()
        .filter(|r| r.message_id.is_some() && r.variant == 1)
    {
        let reply = herald_store::InboundMessage {
            id: Uuid::now_v7(),
            org_id: w.org.id,
            provider: "simulator".into(),
            provider_message_id: format!("SIM{}", Uuid::now_v7().simple()),
            from: r.phone.clone(),
            to: "simulator".into(),
            body: "Interested!".into(),
            received_at: w.clock.now(),
        };
        w.engine.store.insert_inbound(&reply).await.unwrap();
    }
    // Nothing more before the wait is over.
    w.step().await;
    assert_eq!(w.accepted_per_number().await.len(), tested);

    w.clock.advance(SignedDuration::from_mins(91));
    let done = w.run_out(c.id, 50).await;
    assert_eq!(done.status, CampaignStatus::Completed);
    let counts = w.accepted_per_number().await;
    assert_eq!(counts.len(), 400);
    assert!(counts.values().all(|n| *n == 1), "each reached once");
    let rows = w
        .engine
        .store
        .list_recipients(w.scope, run, None, 1_000)
        .await
        .unwrap();
    let winners = rows
        .iter()
        .filter(|r| !first.contains_key(&r.phone))
        .inspect(|r| {
            assert_eq!(r.variant, 1, "{r:?}");
            assert_eq!(
                r.body.as_deref(),
                Some("This week only: 20% off everything")
            );
        })
        .count();
    assert_eq!(winners, 400 - tested);
    let decided = w
        .engine
        .store
        .get_run(w.scope, run)
        .await
        .unwrap()
        .unwrap()
        .ab_winner;
    assert_eq!(
        decided.map(|(variant, _)| variant),
        Some(1),
        "the run records B"
    );
    let books = w.books(c.id).await;
    assert_eq!(books.pending, 0, "{books:?}");
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
            #[test]
            fn crash_mid_run() {
                super::crash_mid_run(super::Backend::Sqlite);
            }
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Postgres).await;
                }
            )*
            #[test]
            fn crash_mid_run() {
                super::crash_mid_run(super::Backend::Postgres);
            }
        }
    };
}

on_both_stores!(
    lifecycle_matrix,
    pause_under_load_then_resume,
    cancel_releases_credits,
    local_time_across_zones_and_dst,
    recurrence_runs_each_occurrence,
    throttle_holds_in_every_minute,
    ab_variants_by_weight,
    ab_test_sends_the_winner_to_the_rest,
);
