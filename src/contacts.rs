//! `herald contacts import`: a CSV file into an organization's contacts, with a progress bar,
//! through the same import as `POST /v1/contacts/imports`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use herald_engine::clock::SystemClock;
use herald_engine::contacts::{self, ImportError, Progress};
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

use crate::commands::ready_store;
use crate::config::{DatabaseUrl, FileConfig};

/// Read `Header:field` pairs (`--map Mobile:phone --map Sales:custom.total_sales`).
fn mapping(pairs: &[String]) -> Result<HashMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            let (column, field) = pair
                .rsplit_once(':')
                .with_context(|| format!("--map {pair:?} is not `Header:field`"))?;
            if contacts::Column::parse(field).is_none() {
                bail!("--map {pair:?}: `{field}` is not a contact field");
            }
            Ok((column.trim().to_owned(), field.trim().to_owned()))
        })
        .collect()
}

pub async fn import(
    file: &FileConfig,
    url: &DatabaseUrl,
    org_id: Uuid,
    path: &std::path::Path,
    map: &[String],
    json: bool,
) -> Result<()> {
    let mapping = mapping(map)?;
    let store = ready_store(file, url).await?;
    let Some(org) = store.get_organization(org_id).await? else {
        bail!("there is no organization {org_id}");
    };
    let reader =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = reader.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = Progress::default();
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(size)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {msg} ({elapsed}, about {eta} left)",
        )
        .expect("a valid template"),
    );
    let ticker = {
        let (bar, progress) = (bar.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(progress.bytes());
                bar.set_message(format!("{} rows", progress.rows()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let result = contacts::import_csv(
        store,
        Arc::new(SystemClock),
        org,
        std::io::BufReader::with_capacity(256 * 1024, reader),
        mapping,
        progress.clone(),
    )
    .await;
    ticker.abort();
    bar.set_position(progress.bytes());
    bar.finish_and_clear();
    let import = match result {
        Ok(import) => import,
        Err(ImportError::Header(errors)) => {
            for e in &errors {
                eprintln!("{}: {}", e.field, e.message);
            }
            bail!("the file's header cannot be used; nothing was imported");
        }
        Err(ImportError::Store(error)) => return Err(error.into()),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "import_id": import.id, "status": import.status.as_str(), "rows": import.rows,
                "created": import.created, "updated": import.updated,
                "unchanged": import.unchanged, "invalid": import.invalid, "error": import.error,
            })
        );
    } else {
        println!(
            "Import {}: {} rows read; {} contacts created, {} updated, {} unchanged; {} rows refused.",
            import.id,
            import.rows,
            import.created,
            import.updated,
            import.unchanged,
            import.invalid
        );
        if import.invalid > 0 {
            println!(
                "The refused rows are listed at GET /v1/contacts/imports/{}/errors (Accept: text/csv for a file).",
                import.id
            );
        }
    }
    if let Some(error) = import.error {
        bail!("the import stopped: {error}");
    }
    Ok(())
}
