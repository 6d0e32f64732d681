//! The bookkeeping both backends share when messages change status.
//!
//! A backend loads the [`QueueState`] of the messages a batch touches (locking them), feeds the
//! batch's results, reports or settlements through a [`Batch`], then writes back the final
//! states and the new history rows. All the rules live here, applied in memory in order, so a
//! batch holding two reports for the same message applies them one after the other exactly as
//! separate calls would, and both backends behave identically.

use std::collections::{HashMap, HashSet};

use herald_domain::money::Amount;
use herald_domain::status::{self, IllegalTransition, MessageStatus, StatusEvent, Transition};
use jiff::Timestamp;
use uuid::Uuid;

use crate::credits::{CreditMoves, month_of};
use crate::model::{ProviderReport, ReportOutcome, SendOutcome, SendResult, Settlement};

/// A status change to write: the new status and its place in the message's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub to: MessageStatus,
    pub seq: u32,
}

/// Decide what `event` does to a message that is `current` with `last_seq` history entries.
/// `Ok(None)` means nothing changes (a duplicate or late report).
pub fn plan_change(
    current: MessageStatus,
    last_seq: u32,
    event: StatusEvent,
) -> Result<Option<Change>, IllegalTransition> {
    Ok(match status::apply(current, event)? {
        Transition::To(to) => Some(Change {
            to,
            seq: last_seq + 1,
        }),
        Transition::Unchanged => None,
    })
}

/// The part of a message row that status changes read and write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueState {
    pub id: Uuid,
    pub org_id: Uuid,
    pub status: MessageStatus,
    pub last_seq: u32,
    pub attempts: u32,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub actual_cost: Option<Amount>,
    pub due_at: Timestamp,
    pub lease_expires_at: Option<Timestamp>,
    /// Credits the message reserved when it was queued (0 when its organization is unmetered).
    pub credits: u32,
    /// Its estimated cost, counted in the month's spend while credits are reserved.
    pub estimated_cost: Amount,
    pub created_at: Timestamp,
}

/// Whether a provider may not yet have the message: while it is in one of these statuses its
/// credits stay reserved.
fn before_provider(status: MessageStatus) -> bool {
    matches!(
        status,
        MessageStatus::Scheduled
            | MessageStatus::Queued
            | MessageStatus::Sending
            | MessageStatus::Unknown
    )
}

/// A history row to insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub message_id: Uuid,
    pub org_id: Uuid,
    pub seq: u32,
    pub status: MessageStatus,
    pub at: Timestamp,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// What one event does to a row besides its status.
#[derive(Default)]
struct Effects<'a> {
    provider: Option<&'a str>,
    provider_message_id: Option<&'a str>,
    error: Option<(&'a str, &'a str)>,
    actual_cost: Option<Amount>,
    due_at: Option<Timestamp>,
    refund_attempt: bool,
}

/// Changes accumulated over one batch, in order.
pub struct Batch {
    now: Timestamp,
    states: HashMap<Uuid, QueueState>,
    /// Changed rows, in the order they first changed.
    touched: Vec<Uuid>,
    touched_set: HashSet<Uuid>,
    events: Vec<NewEvent>,
    credits: CreditMoves,
}

impl Batch {
    /// Start a batch over the loaded states of the messages it may touch.
    pub fn new(states: impl IntoIterator<Item = QueueState>, now: Timestamp) -> Batch {
        let states = states.into_iter().map(|s| (s.id, s)).collect();
        Batch {
            now,
            states,
            touched: Vec::new(),
            touched_set: HashSet::new(),
            events: Vec::new(),
            credits: CreditMoves::default(),
        }
    }

    /// The time every change in this batch is recorded at.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Record what a provider call came to. Unknown ids are skipped.
    pub fn apply_result(&mut self, result: &SendResult) {
        let Some(state) = self.states.get(&result.id) else {
            return;
        };
        // A result from an older claim only counts when it says the provider has the message:
        // that stays true whatever happened since, and forgetting it could mean sending twice.
        let stale = state.attempts != result.attempt;
        let mut effects = Effects {
            provider: result.provider.as_deref(),
            ..Effects::default()
        };
        let event = match &result.outcome {
            SendOutcome::Accepted {
                provider_message_id,
                cost,
            } => {
                effects.provider_message_id = Some(provider_message_id);
                effects.actual_cost = *cost;
                StatusEvent::Accepted
            }
            _ if stale => return,
            SendOutcome::Retry {
                retry_at,
                code,
                message,
            } => {
                effects.error = Some((code, message));
                effects.due_at = Some(*retry_at);
                StatusEvent::Retry
            }
            SendOutcome::Failed { code, message } => {
                effects.error = Some((code, message));
                StatusEvent::Fail
            }
            SendOutcome::Suppressed { code, message } => {
                effects.error = Some((code, message));
                StatusEvent::Suppress
            }
            SendOutcome::Unanswered { code, message } => {
                effects.error = Some((code, message));
                effects.due_at = Some(self.now);
                StatusEvent::Unanswered
            }
            SendOutcome::Unclaimed => {
                effects.provider = None;
                effects.due_at = Some(self.now);
                effects.refund_attempt = true;
                StatusEvent::Unclaim
            }
            SendOutcome::Deferred { until } => {
                effects.provider = None;
                effects.due_at = Some(*until);
                effects.refund_attempt = true;
                StatusEvent::Unclaim
            }
        };
        if let Err(illegal) = self.apply(result.id, event, effects) {
            dropped(result.id, illegal);
        }
    }

    /// Record a provider's report about message `id`.
    pub fn apply_report(&mut self, id: Uuid, report: &ProviderReport) -> ReportOutcome {
        if !self.states.contains_key(&id) {
            return ReportOutcome::NotFound;
        }
        let error = report
            .error_code
            .as_deref()
            .map(|code| (code, report.error_message.as_deref().unwrap_or("")));
        let effects = Effects {
            provider: Some(&report.provider),
            provider_message_id: Some(&report.provider_message_id),
            error,
            actual_cost: report.cost,
            ..Effects::default()
        };
        match self.apply(id, StatusEvent::Report(report.status), effects) {
            Ok(true) => ReportOutcome::Applied,
            _ => ReportOutcome::Unchanged,
        }
    }

    /// The loaded message a provider knows by this id, e.g. one whose id a result earlier in
    /// this batch has just recorded.
    pub fn find_by_provider_id(&self, provider: &str, provider_message_id: &str) -> Option<Uuid> {
        self.states.values().find_map(|state| {
            let matches = state.provider.as_deref() == Some(provider)
                && state.provider_message_id.as_deref() == Some(provider_message_id);
            matches.then_some(state.id)
        })
    }

    /// Record what reconciliation learned about an `unknown` message.
    pub fn apply_settlement(&mut self, id: Uuid, settlement: &Settlement) {
        let Some(state) = self.states.get(&id) else {
            return;
        };
        if state.status != MessageStatus::Unknown {
            return; // settled meanwhile, e.g. by a late provider report
        }
        let (event, effects) = match settlement {
            Settlement::Found {
                provider,
                provider_message_id,
                status,
                error_code,
            } => (
                StatusEvent::Report(*status),
                Effects {
                    provider: Some(provider),
                    provider_message_id: Some(provider_message_id),
                    error: error_code
                        .as_deref()
                        .map(|code| (code, "reported by the provider")),
                    ..Effects::default()
                },
            ),
            Settlement::NotFound => (
                StatusEvent::Requeue,
                Effects {
                    due_at: Some(self.now),
                    ..Effects::default()
                },
            ),
            Settlement::Undecided { retry_at } => {
                let state = self.touch(id);
                state.due_at = *retry_at;
                return;
            }
        };
        if let Err(illegal) = self.apply(id, event, effects) {
            dropped(id, illegal);
        }
    }

    /// Apply a caller's cancel: `None` if the message is not loaded, `Some(Err(status))` when
    /// its status makes it too late.
    pub fn apply_cancel(&mut self, id: Uuid) -> Option<Result<(), MessageStatus>> {
        let status = self.states.get(&id)?.status;
        Some(
            self.apply(id, StatusEvent::Cancel, Effects::default())
                .map(|_| ())
                .map_err(|_| status),
        )
    }

    /// The rows to write back (only those that changed), the history rows to insert, and what
    /// the changes did to credits.
    pub fn finish(mut self) -> (Vec<QueueState>, Vec<NewEvent>, CreditMoves) {
        let states = self
            .touched
            .iter()
            .filter_map(|id| self.states.remove(id))
            .collect();
        (states, self.events, self.credits)
    }

    fn touch(&mut self, id: Uuid) -> &mut QueueState {
        if self.touched_set.insert(id) {
            self.touched.push(id);
        }
        self.states.get_mut(&id).expect("touched states are loaded")
    }

    /// Apply one event; `Ok(true)` when the status moved.
    fn apply(
        &mut self,
        id: Uuid,
        event: StatusEvent,
        effects: Effects<'_>,
    ) -> Result<bool, IllegalTransition> {
        let now = self.now;
        let current = &self.states[&id];
        let change = plan_change(current.status, current.last_seq, event)?;
        // A duplicate report that teaches nothing new leaves the row alone: no write at all.
        let fills_in =
            |known: &Option<String>, given: Option<&str>| known.is_none() && given.is_some();
        // Until a provider has named the message, the provider is the one last tried: a retry
        // may fail over to another.
        let provider_changes = current.provider_message_id.is_none()
            && effects
                .provider
                .is_some_and(|given| current.provider.as_deref() != Some(given));
        let teaches = provider_changes
            || fills_in(&current.provider_message_id, effects.provider_message_id)
            || effects
                .actual_cost
                .is_some_and(|cost| current.actual_cost != Some(cost))
            || effects.due_at.is_some_and(|due| current.due_at != due)
            || effects.refund_attempt;
        if change.is_none() && !teaches {
            return Ok(false);
        }
        // A provider's actual cost replaces what the month's spend counted for a metered
        // message (its estimate, or an earlier actual cost), so the spend limit sees real costs.
        if current.credits > 0
            && let Some(actual) = effects.actual_cost
            && current.actual_cost != Some(actual)
        {
            let counted = current.actual_cost.unwrap_or(current.estimated_cost);
            let key = (current.org_id, month_of(current.created_at));
            self.credits.moves.entry(key).or_default().spend += actual.micros() - counted.micros();
        }
        let state = self.touch(id);
        // Provider identifiers are set once: the first answer that names the message (with the
        // provider's id for it) names it for good, so reports and reconciliation find it there.
        if state.provider_message_id.is_none() {
            if let Some(provider) = effects.provider {
                state.provider = Some(provider.to_owned());
            }
            state.provider_message_id = effects.provider_message_id.map(str::to_owned);
        }
        if effects.actual_cost.is_some() {
            state.actual_cost = effects.actual_cost;
        }
        if let Some(due_at) = effects.due_at {
            state.due_at = due_at;
        }
        if effects.refund_attempt {
            state.attempts = state.attempts.saturating_sub(1);
        }
        let Some(change) = change else {
            return Ok(false);
        };
        // Credits settle exactly once: when the message first leaves the statuses in which a
        // provider may not have it. Nothing moves it back, so duplicates never settle twice.
        let settled = (state.credits > 0
            && before_provider(state.status)
            && !before_provider(change.to))
        .then(|| {
            let provider_has_it = match change.to {
                MessageStatus::Sent | MessageStatus::Delivered | MessageStatus::Undelivered => true,
                MessageStatus::Failed => state.provider_message_id.is_some(),
                _ => false,
            };
            (
                month_of(state.created_at),
                provider_has_it,
                i64::from(state.credits),
                // What the month's spend counts for it by now.
                state.actual_cost.unwrap_or(state.estimated_cost).micros(),
            )
        });
        state.status = change.to;
        state.last_seq = change.seq;
        if change.to != MessageStatus::Sending {
            state.lease_expires_at = None;
        }
        match effects.error {
            Some((code, message)) => {
                state.error_code = Some(code.to_owned());
                state.error_message = Some(message.to_owned());
            }
            // Once the provider has the message, an earlier transient error no longer describes
            // it (the history keeps it).
            None if matches!(change.to, MessageStatus::Sent | MessageStatus::Delivered) => {
                state.error_code = None;
                state.error_message = None;
            }
            None => {}
        }
        let org_id = state.org_id;
        if let Some((month, provider_has_it, credits, cost)) = settled {
            let entry = self.credits.moves.entry((org_id, month)).or_default();
            if provider_has_it {
                entry.consumed += credits;
            } else {
                entry.released += credits;
                entry.spend -= cost;
            }
        }
        self.events.push(NewEvent {
            message_id: id,
            org_id,
            seq: change.seq,
            status: change.to,
            at: now,
            error_code: effects.error.map(|(code, _)| code.to_owned()),
            error_message: effects.error.map(|(_, message)| message.to_owned()),
        });
        Ok(true)
    }
}

/// A command that no longer fits the message (e.g. a retry for a message a report already
/// settled) is dropped: the message has moved on and the newer state is the truth.
fn dropped(id: Uuid, illegal: IllegalTransition) {
    tracing::warn!(message_id = %id, %illegal, "status change dropped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credits::CreditMove;
    use herald_domain::status::ReportedStatus;

    fn state(status: MessageStatus) -> QueueState {
        QueueState {
            id: Uuid::from_u128(1),
            org_id: Uuid::from_u128(2),
            status,
            last_seq: 2,
            attempts: 1,
            provider: None,
            provider_message_id: None,
            error_code: None,
            error_message: None,
            actual_cost: None,
            due_at: Timestamp::UNIX_EPOCH,
            lease_expires_at: Some(Timestamp::UNIX_EPOCH),
            credits: 0,
            estimated_cost: Amount::from_micros(0),
            created_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn report(status: ReportedStatus) -> ProviderReport {
        ProviderReport {
            provider: "simulator".into(),
            message_id: None,
            provider_message_id: "SM1".into(),
            status,
            error_code: None,
            error_message: None,
            cost: None,
        }
    }

    #[test]
    fn two_reports_in_one_batch_apply_in_order() {
        let id = Uuid::from_u128(1);
        let mut batch = Batch::new([state(MessageStatus::Sending)], Timestamp::UNIX_EPOCH);
        assert_eq!(
            batch.apply_report(id, &report(ReportedStatus::Sent)),
            ReportOutcome::Applied
        );
        assert_eq!(
            batch.apply_report(id, &report(ReportedStatus::Delivered)),
            ReportOutcome::Applied
        );
        assert_eq!(
            batch.apply_report(id, &report(ReportedStatus::Sent)),
            ReportOutcome::Unchanged
        );
        let (states, events, _) = batch.finish();
        assert_eq!(states.len(), 1);
        assert_eq!(
            (states[0].status, states[0].last_seq),
            (MessageStatus::Delivered, 4)
        );
        assert_eq!(states[0].lease_expires_at, None);
        assert_eq!(
            events.iter().map(|e| (e.seq, e.status)).collect::<Vec<_>>(),
            vec![(3, MessageStatus::Sent), (4, MessageStatus::Delivered)]
        );
    }

    #[test]
    fn a_duplicate_report_that_teaches_nothing_is_not_written() {
        let id = Uuid::from_u128(1);
        let mut known = state(MessageStatus::Sent);
        known.provider = Some("simulator".into());
        known.provider_message_id = Some("SM1".into());
        let mut batch = Batch::new([known], Timestamp::UNIX_EPOCH);
        assert_eq!(
            batch.apply_report(id, &report(ReportedStatus::Sent)),
            ReportOutcome::Unchanged
        );
        let (states, events, _) = batch.finish();
        assert!(states.is_empty() && events.is_empty());
    }

    #[test]
    fn credits_settle_once_consumed_when_a_provider_has_the_message_else_released() {
        let id = Uuid::from_u128(1);
        let reserved = |status| QueueState {
            credits: 2,
            estimated_cost: Amount::from_micros(15_800),
            ..state(status)
        };
        let key = (Uuid::from_u128(2), "1970-01".to_owned());

        let mut batch = Batch::new([reserved(MessageStatus::Sending)], Timestamp::UNIX_EPOCH);
        batch.apply_report(id, &report(ReportedStatus::Sent));
        batch.apply_report(id, &report(ReportedStatus::Delivered));
        batch.apply_report(id, &report(ReportedStatus::Delivered));
        let (_, _, moves) = batch.finish();
        let consumed = CreditMove {
            consumed: 2,
            ..CreditMove::default()
        };
        assert_eq!(moves.moves, HashMap::from([(key.clone(), consumed)]));

        let mut batch = Batch::new([reserved(MessageStatus::Queued)], Timestamp::UNIX_EPOCH);
        assert_eq!(batch.apply_cancel(id), Some(Ok(())));
        assert_eq!(
            batch.apply_cancel(id),
            Some(Ok(())),
            "a repeated cancel is a no-op"
        );
        let (_, _, moves) = batch.finish();
        let released = CreditMove {
            released: 2,
            spend: -15_800,
            ..CreditMove::default()
        };
        assert_eq!(moves.moves, HashMap::from([(key, released)]));

        // A report on a message already sent settles nothing.
        let mut batch = Batch::new([reserved(MessageStatus::Sent)], Timestamp::UNIX_EPOCH);
        batch.apply_report(id, &report(ReportedStatus::Delivered));
        assert!(batch.finish().2.is_empty());
    }

    #[test]
    fn a_late_report_still_fills_in_the_provider_ids() {
        let id = Uuid::from_u128(1);
        let mut batch = Batch::new([state(MessageStatus::Delivered)], Timestamp::UNIX_EPOCH);
        batch.apply_report(id, &report(ReportedStatus::Delivered));
        let (states, events, _) = batch.finish();
        assert_eq!(states.len(), 1, "provider ids are still filled in");
        assert_eq!(states[0].provider_message_id.as_deref(), Some("SM1"));
        assert!(events.is_empty());
    }
}
