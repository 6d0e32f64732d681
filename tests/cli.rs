//! The `herald` binary as an operator uses it: first start, administration commands against a
//! running server's database, and a clean stop on SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::status_and_json;

fn herald(dir: &Path, database_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .current_dir(dir)
        .env("HERALD_DATABASE_URL", database_url)
        .env_remove("HERALD_CONFIG")
        .env_remove("HERALD_LISTEN")
        .env("HERALD_LOG", "warn");
    command
}

fn run_json(command: &mut Command) -> Value {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A running `herald serve`, with what it printed before listening.
struct Server {
    child: Child,
    base: String,
    banner: Vec<String>,
}

impl Server {
    fn start(dir: &Path, database_url: &str) -> Server {
        let mut child = herald(dir, database_url)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = Vec::new();
        let base = loop {
            let line = lines.next().expect("server printed its address").unwrap();
            if let Some(rest) = line.strip_prefix("Herald is listening on ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
            banner.push(line);
        };
        Server {
            child,
            base,
            banner,
        }
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "herald exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().unwrap();
        panic!("herald did not stop on SIGTERM");
    }
}

fn banner_key(banner: &[String], label: &str) -> Option<String> {
    banner.iter().find_map(|line| {
        line.trim()
            .strip_prefix(label)
            .map(|key| key.trim().to_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_creates_an_organization_and_prints_its_keys_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = "sqlite://herald.db";
    let first = Server::start(dir.path(), url);
    let live = banner_key(&first.banner, "live key:").expect("keys printed on first start");
    assert!(live.starts_with("sk_live_"));
    assert!(
        banner_key(&first.banner, "test key:")
            .unwrap()
            .starts_with("sk_test_")
    );
    assert!(
        dir.path().join("herald.db").exists(),
        "the SQLite file is created in the working directory"
    );

    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/v1/messages", first.base))
        .bearer_auth(&live)
        .json(&json!({"to": "+14155550100", "body": "Hello"}))
        .send()
        .await
        .unwrap();
    let (status, message) = status_and_json(response).await;
    assert_eq!(status, 201, "{message}");
    first.stop();

    let second = Server::start(dir.path(), url);
    assert_eq!(
        banner_key(&second.banner, "live key:"),
        None,
        "keys are shown only the first time"
    );
    let response = client
        .get(format!("{}/v1/messages", second.base))
        .bearer_auth(&live)
        .send()
        .await
        .unwrap();
    let (status, page) = status_and_json(response).await;
    assert_eq!(
        (status, page["data"].as_array().unwrap().len()),
        (200, 1),
        "the message survived the restart"
    );
    second.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_created_and_revoked_while_a_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let url = "sqlite:herald.db";
    let org = run_json(herald(dir.path(), url).args([
        "org",
        "create",
        "Acme Salon",
        "--region",
        "GB",
        // 07911 1… numbers are Guernsey's (+44 is shared with the Crown Dependencies).
        "--countries",
        "GB,GG",
        "--json",
    ]));
    let org_id = org["org_id"].as_str().unwrap().to_owned();
    assert!(org["live_key"].as_str().unwrap().starts_with("sk_live_"));
    assert!(org["test_key"].as_str().unwrap().starts_with("sk_test_"));

    let server = Server::start(dir.path(), url);
    assert!(
        server.banner.is_empty(),
        "an existing organization means no first-start keys"
    );
    let client = reqwest::Client::new();

    let created =
        run_json(herald(dir.path(), url).args(["key", "create", "--org", &org_id, "--json"]));
    let key = created["key"].as_str().unwrap().to_owned();
    let response = client
        .post(format!("{}/v1/messages", server.base))
        .bearer_auth(&key)
        .json(&json!({"to": "07911 123456", "body": "Your table is ready"}))
        .send()
        .await
        .unwrap();
    let (status, message) = status_and_json(response).await;
    assert_eq!(
        (status, &message["to"]),
        (201, &json!("+447911123456")),
        "national numbers use the organization's region"
    );

    let revoked = herald(dir.path(), url)
        .args(["key", "revoke", created["key_id"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let response = client
        .get(format!("{}/v1/messages", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        401,
        "revocation takes effect at once"
    );

    let listed =
        run_json(herald(dir.path(), url).args(["key", "list", "--org", &org_id, "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert!(
        !listed.to_string().contains(&key),
        "listing never shows secrets"
    );

    let missing = herald(dir.path(), url)
        .args([
            "key",
            "create",
            "--org",
            "00000000-0000-0000-0000-000000000000",
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no organization"));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_accounts_and_routes_are_managed_while_a_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let url = "sqlite:herald.db";
    let secret_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let token = "cli-S3CRET-auth-token";
    let sid = format!("AC{}", "4d".repeat(16));
    let org = run_json(herald(dir.path(), url).args(["org", "create", "Acme", "--json"]));
    let org_id = org["org_id"].as_str().unwrap().to_owned();
    let server = Server::start(dir.path(), url);

    let add_twilio = |name: &str| {
        let mut command = herald(dir.path(), url);
        command.env("HERALD_PROVIDER_AUTH_TOKEN", token).args([
            "provider",
            "add",
            "--org",
            &org_id,
            "--kind",
            "twilio",
            "--name",
            name,
            "--account-sid",
            &sid,
            "--sender",
            "+14155550100",
            "--sender",
            "ACME",
            "--json",
        ]);
        command
    };
    let refused = add_twilio("no-key").output().unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("secret key"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let twilio = run_json(add_twilio("twilio-us").env("HERALD_SECRET_KEY", secret_key));
    assert_eq!(
        twilio["credentials"],
        json!({"account_sid": sid, "auth_token": "set"})
    );
    assert_eq!(
        twilio["senders"][1],
        json!({"type": "alphanumeric_id", "value": "ACME"})
    );
    let simulator = run_json(herald(dir.path(), url).args([
        "provider",
        "add",
        "--org",
        &org_id,
        "--kind",
        "simulator",
        "--name",
        "sim",
        "--json",
    ]));
    let bad = herald(dir.path(), url)
        .args([
            "provider",
            "add",
            "--org",
            &org_id,
            "--kind",
            "simulator",
            "--name",
            "x",
            "--sender",
            "+1555",
            "--messages-per-second",
            "0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("senders[0]") && stderr.contains("rate_limit.messages_per_second"),
        "{stderr}"
    );

    let listed =
        run_json(herald(dir.path(), url).args(["provider", "list", "--org", &org_id, "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        !listed.to_string().contains(token),
        "listing never shows secrets"
    );

    let (tw, sim) = (
        twilio["id"].as_str().unwrap().to_owned(),
        simulator["id"].as_str().unwrap().to_owned(),
    );
    let set = herald(dir.path(), url)
        .args([
            "route",
            "set",
            "--org",
            &org_id,
            "--country",
            "US",
            "--prefix",
            "1415",
            "--providers",
            &format!("{tw},{sim}"),
        ])
        .output()
        .unwrap();
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );

    let client = reqwest::Client::new();
    let live = org["live_key"].as_str().unwrap();
    let get = |path: &str| {
        client
            .get(format!("{}{path}", server.base))
            .bearer_auth(live)
            .send()
    };
    let (status, routes) = status_and_json(get("/v1/routes").await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(routes["data"][0]["country"], "US");
    assert_eq!(routes["data"][0]["prefix"], "1415");
    assert_eq!(routes["data"][0]["providers"], json!([tw, sim]));
    let (_, accounts) = status_and_json(get("/v1/providers").await.unwrap()).await;
    assert_eq!(
        accounts["data"].as_array().unwrap().len(),
        2,
        "the server sees them at once"
    );

    let in_use = herald(dir.path(), url)
        .args(["provider", "remove", &sim])
        .output()
        .unwrap();
    assert!(!in_use.status.success());
    assert!(String::from_utf8_lossy(&in_use.stderr).contains("US/1415"));
    let set = herald(dir.path(), url)
        .args([
            "route",
            "set",
            "--org",
            &org_id,
            "--country",
            "US",
            "--prefix",
            "1415",
            "--providers",
            &tw,
        ])
        .output()
        .unwrap();
    assert!(set.status.success());
    let removed = herald(dir.path(), url)
        .args(["provider", "remove", &sim])
        .output()
        .unwrap();
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let (_, accounts) = status_and_json(get("/v1/providers").await.unwrap()).await;
    assert_eq!(accounts["data"].as_array().unwrap().len(), 1);
    server.stop();

    for file in ["herald.db", "herald.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(file)) {
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "the auth token is not stored in clear"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_listed_and_removed_while_a_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let url = "sqlite:herald.db";
    let org = run_json(herald(dir.path(), url).args(["org", "create", "Acme", "--json"]));
    let org_id = org["org_id"].as_str().unwrap().to_owned();
    let server = Server::start(dir.path(), url);
    let sim = run_json(herald(dir.path(), url).args([
        "provider",
        "add",
        "--org",
        &org_id,
        "--kind",
        "simulator",
        "--name",
        "sim",
        "--json",
    ]));
    let sim = sim["id"].as_str().unwrap().to_owned();
    let route = |args: &[&str]| {
        let mut command = herald(dir.path(), url);
        command.arg("route").args(args).args(["--org", &org_id]);
        command.output().unwrap()
    };
    for place in [
        &["--country", "US", "--prefix", "1415"][..],
        &["--country", "default"],
    ] {
        let set = route(&[&["set", "--providers", &sim][..], place].concat());
        assert!(
            set.status.success(),
            "{}",
            String::from_utf8_lossy(&set.stderr)
        );
    }

    let listed = route(&["list", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["country"], Value::Null, "the default route first");
    assert_eq!(
        (
            &listed[1]["country"],
            &listed[1]["prefix"],
            &listed[1]["providers"]
        ),
        (&json!("US"), &json!("1415"), &json!([sim]))
    );
    let text = String::from_utf8_lossy(&route(&["list"]).stdout).into_owned();
    assert!(
        text.contains("default") && text.contains("US/1415"),
        "{text}"
    );

    let removed = route(&["remove", "--country", "US", "--prefix", "1415"]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let again = route(&["remove", "--country", "US", "--prefix", "1415"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no route US/1415"));
    let bad = route(&["remove", "--country", "default", "--prefix", "1"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("prefix"));

    // The running server sees the change at once.
    let (status, routes) = status_and_json(
        reqwest::Client::new()
            .get(format!("{}/v1/routes", server.base))
            .bearer_auth(org["live_key"].as_str().unwrap())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(routes["data"].as_array().unwrap().len(), 1);
    assert_eq!(routes["data"][0]["country"], Value::Null);
    // With its last route gone, the account can be removed.
    assert!(route(&["remove", "--country", "default"]).status.success());
    let gone = herald(dir.path(), url)
        .args(["provider", "remove", &sim])
        .output()
        .unwrap();
    assert!(
        gone.status.success(),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_are_imported_from_a_file_while_a_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let url = "sqlite://herald.db";
    let org = run_json(herald(dir.path(), url).args(["org", "create", "Acme", "--json"]));
    let org_id = org["org_id"].as_str().unwrap();
    let server = Server::start(dir.path(), url);
    let file = dir.path().join("people.csv");
    std::fs::write(
        &file,
        "Mobile,first_name,Sales,Notes\n\
         +14155550100,Ada,52000,x\n\
         not a number,Bob,1,y\n\
         +14155550101,Cy,7,z\n",
    )
    .unwrap();
    let import = |extra: &[&str]| {
        let mut command = herald(dir.path(), url);
        command.args([
            "contacts",
            "import",
            file.to_str().unwrap(),
            "--org",
            org_id,
        ]);
        command.args(extra);
        command.output().unwrap()
    };
    let refused = import(&[]);
    assert!(!refused.status.success(), "unknown columns stop the import");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Sales"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let done = import(&[
        "--map",
        "Sales:custom.total_sales",
        "--map",
        "Notes:ignore",
        "--json",
    ]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let report: Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(
        (
            report["rows"].as_u64(),
            report["created"].as_u64(),
            report["invalid"].as_u64()
        ),
        (Some(3), Some(2), Some(1)),
        "{report}"
    );
    let (status, page) = status_and_json(
        reqwest::Client::new()
            .get(format!("{}/v1/contacts", server.base))
            .bearer_auth(org["live_key"].as_str().unwrap())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["data"][0]["custom"], json!({"total_sales": 52000}));
    assert_eq!(page["data"][1]["first_name"], "Cy");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_works_on_postgresql_too() {
    let Some(database) = herald_store_postgres::test_support::fresh_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = database.url().to_owned();
    let migrated = herald(dir.path(), &url).arg("migrate").output().unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let org = run_json(herald(dir.path(), &url).args(["org", "create", "Acme", "--json"]));
    let server = Server::start(dir.path(), &url);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages", server.base))
        .bearer_auth(org["live_key"].as_str().unwrap())
        .json(&json!({"to": "+14155550100", "body": "Hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    server.stop();
    database.drop_database().await;
}

#[test]
fn flags_beat_environment_which_beats_the_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        "database_url = \"sqlite:from-file.db\"\ndefault_region = \"GB\"\n",
    )
    .unwrap();
    let create = |extra: &[&str], env_url: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .current_dir(dir.path())
            .env("HERALD_CONFIG", &config)
            .env("HERALD_LOG", "warn")
            .env_remove("HERALD_DATABASE_URL")
            .args(extra)
            .args(["org", "create", "Acme", "--json"]);
        if let Some(url) = env_url {
            command.env("HERALD_DATABASE_URL", url);
        }
        run_json(&mut command)
    };
    let exists = |name: &str| dir.path().join(name).exists();

    create(&[], None);
    assert!(exists("from-file.db") && !exists("from-env.db"));
    create(&[], Some("sqlite:from-env.db"));
    assert!(exists("from-env.db") && !exists("from-flag.db"));
    create(
        &["--database-url", "sqlite:from-flag.db"],
        Some("sqlite:from-env.db"),
    );
    assert!(exists("from-flag.db"));

    std::fs::write(&config, "listne = \"127.0.0.1:1\"\n").unwrap();
    let typo = Command::new(env!("CARGO_BIN_EXE_herald"))
        .env("HERALD_CONFIG", &config)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        !typo.status.success(),
        "an unknown configuration key is an error"
    );
    assert!(String::from_utf8_lossy(&typo.stderr).contains("listne"));
}

#[test]
fn credits_are_granted_and_limited_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = "sqlite:herald.db";
    let org = run_json(herald(dir.path(), url).args(["org", "create", "Acme", "--json"]));
    let org_id = org["org_id"].as_str().unwrap().to_owned();
    let show =
        || run_json(herald(dir.path(), url).args(["credits", "show", "--org", &org_id, "--json"]));
    let before = show();
    assert_eq!(
        (&before["metered"], &before["balance"]),
        (&json!(false), &json!(0))
    );

    let granted = run_json(herald(dir.path(), url).args([
        "credits",
        "grant",
        "--org",
        &org_id,
        "25",
        "--reason",
        "first invoice",
        "--json",
    ]));
    assert_eq!(
        (
            &granted["metered"],
            &granted["balance"],
            &granted["available"]
        ),
        (&json!(true), &json!(25), &json!(25))
    );
    let refused = herald(dir.path(), url)
        .args(["credits", "grant", "--org", &org_id, "-30"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("25 credits are available"));

    let limited = herald(dir.path(), url)
        .args(["credits", "limit", "--org", &org_id, "12.50"])
        .output()
        .unwrap();
    assert!(limited.status.success());
    assert_eq!(show()["monthly_spend_limit"], "12.50");
    let bad = herald(dir.path(), url)
        .args(["credits", "limit", "--org", &org_id, "lots"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert_eq!(show()["monthly_spend_limit"], "12.50", "nothing changed");

    let unknown = herald(dir.path(), url)
        .args([
            "credits",
            "grant",
            "--org",
            &uuid::Uuid::now_v7().to_string(),
            "5",
        ])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no organization"));
}
