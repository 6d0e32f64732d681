//! The message status machine of SPEC §3.
//!
//! A message moves `scheduled → queued → sending → sent → delivered | undelivered | failed`, with
//! `canceled` reachable only before `sending`, `suppressed` until a provider takes the message
//! (the recipient opted out, found before the call or told by the provider's refusal), and
//! `unknown` for a message whose dispatcher died between handing it to the provider and
//! recording the answer.
//!
//! Two kinds of event drive it. *Commands* come from Herald itself (claim, retry, cancel…): a
//! command that does not fit the current status is an error, because it means the caller is
//! working from a stale view. *Reports* come from providers, which deliver them late, twice or out
//! of order: a report never moves a message backwards and a repeated one changes nothing, so a
//! report that does not fit is a no-op rather than an error.

use serde::{Deserialize, Serialize};

/// Where a message is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Accepted with a future `send_at`; not yet eligible for dispatch.
    Scheduled,
    /// Waiting for a dispatcher to claim it.
    Queued,
    /// Claimed by a dispatcher, which holds a lease while it calls the provider.
    Sending,
    /// Accepted by the provider.
    Sent,
    /// The handset received it.
    Delivered,
    /// The provider accepted it but the carrier could not deliver it.
    Undelivered,
    /// It could not be sent: refused by the provider or out of retries.
    Failed,
    /// Cancelled before it was handed to a provider.
    Canceled,
    /// Withheld by policy before sending (opt-out, quiet-hours expiry, spend limit).
    Suppressed,
    /// The dispatcher's lease expired without a recorded answer; the provider may or may not have
    /// the message, so it is reconciled rather than resent.
    Unknown,
}

impl MessageStatus {
    /// Every status, in the order of SPEC §3 (useful for validation messages and tests).
    pub const ALL: [MessageStatus; 10] = [
        MessageStatus::Scheduled,
        MessageStatus::Queued,
        MessageStatus::Sending,
        MessageStatus::Sent,
        MessageStatus::Delivered,
        MessageStatus::Undelivered,
        MessageStatus::Failed,
        MessageStatus::Canceled,
        MessageStatus::Suppressed,
        MessageStatus::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Scheduled => "scheduled",
            MessageStatus::Queued => "queued",
            MessageStatus::Sending => "sending",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Undelivered => "undelivered",
            MessageStatus::Failed => "failed",
            MessageStatus::Canceled => "canceled",
            MessageStatus::Suppressed => "suppressed",
            MessageStatus::Unknown => "unknown",
        }
    }

    /// A final status: nothing moves the message again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            MessageStatus::Delivered
                | MessageStatus::Undelivered
                | MessageStatus::Failed
                | MessageStatus::Canceled
                | MessageStatus::Suppressed
        )
    }

    /// Position on the forward path. `unknown` sits beside `sending`: both mean "possibly with
    /// the provider", so a report of `sent` or later moves either forward.
    fn rank(self) -> u8 {
        match self {
            MessageStatus::Scheduled => 0,
            MessageStatus::Queued => 1,
            MessageStatus::Sending | MessageStatus::Unknown => 2,
            MessageStatus::Sent => 3,
            MessageStatus::Delivered
            | MessageStatus::Undelivered
            | MessageStatus::Failed
            | MessageStatus::Canceled
            | MessageStatus::Suppressed => 4,
        }
    }
}

impl std::fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Unrecognised status text, e.g. a corrupt row or a bad `status=` filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown message status {0:?}")]
pub struct UnknownStatus(pub String);

impl std::str::FromStr for MessageStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// A status a provider can report about a message it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportedStatus {
    Sent,
    Delivered,
    Undelivered,
    Failed,
}

impl ReportedStatus {
    pub fn status(self) -> MessageStatus {
        match self {
            ReportedStatus::Sent => MessageStatus::Sent,
            ReportedStatus::Delivered => MessageStatus::Delivered,
            ReportedStatus::Undelivered => MessageStatus::Undelivered,
            ReportedStatus::Failed => MessageStatus::Failed,
        }
    }
}

/// Something that may change a message's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusEvent {
    /// `send_at` has arrived: scheduled → queued.
    Due,
    /// A dispatcher takes the message and a lease on it: queued → sending.
    Claim,
    /// The dispatcher gives back a claimed message it never sent (shutdown): sending → queued.
    Unclaim,
    /// The provider refused for now (timeout before sending, 5xx, 429); try again later:
    /// sending → queued.
    Retry,
    /// The provider accepted the message: sending or unknown → sent.
    Accepted,
    /// Herald gives up on the message (permanent refusal, or retries exhausted).
    Fail,
    /// The provider call ended without an answer (a timeout after the request was sent), or the
    /// claim's lease ran out with nothing recorded: sending → unknown, to be reconciled.
    Unanswered,
    /// Reconciliation learned the provider never received it, so sending again is safe:
    /// unknown → queued.
    Requeue,
    /// The API caller cancels: only before `sending`.
    Cancel,
    /// Policy withholds the message: only before `sending`.
    Suppress,
    /// A provider says where the message is.
    Report(ReportedStatus),
}

/// The outcome of applying an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The message moves to this status; record it in its history.
    To(MessageStatus),
    /// Nothing changes: a duplicate, late or out-of-order report, or a repeated cancel.
    Unchanged,
}

/// A command that the message's current status does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply {event:?} to a message that is {from}")]
pub struct IllegalTransition {
    pub from: MessageStatus,
    pub event: StatusEvent,
}

/// Decide what `event` does to a message that is currently `from`.
pub fn apply(from: MessageStatus, event: StatusEvent) -> Result<Transition, IllegalTransition> {
    use MessageStatus as S;
    use StatusEvent as E;
    use Transition::{To, Unchanged};

    let illegal = Err(IllegalTransition { from, event });
    match (event, from) {
        (E::Due, S::Scheduled) => Ok(To(S::Queued)),
        (E::Claim, S::Queued) => Ok(To(S::Sending)),
        (E::Unclaim | E::Retry, S::Sending) => Ok(To(S::Queued)),
        (E::Accepted, S::Sending | S::Unknown) => Ok(To(S::Sent)),
        // A fast provider's report can overtake the dispatcher's own record of acceptance.
        (E::Accepted, S::Sent | S::Delivered | S::Undelivered | S::Failed) => Ok(Unchanged),
        (E::Fail, S::Sending | S::Unknown) => Ok(To(S::Failed)),
        // The provider has already spoken for the message; its word outranks our failed attempt.
        (E::Fail, S::Sent | S::Delivered | S::Undelivered | S::Failed) => Ok(Unchanged),
        (E::Unanswered, S::Sending) => Ok(To(S::Unknown)),
        (E::Requeue, S::Unknown) => Ok(To(S::Queued)),
        (E::Cancel, S::Scheduled | S::Queued) => Ok(To(S::Canceled)),
        (E::Cancel, S::Canceled) => Ok(Unchanged),
        (E::Suppress, S::Scheduled | S::Queued | S::Sending) => Ok(To(S::Suppressed)),
        (E::Suppress, S::Suppressed) => Ok(Unchanged),
        (E::Report(reported), _) => Ok(report(from, reported.status())),
        _ => illegal,
    }
}

/// Reports only ever move a message forward; anything else is a duplicate or arrived late.
fn report(from: MessageStatus, to: MessageStatus) -> Transition {
    if from.is_terminal() || to.rank() <= from.rank() {
        Transition::Unchanged
    } else {
        Transition::To(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MessageStatus as S;
    use StatusEvent as E;
    use proptest::prelude::*;

    fn any_status() -> impl Strategy<Value = MessageStatus> {
        proptest::sample::select(MessageStatus::ALL.to_vec())
    }

    fn any_report() -> impl Strategy<Value = ReportedStatus> {
        proptest::sample::select(vec![
            ReportedStatus::Sent,
            ReportedStatus::Delivered,
            ReportedStatus::Undelivered,
            ReportedStatus::Failed,
        ])
    }

    #[test]
    fn the_happy_path_moves_forward_one_step_at_a_time() {
        let mut status = S::Scheduled;
        for (event, expected) in [
            (E::Due, S::Queued),
            (E::Claim, S::Sending),
            (E::Accepted, S::Sent),
            (E::Report(ReportedStatus::Delivered), S::Delivered),
        ] {
            assert_eq!(apply(status, event), Ok(Transition::To(expected)));
            status = expected;
        }
    }

    #[test]
    fn cancel_is_allowed_only_before_sending() {
        assert_eq!(
            apply(S::Scheduled, E::Cancel),
            Ok(Transition::To(S::Canceled))
        );
        assert_eq!(apply(S::Queued, E::Cancel), Ok(Transition::To(S::Canceled)));
        assert_eq!(apply(S::Canceled, E::Cancel), Ok(Transition::Unchanged));
        for late in [
            S::Sending,
            S::Sent,
            S::Delivered,
            S::Failed,
            S::Unknown,
            S::Suppressed,
        ] {
            assert!(apply(late, E::Cancel).is_err(), "cancel from {late}");
        }
    }

    #[test]
    fn suppression_is_possible_until_a_provider_takes_the_message() {
        for before in [S::Scheduled, S::Queued, S::Sending] {
            assert_eq!(
                apply(before, E::Suppress),
                Ok(Transition::To(S::Suppressed)),
                "{before}"
            );
        }
        for after in [S::Sent, S::Delivered, S::Failed, S::Unknown, S::Canceled] {
            assert!(apply(after, E::Suppress).is_err(), "suppress from {after}");
        }
    }

    #[test]
    fn a_report_can_overtake_the_dispatchers_record_of_acceptance() {
        let delivered = apply(S::Sending, E::Report(ReportedStatus::Delivered));
        assert_eq!(delivered, Ok(Transition::To(S::Delivered)));
        assert_eq!(apply(S::Delivered, E::Accepted), Ok(Transition::Unchanged));
    }

    #[test]
    fn an_unknown_message_is_settled_by_a_report_or_requeued_by_reconciliation() {
        let sent = apply(S::Unknown, E::Report(ReportedStatus::Sent));
        assert_eq!(sent, Ok(Transition::To(S::Sent)));
        assert_eq!(apply(S::Unknown, E::Requeue), Ok(Transition::To(S::Queued)));
        assert!(apply(S::Sent, E::Requeue).is_err());
        assert!(apply(S::Unknown, E::Claim).is_err());
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in MessageStatus::ALL {
            assert_eq!(status.as_str().parse::<MessageStatus>(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert!("delivered ".parse::<MessageStatus>().is_err());
    }

    proptest! {
        #[test]
        fn reports_never_move_a_message_backwards(from in any_status(), reported in any_report()) {
            match apply(from, E::Report(reported)).unwrap() {
                Transition::To(to) => {
                    prop_assert!(to.rank() > from.rank());
                    prop_assert!(!from.is_terminal());
                }
                Transition::Unchanged => {}
            }
        }

        #[test]
        fn a_repeated_report_changes_nothing(from in any_status(), reported in any_report()) {
            let once = match apply(from, E::Report(reported)).unwrap() {
                Transition::To(to) => to,
                Transition::Unchanged => from,
            };
            prop_assert_eq!(apply(once, E::Report(reported)).unwrap(), Transition::Unchanged);
        }

        #[test]
        fn any_order_of_reports_ends_in_the_same_place_as_the_furthest_one(
            reports in proptest::collection::vec(any_report(), 1..6)
        ) {
            let mut status = S::Sending;
            for reported in &reports {
                if let Transition::To(to) = apply(status, E::Report(*reported)).unwrap() {
                    status = to;
                }
            }
            let first_terminal = reports.iter().map(|r| r.status()).find(|s| s.is_terminal());
            match first_terminal {
                Some(terminal) => prop_assert_eq!(status, terminal),
                None => prop_assert_eq!(status, S::Sent),
            }
        }

        #[test]
        fn terminal_statuses_are_final(from in any_status(), reported in any_report()) {
            prop_assume!(from.is_terminal());
            prop_assert_eq!(apply(from, E::Report(reported)).unwrap(), Transition::Unchanged);
            for command in [E::Due, E::Claim, E::Unclaim, E::Retry, E::Unanswered, E::Requeue] {
                prop_assert!(apply(from, command).is_err());
            }
        }
    }
}
