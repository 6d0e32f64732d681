//! Herald's domain rules, free of I/O: every other crate uses these and they depend on none.
//!
//! - [`phone`]: parsing recipients to E.164 with libphonenumber metadata, and masking them for logs.
//! - [`encoding`]: GSM-7 / UCS-2 detection, segment counting, smart encoding and truncation.
//! - [`status`]: the message status machine (SPEC §3) — which transitions are allowed.
//! - [`money`]: exact amounts of money in micro-units and the per-country price table.
//! - [`template`]: message templates with `{{variables}}`, parsed at save time and rendered per
//!   message.
//! - [`message`]: small value types shared by every layer (message type, key mode).
//! - [`quiet_hours`]: the local hours promotional messages may arrive in, by zone or country.
//! - [`recurrence`]: RFC 5545 recurrence rules in a local zone, and the instants they occur at.

pub mod encoding;
pub mod keywords;
pub mod message;
pub mod money;
pub mod phone;
pub mod quiet_hours;
pub mod recurrence;
pub mod status;
pub mod template;
