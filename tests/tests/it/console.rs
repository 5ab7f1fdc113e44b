//! The operator's console (`/console` on a node's HTTP listener), in a real browser: Debian's
//! headless Chromium through ChromeDriver, against a live 3-node cluster. A lock taken with
//! `holdfast lock` shows with its fencing token within 2 s; a queued waiter shows in its
//! position; a killed node shows as down. Every page is saved as a screenshot
//! (`$CARGO_TARGET_DIR/console-screenshots/`) for a person to look at.
//!
//! The JSON under `/console/api/` is checked directly as well: bounded pages, bad input
//! refused, nothing but GET.

use std::path::{Path, PathBuf};
use std::time::Duration;

use holdfast_proto::v1 as pb;
use holdfast_tests::browser::Browser;
use holdfast_tests::cluster::{Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::support::holdfast_cli;

/// How soon a granted lock must show on an open console page.
const SHOWN_WITHIN: Duration = Duration::from_secs(2);
const LOCK: &str = "console/nightly-report";

/// One HTTP/1.1 request to `addr` (connection closed by the server): status and body.
pub(crate) async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("HTTP listener");
    let auth = token.map_or_else(String::new, |token| {
        format!("Authorization: Bearer {token}\r\n")
    });
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("HTTP answer in time")
    .unwrap();
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    (status, body)
}

async fn api(addr: &str, path: &str) -> serde_json::Value {
    let (status, body) = http(addr, "GET", path, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

pub(crate) fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| holdfast_tests::repo_root().join("target"), PathBuf::from);
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    dir
}

/// The pid a `holdfast lock` command wrote (`echo $$ > FILE; exec sleep`), so the test can
/// kill it by pid: killing `holdfast lock` alone would leave it running.
struct Pidfiles(Vec<PathBuf>);

impl Drop for Pidfiles {
    fn drop(&mut self) {
        for file in &self.0 {
            if let Some(pid) = std::fs::read_to_string(file)
                .ok()
                .and_then(|text| text.trim().parse::<i32>().ok())
            {
                kill(pid);
            }
        }
    }
}

/// SIGKILL to `pid` (one our own `holdfast lock` child wrote), as `Cluster::signal` signals
/// nodes.
fn kill(pid: i32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// `holdfast lock NAME -- sh -c 'echo $$ > PIDFILE; exec sleep 60'`, killed on drop.
fn hold(cluster: &Cluster, pidfile: &Path, extra: &[&str]) -> tokio::process::Child {
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    holdfast_cli(cluster)
        .args(["lock", LOCK, "--ttl", "5s"])
        .args(extra)
        .args(["--", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("holdfast lock")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_locks_waiters_and_a_dead_node_in_a_real_browser() {
    let mut cluster = Cluster::start_opts(ClusterOptions {
        size: 3,
        extra_args: vec!["--allow-admin".to_owned()],
        http: true,
        ..ClusterOptions::default()
    })
    .await;
    let http_addr = cluster.http_addr(1).to_owned();
    let console = format!("http://{http_addr}/console");
    let client = cluster.client();
    // A policy to show: priority with aging, bound where the test's lock lives.
    client
        .deploy_policy("priority", &holdfast_tests::policy_wasm("priority"))
        .await
        .expect("deploy");
    crate::policies::bind(
        &client,
        "console/",
        "priority",
        "aging_ms = 60000\n",
        pb::BindMode::Enforce,
    )
    .await
    .expect("bind");

    let shots = screenshots_dir();
    let browser = tokio::task::block_in_place(Browser::start).expect("a headless Chromium");
    let page = |hash: &str| {
        let url = format!("{console}#/{hash}");
        tokio::task::block_in_place(|| browser.goto(&url)).expect("page loads");
    };
    let wait = |script: &str, timeout: Duration| {
        tokio::task::block_in_place(|| browser.wait_for(script, timeout))
    };
    let shot = |name: &str| {
        tokio::task::block_in_place(|| browser.screenshot(&shots.join(format!("{name}.png"))))
            .expect("screenshot");
    };

    // The cluster page: three members, one leader, digests agreeing.
    page("cluster");
    wait(
        "return document.querySelectorAll('tr[data-member]').length === 3 \
         && document.querySelector('tr[data-state=leader]') !== null \
         && document.getElementById('digests')?.textContent === 'agree'",
        Duration::from_secs(10),
    )
    .expect("the cluster page lists three members with a leader");
    shot("1-cluster");

    // An open lock page, then the lock taken with `holdfast lock`: its token shows within 2 s.
    let pids = Pidfiles(vec![
        cluster.dir().join("holder.pid"),
        cluster.dir().join("waiter.pid"),
    ]);
    page("locks?prefix=console%2F");
    wait(
        "return document.getElementById('results')?.textContent.includes('No lock matches')",
        Duration::from_secs(10),
    )
    .expect("the lock list is drawn, empty");
    let _holder = hold(&cluster, &pids.0[0], &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let token = loop {
        let described = client.describe(LOCK).await.expect("describe");
        if let Some(holder) = described
            .lock
            .and_then(|lock| lock.holders.into_iter().next())
        {
            break holder.token;
        }
        assert!(Instant::now() < deadline, "holdfast lock never took {LOCK}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (_, took) = wait(
        &format!(
            "return [...document.querySelectorAll('tr[data-lock=\"{LOCK}\"] .token')]\
             .some((e) => e.textContent === '{token}')"
        ),
        Duration::from_secs(10),
    )
    .expect("the granted lock shows on the open page");
    assert!(
        took <= SHOWN_WITHIN,
        "the lock showed {took:?} after its grant (more than {SHOWN_WITHIN:?})"
    );
    eprintln!("the granted lock showed on the open page {took:?} after its grant");
    shot("2-locks");

    // A second `holdfast lock` queues behind the first: position #1 on the lock's page.
    page(&format!("lock?name={}", LOCK.replace('/', "%2F")));
    let _waiter = hold(&cluster, &pids.0[1], &["--priority", "7"]);
    wait(
        "const row = document.querySelector('tr[data-waiter-position=\"1\"]'); \
         return row !== null && row.textContent.includes('#1') && row.textContent.includes('7')",
        Duration::from_secs(10),
    )
    .expect("the queued waiter shows in position 1 with its priority");
    wait(
        &format!(
            "return document.querySelector('tr[data-holder] .token')?.textContent === '{token}' \
             && document.body.textContent.includes('Queued')"
        ),
        Duration::from_secs(5),
    )
    .expect("the lock page shows its holder's token and the queueing in its history");
    shot("3-lock");

    page("sessions");
    wait(
        "return document.querySelectorAll('tr[data-session]').length >= 2",
        Duration::from_secs(10),
    )
    .expect("the sessions page lists the holder's and the waiter's sessions");
    shot("4-sessions");

    page("policies");
    wait(
        "return document.body.textContent.includes('console/') \
         && document.body.textContent.includes('priority v1')",
        Duration::from_secs(10),
    )
    .expect("the policies page shows the module and its binding");
    shot("5-policies");

    // A node killed (not the one serving the console) shows as down.
    page("cluster");
    cluster.kill(3);
    let (_, took) = wait(
        "return document.querySelector('tr[data-member=\"3\"]')?.dataset.state === 'down'",
        Duration::from_secs(10),
    )
    .expect("the killed node shows as down");
    eprintln!("node 3 showed as down {took:?} after its kill");
    wait(
        "return document.querySelector('tr[data-state=leader]') !== null",
        Duration::from_secs(15),
    )
    .expect("a leader among the two left");
    shot("6-cluster-node-down");
    eprintln!("console screenshots in {}", shots.display());
    drop(pids);
}

/// The API itself: bounded pages with their freshness, bad input refused with a clear error,
/// GET only, and the page and `/metrics` served beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_api_answers_bounded_pages_and_refuses_bad_input() {
    let cluster = Cluster::start_opts(ClusterOptions {
        size: 3,
        http: true,
        ..ClusterOptions::default()
    })
    .await;
    let addr = cluster.http_addr(2).to_owned();
    let client = cluster.client();
    let session = client.open_session(30_000, "pager").await.unwrap();
    for i in 0..7 {
        session
            .acquire(
                &format!("page/{i}"),
                holdfast_client::LockMode::Exclusive,
                0,
            )
            .await
            .unwrap()
            .expect("free");
    }
    // Paged by name, 3 at a time, with the freshness of node 2's state.
    let mut names = Vec::new();
    let mut after = String::new();
    for _ in 0..5 {
        let page = api(
            &addr,
            &format!("/console/api/locks?prefix=page%2F&limit=3&after={after}"),
        )
        .await;
        assert_eq!(page["freshness"]["node"], 2);
        assert!(page["freshness"]["applied_index"].as_u64().unwrap() > 0);
        let locks = page["locks"].as_array().unwrap();
        assert!(locks.len() <= 3);
        names.extend(
            locks
                .iter()
                .map(|lock| lock["name"].as_str().unwrap().to_owned()),
        );
        if page["more"] == false {
            break;
        }
        after = page["next_after"].as_str().unwrap().replace('/', "%2F");
    }
    assert_eq!(
        names,
        (0..7).map(|i| format!("page/{i}")).collect::<Vec<_>>()
    );
    let lock = api(&addr, "/console/api/lock?name=page%2F3").await;
    assert_eq!(lock["lock"]["holders"][0]["principal"], "pager");
    assert!(lock["history"][0]["kind"] == "Acquired", "{lock}");
    let sessions = api(&addr, "/console/api/sessions?principal=pager").await;
    assert_eq!(sessions["sessions"][0]["hold_count"], 7);
    let cluster_page = api(&addr, "/console/api/cluster").await;
    assert_eq!(cluster_page["members"].as_array().unwrap().len(), 3);

    // Bad input: a clear error, nothing served.
    let long = "x".repeat(holdfast_core::limits::LOCK_NAME_BYTES_MAX + 1);
    for (path, code, says) in [
        ("/console/api/lock", 400, "name= is required"),
        (
            &*format!("/console/api/lock?name={long}"),
            400,
            "lock names are at most",
        ),
        ("/console/api/locks?limit=lots", 400, "not a number"),
        ("/console/api/locks?prefix=%zz", 400, "bad percent-encoding"),
        (
            "/console/api/locks?node=9",
            404,
            "not served by this listener",
        ),
        ("/console/api/nope", 404, "no console page"),
    ] {
        let (status, body) = http(&addr, "GET", path, None).await;
        assert_eq!(status, code, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    let (status, _) = http(&addr, "POST", "/console/api/locks", None).await;
    assert_eq!(status, 405, "the console is read-only");
    let (status, page) = http(&addr, "GET", "/console", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Holdfast console</title>"));
    let (status, metrics) = http(&addr, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("holdfast_raft_leader_changes_total"),
        "{metrics}"
    );
}
