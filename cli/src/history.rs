//! Histories: what a cluster really did, for `holdfast policy replay`. `holdfast record --out H`
//! writes one: a directory with
//!
//! - `snapshot.hfb` — a backup of the applied state at some index S, in exactly the format of
//!   `holdfast snapshot save` (`holdfast snapshot inspect H/snapshot.hfb` reads it);
//! - `entries.bin` — the committed log entries S+1, S+2, ... with no gap: the 8 bytes
//!   [`ENTRIES_MAGIC`], then per entry its index (u64), the cluster time its leader stamped
//!   (u64), the length of its command (u32), all little-endian, and the command in the log's
//!   own encoding (bincode of `holdfast_core::Command`, `Cluster.ReadLog`'s `command` bytes).
//!
//! Every entry is recorded, whatever its lock: sessions, time and the other prefixes all shape
//! what a policy sees. The command encoding is the log's, so a history is read by the Holdfast
//! version that recorded it (or a later one that still decodes its log).

use std::io::{BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use holdfast_core::{Command, Entry};
use holdfast_server::raft::codec;

use crate::commands::Connection;

/// The backup inside a history directory.
pub const SNAPSHOT_FILE: &str = "snapshot.hfb";
/// The entries after the backup.
pub const ENTRIES_FILE: &str = "entries.bin";
/// First bytes of [`ENTRIES_FILE`].
pub const ENTRIES_MAGIC: &[u8; 8] = b"HFLOGv1\0";
/// Largest command a history entry may carry (a policy deployment carries its module).
pub const HISTORY_COMMAND_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// How long `record` waits before asking again when nothing new was committed.
const RECORD_POLL_MS: u64 = 100;
/// After Ctrl-C, how long `record` goes on reading what the node had applied (a second
/// Ctrl-C stops it at once).
const RECORD_DRAIN_MS: u64 = 5_000;

#[derive(Args)]
pub struct RecordArgs {
    /// The history directory to create.
    #[arg(long)]
    pub out: PathBuf,
    /// Stop after this long (default: at Ctrl-C, or after --entries). Ctrl-C first records
    /// what the node has applied by then (a second Ctrl-C stops at once).
    #[arg(long, value_parser = crate::commands::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many entries.
    #[arg(long)]
    pub entries: Option<u64>,
}

/// `holdfast record`: a backup, then every committed entry after it until told to stop.
pub async fn record(connection: &Connection, args: RecordArgs) -> anyhow::Result<ExitCode> {
    if args.out.exists()
        && args
            .out
            .read_dir()
            .map_or(true, |mut entries| entries.next().is_some())
    {
        bail!("{} exists and is not empty", args.out.display());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let client = connection.client()?;
    let (header, state) = client.snapshot().await?;
    holdfast_server::backup::save(&args.out.join(SNAPSHOT_FILE), &header, &state)?;
    let mut writer = EntryWriter::create(&args.out.join(ENTRIES_FILE))?;
    let mut next = header.index + 1;
    eprintln!(
        "recording the log of the cluster after a backup at index {} (Ctrl-C stops)",
        header.index
    );
    let mut deadline = args.duration.map(|duration| Instant::now() + duration);
    // Ctrl-C once: read on until caught up with the node (so what was applied before it is
    // recorded), for at most RECORD_DRAIN_MS; twice: stop now.
    let mut draining = false;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        let recorded = next - header.index - 1;
        let now = Instant::now();
        if args.entries.is_some_and(|max| recorded >= max) || deadline.is_some_and(|d| now >= d) {
            break;
        }
        let wait = deadline.map_or(Duration::MAX, |d| d - now);
        let page = tokio::select! {
            _ = interrupt.recv() => {
                if draining {
                    break;
                }
                draining = true;
                deadline = Some(drain_deadline(deadline, now));
                continue;
            }
            _ = tokio::time::sleep(wait) => break,
            page = client.read_log(next, 0) => page?,
        };
        if page.entries.is_empty() {
            if draining {
                break;
            }
            // A Ctrl-C meanwhile stays pending on `interrupt` for the next turn.
            tokio::time::sleep(Duration::from_millis(RECORD_POLL_MS)).await;
            continue;
        }
        for entry in page.entries {
            if entry.index != next {
                bail!("the log skipped from {next} to {}", entry.index);
            }
            if args.entries.is_some_and(|max| next - header.index > max) {
                break;
            }
            writer.write(entry.index, entry.now_ms, &entry.command)?;
            next += 1;
        }
    }
    writer.finish()?;
    println!(
        "recorded entries {}..={} ({} entries) after the backup at index {} into {}",
        header.index + 1,
        next - 1,
        next - header.index - 1,
        header.index,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// When a recording told to stop at `now` stops at the latest: RECORD_DRAIN_MS on, or at its
/// own deadline if that comes first.
fn drain_deadline(deadline: Option<Instant>, now: Instant) -> Instant {
    let drained = now + Duration::from_millis(RECORD_DRAIN_MS);
    deadline.map_or(drained, |deadline| deadline.min(drained))
}

struct EntryWriter {
    file: BufWriter<std::fs::File>,
}

impl EntryWriter {
    fn create(path: &Path) -> anyhow::Result<EntryWriter> {
        let mut file = BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        file.write_all(ENTRIES_MAGIC)?;
        Ok(EntryWriter { file })
    }

    fn write(&mut self, index: u64, now_ms: u64, command: &[u8]) -> anyhow::Result<()> {
        let len = u32::try_from(command.len())
            .ok()
            .filter(|len| *len <= HISTORY_COMMAND_BYTES_MAX)
            .with_context(|| format!("entry {index}: a {}-byte command", command.len()))?;
        self.file.write_all(&index.to_le_bytes())?;
        self.file.write_all(&now_ms.to_le_bytes())?;
        self.file.write_all(&len.to_le_bytes())?;
        self.file.write_all(command)?;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        Ok(())
    }
}

/// A history, read whole: the backup's state and the entries after it.
pub struct History {
    pub snapshot_index: u64,
    pub state: holdfast_core::State,
    pub entries: Vec<Entry>,
}

pub fn load(dir: &Path) -> anyhow::Result<History> {
    let (header, state) = holdfast_server::backup::load(&dir.join(SNAPSHOT_FILE))
        .with_context(|| format!("{} is not a history (holdfast record --out)", dir.display()))?;
    let path = dir.join(ENTRIES_FILE);
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    let mut rest = bytes
        .strip_prefix(ENTRIES_MAGIC.as_slice())
        .with_context(|| format!("{} does not start with {ENTRIES_MAGIC:?}", path.display()))?;
    let mut entries = Vec::new();
    let mut expected = header.index + 1;
    while !rest.is_empty() {
        let (index, now_ms, command, after) = split_entry(rest)
            .with_context(|| format!("{}: entry {expected} is cut short", path.display()))?;
        if index != expected {
            bail!("{}: entry {index} where {expected} was due", path.display());
        }
        let command: Command = codec::decode(command)
            .with_context(|| format!("{}: entry {index} does not decode", path.display()))?;
        entries.push(Entry {
            log_index: index,
            now_ms,
            command,
        });
        expected += 1;
        rest = after;
    }
    Ok(History {
        snapshot_index: header.index,
        state,
        entries,
    })
}

/// `(index, now_ms, command, rest)` of the entry at the start of `bytes`.
fn split_entry(bytes: &[u8]) -> Option<(u64, u64, &[u8], &[u8])> {
    let (index, bytes) = bytes.split_first_chunk::<8>()?;
    let (now_ms, bytes) = bytes.split_first_chunk::<8>()?;
    let (len, bytes) = bytes.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len);
    if len > HISTORY_COMMAND_BYTES_MAX {
        return None;
    }
    let (command, rest) = bytes.split_at_checked(usize::try_from(len).ok()?)?;
    Some((
        u64::from_le_bytes(*index),
        u64::from_le_bytes(*now_ms),
        command,
        rest,
    ))
}

#[cfg(test)]
mod tests {
    use super::{HISTORY_COMMAND_BYTES_MAX, split_entry};

    fn framed(index: u64, now_ms: u64, command: &[u8]) -> Vec<u8> {
        let mut bytes = index.to_le_bytes().to_vec();
        bytes.extend(now_ms.to_le_bytes());
        bytes.extend(u32::try_from(command.len()).unwrap().to_le_bytes());
        bytes.extend(command);
        bytes
    }

    #[test]
    fn entries_split_back_and_a_cut_or_oversize_entry_is_refused() {
        let mut bytes = framed(7, 1_000, b"abc");
        bytes.extend(framed(8, 1_001, b""));
        let (index, now_ms, command, rest) = split_entry(&bytes).unwrap();
        assert_eq!((index, now_ms, command), (7, 1_000, &b"abc"[..]));
        let (index, _, command, rest) = split_entry(rest).unwrap();
        assert_eq!((index, command, rest), (8, &b""[..], &b""[..]));
        let whole = framed(9, 0, b"abcdef");
        for cut in 0..whole.len() {
            assert!(split_entry(&whole[..cut]).is_none(), "cut at {cut}");
        }
        let mut oversize = framed(10, 0, b"");
        oversize[16..20].copy_from_slice(&(HISTORY_COMMAND_BYTES_MAX + 1).to_le_bytes());
        assert!(split_entry(&oversize).is_none());
    }
}
