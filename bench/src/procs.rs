//! Local 3-member clusters of Holdfast, etcd or ZooKeeper on 127.0.0.1 that the benchmark starts itself, so
//! it can kill -9 a member (S4), restart it, and read each process's CPU time and RSS from
//! /proc. Every process is killed (by its pid) when the cluster is dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::workload::System;

/// How long a started cluster gets to elect a leader.
const READY_TIMEOUT_MS: u64 = 30_000;
/// Connecting to a member's metrics port, and reading its page.
const SCRAPE_CONNECT_TIMEOUT_MS: u64 = 2_000;
const SCRAPE_READ_TIMEOUT_MS: u64 = 5_000;

pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

struct Member {
    /// Client address (host:port).
    client: String,
    /// Where its Prometheus metrics are served (host:port; path /metrics), if anywhere.
    metrics: Option<String>,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// CPU seconds of this member's earlier (killed) processes.
    cpu_of_exited: f64,
}

pub struct LocalCluster {
    pub system: System,
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl LocalCluster {
    /// `holdfast serve` ×`size` with default settings (fsync on), data on disk in a temp dir;
    /// `extra`: more flags for every node.
    pub fn holdfast_with(bin: &Path, size: usize, extra: &[&str]) -> anyhow::Result<LocalCluster> {
        let dir = tempfile::Builder::new()
            .prefix("holdfast-bench-")
            .tempdir()?;
        let ports: Vec<(u16, u16)> = (0..size)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, _))| format!("{}=127.0.0.1:{client}", i + 1))
            .collect();
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, metrics))| {
                let id = i + 1;
                Member {
                    client: format!("127.0.0.1:{client}"),
                    metrics: Some(format!("127.0.0.1:{metrics}")),
                    program: bin.to_owned(),
                    args: [
                        "serve".into(),
                        format!("--id={id}"),
                        format!("--listen=127.0.0.1:{client}"),
                        format!("--peer={}", peers.join(",")),
                        format!(
                            "--data-dir={}",
                            dir.path().join(format!("node-{id}")).display()
                        ),
                        format!("--metrics-listen=127.0.0.1:{metrics}"),
                    ]
                    .into_iter()
                    .chain(extra.iter().map(|flag| (*flag).to_owned()))
                    .collect(),
                    log: dir.path().join(format!("node-{id}.log")),
                    child: None,
                    cpu_of_exited: 0.0,
                }
            })
            .collect();
        LocalCluster::start_all(System::Holdfast, members, dir)
    }

    /// `etcd` ×`size` with default settings (fsync on), data on disk in a temp dir.
    pub fn etcd(bin: &Path, size: usize) -> anyhow::Result<LocalCluster> {
        let dir = tempfile::Builder::new().prefix("etcd-bench-").tempdir()?;
        let ports: Vec<(u16, u16)> = (0..size)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{}=http://127.0.0.1:{peer}", i + 1))
            .collect();
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let name = format!("m{}", i + 1);
                Member {
                    client: format!("127.0.0.1:{client}"),
                    metrics: Some(format!("127.0.0.1:{client}")),
                    program: bin.to_owned(),
                    args: vec![
                        format!("--name={name}"),
                        format!("--data-dir={}", dir.path().join(&name).display()),
                        format!("--listen-client-urls=http://127.0.0.1:{client}"),
                        format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                        format!("--initial-cluster={}", initial.join(",")),
                        "--initial-cluster-token=holdfast-bench".into(),
                        "--initial-cluster-state=new".into(),
                        "--logger=zap".into(),
                        "--log-level=warn".into(),
                    ],
                    log: dir.path().join(format!("{name}.log")),
                    child: None,
                    cpu_of_exited: 0.0,
                }
            })
            .collect();
        LocalCluster::start_all(System::Etcd, members, dir)
    }

    /// A ZooKeeper ensemble of `size` servers (`java -cp CLASSPATH QuorumPeerMain zoo.cfg`) with
    /// its default settings (fsync on: `forceSync=yes`), data on disk in a temp dir; the admin
    /// HTTP server off, `srvr` allowed (it tells the leader).
    pub fn zookeeper(java: &Path, classpath: &str, size: usize) -> anyhow::Result<LocalCluster> {
        /// Heap of each server (the JVM's default is a quarter of the machine's memory).
        const ZK_HEAP: &str = "-Xmx1g";
        let dir = tempfile::Builder::new().prefix("zk-bench-").tempdir()?;
        let ports: Vec<[u16; 3]> = (0..size)
            .map(|_| Ok([free_port()?, free_port()?, free_port()?]))
            .collect::<anyhow::Result<_>>()?;
        let servers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, [_, quorum, election])| {
                format!("server.{}=127.0.0.1:{quorum}:{election}", i + 1)
            })
            .collect();
        let mut members = Vec::new();
        for (i, [client, _, _]) in ports.iter().enumerate() {
            let id = i + 1;
            let data = dir.path().join(format!("zk{id}"));
            std::fs::create_dir_all(&data)?;
            std::fs::write(data.join("myid"), format!("{id}\n"))?;
            let config = dir.path().join(format!("zk{id}.cfg"));
            std::fs::write(
                &config,
                format!(
                    "tickTime=2000\ninitLimit=10\nsyncLimit=5\nforceSync=yes\n\
                     dataDir={}\nclientPort={client}\nclientPortAddress=127.0.0.1\n\
                     admin.enableServer=false\n4lw.commands.whitelist=srvr\n{}\n",
                    data.display(),
                    servers.join("\n")
                ),
            )?;
            members.push(Member {
                client: format!("127.0.0.1:{client}"),
                metrics: None,
                program: java.to_owned(),
                args: vec![
                    ZK_HEAP.into(),
                    "-cp".into(),
                    classpath.to_owned(),
                    "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
                    config.display().to_string(),
                ],
                log: dir.path().join(format!("zk{id}.log")),
                child: None,
                cpu_of_exited: 0.0,
            });
        }
        LocalCluster::start_all(System::Zookeeper, members, dir)
    }

    fn start_all(
        system: System,
        members: Vec<Member>,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<LocalCluster> {
        let mut cluster = LocalCluster {
            system,
            members,
            dir,
        };
        for index in 0..cluster.members.len() {
            cluster.start(index)?;
        }
        Ok(cluster)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// Every member's metrics address, if every member serves Prometheus metrics.
    pub fn metrics_addrs(&self) -> Option<Vec<String>> {
        self.members.iter().map(|m| m.metrics.clone()).collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts member `index` (again) with its data dir.
    pub fn start(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        if member.child.is_some() {
            return Ok(());
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&member.log)?;
        let child = Command::new(&member.program)
            .args(&member.args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", member.program.display()))?;
        member.child = Some(child);
        Ok(())
    }

    /// kill -9 of member `index` (by its pid), reaped.
    pub fn kill(&mut self, index: usize) {
        let member = &mut self.members[index];
        if let Some(mut child) = member.child.take() {
            member.cpu_of_exited += cpu_seconds(child.id()).unwrap_or(0.0);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// CPU seconds (user + system) used by every process of this cluster so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.members
            .iter()
            .map(|m| {
                m.cpu_of_exited
                    + m.child
                        .as_ref()
                        .and_then(|c| cpu_seconds(c.id()))
                        .unwrap_or(0.0)
            })
            .sum()
    }

    /// Resident set size of each running member, bytes.
    pub fn rss_bytes(&self) -> Vec<u64> {
        self.members
            .iter()
            .map(|m| {
                m.child
                    .as_ref()
                    .and_then(|c| rss_bytes(c.id()))
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Fails if a member exited by itself (its log's tail in the error).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for member in &mut self.members {
            if let Some(child) = &mut member.child
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(&member.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                bail!(
                    "{} exited ({status}); its log, newest first:\n{}",
                    member.client,
                    tail.join("\n")
                );
            }
        }
        Ok(())
    }

    /// Waits until every member answers and they agree on a leader; returns its index.
    pub async fn wait_ready(&mut self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
        loop {
            self.check_running()?;
            let endpoints = self.endpoints();
            if let Ok(Some(leader)) = crate::workload::leader_index(self.system, &endpoints).await {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                bail!(
                    "{:?} cluster {endpoints:?} has no leader after {READY_TIMEOUT_MS} ms (logs in {})",
                    self.system,
                    self.dir().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}

/// Clock ticks per second of /proc's CPU times (USER_HZ; 100 on Linux).
const USER_HZ: f64 = 100.0;

/// utime + stime of process `pid`, seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ") ".
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// VmRSS of process `pid`, bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// GETs http://ADDR/metrics and returns the whole response (headers and the Prometheus text;
/// [`metric`] reads samples out of it).
pub async fn scrape(addr: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(
        Duration::from_millis(SCRAPE_CONNECT_TIMEOUT_MS),
        tokio::net::TcpStream::connect(addr),
    )
    .await??;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    tokio::time::timeout(
        Duration::from_millis(SCRAPE_READ_TIMEOUT_MS),
        stream.read_to_string(&mut body),
    )
    .await??;
    Ok(body)
}

/// The sum of every sample of metric `name` in a Prometheus text page (None if absent).
pub fn metric(page: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric_name = series.split('{').next().unwrap_or(series);
        if metric_name == name
            && let Ok(value) = value.parse::<f64>()
        {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_every_label_set() {
        let page = "# HELP x\nfsync_count{node=\"1\"} 3\nfsync_count{node=\"2\"} 4.5\nother 1\n";
        assert_eq!(metric(page, "fsync_count"), Some(7.5));
        assert_eq!(metric(page, "other"), Some(1.0));
        assert_eq!(metric(page, "missing"), None);
    }

    #[test]
    fn cpu_and_rss_of_this_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(rss_bytes(pid).unwrap() > 0);
    }
}
