//! Starts real `holdfast serve` processes on free 127.0.0.1 ports with data in a temp dir, and
//! kills every one of them (by pid) when the `Cluster` is dropped, even if the test failed.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use holdfast_client::Client;
use tokio::time::Instant;

use crate::proxy::Proxy;

/// Raft timing for tests: faster than production so fail-overs are quick. Tests never assert on
/// timings, only on "eventually, within a bound".
pub const TEST_HEARTBEAT_MS: u64 = 50;
pub const TEST_ELECTION_TIMEOUT_MIN_MS: u64 = 300;
pub const TEST_ELECTION_TIMEOUT_MAX_MS: u64 = 600;
/// How long a test waits for a cluster to elect a leader or converge.
pub const CONVERGE_TIMEOUT_MS: u64 = 30_000;
/// Poll interval while waiting for a condition.
pub const POLL_INTERVAL_MS: u64 = 50;

/// The `holdfast` binary under test: `$HOLDFAST_BIN`, else the one built beside this test
/// executable (same cargo profile: `target/<profile>/holdfast`).
pub fn holdfast_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("HOLDFAST_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // A test: target/<profile>/deps/it-<hash>; a binary (torture): target/<profile>/torture.
    let mut profile_dir = exe.parent().expect("executable directory");
    if profile_dir.file_name().is_some_and(|name| name == "deps") {
        profile_dir = profile_dir.parent().expect("target/<profile> directory");
    }
    let bin = profile_dir.join("holdfast");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --bins` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// Makes the kernel SIGKILL the child if the thread that started it dies, so nodes do not
/// outlive a harness that was itself killed (SIGKILL, a CI timeout) before `Drop` could run.
/// (The nodes are started from the test's runtime threads, which live as long as the test.)
#[allow(unsafe_code)] // pre_exec is unsafe; this closure only calls prctl.
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// libfaketime (Debian package `faketime`; `scripts/setup` installs it), preloaded into
/// nodes started with `ClusterOptions::faketime` so a test can move their wall clocks.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// How a cluster is started.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    pub size: u64,
    pub extra_args: Vec<String>,
    /// Every peer link `(from, to)` through its own fault proxy.
    pub partitionable: bool,
    /// Preload libfaketime (wall clock only, `FAKETIME_DONT_FAKE_MONOTONIC=1`) with a per-node
    /// offset file, so `set_clock_offset` moves a running node's wall clock.
    pub faketime: bool,
    /// Put each node's data dir on its own tmpfs of this many MiB (needs root), so a test can
    /// fill a node's disk.
    pub tmpfs_mb: Option<u64>,
    /// The token the harness's own clients send (for nodes started with `--token-file`).
    pub token: Option<String>,
    /// TLS everywhere: `holdfast certs` makes a CA, node certificates and client certificates
    /// `harness`, `alice` and an expired `stale` in `<dir>/certs`; nodes serve TLS and the
    /// harness's clients use mutual TLS as `harness`.
    pub tls: bool,
    /// Each node serves its HTTP listener (`/metrics`, `/console`) on a port of its own
    /// (`Cluster::http_addr`).
    pub http: bool,
}

/// A tmpfs mounted for one node's data; unmounted on drop.
struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    fn mount(path: &Path, size_mb: u64) -> std::io::Result<TmpfsMount> {
        std::fs::create_dir_all(path)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "mount -t tmpfs on {} failed ({status}); root is needed",
                path.display()
            )));
        }
        Ok(TmpfsMount {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether this machine can mount a tmpfs (the disk-full fault needs it).
pub fn can_mount_tmpfs() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    TmpfsMount::mount(&dir.path().join("probe"), 1)
        .map(drop)
        .map_err(|e| e.to_string())
}

struct NodeProcess {
    addr: String,
    data_dir: PathBuf,
    /// The tmpfs under `data_dir`, when started with `tmpfs_mb`.
    disk: Option<TmpfsMount>,
    faketime_file: Option<PathBuf>,
    log_path: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// Extra environment of this node's process (from its next start on).
    env: Vec<(String, String)>,
    /// Its HTTP listener (`--metrics-listen`), when started with `http`.
    http_addr: Option<String>,
}

pub struct Cluster {
    nodes: BTreeMap<u64, NodeProcess>,
    peers: BTreeMap<u64, String>,
    /// Peer links `(from, to)` through fault proxies, when started partitionable.
    proxies: BTreeMap<(u64, u64), Proxy>,
    extra_args: Vec<String>,
    bin: PathBuf,
    dir: tempfile::TempDir,
    keep: bool,
    token: Option<String>,
    tls: Option<holdfast_client::ClientTls>,
}

impl Cluster {
    /// Starts `size` nodes (ids 1..=size) and waits for a leader.
    pub async fn start(size: u64) -> Cluster {
        Cluster::start_with(size, &[]).await
    }

    pub async fn start_with(size: u64, extra_args: &[&str]) -> Cluster {
        Cluster::start_inner(size, extra_args, false).await
    }

    /// Like `start`, but every peer link goes through its own proxy, so that `isolate` can cut
    /// a node off from the others (client traffic still reaches it directly).
    pub async fn start_partitionable(size: u64) -> Cluster {
        Cluster::start_inner(size, &[], true).await
    }

    async fn start_inner(size: u64, extra_args: &[&str], partitionable: bool) -> Cluster {
        Cluster::start_opts(ClusterOptions {
            size,
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            partitionable,
            ..ClusterOptions::default()
        })
        .await
    }

    pub async fn start_opts(options: ClusterOptions) -> Cluster {
        let ClusterOptions {
            size,
            extra_args,
            partitionable,
            faketime,
            tmpfs_mb,
            token,
            tls,
            http,
        } = options;
        let dir = tempfile::Builder::new()
            .prefix("holdfast-it-")
            .tempdir()
            .expect("temp dir");
        let peers: BTreeMap<u64, String> = (1..=size)
            .map(|id| (id, format!("127.0.0.1:{}", free_port())))
            .collect();
        let nodes = peers
            .iter()
            .map(|(id, addr)| {
                let disk = tmpfs_mb.map(|mb| {
                    TmpfsMount::mount(&dir.path().join(format!("disk-{id}")), mb)
                        .unwrap_or_else(|e| panic!("tmpfs for node {id}: {e}"))
                });
                let data_dir = match &disk {
                    Some(disk) => disk.path.join("data"),
                    None => dir.path().join(format!("node-{id}")),
                };
                let faketime_file = faketime.then(|| {
                    let path = dir.path().join(format!("node-{id}.faketime"));
                    std::fs::write(&path, "+0\n").expect("faketime file");
                    path
                });
                let node = NodeProcess {
                    http_addr: http.then(|| format!("127.0.0.1:{}", free_port())),
                    env: Vec::new(),
                    addr: addr.clone(),
                    disk,
                    faketime_file,
                    data_dir,
                    log_path: dir.path().join(format!("node-{id}.log")),
                    child: None,
                    starts: 0,
                };
                (*id, node)
            })
            .collect();
        let mut proxies = BTreeMap::new();
        if partitionable {
            for from in peers.keys() {
                for (to, addr) in &peers {
                    if from != to {
                        proxies.insert((*from, *to), Proxy::start(addr.clone()).await);
                    }
                }
            }
        }
        let mut cluster = Cluster {
            nodes,
            peers,
            proxies,
            extra_args,
            bin: holdfast_bin(),
            keep: false,
            token,
            tls: None,
            dir,
        };
        if tls {
            cluster.make_certs();
        }
        for id in 1..=size {
            cluster.spawn(id);
        }
        cluster.wait_leader(&cluster.ids()).await;
        cluster
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn addr(&self, id: u64) -> &str {
        &self.nodes[&id].addr
    }

    /// Node `id`'s HTTP listener (`/metrics`, `/console`); the cluster must have been started
    /// with `ClusterOptions::http`.
    pub fn http_addr(&self, id: u64) -> &str {
        self.nodes[&id]
            .http_addr
            .as_deref()
            .expect("started with ClusterOptions::http")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self, id: u64) {
        let mut peers = self.peer_flags();
        for ((from, to), proxy) in &self.proxies {
            if *from == id {
                peers.push(format!("--route={to}={}", proxy.addr));
            }
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(node.child.is_none(), "node {id} is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("node log file");
        let mut command = Command::new(&self.bin);
        die_with_parent(&mut command);
        if let Some(file) = &node.faketime_file {
            command
                .env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", file)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_CACHE_DURATION", "1");
        }
        if self.tls.is_some() {
            let certs = self.dir.path().join("certs");
            command
                .arg(format!(
                    "--tls-cert={}",
                    certs.join(format!("node-{id}.pem")).display()
                ))
                .arg(format!(
                    "--tls-key={}",
                    certs.join(format!("node-{id}.key")).display()
                ))
                .arg(format!("--tls-ca={}", certs.join("ca.pem").display()));
        }
        let child = command
            .arg("serve")
            .arg(format!("--id={id}"))
            .arg(format!("--listen={}", node.addr))
            .arg(format!("--data-dir={}", node.data_dir.display()))
            .arg(format!("--heartbeat-ms={TEST_HEARTBEAT_MS}"))
            .arg(format!(
                "--election-timeout-min-ms={TEST_ELECTION_TIMEOUT_MIN_MS}"
            ))
            .arg(format!(
                "--election-timeout-max-ms={TEST_ELECTION_TIMEOUT_MAX_MS}"
            ))
            .args(&peers)
            .args(
                node.http_addr
                    .iter()
                    .map(|addr| format!("--metrics-listen={addr}")),
            )
            .args(&self.extra_args)
            .envs(node.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("HOLDFAST_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.bin.display()));
        node.child = Some(child);
        node.starts += 1;
    }

    /// kill -9 of one node (SIGKILL to its pid), reaped.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new node `id` (not yet a member: it waits to be added with AddLearner) and
    /// returns its address. Later (re)starts of any node list it among the peers.
    pub fn add_node(&mut self, id: u64) -> String {
        assert!(!self.nodes.contains_key(&id), "node {id} exists");
        let addr = format!("127.0.0.1:{}", free_port());
        self.peers.insert(id, addr.clone());
        let node = NodeProcess {
            http_addr: None,
            env: Vec::new(),
            addr: addr.clone(),
            data_dir: self.dir.path().join(format!("node-{id}")),
            disk: None,
            faketime_file: None,
            log_path: self.dir.path().join(format!("node-{id}.log")),
            child: None,
            starts: 0,
        };
        self.nodes.insert(id, node);
        self.spawn(id);
        addr
    }

    /// SIGTERM to node `id`'s pid (a graceful stop), then waits for it to exit; SIGKILL if it
    /// has not exited after `GRACEFUL_STOP_MS`. Returns whether it exited by itself.
    pub fn terminate(&mut self, id: u64) -> bool {
        const GRACEFUL_STOP_MS: u64 = 15_000;
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(mut child) = node.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(GRACEFUL_STOP_MS);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Sets an environment variable for node `id`'s process from its next (re)start on.
    pub fn set_env(&mut self, id: u64, key: &str, value: &str) {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts node `id` again if it is not running (after `kill` or after it exited).
    pub fn start_node(&mut self, id: u64) {
        if self.nodes[&id].child.is_none() {
            self.spawn(id);
        }
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[&id].child.is_some()
    }

    /// If node `id` exited by itself, reaps it and returns its exit code (None = killed by a
    /// signal); `start_node` then starts it again.
    pub fn exited(&mut self, id: u64) -> Option<Option<i32>> {
        let node = self.nodes.get_mut(&id).expect("known node");
        let child = node.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                node.child = None;
                Some(status.code())
            }
            _ => None,
        }
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to node `id`'s pid.
    pub fn signal(&self, id: u64, signal: &str) {
        if let Some(child) = &self.nodes[&id].child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Moves node `id`'s wall clock by `offset` (a libfaketime spec such as "+5m", "-300",
    /// "+0"); takes effect within about a second. Needs `ClusterOptions::faketime`.
    pub fn set_clock_offset(&self, id: u64, offset: &str) {
        let file = self.nodes[&id]
            .faketime_file
            .as_ref()
            .expect("cluster started with faketime");
        std::fs::write(file, format!("{offset}\n")).expect("writing the faketime file");
    }

    /// Node `id`'s data dir.
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.nodes[&id].data_dir
    }

    /// The `--peer=ID=ADDR` flags every node of the cluster starts with.
    pub fn peer_flags(&self) -> Vec<String> {
        self.peers
            .iter()
            .map(|(id, addr)| format!("--peer={id}={addr}"))
            .collect()
    }

    /// The directory the node's disk (tmpfs) is mounted on, when started with `tmpfs_mb`.
    pub fn disk_path(&self, id: u64) -> Option<&Path> {
        self.nodes[&id]
            .disk
            .as_ref()
            .map(|disk| disk.path.as_path())
    }

    /// Sets the mode of the peer link `from → to` (needs `partitionable`).
    pub fn set_link(&self, from: u64, to: u64, mode: crate::proxy::LinkMode) {
        self.proxies[&(from, to)].set_mode(mode);
    }

    pub fn restart(&mut self, id: u64) {
        self.kill(id);
        self.spawn(id);
    }

    /// Cuts every peer link to and from `id` (needs `start_partitionable`).
    pub fn isolate(&self, id: u64) {
        assert!(
            !self.proxies.is_empty(),
            "isolate needs a cluster started with start_partitionable"
        );
        for ((from, to), proxy) in &self.proxies {
            if *from == id || *to == id {
                proxy.set_cut(true);
            }
        }
    }

    /// Restores every peer link.
    pub fn heal(&self) {
        for proxy in self.proxies.values() {
            proxy.set_mode(crate::proxy::LinkMode::Pass);
        }
    }

    /// A client that may use every node.
    pub fn client(&self) -> Client {
        let endpoints: Vec<&str> = self.nodes.values().map(|n| n.addr.as_str()).collect();
        self.authenticated(Client::connect_with(&endpoints, self.tls.as_ref()).expect("client"))
    }

    /// A client bound to one node only (no fail-over to others).
    pub fn client_of(&self, id: u64) -> Client {
        self.authenticated(
            Client::connect_with(&[self.addr(id)], self.tls.as_ref()).expect("client"),
        )
    }

    fn authenticated(&self, client: Client) -> Client {
        match &self.token {
            Some(token) => client.with_token(token).expect("token"),
            None => client,
        }
    }

    /// Where `ClusterOptions::tls` put the certificates.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn make_certs(&mut self) {
        let mut command = Command::new(&self.bin);
        command
            .arg("certs")
            .arg(format!("--out={}", self.certs_dir().display()))
            .args([
                "--client=harness",
                "--client=alice",
                "--expired-client=stale",
            ]);
        for id in self.peers.keys() {
            command.arg(format!("--node={id}=127.0.0.1"));
        }
        let output = command.output().expect("running holdfast certs");
        assert!(output.status.success(), "holdfast certs: {output:?}");
        let read = |name: &str| std::fs::read(self.certs_dir().join(name)).expect("certificate");
        self.tls = Some(holdfast_client::ClientTls {
            ca_pem: read("ca.pem"),
            identity: Some((read("client-harness.pem"), read("client-harness.key"))),
        });
    }

    /// Waits until every node in `ids` reports the same leader, itself among `ids`.
    pub async fn wait_leader(&self, ids: &[u64]) -> u64 {
        let deadline = Instant::now() + Duration::from_millis(CONVERGE_TIMEOUT_MS);
        loop {
            let mut leaders = Vec::new();
            for id in ids {
                match self.client_of(*id).status(0).await {
                    Ok(status) => leaders.push(status.leader_id),
                    Err(_) => leaders.push(0),
                }
            }
            if let Some(&leader) = leaders.first()
                && leader != 0
                && ids.contains(&leader)
                && leaders.iter().all(|l| *l == leader)
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {ids:?} within {CONVERGE_TIMEOUT_MS} ms: {leaders:?}\n{}",
                self.logs_hint()
            );
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Waits until every node in `ids` has applied the same index with the same state digest.
    pub async fn wait_converged(&self, ids: &[u64]) -> (u64, String) {
        let deadline = Instant::now() + Duration::from_millis(CONVERGE_TIMEOUT_MS);
        loop {
            let mut views = Vec::new();
            for id in ids {
                if let Ok(status) = self.client_of(*id).status(0).await {
                    views.push((status.applied_index, status.state_digest));
                }
            }
            if views.len() == ids.len() && views.windows(2).all(|w| w[0] == w[1]) {
                return views.swap_remove(0);
            }
            assert!(
                Instant::now() < deadline,
                "nodes {ids:?} did not converge: {views:?}\n{}",
                self.logs_hint()
            );
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Keeps the cluster's temp dir (data and node logs) after the cluster is dropped.
    pub fn keep_dir(&mut self) {
        self.keep = true;
    }

    /// Everything node `id` has logged so far (stdout and stderr, every start).
    pub fn log_text(&self, id: u64) -> String {
        let node = self.nodes.get(&id).expect("known node");
        std::fs::read_to_string(&node.log_path).unwrap_or_default()
    }

    pub fn logs_hint(&self) -> String {
        let mut text = String::new();
        for (id, node) in &self.nodes {
            let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            text.push_str(&format!(
                "--- node {id} log (last lines, newest first) ---\n{}\n",
                tail.join("\n")
            ));
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            // Unmount before the temp dir goes (or is kept).
            node.disk.take();
        }
        if self.keep
            || std::thread::panicking()
            || std::env::var_os("HOLDFAST_KEEP_TEST_DIRS").is_some()
        {
            let kept =
                std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")).keep();
            eprintln!("cluster data and node logs kept in {}", kept.display());
        }
    }
}
