//! moto's SNS server on loopback for end-to-end tests: installed by `tools/moto.sh` into
//! `.tools/moto` when missing, started on a free port, stopped when dropped. A test that
//! cannot run it fails: an SNS test that skips proves nothing.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald_providers::sns::{SnsConfig, SnsKeys};
use serde_json::Value;

pub struct Moto {
    child: Child,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let installed = Command::new(root.join("tools/moto.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("tools/moto.sh must run (it needs python3 with venv and pip)");
    assert!(installed.status.success(), "moto could not be installed");
    PathBuf::from(String::from_utf8(installed.stdout).unwrap().trim())
}

impl Moto {
    pub async fn start() -> Moto {
        let server = moto_server();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
        let moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..600 {
            let answer = client
                .get(format!("{}/moto-api/data.json", moto.url))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return moto;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto_server did not answer within 60 s");
    }

    /// An SNS account on this server.
    pub fn config(&self) -> SnsConfig {
        let mut config = SnsConfig::new("us-east-1");
        config.endpoint_url = Some(self.url.clone());
        config.keys = Some(SnsKeys {
            access_key_id: "AKIAHERALDTEST000000".into(),
            secret_access_key: "herald-test-secret".into(),
        });
        config
    }

    /// The SMS moto received, each as the JSON moto keeps of it (recipient, text, id).
    pub async fn sms(&self) -> Vec<String> {
        let data: Value = reqwest::get(format!("{}/moto-api/data.json", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        data["sns"]["SMS"]
            .as_array()
            .map(|entries| entries.iter().map(Value::to_string).collect())
            .unwrap_or_default()
    }
}
