//! Test support for the gateway (`tests/http.rs`, `tests/browser.rs`): a
//! `kvs_http` child on a free port, killed on drop, and a small blocking
//! HTTP client.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Path of the `kvs_http` binary under test.
pub fn http_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvs_http")
}

/// A running `kvs_http`; killed on drop.
pub struct Gateway {
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub base: String,
    child: Option<Child>,
}

impl Gateway {
    /// Starts `kvs_http --name NAME --listen 127.0.0.1:0 ARGS...` and waits
    /// (10 s at most) for its "listening" line.
    pub fn start(name: &str, args: &[&str]) -> Self {
        Self::start_with(name, args, |_| {})
    }

    /// [`Gateway::start`], with `configure` applied to the command first
    /// (to set a resource limit, say).
    pub fn start_with(name: &str, args: &[&str], configure: impl FnOnce(&mut Command)) -> Self {
        let mut cmd = Command::new(http_bin());
        cmd.args(["--name", name, "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("KVS_NAME")
            .env_remove("KVS_HTTP_TOKEN")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("spawn kvs_http");
        let line = super::first_line(&mut child, Duration::from_secs(10));
        // Owned by the guard before anything can panic, so it is killed.
        let mut gateway = Gateway {
            base: String::new(),
            child: Some(child),
        };
        let url = match &line {
            Some(l) if l.contains("listening on http://") => l
                .split_whitespace()
                .find(|w| w.starts_with("http://"))
                .unwrap(),
            other => panic!("kvs_http did not start listening: {other:?}"),
        };
        gateway.base = url.trim_end_matches('/').to_string();
        gateway
    }

    /// The child process (to take its piped stderr, say).
    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().unwrap()
    }

    /// `127.0.0.1:PORT`, for raw connections.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM and waits (10 s at most) for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kvs_http did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An answer: status, body, and the headers we look at.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The body, lossily as text.
    pub body: String,
    /// The body's bytes.
    pub bytes: Vec<u8>,
    pub content_type: String,
    pub www_authenticate: Option<String>,
    /// `X-Kvs-Version` of a raw answer.
    pub version: Option<u64>,
    /// `X-Kvs-Modified-Ms` of a raw answer.
    pub modified_ms: Option<u64>,
}

impl Answer {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `error` message of an error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {:?}", self.body))
            .to_string()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .redirects(0)
        .build()
}

/// Sends `method url` with optional JSON `body` and extra headers.
pub fn request(method: &str, url: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    match body {
        Some(b) => request_bytes(method, url, Some(b.as_bytes()), &all),
        None => request_bytes(method, url, None, headers),
    }
}

/// Sends `method url` with an optional body of bytes and extra headers
/// (a later header of the same name replaces an earlier one).
pub fn request_bytes(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Answer {
    use std::io::Read;
    let mut req = agent().request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let number = |name: &str| {
        response.header(name).map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|e| panic!("{name}: {v:?}: {e}"))
        })
    };
    let (version, modified_ms) = (number("X-Kvs-Version"), number("X-Kvs-Modified-Ms"));
    let status = response.status();
    let content_type = response.content_type().to_string();
    let www_authenticate = response.header("WWW-Authenticate").map(str::to_string);
    let mut bytes = Vec::new();
    response.into_reader().read_to_end(&mut bytes).unwrap();
    Answer {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
        content_type,
        www_authenticate,
        version,
        modified_ms,
    }
}

/// `PUT url` with a body of bytes (`application/octet-stream`).
pub fn put_bytes(url: &str, body: &[u8]) -> Answer {
    request_bytes(
        "PUT",
        url,
        Some(body),
        &[("Content-Type", "application/octet-stream")],
    )
}

/// Standard, padded base64 (the tests' own, to check the gateway's).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `GET url`.
pub fn get(url: &str) -> Answer {
    request("GET", url, None, &[])
}

/// `POST url` with a JSON body.
pub fn post_json(url: &str, body: &serde_json::Value) -> Answer {
    request("POST", url, Some(&body.to_string()), &[])
}

/// `DELETE url`.
pub fn delete(url: &str) -> Answer {
    request("DELETE", url, None, &[])
}

/// Percent-encodes a path segment or a query value (any bytes).
pub fn encode(segment: impl AsRef<[u8]>) -> String {
    let mut out = String::new();
    for &b in segment.as_ref() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An open `/events` stream: a thread reads it and hands over one event at
/// a time.
pub struct EventStream {
    events: std::sync::mpsc::Receiver<(String, serde_json::Value)>,
}

impl EventStream {
    /// Opens `GET /events`.
    pub fn open(url: &str, headers: &[(&str, &str)]) -> Self {
        let mut req = ureq::AgentBuilder::new()
            .timeout_read(Duration::from_secs(60))
            .build()
            .get(url);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let response = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(response.status(), 200);
        assert!(response.content_type().starts_with("text/event-stream"));
        let lines = BufReader::new(response.into_reader()).lines();
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut name, mut data) = (String::from("message"), String::new());
            for line in lines {
                let Ok(line) = line else { return };
                if line.is_empty() {
                    if !data.is_empty() {
                        let parsed = serde_json::from_str(&data).unwrap_or_default();
                        if tx.send((name.clone(), parsed)).is_err() {
                            return;
                        }
                    }
                    (name, data) = (String::from("message"), String::new());
                    continue;
                }
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
        });
        EventStream { events }
    }

    /// The next event: its name and its data parsed as JSON (keep-alive
    /// comments are skipped); panics after 10 s without one.
    pub fn next(&mut self) -> (String, serde_json::Value) {
        self.events
            .recv_timeout(Duration::from_secs(10))
            .expect("no event within 10 s (or the stream ended)")
    }

    /// The names of every event that arrives within `window`.
    pub fn names_within(&mut self, window: Duration) -> Vec<String> {
        let end = std::time::Instant::now() + window;
        let mut names = Vec::new();
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok((name, _)) => names.push(name),
                Err(_) => break,
            }
        }
        names
    }

    /// Reads events until one named `name` comes, returning its data; panics
    /// on the 50th other event.
    pub fn next_named(&mut self, name: &str) -> serde_json::Value {
        for _ in 0..50 {
            let (n, data) = self.next();
            if n == name {
                return data;
            }
        }
        panic!("no {name} event among the next 50");
    }
}
