//! The web page in a real headless browser: Debian's `chromium`, driven
//! through `chromedriver` by `fantoccini`, against a real `kvs_server` and
//! `kvs_http`.
//!
//! Without `/usr/bin/chromium` and `/usr/bin/chromedriver` (or
//! `KVS_CHROMIUM` / `KVS_CHROMEDRIVER`) the test is skipped with a message;
//! set `KVS_REQUIRE_BROWSER=1` (as `.ci/run` does) to make that a failure.
//! It saves a screenshot of the page to `target/browser-screenshot.png`.

mod common;

use common::gateway::*;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str = "apt-get install -y chromium chromium-driver";

/// How long to wait for the page to show something.
const PATIENCE: Duration = Duration::from_secs(20);

fn tool(env: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    path.is_file().then_some(path)
}

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is TARGET/tmp.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A `chromedriver` child on a free port; killed on drop, with its
/// browser profile directory removed.
struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Driver {
    fn start(bin: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(bin)
            .arg(format!("--port={port}"))
            // Its own process group, so that drop can take the browser
            // down with it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn chromedriver");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("started successfully") {
                    let _ = tx.send(());
                }
            }
        });
        let profile = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("browser-profile-{}-{port}", std::process::id()));
        let driver = Driver {
            child,
            port,
            profile,
        };
        rx.recv_timeout(Duration::from_secs(20))
            .expect("chromedriver did not start");
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The browser normally exits when the session closes; this is for
        // a failed test.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn capabilities(chromium: &Path, profile: &Path) -> serde_json::Map<String, serde_json::Value> {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1200,800",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let caps = serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium, "args": args },
    });
    caps.as_object().unwrap().clone()
}

/// Polls the JavaScript expression `condition` until it is true; on
/// timeout saves a screenshot and fails with `what`.
async fn wait_until(client: &Client, condition: &str, what: &str) {
    let script = format!("return Boolean({condition});");
    let start = Instant::now();
    loop {
        let value = client.execute(&script, vec![]).await.expect("execute");
        if value == serde_json::Value::Bool(true) {
            return;
        }
        if start.elapsed() > PATIENCE {
            let shot = target_dir().join("browser-failure.png");
            if let Ok(png) = client.screenshot().await {
                let _ = std::fs::write(&shot, png);
            }
            let error = client
                .execute(
                    "return document.getElementById('error').textContent",
                    vec![],
                )
                .await
                .unwrap_or_default();
            panic!(
                "the page never showed {what} (page error: {error}; screenshot {})",
                shot.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the element `id` is displayed.
fn shown(id: &str) -> String {
    format!("getComputedStyle(document.getElementById('{id}')).display !== 'none'")
}

fn row(key: &str) -> String {
    format!("document.querySelector('tr[data-key=\"{key}\"]')")
}

fn row_shows(key: &str, value: &str) -> String {
    format!(
        "{r} && {r}.querySelector('td.value').textContent === '{value}' && !{r}.hidden",
        r = row(key)
    )
}

async fn type_into(client: &Client, id: &str, text: &str) {
    let input = client.find(Locator::Id(id)).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(text).await.unwrap();
}

async fn click(client: &Client, id: &str) {
    client
        .find(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn drive(client: &Client, base: &str, name: &str) {
    client.goto(&format!("{base}/")).await.unwrap();
    wait_until(
        client,
        "document.getElementById('live').textContent === 'live'",
        "the live indicator",
    )
    .await;
    // Entries that exist before the page loaded.
    wait_until(
        client,
        &row_shows("before", "was here first"),
        "the existing entry",
    )
    .await;
    assert_eq!(
        client
            .execute(
                "return document.getElementById('value-limit').textContent",
                vec![]
            )
            .await
            .unwrap(),
        "1 MiB"
    );

    // 1. Set a key through the form: it appears in the table.
    type_into(client, "key", "from-browser").await;
    type_into(client, "value", "typed in a form").await;
    click(client, "set").await;
    wait_until(
        client,
        &row_shows("from-browser", "typed in a form"),
        "the key set in the form",
    )
    .await;
    assert_eq!(
        kvs_client(name, &["get", "from-browser"]).stdout,
        b"typed in a form"
    );

    // 2. Set keys from kvs_client: the table updates live (the page does
    //    not poll; only /events can bring them).
    assert!(kvs_client(name, &["set", "from-cli", "pushed live"])
        .status
        .success());
    wait_until(
        client,
        &row_shows("from-cli", "pushed live"),
        "the key set by kvs_client",
    )
    .await;
    assert!(kvs_client(name, &["set", "from-cli", "changed again"])
        .status
        .success());
    wait_until(
        client,
        &row_shows("from-cli", "changed again"),
        "the changed value",
    )
    .await;
    assert!(kvs_client(name, &["set", "user:42", "{\"name\": \"Ada\"}"])
        .status
        .success());
    wait_until(client, &row("user:42"), "another key").await;
    wait_until(
        client,
        "document.getElementById('count').textContent === '4'",
        "the entry count",
    )
    .await;

    // 3. Insert refuses an existing key, visibly.
    type_into(client, "key", "from-cli").await;
    type_into(client, "value", "nope").await;
    click(client, "insert").await;
    wait_until(
        client,
        &format!(
            "{} && document.getElementById('error-text').textContent.includes('409')",
            shown("error")
        ),
        "the 409 error",
    )
    .await;
    click(client, "error-close").await;
    wait_until(
        client,
        &format!("!{}", shown("error")),
        "the error dismissed",
    )
    .await;

    // 4. Search filters by key or value.
    type_into(client, "search", "ada").await;
    wait_until(
        client,
        &format!("!{}.hidden && {}.hidden", row("user:42"), row("from-cli")),
        "the search result",
    )
    .await;
    type_into(client, "search", "").await;
    client
        .execute(
            "const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input'));",
            vec![],
        )
        .await
        .unwrap();
    wait_until(
        client,
        &format!("!{}.hidden", row("from-cli")),
        "all rows again",
    )
    .await;

    // 5. Delete: from kvs_client (live), then through the form.
    assert!(kvs_client(name, &["del", "before"]).status.success());
    wait_until(
        client,
        &format!("!{}", row("before")),
        "the deleted key gone",
    )
    .await;
    // An expiring key leaves the page when the server's sweep removes it
    // (an `expire` event), without a reload.
    assert!(
        kvs_client(name, &["set", "short-lived", "x", "--ttl", "500ms"])
            .status
            .success()
    );
    wait_until(client, &row_shows("short-lived", "x"), "the expiring key").await;
    wait_until(
        client,
        &format!("!{}", row("short-lived")),
        "the expired key gone",
    )
    .await;
    type_into(client, "key", "from-browser").await;
    click(client, "delete").await;
    wait_until(
        client,
        &format!("!{}", row("from-browser")),
        "the key deleted in the form",
    )
    .await;
    assert_eq!(
        kvs_client(name, &["get", "from-browser"]).status.code(),
        Some(1)
    );
    wait_until(
        client,
        "document.getElementById('count').textContent === '2'",
        "the entry count after the deletes",
    )
    .await;
    // 6. Bytes that are not text: a binary value shows as its size, a
    //    binary key in base64 (and its row deletes it); a value too large
    //    for an event is read by the page and shown cut short.
    let set = post_json(
        &format!("{base}/set"),
        &json!({"key": "blob", "value_base64": "/wABAg=="}),
    );
    assert_eq!(set.status, 200, "{set:?}");
    wait_until(
        client,
        &row_shows("blob", "(4 bytes of binary)"),
        "the binary value",
    )
    .await;
    let set = post_json(
        &format!("{base}/set"),
        &json!({"key_base64": "/w==", "value": "under a binary key"}),
    );
    assert_eq!(set.status, 200, "{set:?}");
    let binary_row = "document.querySelector('tr[data-key-base64=\"/w==\"]')";
    wait_until(
        client,
        &format!(
            "{binary_row} && {binary_row}.querySelector('td.key').textContent === 'base64:/w==' && {binary_row}.querySelector('td.value').textContent === 'under a binary key'"
        ),
        "the binary key",
    )
    .await;
    let put = put_bytes(&format!("{base}/raw/large"), &[b'y'; 20_000]);
    assert_eq!(put.status, 200, "{put:?}");
    wait_until(
        client,
        &format!(
            "{r} && {r}.querySelector('td.value').textContent === '{}… (20000 bytes)'",
            "y".repeat(300),
            r = row("large")
        ),
        "the large value, read after its event",
    )
    .await;
    client
        .execute(
            &format!("{binary_row}.querySelector('button').click()"),
            vec![],
        )
        .await
        .unwrap();
    wait_until(client, &format!("!{binary_row}"), "the binary key deleted").await;
    assert_eq!(
        get(&format!("{base}/get?key_base64=%2Fw%3D%3D")).status,
        404
    );
    wait_until(
        client,
        "document.getElementById('count').textContent === '4'",
        "the entry count with the binary entries",
    )
    .await;

    // 7. Expiry: a TTL typed in the form and one set by kvs_client show as
    //    the time left, counted down; a persistent key shows none.
    type_into(client, "key", "session").await;
    type_into(client, "value", "expires in an hour").await;
    type_into(client, "ttl", "1h").await;
    click(client, "set").await;
    let expires = |key: &str| format!("{}.querySelector('td.expires').textContent", row(key));
    wait_until(
        client,
        &format!(
            "{} && /^in (1 h 0 min|59 min \\d+ s)$/.test({})",
            row("session"),
            expires("session")
        ),
        "the TTL typed in the form",
    )
    .await;
    let ttl = kvs_client(name, &["ttl", "session"]);
    assert!(ttl.status.success(), "{ttl:?}");
    assert!(kvs_client(name, &["set", "soon", "x", "--ttl", "90s"])
        .status
        .success());
    wait_until(
        client,
        &format!(
            "{} && /^in 1 min [23]\\d s$/.test({})",
            row("soon"),
            expires("soon")
        ),
        "the TTL set by kvs_client, counting down",
    )
    .await;
    assert_eq!(
        client
            .execute(&format!("return {}", expires("blob")), vec![])
            .await
            .unwrap(),
        "—"
    );
    type_into(client, "ttl", "soon").await;
    click(client, "set").await;
    wait_until(
        client,
        &format!(
            "{} && document.getElementById('error-text').textContent.includes('not a TTL')",
            shown("error")
        ),
        "a TTL the form cannot read",
    )
    .await;
    click(client, "error-close").await;
    type_into(client, "ttl", "").await;

    // 8. The charts: requests per second and memory over the last minutes,
    //    from /stats (sampled each second by the gateway).
    wait_until(
        client,
        "document.querySelector('#ops-chart polyline') && document.querySelector('#memory-chart polyline') && document.getElementById('ops-now').textContent.endsWith('/s') && document.getElementById('memory-now').textContent.includes(' of ')",
        "the charts",
    )
    .await;

    // No error left on the page, and no token asked for.
    wait_until(
        client,
        &format!("!{} && !{}", shown("error"), shown("token-form")),
        "a page without errors",
    )
    .await;
    let version = client
        .execute(
            "return Number(document.getElementById('version').textContent)",
            vec![],
        )
        .await
        .unwrap();
    assert!(version.as_u64().unwrap() >= 10, "version {version}");

    let shot = target_dir().join("browser-screenshot.png");
    std::fs::write(&shot, client.screenshot().await.unwrap()).unwrap();
    eprintln!("screenshot: {}", shot.display());

    // The API docs render from the binary's own assets (nothing fetched
    // from outside).
    client.goto(&format!("{base}/docs/")).await.unwrap();
    wait_until(
        client,
        "document.querySelector('.swagger-ui .info .title') && document.querySelector('.swagger-ui .info .title').textContent.includes('kvs_http') && document.querySelectorAll('.opblock').length === 21",
        "Swagger UI with the twenty-one operations",
    )
    .await;
    let docs = target_dir().join("browser-docs.png");
    std::fs::write(&docs, client.screenshot().await.unwrap()).unwrap();
}

/// Chromium and chromedriver, or `None` (the caller skips) when they are
/// not installed; fails instead when `KVS_REQUIRE_BROWSER` is set.
fn browser_tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    if let (Some(chromium), Some(chromedriver)) = (
        tool("KVS_CHROMIUM", "/usr/bin/chromium"),
        tool("KVS_CHROMEDRIVER", "/usr/bin/chromedriver"),
    ) {
        return Some((chromium, chromedriver));
    }
    let message = format!(
        "chromium or chromedriver not found (KVS_CHROMIUM, KVS_CHROMEDRIVER, or /usr/bin); install them with: {INSTALL}"
    );
    if std::env::var_os("KVS_REQUIRE_BROWSER").is_some() {
        panic!("{message}");
    }
    eprintln!("SKIPPED {test}: {message}");
    None
}

/// Runs `steps` with a fresh headless Chromium session, which is closed
/// afterwards even when a step fails.
fn in_browser<F, Fut>(tools: &(PathBuf, PathBuf), steps: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (chromium, chromedriver) = tools;
    let driver = Driver::start(chromedriver);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities(chromium, &driver.profile))
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a chromium session");
        let outcome = tokio::spawn(steps(client.clone())).await;
        let _ = client.close().await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    });
}

#[test]
fn the_page_shows_the_store_live() {
    let Some(tools) = browser_tools("the_page_shows_the_store_live") else {
        return;
    };
    let name = unique_name("browser");
    let _server = ServerGuard::start(&name, &[]);
    assert!(kvs_client(&name, &["set", "before", "was here first"])
        .status
        .success());
    let gw = Gateway::start(&name, &[]);
    let base = gw.base.clone();
    in_browser(&tools, move |client| async move {
        drive(&client, &base, &name).await;
    });
}

#[test]
fn the_page_keeps_a_token_from_its_address() {
    let Some(tools) = browser_tools("the_page_keeps_a_token_from_its_address") else {
        return;
    };
    let name = unique_name("browser-token");
    let _server = ServerGuard::start(&name, &[]);
    assert!(kvs_client(&name, &["set", "secret", "behind a token"])
        .status
        .success());
    let gw = Gateway::start(&name, &["--token", "s3cret"]);
    let base = gw.base.clone();
    in_browser(&tools, move |client| async move {
        // Without the token: the page says so and asks for it.
        client.goto(&format!("{base}/")).await.unwrap();
        wait_until(
            &client,
            &format!(
                "{} && document.getElementById('error-text').textContent.includes('401')",
                shown("token-form")
            ),
            "the token form",
        )
        .await;
        // With ?token=: the table loads and updates live, and the token
        // leaves the address bar.
        client.goto(&format!("{base}/?token=s3cret")).await.unwrap();
        wait_until(&client, &row_shows("secret", "behind a token"), "the entry").await;
        wait_until(
            &client,
            "document.getElementById('live').textContent === 'live'",
            "the live indicator",
        )
        .await;
        assert!(!client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains("s3cret"));
        assert!(kvs_client(&name, &["set", "more", "live too"])
            .status
            .success());
        wait_until(&client, &row_shows("more", "live too"), "the live entry").await;
        wait_until(
            &client,
            &format!("!{} && !{}", shown("error"), shown("token-form")),
            "a page without errors",
        )
        .await;
    });
}
