//! The segment property: for random rule trees over a random population (contacts with tags,
//! custom fields of mixed types, list memberships, message history and replies), the contacts
//! the backend's compiled SQL selects are exactly those the in-memory evaluator selects.
//!
//! Values are drawn from small pools that sit on the rules' edges (day boundaries to the
//! microsecond, numbers equal to the thresholds, strings that are prefixes of others, custom
//! values of the wrong type) so most rules select some contacts and not all.

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
use serde_json::{Map, Value, json};

use super::*;
use crate::segment::{ContactFacts, Limits, matches, parse_rule};

/// Contacts in the population.
const PEOPLE: usize = 160;
/// Rules tried per backend.
const CASES: u32 = 96;

fn now() -> Timestamp {
    at(400 * 86_400)
}

/// Whole days before `now()` that dates, creation times and messages cluster around.
const DAYS: [i64; 9] = [0, 1, 2, 7, 30, 89, 90, 91, 365];

fn days_ago(days: i64) -> Timestamp {
    crate::segment::days_before(now(), days)
}

/// Offsets from a whole day, in microseconds: exactly on it, a tick either side, hours off.
const JITTER: [i64; 5] = [0, -1, 1, -3_600_000_000, 3_600_000_000];

fn instant() -> impl Strategy<Value = Timestamp> {
    (select(DAYS.to_vec()), select(JITTER.to_vec()))
        .prop_map(|(d, j)| Timestamp::from_microsecond(days_ago(d).as_microsecond() + j).unwrap())
}

/// A date as a rule writes it: RFC 3339, or the day alone (`now()` is a UTC midnight, so the
/// pool's days are too).
fn rule_date() -> impl Strategy<Value = (Timestamp, String)> {
    (select(DAYS.to_vec()), any::<bool>()).prop_map(|(d, day_only)| {
        let at = days_ago(d);
        let text = if day_only {
            at.strftime("%Y-%m-%d").to_string()
        } else {
            at.to_string()
        };
        (at, text)
    })
}

fn number() -> impl Strategy<Value = Value> {
    select(vec![
        json!(0),
        json!(1),
        json!(49_999),
        json!(50_000),
        json!(50_001),
        json!(0.5),
        json!(49_999.5),
        json!(50_000.0),
    ])
}

const STRINGS: [&str; 6] = ["Paris", "Par", "Lyon", "", "50000", "true"];

/// A custom value as a contact holds one: any JSON type, dates in both accepted forms and
/// in forms that are not dates.
fn custom_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        number(),
        select(STRINGS.to_vec()).prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        (instant(), 0..3u8).prop_map(|(at, form)| match form {
            0 => Value::from(at.strftime("%Y-%m-%d").to_string()),
            1 => Value::from(crate::segment::date_key(at)),
            _ => Value::from(at.strftime("%Y-%m-%dT%H:%M").to_string()),
        }),
        Just(json!(["Paris"])),
    ]
}

/// Custom keys; the last has a dot, a space and a non-ASCII letter, which a JSON path must quote.
const KEYS: [&str; 5] = ["total_sales", "city", "vip", "since", "tier.é level"];
const TAGS: [&str; 4] = ["vip", "course", "alumni", "late"];
const NAMES: [&str; 4] = ["Ann", "Anna", "Bob", ""];

#[derive(Clone, Copy, Debug)]
enum Fate {
    Delivered,
    Sent,
    Undelivered,
}

#[derive(Clone, Debug)]
struct Person {
    first_name: Option<String>,
    email: Option<String>,
    language: Option<String>,
    lead_status: String,
    tags: Vec<String>,
    custom: Map<String, Value>,
    consent: bool,
    created_at: Timestamp,
    lists: Vec<usize>,
    /// Live messages to the person: when, and how they ended.
    messages: Vec<(Timestamp, Fate)>,
    /// Test-mode messages, which history ignores.
    test_messages: Vec<Timestamp>,
    replied: bool,
}

fn person() -> impl Strategy<Value = Person> {
    let fields = (
        proptest::option::of(select(NAMES.to_vec())),
        proptest::option::of(Just("ann@example.com")),
        proptest::option::of(select(vec!["fr", "en"])),
        select(DEFAULT_LEAD_STATUSES.to_vec()),
        subsequence(TAGS.to_vec(), 0..=3),
        proptest::collection::vec(proptest::option::weighted(0.7, custom_value()), KEYS.len()),
        any::<bool>(),
        instant(),
    );
    let history = (
        subsequence(vec![0usize, 1, 2], 0..=3),
        proptest::collection::vec(
            (
                instant(),
                select(vec![Fate::Delivered, Fate::Sent, Fate::Undelivered]),
            ),
            0..4,
        ),
        proptest::collection::vec(instant(), 0..2),
        any::<bool>(),
    );
    (fields, history).prop_map(
        |(
            (first_name, email, language, status, tags, custom, consent, created_at),
            (lists, messages, test_messages, replied),
        )| Person {
            first_name: first_name.map(str::to_owned),
            email: email.map(str::to_owned),
            language: language.map(str::to_owned),
            lead_status: status.to_owned(),
            tags: tags.into_iter().map(str::to_owned).collect(),
            custom: KEYS
                .iter()
                .zip(custom)
                .filter_map(|(k, v)| Some(((*k).to_owned(), v?)))
                .collect(),
            consent,
            created_at,
            lists,
            messages,
            test_messages,
            replied,
        },
    )
}

fn between<T: Ord + Clone>(a: T, b: T) -> (T, T) {
    if a <= b { (a, b) } else { (b, a) }
}

fn leaf(field: &str, op: &str, value: Value) -> Value {
    json!({ "field": field, "op": op, "value": value })
}

/// Any valid leaf, over every field and operator.
fn rule_leaf(lists: Vec<Uuid>) -> BoxedStrategy<Value> {
    let text_fields = vec![
        "first_name",
        "email",
        "language",
        "lead_status",
        "phone",
        "country",
    ];
    let text_values = vec![
        "Ann", "An", "", "ann@", "fr", "customer", "new", "US", "+1415",
    ];
    let text = (
        select(text_fields),
        select(vec!["eq", "ne", "in", "contains", "exists"]),
        select(text_values.clone()),
        proptest::collection::vec(select(text_values), 1..3),
        any::<bool>(),
    )
        .prop_map(|(f, op, s, list, b)| match op {
            "in" => leaf(f, op, json!(list)),
            "exists" => leaf(f, op, json!(b)),
            _ => leaf(f, op, json!(s)),
        });
    let consent =
        (select(vec!["eq", "ne"]), any::<bool>()).prop_map(|(op, b)| leaf("consent", op, json!(b)));
    let time = (
        select(vec!["created_at", "updated_at"]),
        select(vec!["gt", "gte", "lt", "lte", "between", "within_days"]),
        rule_date(),
        rule_date(),
        select(DAYS.to_vec()),
    )
        .prop_map(|(f, op, a, b, days)| match op {
            "between" => {
                let (a, b) = between(a, b);
                leaf(f, op, json!([a.1, b.1]))
            }
            "within_days" => leaf(f, op, json!(days)),
            _ => leaf(f, op, json!(a.1)),
        });
    let mut tag_pool: Vec<&str> = TAGS.to_vec();
    tag_pool.push("nobody");
    let tag = (
        select(vec!["eq", "ne", "in", "exists"]),
        select(tag_pool.clone()),
        proptest::collection::vec(select(tag_pool), 1..3),
        any::<bool>(),
    )
        .prop_map(|(op, t, ts, b)| match op {
            "in" => leaf("tag", op, json!(ts)),
            "exists" => leaf("tag", op, json!(b)),
            _ => leaf("tag", op, json!(t)),
        });
    let mut list_pool: Vec<String> = lists.iter().map(Uuid::to_string).collect();
    list_pool.push(Uuid::now_v7().to_string());
    let list = (
        select(vec!["eq", "ne", "in"]),
        select(list_pool.clone()),
        proptest::collection::vec(select(list_pool), 1..3),
    )
        .prop_map(|(op, id, ids)| match op {
            "in" => leaf("list", op, json!(ids)),
            _ => leaf("list", op, json!(id)),
        });
    let mut keys = KEYS.to_vec();
    keys.push("missing");
    let scalar = prop_oneof![
        number(),
        select(STRINGS.to_vec()).prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ];
    let custom = (
        select(keys),
        select(vec![
            "exists",
            "eq",
            "ne",
            "gt",
            "gte",
            "lt",
            "lte",
            "between",
            "in",
            "contains",
            "within_days",
        ]),
        (scalar, number(), number(), rule_date(), rule_date()),
        (
            any::<bool>(),
            proptest::collection::vec(number(), 1..3),
            proptest::collection::vec(select(STRINGS.to_vec()), 1..3),
            select(STRINGS.to_vec()),
            select(DAYS.to_vec()),
        ),
    )
        .prop_map(
            |(key, op, (scalar, n1, n2, d1, d2), (as_number, numbers, strings, s, days))| {
                let field = format!("custom.{key}");
                let value = match op {
                    "exists" => json!(as_number),
                    "eq" | "ne" => scalar,
                    "gt" | "gte" | "lt" | "lte" if as_number => n1,
                    "gt" | "gte" | "lt" | "lte" => json!(d1.1),
                    "between" if as_number => {
                        let (a, b) = (n1.as_number().unwrap(), n2.as_number().unwrap());
                        if crate::segment::num_order(a, b).is_le() {
                            json!([n1, n2])
                        } else {
                            json!([n2, n1])
                        }
                    }
                    "between" => {
                        let (a, b) = between(d1, d2);
                        json!([a.1, b.1])
                    }
                    "in" if as_number => json!(numbers),
                    "in" => json!(strings),
                    "contains" => json!(s),
                    _ => json!(days),
                };
                leaf(&field, op, value)
            },
        );
    let days = (
        select(vec![
            "eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "exists",
        ]),
        select(DAYS.to_vec()),
        select(DAYS.to_vec()),
        proptest::collection::vec(select(DAYS.to_vec()), 1..3),
        any::<bool>(),
    )
        .prop_map(|(op, a, b, list, exists)| match op {
            "between" => leaf("last_message_days", op, json!([a.min(b), a.max(b)])),
            "in" => leaf("last_message_days", op, json!(list)),
            "exists" => leaf("last_message_days", op, json!(exists)),
            _ => leaf("last_message_days", op, json!(a)),
        });
    let delivered = (
        select(vec!["eq", "ne", "gt", "gte", "lt", "lte", "between", "in"]),
        0..4i64,
        0..4i64,
        proptest::collection::vec(0..4i64, 1..3),
    )
        .prop_map(|(op, a, b, list)| match op {
            "between" => leaf("delivered_count", op, json!([a.min(b), a.max(b)])),
            "in" => leaf("delivered_count", op, json!(list)),
            _ => leaf("delivered_count", op, json!(a)),
        });
    let replied =
        (select(vec!["eq", "ne"]), any::<bool>()).prop_map(|(op, b)| leaf("replied", op, json!(b)));
    prop_oneof![
        text,
        consent,
        time,
        tag,
        list,
        custom,
        custom_leaf_again(),
        days,
        delivered,
        replied
    ]
    .boxed()
}

/// Custom fields carry the most cases; weight them up.
fn custom_leaf_again() -> BoxedStrategy<Value> {
    (select(KEYS.to_vec()), number(), rule_date())
        .prop_map(|(key, n, d)| {
            let field = format!("custom.{key}");
            if key == "since" {
                leaf(&field, "gte", json!(d.1))
            } else {
                leaf(&field, "gte", n)
            }
        })
        .boxed()
}

fn rule_tree(lists: Vec<Uuid>) -> impl Strategy<Value = Value> {
    rule_leaf(lists).prop_recursive(3, 24, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 1..4).prop_map(|r| json!({ "and": r })),
            proptest::collection::vec(inner.clone(), 1..4).prop_map(|r| json!({ "or": r })),
            inner.prop_map(|r| json!({ "not": r })),
        ]
    })
}

/// Store the population for `org`, with its history; answers the contacts' facts as the
/// evaluator sees them, keyed by contact id.
async fn populate(
    store: &dyn Store,
    org: Scope,
    people: &[Person],
    lists: &[Uuid],
) -> HashMap<Uuid, ContactFacts> {
    let mut facts = HashMap::new();
    let mut messages = Vec::new();
    let mut fates = Vec::new();
    let mut members: Vec<Vec<Uuid>> = vec![Vec::new(); lists.len()];
    for (i, p) in people.iter().enumerate() {
        let phone = format!("+1415555{i:04}");
        let mut c = Contact::new(org.org_id, &phone, None, p.created_at);
        c.first_name.clone_from(&p.first_name);
        c.email.clone_from(&p.email);
        c.language.clone_from(&p.language);
        c.lead_status.clone_from(&p.lead_status);
        c.tags = normalize_tags(p.tags.iter().cloned());
        c.custom = p.custom.clone();
        c.consent = p.consent;
        c.country = (i % 3 == 0).then(|| Region::parse("US").unwrap());
        c.updated_at = p.created_at + SignedDuration::from_secs(60);
        store
            .create_contact(&c, None, c.created_at)
            .await
            .unwrap()
            .unwrap();
        for &l in &p.lists {
            members[l].push(c.id);
        }
        for &(created_at, fate) in &p.messages {
            messages.push(message(org, &phone, created_at));
            fates.push(Some(fate));
        }
        for &created_at in &p.test_messages {
            let test = Scope {
                org_id: org.org_id,
                mode: Mode::Test,
            };
            let mut m = message(test, &phone, created_at);
            m.max_attempts = 1;
            messages.push(m);
            // Even delivered, a test message is not history.
            fates.push(Some(Fate::Delivered));
        }
        if p.replied {
            store
                .insert_inbound(&InboundMessage {
                    id: Uuid::now_v7(),
                    org_id: org.org_id,
                    provider: "simulator".into(),
                    provider_message_id: format!("in-{}-{i}", org.org_id.simple()),
                    from: phone.clone(),
                    to: "+14155550000".into(),
                    body: "yes".into(),
                    received_at: p.created_at,
                })
                .await
                .unwrap();
        }
        let live: Vec<_> = p.messages.iter().collect();
        facts.insert(
            c.id,
            ContactFacts {
                contact: c,
                lists: p.lists.iter().map(|&l| lists[l]).collect(),
                last_message_at: live.iter().map(|(at, _)| *at).max(),
                delivered: live
                    .iter()
                    .filter(|(_, f)| matches!(f, Fate::Delivered))
                    .count() as i64,
                replied: p.replied,
            },
        );
    }
    for (list, ids) in lists.iter().zip(&members) {
        store
            .add_list_members(org.org_id, *list, ids, now())
            .await
            .unwrap()
            .unwrap();
    }
    deliver(store, &messages, &fates).await;
    // Read the contacts back so the evaluator sees exactly what was stored.
    let ids: Vec<Uuid> = facts.keys().copied().collect();
    for stored in store.contacts_by_id(org.org_id, &ids).await.unwrap() {
        let id = stored.id;
        facts.get_mut(&id).unwrap().contact = stored;
    }
    facts
}

/// Store `messages` and walk each to its fate through the queue and provider reports.
async fn deliver(store: &dyn Store, messages: &[NewMessage], fates: &[Option<Fate>]) {
    store.insert_messages(messages).await.unwrap();
    let fate_of: HashMap<Uuid, Fate> = messages
        .iter()
        .zip(fates)
        .filter_map(|(m, f)| Some((m.id, (*f)?)))
        .collect();
    let later = now() + SignedDuration::from_hours(48);
    loop {
        let claimed = store
            .claim_due(later, later + SignedDuration::from_secs(60), 500)
            .await
            .unwrap();
        if claimed.is_empty() {
            break;
        }
        let results: Vec<SendResult> = claimed
            .iter()
            .map(|c| accepted(c, &format!("SM{}", c.id.simple())))
            .collect();
        let reports: Vec<ProviderReport> = claimed
            .iter()
            .filter_map(|c| {
                let status = match fate_of.get(&c.id)? {
                    Fate::Delivered => ReportedStatus::Delivered,
                    Fate::Undelivered => ReportedStatus::Undelivered,
                    Fate::Sent => return None,
                };
                Some(report(Some(c.id), &format!("SM{}", c.id.simple()), status))
            })
            .collect();
        store.record(&results, &reports, later).await.unwrap();
    }
}

async fn members(store: &dyn Store, org_id: Uuid, rule: &crate::segment::Rule) -> BTreeSet<Uuid> {
    let mut found = BTreeSet::new();
    let mut after = None;
    loop {
        // An odd page size, so pages end mid-way through the population.
        let page = store
            .segment_members(org_id, rule, now(), after, 37)
            .await
            .unwrap();
        found.extend(page.items.iter().copied());
        match page.next {
            Some(next) => after = Some(next),
            None => return found,
        }
    }
}

pub async fn segment_rules_select_the_same_contacts_in_sql_as_in_memory(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await;
    let globex = organization(store, "globex").await;
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let population = proptest::collection::vec(person(), PEOPLE);
    let people = population.new_tree(&mut runner).unwrap().current();
    let others = proptest::collection::vec(person(), 40)
        .new_tree(&mut runner)
        .unwrap()
        .current();

    let mut lists = Vec::new();
    for (org, names) in [(acme, ["a", "b", "c"]), (globex, ["x", "y", "z"])] {
        for name in names {
            let list = List {
                id: Uuid::now_v7(),
                org_id: org.org_id,
                name: name.into(),
                description: None,
                member_count: 0,
                created_at: t0(),
                updated_at: t0(),
            };
            store.create_list(&list, None, t0()).await.unwrap().unwrap();
            lists.push(list.id);
        }
    }
    let facts = populate(store, acme, &people, &lists[..3]).await;
    // Another organization with the same phone numbers, its own lists and its own history:
    // none of it may leak into the first one's segments.
    populate(store, globex, &others, &lists[3..]).await;

    let handle = tokio::runtime::Handle::current();
    let strategy = rule_tree(lists[..3].to_vec());
    let outcome = runner.run(&strategy, |json| {
        let rule = parse_rule(&json, &Limits::default())
            .map_err(|e| TestCaseError::fail(format!("generated an invalid rule: {e:?}")))?;
        let expected: BTreeSet<Uuid> = facts
            .values()
            .filter(|f| matches(&rule, f, now()))
            .map(|f| f.contact.id)
            .collect();
        let (found, count) = tokio::task::block_in_place(|| {
            handle.block_on(async {
                (
                    members(store, acme.org_id, &rule).await,
                    store
                        .count_segment(acme.org_id, &rule, now())
                        .await
                        .unwrap(),
                )
            })
        });
        prop_assert_eq!(&found, &expected, "rule {}", json);
        prop_assert_eq!(count, expected.len() as u64, "count of rule {}", json);
        Ok(())
    });
    match outcome {
        Ok(()) => {}
        Err(TestError::Fail(reason, rule)) => {
            panic!("SQL and evaluator disagree on {rule}: {reason}")
        }
        Err(e) => panic!("{e}"),
    }
}
