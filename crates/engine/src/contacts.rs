//! Contacts as people describe them: validating fields into a [`ContactPatch`] (one set of
//! rules for the API, CSV imports and the CLI), and importing CSV files of any size in bounded
//! memory.
//!
//! An import parses on a blocking thread and hands rows over in batches; each batch is one
//! transaction, so an import that stops part-way (a broken upload) keeps every batch before
//! the failure and says where it stopped. Row errors never quote the row's values, so the
//! downloadable report holds no personal data.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_domain::phone::PhoneNumber;
use herald_store::{
    Contact, ContactImport, ContactPatch, ContactUpsert, ImportStatus, Organization, RowError,
    Store, StoreError, Upserted,
};
use serde_json::{Map, Number, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::accounts::FieldError;
use crate::clock::Clock;

const MAX_NAME: usize = 100;
const MAX_EMAIL: usize = 254;
const MAX_TAGS: usize = 50;
const MAX_TAG: usize = 64;
const MAX_CUSTOM_FIELDS: usize = 50;
const MAX_CUSTOM_KEY: usize = 64;
const MAX_CUSTOM_TEXT: usize = 1_000;
const MAX_SOURCE: usize = 100;
/// Rows per transaction: large enough that commits are not the cost, small enough that a
/// batch never holds SQLite's write lock for long.
const BATCH_ROWS: usize = 1_000;
/// Row errors kept per import; past this they are counted, not stored.
const MAX_REPORTED_ERRORS: u64 = 100_000;

/// A contact's fields as a request gives them. Outer `None`: left out; `Some(None)`: cleared.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContactInput {
    pub phone: Option<String>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub time_zone: Option<Option<String>>,
    pub language: Option<Option<String>>,
    pub lead_status: Option<String>,
    pub tags: Option<Vec<String>>,
    pub custom: Option<Map<String, Value>>,
    pub consent: Option<bool>,
    pub consent_source: Option<String>,
}

/// A validated input: the number (when given) and the changes.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidContact {
    pub phone: Option<PhoneNumber>,
    pub patch: ContactPatch,
}

/// Check every field of `input`, reporting all problems at once. `lead_statuses` are the
/// organization's; `creating` makes the phone number required.
pub fn validate(
    input: &ContactInput,
    org: &Organization,
    lead_statuses: &[String],
    creating: bool,
) -> Result<ValidContact, Vec<FieldError>> {
    let mut errors = Vec::new();
    let phone = match input.phone.as_deref().map(str::trim) {
        None | Some("") if creating => {
            errors.push(FieldError::new("phone", "required", "`phone` is required"));
            None
        }
        None => None,
        Some("") => {
            errors.push(FieldError::new(
                "phone",
                "required",
                "`phone` cannot be removed",
            ));
            None
        }
        Some(text) => match PhoneNumber::parse(text, Some(org.default_region)) {
            Ok(number) => Some(number),
            Err(error) => {
                errors.push(FieldError::new(
                    "phone",
                    error.code(),
                    format!("`phone` is not a valid phone number: {error}"),
                ));
                None
            }
        },
    };
    let mut patch = ContactPatch {
        first_name: text_field(&mut errors, "first_name", &input.first_name, MAX_NAME),
        last_name: text_field(&mut errors, "last_name", &input.last_name, MAX_NAME),
        ..ContactPatch::default()
    };
    patch.email = text_field(&mut errors, "email", &input.email, MAX_EMAIL).map(|email| {
        let email = email.map(|e| e.to_lowercase());
        if let Some(e) = &email
            && !plausible_email(e)
        {
            errors.push(FieldError::new(
                "email",
                "invalid_email",
                "`email` is not an email address",
            ));
        }
        email
    });
    patch.time_zone = text_field(&mut errors, "time_zone", &input.time_zone, 64);
    if let Some(Some(zone)) = &patch.time_zone
        && jiff::tz::TimeZone::get(zone).is_err()
    {
        errors.push(FieldError::new(
            "time_zone",
            "unknown_time_zone",
            "`time_zone` is not an IANA time zone (like `Europe/Paris`)",
        ));
    }
    patch.language = text_field(&mut errors, "language", &input.language, 35).map(|language| {
        language.and_then(|l| match language_tag(&l) {
            Some(tag) => Some(tag),
            None => {
                errors.push(FieldError::new(
                    "language",
                    "invalid_language",
                    "`language` is not a language tag (like `fr` or `pt-BR`)",
                ));
                None
            }
        })
    });
    if let Some(status) = &input.lead_status {
        let status = status.trim();
        if lead_statuses.iter().any(|s| s == status) {
            patch.lead_status = Some(status.to_owned());
        } else {
            errors.push(FieldError::new(
                "lead_status",
                "unknown_lead_status",
                format!(
                    "`lead_status` must be one of the organization's lead statuses: {}",
                    lead_statuses.join(", ")
                ),
            ));
        }
    }
    if let Some(tags) = &input.tags {
        if tags.len() > MAX_TAGS {
            errors.push(FieldError::new(
                "tags",
                "too_many_tags",
                format!("a contact has at most {MAX_TAGS} tags"),
            ));
        } else if let Some(i) = tags
            .iter()
            .position(|t| t.trim().chars().count() > MAX_TAG || t.chars().any(char::is_control))
        {
            errors.push(FieldError::new(
                format!("tags[{i}]"),
                "invalid_tag",
                format!("a tag is at most {MAX_TAG} characters, without control characters"),
            ));
        } else {
            patch.tags = Some(tags.clone());
        }
    }
    if let Some(custom) = &input.custom {
        let before = errors.len();
        if custom.len() > MAX_CUSTOM_FIELDS {
            errors.push(FieldError::new(
                "custom",
                "too_many_fields",
                format!("a contact has at most {MAX_CUSTOM_FIELDS} custom fields"),
            ));
        }
        for (key, value) in custom {
            let field = format!("custom.{key}");
            if key.is_empty()
                || key.len() > MAX_CUSTOM_KEY
                || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                errors.push(FieldError::new(
                    field,
                    "invalid_key",
                    format!("custom field names are 1 to {MAX_CUSTOM_KEY} letters, digits or `_`"),
                ));
                continue;
            }
            match value {
                Value::Null | Value::Bool(_) | Value::Number(_) => {}
                Value::String(s) if s.chars().count() <= MAX_CUSTOM_TEXT => {}
                Value::String(_) => errors.push(FieldError::new(
                    field,
                    "too_long",
                    format!("a custom text is at most {MAX_CUSTOM_TEXT} characters"),
                )),
                Value::Array(_) | Value::Object(_) => errors.push(FieldError::new(
                    field,
                    "unsupported_value",
                    "a custom field holds a string, a number, a boolean, or null to remove it",
                )),
            }
        }
        if errors.len() == before {
            patch.custom = Some(custom.clone());
        }
    }
    let source = match input.consent_source.as_deref().map(str::trim) {
        Some(s) if s.chars().count() > MAX_SOURCE || s.chars().any(char::is_control) => {
            errors.push(FieldError::new(
                "consent_source",
                "too_long",
                format!("`consent_source` is at most {MAX_SOURCE} characters"),
            ));
            None
        }
        Some("") | None => None,
        Some(s) => Some(s.to_owned()),
    };
    match input.consent {
        Some(consent) => patch.consent = Some((consent, source)),
        None if source.is_some() => errors.push(FieldError::new(
            "consent_source",
            "consent_required",
            "`consent_source` is given with `consent`",
        )),
        None => {}
    }
    if errors.is_empty() {
        Ok(ValidContact { phone, patch })
    } else {
        Err(errors)
    }
}

/// A text field: trimmed, empty means cleared, bounded, no control characters.
fn text_field(
    errors: &mut Vec<FieldError>,
    field: &'static str,
    value: &Option<Option<String>>,
    max: usize,
) -> Option<Option<String>> {
    let value = value.as_ref()?;
    let Some(text) = value.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
        return Some(None);
    };
    if text.chars().count() > max {
        errors.push(FieldError::new(
            field,
            "too_long",
            format!("`{field}` is at most {max} characters"),
        ));
        return None;
    }
    if text.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            "invalid_character",
            format!("`{field}` must not contain control characters"),
        ));
        return None;
    }
    Some(Some(text.to_owned()))
}

/// One `@` between a local part and a dotted domain, no spaces: enough to catch columns
/// mapped wrongly without refusing real addresses.
fn plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(char::is_whitespace)
}

/// A BCP 47 tag in its usual case (`pt-BR`, `zh-Hant`), or `None` if it is not one.
fn language_tag(text: &str) -> Option<String> {
    let mut parts = text.split(['-', '_']);
    let primary = parts.next()?;
    if !(2..=3).contains(&primary.len()) || !primary.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    let mut tag = primary.to_ascii_lowercase();
    for part in parts {
        if !(1..=8).contains(&part.len()) || !part.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        tag.push('-');
        tag.push_str(&match part.len() {
            2 => part.to_ascii_uppercase(),
            4 => {
                let mut script = part.to_ascii_lowercase();
                script[..1].make_ascii_uppercase();
                script
            }
            _ => part.to_ascii_lowercase(),
        });
    }
    Some(tag)
}

/// Which contact field a CSV column fills.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Column {
    Phone,
    FirstName,
    LastName,
    Email,
    TimeZone,
    Language,
    LeadStatus,
    /// Several tags separated by `;` or `|`.
    Tags,
    Consent,
    ConsentSource,
    Custom(String),
    /// Read and left out.
    Ignore,
}

impl Column {
    /// The field a header or a mapping target names, as people usually spell it.
    pub fn parse(name: &str) -> Option<Column> {
        let name = name.trim();
        if let Some(key) = name.strip_prefix("custom.") {
            return Some(Column::Custom(key.to_owned()));
        }
        let plain: String = name
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        Some(match plain.as_str() {
            "phone" | "phonenumber" | "mobile" | "mobilenumber" | "number" | "msisdn" => {
                Column::Phone
            }
            "firstname" | "givenname" => Column::FirstName,
            "lastname" | "surname" | "familyname" => Column::LastName,
            "email" | "emailaddress" => Column::Email,
            "timezone" | "tz" => Column::TimeZone,
            "language" | "lang" | "locale" => Column::Language,
            "leadstatus" | "status" => Column::LeadStatus,
            "tags" | "tag" => Column::Tags,
            "consent" | "promotionalconsent" => Column::Consent,
            "consentsource" => Column::ConsentSource,
            "" | "ignore" | "-" => Column::Ignore,
            _ => return None,
        })
    }

    fn field(&self) -> String {
        match self {
            Column::Phone => "phone".into(),
            Column::FirstName => "first_name".into(),
            Column::LastName => "last_name".into(),
            Column::Email => "email".into(),
            Column::TimeZone => "time_zone".into(),
            Column::Language => "language".into(),
            Column::LeadStatus => "lead_status".into(),
            Column::Tags => "tags".into(),
            Column::Consent => "consent".into(),
            Column::ConsentSource => "consent_source".into(),
            Column::Custom(key) => format!("custom.{key}"),
            Column::Ignore => String::new(),
        }
    }
}

/// Why an import could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The header cannot be mapped: each problem names the column.
    #[error("the file's header cannot be used")]
    Header(Vec<FieldError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How far an import has got, for progress bars.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    bytes: Arc<AtomicU64>,
    rows: Arc<AtomicU64>,
}

impl Progress {
    /// Bytes of the file read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Data rows read so far.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }
}

struct Counting<R> {
    inner: R,
    bytes: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A batch of parsed rows on its way to the store.
struct Batch {
    rows: u64,
    upserts: Vec<ContactUpsert>,
    errors: Vec<RowError>,
}

/// Import contacts from CSV read from `reader`, upserting by phone number.
///
/// `mapping` renames columns: header → field (`phone`, `first_name`, …, `custom.key`, or
/// `ignore`); other headers are read by their own names, and one that names no field stops the
/// import before anything is written. Empty cells leave fields as they are. The import is
/// recorded from its start, so its report can be read while it runs.
pub async fn import_csv<R: Read + Send + 'static>(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    org: Organization,
    reader: R,
    mapping: HashMap<String, String>,
    progress: Progress,
) -> Result<ContactImport, ImportError> {
    let lead_statuses = store.lead_statuses(org.id).await?;
    let default_status = lead_statuses
        .first()
        .cloned()
        .unwrap_or_else(|| herald_store::DEFAULT_LEAD_STATUSES[0].to_owned());

    let (header_tx, header_rx) = tokio::sync::oneshot::channel();
    let (batches_tx, mut batches) = mpsc::channel::<Result<Batch, String>>(2);
    let parse_org = org.clone();
    let parse_progress = progress.clone();
    let parser = tokio::task::spawn_blocking(move || {
        parse(
            reader,
            &parse_org,
            &lead_statuses,
            &mapping,
            &parse_progress,
            header_tx,
            &batches_tx,
        )
    });
    let header = header_rx.await;
    let header = match header {
        Ok(Ok(())) => Ok(()),
        Ok(Err(errors)) => Err(ImportError::Header(errors)),
        // The parser ended before reading a header: an empty or unreadable file.
        Err(_) => Err(ImportError::Header(vec![FieldError::new(
            "file",
            "no_header",
            "the file has no header row",
        )])),
    };
    if let Err(error) = header {
        let _ = parser.await;
        return Err(error);
    }

    let mut import = ContactImport {
        id: Uuid::now_v7(),
        org_id: org.id,
        status: ImportStatus::Running,
        rows: 0,
        created: 0,
        updated: 0,
        unchanged: 0,
        invalid: 0,
        error: None,
        created_at: clock.now(),
        finished_at: None,
    };
    store.save_contact_import(&import, &[]).await?;
    let mut reported = 0u64;
    let outcome: Result<(), String> = async {
        while let Some(batch) = batches.recv().await {
            let mut batch = batch?;
            let now = clock.now();
            let outcomes = store
                .upsert_contacts(org.id, &batch.upserts, &default_status, now)
                .await
                .map_err(|e| e.to_string())?;
            for outcome in outcomes {
                match outcome {
                    Upserted::Created(_) => import.created += 1,
                    Upserted::Updated(_) => import.updated += 1,
                    Upserted::Unchanged(_) => import.unchanged += 1,
                }
            }
            import.rows += batch.rows;
            let invalid_rows: std::collections::BTreeSet<u64> =
                batch.errors.iter().map(|e| e.row).collect();
            import.invalid += invalid_rows.len() as u64;
            let room = MAX_REPORTED_ERRORS.saturating_sub(reported) as usize;
            batch.errors.truncate(room);
            reported += batch.errors.len() as u64;
            store
                .save_contact_import(&import, &batch.errors)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
    .await;
    // Closing the channel stops a parser still reading after a store failure.
    drop(batches);
    let parsed = parser.await.map_err(|e| e.to_string()).and_then(|r| r);
    import.finished_at = Some(clock.now());
    match outcome.and(parsed) {
        Ok(()) => import.status = ImportStatus::Completed,
        Err(error) => {
            tracing::warn!(import_id = %import.id, %error, "contact import stopped");
            import.status = ImportStatus::Failed;
            import.error = Some(error);
        }
    }
    store.save_contact_import(&import, &[]).await?;
    tracing::info!(
        import_id = %import.id,
        org_id = %org.id,
        rows = import.rows,
        created = import.created,
        updated = import.updated,
        invalid = import.invalid,
        status = import.status.as_str(),
        "contact import finished"
    );
    Ok(import)
}

/// The blocking half of an import: read the header, then rows, sending batches.
fn parse<R: Read>(
    reader: R,
    org: &Organization,
    lead_statuses: &[String],
    mapping: &HashMap<String, String>,
    progress: &Progress,
    header_tx: tokio::sync::oneshot::Sender<Result<(), Vec<FieldError>>>,
    batches: &mpsc::Sender<Result<Batch, String>>,
) -> Result<(), String> {
    let counting = Counting {
        inner: reader,
        bytes: progress.bytes.clone(),
    };
    let mut csv = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(counting);
    let headers = match csv.byte_headers() {
        Ok(headers) if !headers.is_empty() => headers.clone(),
        Ok(_) => return Ok(()),
        Err(error) => {
            let _ = header_tx.send(Err(vec![FieldError::new(
                "file",
                "unreadable",
                format!("the header row cannot be read: {error}"),
            )]));
            return Ok(());
        }
    };
    let columns = match columns(&headers, mapping) {
        Ok(columns) => columns,
        Err(errors) => {
            let _ = header_tx.send(Err(errors));
            return Ok(());
        }
    };
    let _ = header_tx.send(Ok(()));

    let mut batch = Batch {
        rows: 0,
        upserts: Vec::with_capacity(BATCH_ROWS),
        errors: Vec::new(),
    };
    let mut record = csv::ByteRecord::new();
    loop {
        match csv.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(error) => {
                let line = error.position().map_or(0, |p| p.line());
                let _ = batches.blocking_send(Ok(std::mem::replace(
                    &mut batch,
                    Batch {
                        rows: 0,
                        upserts: Vec::new(),
                        errors: Vec::new(),
                    },
                )));
                return Err(format!("the file cannot be read at line {line}: {}", {
                    // The csv error's text can quote the line's bytes; keep only its kind.
                    match error.kind() {
                        csv::ErrorKind::Utf8 { .. } => "not UTF-8".to_owned(),
                        csv::ErrorKind::Io(e) => e.to_string(),
                        _ => "malformed CSV".to_owned(),
                    }
                }));
            }
        }
        let line = record.position().map_or(0, |p| p.line());
        batch.rows += 1;
        progress.rows.fetch_add(1, Ordering::Relaxed);
        if record.iter().all(<[u8]>::is_empty) {
            batch.errors.push(RowError {
                row: line,
                field: "row".into(),
                code: "empty_row".into(),
                message: "the row is empty".into(),
            });
        } else {
            match row(&columns, &record, org, lead_statuses) {
                Ok(upsert) => batch.upserts.push(upsert),
                Err(errors) => batch.errors.extend(errors.into_iter().map(|e| RowError {
                    row: line,
                    field: e.field,
                    code: e.code.to_owned(),
                    message: e.message,
                })),
            }
        }
        if batch.rows as usize >= BATCH_ROWS {
            let full = std::mem::replace(
                &mut batch,
                Batch {
                    rows: 0,
                    upserts: Vec::with_capacity(BATCH_ROWS),
                    errors: Vec::new(),
                },
            );
            if batches.blocking_send(Ok(full)).is_err() {
                return Ok(());
            }
        }
    }
    if batch.rows > 0 {
        let _ = batches.blocking_send(Ok(batch));
    }
    Ok(())
}

/// Map each header to a field; every problem with the header at once.
fn columns(
    headers: &csv::ByteRecord,
    mapping: &HashMap<String, String>,
) -> Result<Vec<Column>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut columns = Vec::with_capacity(headers.len());
    for (i, raw) in headers.iter().enumerate() {
        let name = String::from_utf8_lossy(raw);
        let name = name.trim().trim_start_matches('\u{feff}');
        let target = mapping.get(name).map(String::as_str).unwrap_or(name);
        match Column::parse(target) {
            Some(Column::Custom(key))
                if key.is_empty()
                    || key.len() > MAX_CUSTOM_KEY
                    || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                errors.push(FieldError::new(
                    format!("columns[{i}]"),
                    "invalid_key",
                    format!(
                        "column `{name}`: custom field names are 1 to {MAX_CUSTOM_KEY} letters, \
                         digits or `_`"
                    ),
                ));
            }
            Some(column) => {
                if column != Column::Ignore && columns.contains(&column) {
                    errors.push(FieldError::new(
                        format!("columns[{i}]"),
                        "duplicate_column",
                        format!("column `{name}` fills `{}` a second time", column.field()),
                    ));
                }
                columns.push(column);
            }
            None => errors.push(FieldError::new(
                format!("columns[{i}]"),
                "unknown_column",
                format!(
                    "column `{name}` is not a contact field; map it to one (or to \
                     `custom.{name}` or `ignore`)"
                ),
            )),
        }
    }
    for name in mapping.keys() {
        if !headers
            .iter()
            .any(|h| String::from_utf8_lossy(h).trim() == name.as_str())
        {
            errors.push(FieldError::new(
                format!("map.{name}"),
                "unknown_column",
                format!("the mapping names column `{name}`, which the file does not have"),
            ));
        }
    }
    if !columns.contains(&Column::Phone) && errors.is_empty() {
        errors.push(FieldError::new(
            "columns",
            "phone_column_missing",
            "no column holds the phone number",
        ));
    }
    if errors.is_empty() {
        Ok(columns)
    } else {
        Err(errors)
    }
}

/// One row as an upsert, or its problems.
fn row(
    columns: &[Column],
    record: &csv::ByteRecord,
    org: &Organization,
    lead_statuses: &[String],
) -> Result<ContactUpsert, Vec<FieldError>> {
    let mut input = ContactInput::default();
    let mut errors = Vec::new();
    let mut custom = Map::new();
    for (column, raw) in columns.iter().zip(record.iter()) {
        let Ok(text) = std::str::from_utf8(raw) else {
            errors.push(FieldError::new(
                column.field(),
                "not_utf8",
                "the cell is not UTF-8 text",
            ));
            continue;
        };
        if text.is_empty() {
            continue;
        }
        let some = || Some(Some(text.to_owned()));
        match column {
            Column::Phone => input.phone = Some(text.to_owned()),
            Column::FirstName => input.first_name = some(),
            Column::LastName => input.last_name = some(),
            Column::Email => input.email = some(),
            Column::TimeZone => input.time_zone = some(),
            Column::Language => input.language = some(),
            Column::LeadStatus => input.lead_status = Some(text.to_owned()),
            Column::Tags => {
                input.tags = Some(
                    text.split([';', '|'])
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect(),
                );
            }
            Column::Consent => match yes_no(text) {
                Some(consent) => input.consent = Some(consent),
                None => errors.push(FieldError::new(
                    "consent",
                    "invalid_boolean",
                    "`consent` is one of true, false, yes, no, 1, 0",
                )),
            },
            Column::ConsentSource => input.consent_source = Some(text.to_owned()),
            Column::Custom(key) => {
                custom.insert(key.clone(), typed(text));
            }
            Column::Ignore => {}
        }
    }
    if input.consent.is_some() && input.consent_source.is_none() {
        input.consent_source = Some("import".into());
    }
    if !custom.is_empty() {
        input.custom = Some(custom);
    }
    let valid = validate(&input, org, lead_statuses, true);
    match valid {
        Ok(ValidContact {
            phone: Some(phone),
            patch,
        }) if errors.is_empty() => Ok(ContactUpsert {
            phone: phone.e164().to_owned(),
            country: phone.region(),
            patch,
        }),
        Ok(_) => Err(errors),
        Err(mut more) => {
            errors.append(&mut more);
            Err(errors)
        }
    }
}

fn yes_no(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "1" => Some(true),
        "false" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// A CSV cell as the JSON value segment rules compare: numbers and booleans typed, the rest
/// text. Numbers with leading zeros (`007`, postcodes) stay text.
fn typed(text: &str) -> Value {
    match text {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.trim_start_matches('-');
    let leading_zero = digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.");
    if !leading_zero {
        if let Ok(n) = text.parse::<i64>() {
            return Value::Number(n.into());
        }
        if let Some(n) = text
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .and_then(Number::from_f64)
        {
            return Value::Number(n);
        }
    }
    Value::String(text.to_owned())
}

/// The organization's contacts among `ids` that still exist, by id (no read when there are none).
pub(crate) async fn by_id(
    store: &dyn Store,
    org_id: Uuid,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Contact>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(store
        .contacts_by_id(org_id, ids)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect())
}

/// Which of `phones` are on the organization's suppression list (no read when there are none).
pub(crate) async fn opted_out(
    store: &dyn Store,
    org_id: Uuid,
    phones: &[String],
) -> Result<std::collections::HashSet<String>, StoreError> {
    if phones.is_empty() {
        return Ok(Default::default());
    }
    Ok(store
        .opted_out_among(org_id, phones)
        .await?
        .into_iter()
        .map(|o| o.phone)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_domain::phone::Region;
    use jiff::Timestamp;

    fn org() -> Organization {
        Organization {
            id: Uuid::now_v7(),
            name: "acme".into(),
            default_region: Region::parse("US").unwrap(),
            created_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn statuses() -> Vec<String> {
        herald_store::DEFAULT_LEAD_STATUSES
            .map(str::to_owned)
            .to_vec()
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let input = ContactInput {
            phone: Some("12".into()),
            email: Some(Some("not-an-email".into())),
            time_zone: Some(Some("Mars/Olympus".into())),
            language: Some(Some("english!".into())),
            lead_status: Some("hot".into()),
            custom: Some(
                serde_json::json!({"ok": 1, "bad key": 2, "nested": {"a": 1}})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            ..ContactInput::default()
        };
        let errors = validate(&input, &org(), &statuses(), true).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "phone",
                "email",
                "time_zone",
                "language",
                "lead_status",
                "custom.bad key",
                "custom.nested"
            ]
        );
    }

    #[test]
    fn good_fields_are_normalised() {
        let input = ContactInput {
            phone: Some("(415) 555-0100".into()),
            first_name: Some(Some("  Ada ".into())),
            last_name: Some(Some("".into())),
            email: Some(Some("Ada@Example.COM".into())),
            language: Some(Some("pt_br".into())),
            consent: Some(true),
            ..ContactInput::default()
        };
        let valid = validate(&input, &org(), &statuses(), true).unwrap();
        assert_eq!(valid.phone.unwrap().e164(), "+14155550100");
        assert_eq!(valid.patch.first_name, Some(Some("Ada".into())));
        assert_eq!(valid.patch.last_name, Some(None), "empty clears");
        assert_eq!(valid.patch.email, Some(Some("ada@example.com".into())));
        assert_eq!(valid.patch.language, Some(Some("pt-BR".into())));
        assert_eq!(valid.patch.consent, Some((true, None)));
    }

    #[test]
    fn csv_cells_keep_their_types_but_not_leading_zeros() {
        assert_eq!(typed("52000"), serde_json::json!(52000));
        assert_eq!(typed("-3.5"), serde_json::json!(-3.5));
        assert_eq!(typed("true"), serde_json::json!(true));
        assert_eq!(typed("007"), serde_json::json!("007"));
        assert_eq!(typed("0.5"), serde_json::json!(0.5));
        assert_eq!(typed("Paris"), serde_json::json!("Paris"));
        assert_eq!(typed("NaN"), serde_json::json!("NaN"));
    }

    #[test]
    fn headers_map_by_name_alias_and_mapping() {
        let headers = csv::ByteRecord::from(vec!["Mobile", "First Name", "Sales", "custom.city"]);
        let mapping = HashMap::from([("Sales".to_owned(), "custom.total_sales".to_owned())]);
        assert_eq!(
            columns(&headers, &mapping).unwrap(),
            [
                Column::Phone,
                Column::FirstName,
                Column::Custom("total_sales".into()),
                Column::Custom("city".into())
            ]
        );
        let errors = columns(
            &csv::ByteRecord::from(vec!["name", "Sales"]),
            &HashMap::new(),
        )
        .unwrap_err();
        assert_eq!(
            errors.iter().map(|e| e.code).collect::<Vec<_>>(),
            ["unknown_column", "unknown_column"]
        );
        let errors =
            columns(&csv::ByteRecord::from(vec!["first_name"]), &HashMap::new()).unwrap_err();
        assert_eq!(errors[0].code, "phone_column_missing");
    }
}
