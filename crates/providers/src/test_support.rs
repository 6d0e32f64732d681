//! Test support (feature `test-support`): moto's AWS server on loopback, for the SNS adapter's
//! tests and the end-to-end tests of Herald. `tools/moto.sh` installs it into `.tools/moto`
//! when missing; a test that cannot start it fails, because an SNS test that skips proves
//! nothing.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sns::{Sns, SnsConfig};

/// The region every test account uses.
pub const REGION: &str = "us-east-1";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `moto_server` executable, installed once per test run if missing.
fn moto_server() -> &'static Path {
    static SERVER: OnceLock<PathBuf> = OnceLock::new();
    SERVER.get_or_init(|| {
        let root = workspace_root();
        let server = root.join(".tools/moto/bin/moto_server");
        if server.exists() {
            return server;
        }
        let output = Command::new(root.join("tools/moto.sh"))
            .output()
            .expect("tools/moto.sh could not be run");
        assert!(
            output.status.success(),
            "tools/moto.sh failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let printed = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        assert!(
            printed.exists(),
            "tools/moto.sh printed {printed:?}, which does not exist"
        );
        printed
    })
}

/// A running `moto_server`, stopped on drop.
pub struct Moto {
    child: Child,
    /// Where moto answers (`http://127.0.0.1:PORT`).
    pub url: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Moto {
    pub async fn start() -> Moto {
        Moto::start_with(&[]).await
    }

    /// Start moto with extra environment variables and wait until it answers.
    pub async fn start_with(env: &[(&str, &str)]) -> Moto {
        let server = moto_server();
        let mut last_failure = String::new();
        // A port found free can be taken before moto binds it; another port then does.
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("no free port on loopback")
                .port();
            let dir = tempfile::tempdir().expect("no temporary directory");
            let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
            let child = Command::new(server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir.path())
                .env("MOTO_RECORDER_FILEPATH", dir.path().join("recording"))
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
            let mut moto = Moto {
                child,
                url: format!("http://127.0.0.1:{port}"),
                dir,
                http: reqwest::Client::new(),
            };
            match moto.wait_until_answering().await {
                Ok(()) => return moto,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("moto_server did not start: {last_failure}");
    }

    async fn wait_until_answering(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("it exited ({status}):\n{}", self.log()));
            }
            let answer = self
                .http
                .get(format!("{}/moto-api/data.json", self.url))
                .send()
                .await;
            if matches!(answer, Ok(ref r) if r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no answer within 60 s:\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.path().join("moto.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    pub fn config(&self) -> SnsConfig {
        // Keys shaped like real ones, so they also pass an account's validation.
        let mut config =
            SnsConfig::new(REGION).with_keys("AKIAHERALDTEST000000", "herald-test-secret");
        config.endpoint_url = Some(self.url.clone());
        config
    }

    pub async fn sns(&self) -> Sns {
        Sns::new(self.config()).await
    }

    pub async fn post(&self, path: &str) -> String {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "POST {path}: {}",
            response.status()
        );
        response.text().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> String {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.text().await.unwrap()
    }

    /// The SMS moto received, each as the JSON moto keeps of it (recipient, text, id).
    pub async fn sms(&self) -> Vec<String> {
        self.data().await["sns"]["SMS"]
            .as_array()
            .map(|entries| entries.iter().map(Value::to_string).collect())
            .unwrap_or_default()
    }

    /// Moto's internal state, as its dashboard shows it.
    pub async fn data(&self) -> Value {
        serde_json::from_str(&self.get("/moto-api/data.json").await).unwrap()
    }

    /// An IAM query call, which moto lets through unchecked while `INITIAL_NO_AUTH_ACTION_COUNT`
    /// lasts. Moto routes a request by the service named in its SigV4 credential scope, so the
    /// call carries an `Authorization` header naming IAM, with a signature nobody checks.
    pub async fn iam(&self, params: &[(&str, &str)]) -> String {
        let mut form = vec![("Version", "2010-05-08")];
        form.extend_from_slice(params);
        let response = self
            .http
            .post(format!("{}/", self.url))
            .header(
                reqwest::header::AUTHORIZATION,
                "AWS4-HMAC-SHA256 Credential=AKIAUNCHECKED0000000/20260101/us-east-1/iam/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )
            .form(&form)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "IAM {params:?}: {status}\n{body}");
        body
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
