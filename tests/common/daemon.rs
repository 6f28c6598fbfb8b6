//! The `callguard run` binary on free ports, for behaviour tests that drive its listeners with
//! outside clients.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Daemon {
    pub child: Child,
    /// Listening addresses by what the daemon said it serves: "gRPC", "connectors",
    /// "AudioSocket".
    pub addrs: HashMap<String, String>,
    /// Every line it has written to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts the daemon with `config` and `env`, and waits until every listener in `expect`
    /// has said where it listens.
    pub fn start(config: &Path, env: &[(&str, &str)], expect: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_callguard"));
        cmd.args(["--config", config.to_str().unwrap(), "run", "--json"])
            .env("CALLGUARD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut addrs = HashMap::new();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        while !expect.iter().all(|e| addrs.contains_key(*e)) {
            let line = lines
                .next()
                .expect("the daemon exited before listening")
                .unwrap();
            log.lock().unwrap().push(line.clone());
            for what in expect {
                if let Some(rest) = line.split(&format!("{what} listening on ")).nth(1) {
                    let addr = rest.split_whitespace().next().unwrap().to_owned();
                    addrs.insert((*what).to_owned(), addr);
                }
            }
        }
        // Keep draining the log so the daemon never blocks on a full pipe; CALLGUARD_TEST_LOG=1
        // shows it.
        let show = std::env::var_os("CALLGUARD_TEST_LOG").is_some();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if show {
                    eprintln!("daemon: {line}");
                }
                kept.lock().unwrap().push(line);
            }
        });
        Self { child, addrs, log }
    }

    pub fn addr(&self, what: &str) -> &str {
        &self.addrs[what]
    }

    /// SIGTERM, as systemd stops it, then waits for it to exit; returns whether it exited 0.
    pub fn stop(mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.addr("gRPC"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python test client from `tests/clients/`, returning its exit code and the JSON
/// objects it printed, one per line.
pub fn python(client: &str, args: &[String]) -> (i32, Vec<serde_json::Value>) {
    let out = Command::new(super::root().join(".deps/venv/bin/python"))
        .arg(super::root().join("tests/clients").join(client))
        .args(args)
        .output()
        .expect("run scripts/setup.sh for .deps/venv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let code = out.status.code().unwrap_or(-1);
    if code != 0 {
        eprintln!("{client} stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    (code, lines)
}

/// A config for [`Daemon::start`] in `dir`: the shipped model and VAD, gRPC on a free port,
/// calls up to `max_speed` times real time, the alert log in `dir`, tenant `bank-a`
/// (`TOKEN_A`), transcription with the project's Whisper model or off, then `extra` (more
/// sections, more tenants).
pub fn write_config(
    dir: &Path,
    max_speed: f64,
    transcribe: bool,
    extra: &str,
) -> std::path::PathBuf {
    let root = super::root();
    let transcribe = if transcribe {
        format!(
            "enabled = true\nmodel = \"{}/.deps/whisper/ggml-tiny.en.bin\"",
            root.display()
        )
    } else {
        "enabled = false".to_owned()
    };
    let config = dir.join("callguard.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[speech]
vad_model = "{root}/.deps/silero_vad.onnx"
[detector]
model = "{root}/models/detector.onnx"
[server]
listen = "127.0.0.1:0"
max_speed = {max_speed:?}
burst_ms = 3600000
[[server.tenants]]
name = "bank-a"
token_sha256 = "{token}"
[store]
path = "{dir}/alerts.db"
[transcribe]
{transcribe}
{extra}
"#,
            root = root.display(),
            dir = dir.display(),
            token = callguard::grpc::token_sha256(super::grpc::TOKEN_A),
        ),
    )
    .unwrap();
    config
}
