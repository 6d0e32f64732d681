//! Helper processes a scenario starts: the provider stub, a `herald serve`. Run apart from the
//! harness so the CPU and memory each uses can be told apart.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running child and the address it printed.
pub struct Running {
    pub child: Child,
    pub address: String,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait up to ten seconds for a clean exit.
    pub fn stop(mut self) -> Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!("a helper process did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// Start `exe args…` and wait for the stdout line starting with `marker`; the first word after
/// it is the address.
pub async fn start(
    exe: &Path,
    args: &[String],
    envs: &[(&str, String)],
    marker: &str,
) -> Result<Running> {
    let mut command = Command::new(exe);
    command
        .args(args)
        .env("HERALD_LOG", "warn")
        .env_remove("HERALD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let wanted = marker.to_owned();
    let (address, lines) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let found = lines.by_ref().map_while(Result::ok).find_map(|line| {
            line.strip_prefix(&wanted)
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
        });
        (found, lines)
    })
    .await?;
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    match address {
        Some(address) => Ok(Running { child, address }),
        None => {
            let _ = child.kill();
            bail!("{} exited before printing {marker:?}", exe.display())
        }
    }
}

/// The provider stub, listening on a free loopback port.
pub async fn stub(
    exe: &Path,
    report_delay: Duration,
    kannel_dlr_url: Option<&str>,
) -> Result<Running> {
    let mut args: Vec<String> = [
        "bench",
        "stub-server",
        "--listen",
        "127.0.0.1:0",
        "--report-delay-ms",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    args.push(report_delay.as_millis().to_string());
    if let Some(url) = kannel_dlr_url {
        args.push("--kannel-dlr-url".into());
        args.push(url.into());
    }
    start(exe, &args, &[], "stub listening on ").await
}
