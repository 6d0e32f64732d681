//! `import`: a CSV file of N contacts imported through the same path as
//! `POST /v1/contacts/imports` and `herald contacts import`. The file is generated as it is
//! read, so the peak memory measured is the import's own, whatever N is; one row in 50 has a
//! broken email address and is reported, not imported.

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use herald_engine::clock::SystemClock;
use herald_engine::contacts::{self, ImportError, Progress};

use crate::db::BenchDb;
use crate::report::Report;
use crate::{Options, process};

/// Rows of a contacts file, made on demand.
struct Rows {
    total: u64,
    next: u64,
    pending: Vec<u8>,
    offset: usize,
}

impl Rows {
    fn new(total: u64) -> Rows {
        Rows {
            total,
            next: 0,
            pending: b"phone,first_name,last_name,email,tags,custom.total_sales,custom.city\n"
                .to_vec(),
            offset: 0,
        }
    }

    fn refill(&mut self) {
        self.pending.clear();
        self.offset = 0;
        let end = (self.next + 1_000).min(self.total);
        for i in self.next..end {
            // 415-200-0000 onwards: valid US numbers, all distinct.
            let email = if i % 50 == 49 {
                "broken-address".to_owned()
            } else {
                format!("person{i}@example.com")
            };
            let line = format!(
                "+1415{},Person{i},Family{},{email},{},{},{}\n",
                2_000_000 + i,
                i % 997,
                if i % 3 == 0 {
                    "vip;course-a"
                } else {
                    "course-b"
                },
                (i * 37) % 100_000,
                ["Paris", "Tokyo", "Lagos", "Lima"][(i % 4) as usize],
            );
            self.pending.extend_from_slice(line.as_bytes());
        }
        self.next = end;
    }
}

impl Read for Rows {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.offset == self.pending.len() {
            if self.next == self.total {
                return Ok(0);
            }
            self.refill();
        }
        let n = buf.len().min(self.pending.len() - self.offset);
        buf[..n].copy_from_slice(&self.pending[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

pub async fn run(options: &Options, db: &BenchDb) -> Result<Report> {
    let n = options.messages;
    let (org, _) = db.organization().await?;
    let pid = process::own_pid();
    process::reset_peak(pid);
    let cpu_before = process::cpu_time(pid).unwrap_or_default();
    let started = Instant::now();
    let import = contacts::import_csv(
        db.store.clone(),
        Arc::new(SystemClock),
        org,
        Rows::new(n),
        Default::default(),
        Progress::default(),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let import = match import {
        Ok(import) => import,
        Err(ImportError::Header(errors)) => bail!("the generated header was refused: {errors:?}"),
        Err(ImportError::Store(error)) => return Err(error.into()),
    };
    if let Some(error) = import.error {
        bail!("the import stopped: {error}");
    }
    let cpu = process::cpu_time(pid)
        .unwrap_or_default()
        .saturating_sub(cpu_before);
    let peak = process::peak_rss(pid).unwrap_or(0);
    let mut report = Report {
        scenario: options.scenario.clone(),
        store: db.kind.as_str().into(),
        messages: n,
        elapsed_seconds: elapsed,
        messages_per_second: n as f64 / elapsed.max(1e-9),
        cpu_seconds: cpu.as_secs_f64(),
        peak_rss_mb: peak as f64 / 1_048_576.0,
        accounted: [
            ("created".to_owned(), import.created),
            ("updated".to_owned(), import.updated),
            ("invalid".to_owned(), import.invalid),
        ]
        .into(),
        ..Report::default()
    };
    report.parameters.insert(
        "work".into(),
        "parse CSV, validate, upsert by phone in batches of 1,000, report refused rows".into(),
    );
    Ok(report)
}
