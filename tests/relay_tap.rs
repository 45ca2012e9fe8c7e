//! The RelayTap actor: rotation by size, retention count, events to its
//! parent, restart safety.

mod common;

use std::time::Duration;

use common::{Home, Tap};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sandvisor::engine::log::tap::{RelayTap, RelayTapMsg, TapArgs, TapConfig, TapEvent};
use sandvisor::{LogOptions, LogSource};
use tokio::sync::mpsc;

fn exec_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("exec.log"))
        .collect();
    names.sort();
    names
}

/// A stand-in parent that forwards the tap's events to the test.
struct Parent;

enum ParentMsg {
    Tap(TapEvent),
}

impl From<TapEvent> for ParentMsg {
    fn from(event: TapEvent) -> Self {
        Self::Tap(event)
    }
}

impl TryFrom<ParentMsg> for TapEvent {
    type Error = ();
    fn try_from(msg: ParentMsg) -> Result<Self, ()> {
        match msg {
            ParentMsg::Tap(event) => Ok(event),
        }
    }
}

impl Actor for Parent {
    type Msg = ParentMsg;
    type State = mpsc::UnboundedSender<TapEvent>;
    type Arguments = mpsc::UnboundedSender<TapEvent>;

    async fn pre_start(
        &self,
        _: ActorRef<ParentMsg>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _: ActorRef<ParentMsg>,
        msg: ParentMsg,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ParentMsg::Tap(event) = msg;
        tx.send(event)?;
        Ok(())
    }
}

#[tokio::test]
async fn rotation_tells_the_parent_and_keeps_the_configured_count() {
    let home = Home::new();
    let dir = home.sandbox("events");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (parent, _) = Actor::spawn(None, Parent, tx).await.unwrap();
    let args = TapArgs {
        config: TapConfig {
            dir: dir.clone(),
            max_bytes: 1000,
            keep: 2,
            ..TapConfig::new(&dir)
        },
        generation: 7,
        events: Some(parent.get_derived()),
    };
    let (tap, _) = Actor::spawn(None, RelayTap, args).await.unwrap();
    for i in 0..100 {
        tap.cast(RelayTapMsg::Chunk(sandvisor::engine::log::tap::Chunk::now(
            1,
            LogSource::Stdout,
            format!("{i:040}"),
        )))
        .unwrap();
    }
    let stats = ractor::call_t!(tap, RelayTapMsg::Flush, 5_000).unwrap();
    let rotations = stats.generation - 7;
    assert!(rotations >= 5, "{stats:?}");
    for want in 8..=stats.generation {
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event, TapEvent::Rotated { generation: want });
    }
    assert_eq!(exec_files(&dir), ["exec.log", "exec.log.1", "exec.log.2"]);
    for name in exec_files(&dir) {
        let len = std::fs::metadata(dir.join(&name)).unwrap().len();
        assert!(len <= 1000, "{name} has {len} bytes");
        let text = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(
            text.ends_with('\n') && text.lines().all(|l| l.starts_with("{\"t\":")),
            "{name} holds a split record"
        );
    }
}

#[tokio::test]
async fn a_new_incarnation_appends_and_counts_from_the_existing_size() {
    let home = Home::new();
    let dir = home.sandbox("restart");
    let tap = Tap::spawn(&dir, 4096, 4).await;
    tap.chunk(1, LogSource::Stdout, "x".repeat(3000));
    let first = tap.flush().await;
    assert_eq!(first.generation, 0);
    tap.stop().await;
    let size_before = std::fs::metadata(dir.join("exec.log")).unwrap().len();

    let tap = Tap::spawn(&dir, 4096, 4).await;
    assert_eq!(
        tap.flush().await.size,
        size_before,
        "the new incarnation starts from the file's size"
    );
    tap.chunk(1, LogSource::Stdout, "y".repeat(2000));
    let stats = tap.flush().await;
    assert_eq!(
        stats.generation, 1,
        "3000 + 2000 bytes must rotate before the second record"
    );
    let rotated = std::fs::read_to_string(dir.join("exec.log.1")).unwrap();
    assert!(rotated.contains(&"x".repeat(3000)));
    let live = std::fs::read_to_string(dir.join("exec.log")).unwrap();
    assert!(live.contains(&"y".repeat(2000)) && !live.contains('x'));
    let entries = home
        .logs
        .read_logs("restart", &LogOptions::default())
        .await
        .unwrap();
    assert_eq!(entries.len(), 2);
}

#[tokio::test]
async fn a_record_larger_than_the_limit_is_written_alone_and_whole() {
    let home = Home::new();
    let dir = home.sandbox("big");
    let tap = Tap::spawn(&dir, 1024, 4).await;
    tap.chunk(1, LogSource::Stdout, "small");
    tap.chunk(1, LogSource::Stderr, "B".repeat(10_000));
    tap.chunk(1, LogSource::Stdout, "after");
    let stats = tap.flush().await;
    assert_eq!(stats.generation, 2);
    let big = std::fs::read_to_string(dir.join("exec.log.1")).unwrap();
    assert_eq!(big.lines().count(), 1);
    assert!(big.contains(&"B".repeat(10_000)));
    let entries = home
        .logs
        .read_logs("big", &LogOptions::default())
        .await
        .unwrap();
    let sizes: Vec<usize> = entries.iter().map(|e| e.data.len()).collect();
    assert_eq!(sizes, [5, 10_000, 5]);
}

#[tokio::test]
async fn system_markers_carry_no_session_id() {
    let home = Home::new();
    let dir = home.sandbox("markers");
    let tap = Tap::spawn(&dir, 1 << 20, 4).await;
    tap.system("--- sandbox started ---");
    tap.chunk(4, LogSource::Output, "pty bytes");
    tap.flush().await;
    let raw = std::fs::read_to_string(dir.join("exec.log")).unwrap();
    let lines: Vec<&str> = raw.lines().collect();
    assert!(
        lines[0].contains("\"s\":\"system\"") && !lines[0].contains("\"id\""),
        "{}",
        lines[0]
    );
    assert!(lines[1].ends_with(",\"id\":4}"), "{}", lines[1]);
}

#[tokio::test]
async fn a_batch_is_split_at_rotation_and_every_record_stays_whole() {
    use sandvisor::engine::log::tap::Chunk;
    let home = Home::new();
    let dir = home.sandbox("batch");
    let tap = Tap::spawn(&dir, 16 * 1024, 64).await;
    // Small records (encoded one by one) and large ones (encoded in parallel).
    let small: Vec<Chunk> = (0..500)
        .map(|i| Chunk::now(1, LogSource::Stdout, format!("small-{i:05}\n")))
        .collect();
    let large: Vec<Chunk> = (0..40)
        .map(|i| {
            Chunk::now(
                2,
                LogSource::Stderr,
                format!("large-{i:05}-{}\n", "x".repeat(3000)),
            )
        })
        .collect();
    tap.actor.cast(RelayTapMsg::Chunks(small.clone())).unwrap();
    tap.actor.cast(RelayTapMsg::Chunks(large.clone())).unwrap();
    let stats = tap.flush().await;
    assert_eq!(stats.records, 540);
    assert!(stats.generation >= 8, "{stats:?}");
    for name in exec_files(&dir) {
        let len = std::fs::metadata(dir.join(&name)).unwrap().len();
        assert!(len <= 16 * 1024, "{name} has {len} bytes");
    }
    let entries = home
        .logs
        .read_logs("batch", &LogOptions::default())
        .await
        .unwrap();
    let got: Vec<_> = entries.iter().map(|e| e.data.clone()).collect();
    let want: Vec<_> = small.iter().chain(&large).map(|c| c.data.clone()).collect();
    assert_eq!(got, want);
}

/// A disk that stays full past `disk_full_wait`: the append answers how
/// many records landed, whole, and the tap fails with `DiskFull`.
#[tokio::test]
async fn a_disk_full_past_the_wait_fails_the_tap_without_leaving_a_torn_record() {
    disk_full_past_the_wait(TapConfig::new("").max_bytes, 4).await;
}

/// The same with rotations inside the failing append: the count still
/// matches what is on disk, and no record is written twice (a retry after
/// a rotation once started again from the message's first record).
#[tokio::test]
async fn a_disk_full_past_the_wait_across_rotations_counts_exactly() {
    disk_full_past_the_wait(8 << 10, 64).await;
}

async fn disk_full_past_the_wait(max_bytes: u64, keep: usize) {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use sandvisor::engine::log::tap::Chunk;
    let dir = tempfile::tempdir().unwrap();
    mount(
        Some("tmpfs"),
        dir.path(),
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=64k"),
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(dir.path().to_path_buf());
    let tap = Tap::spawn_with(TapConfig {
        max_bytes,
        keep,
        disk_full_wait: Duration::from_millis(300),
        ..TapConfig::new(dir.path())
    })
    .await;
    let chunk = |i: usize| {
        Chunk::now(
            1,
            LogSource::Stdout,
            format!("{i:05}{}\n", "z".repeat(1000)),
        )
    };
    let first: Vec<Chunk> = (0..20).map(chunk).collect();
    let answer = ractor::call_t!(tap.actor, RelayTapMsg::Append, 5_000, first).unwrap();
    assert!(answer.is_ok());
    // Far more than the 64 KiB filesystem holds.
    let second: Vec<Chunk> = (20..200).map(chunk).collect();
    let answer = ractor::call_t!(tap.actor, RelayTapMsg::Append, 5_000, second).unwrap();
    let Err(written) = answer else {
        panic!("a full disk must fail the append")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tap.actor.get_status() != ractor::ActorStatus::Stopped {
        assert!(std::time::Instant::now() < deadline, "the tap did not fail");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut text = String::new();
    for generation in (1..=keep).rev() {
        let rotated = dir.path().join(format!("exec.log.{generation}"));
        text += &std::fs::read_to_string(rotated).unwrap_or_default();
    }
    let live = std::fs::read_to_string(dir.path().join("exec.log")).unwrap();
    assert!(
        live.is_empty() || live.ends_with('\n'),
        "a torn record was left behind"
    );
    text += &live;
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records.len(),
        20 + written,
        "the answer must count exactly what is on disk"
    );
    for (i, record) in records.iter().enumerate() {
        let data = record["d"].as_str().unwrap_or_default();
        assert!(data.starts_with(&format!("{i:05}")), "record {i}: {record}");
    }
}
