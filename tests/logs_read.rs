//! SPEC §4, one test per sentence: real files, a real RelayTap, real rotation.

mod common;

use std::io::Write;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::{next_within, number, text, Home, Tap};
use futures::StreamExt;
use sandvisor::{Error, LogCursor, LogOptions, LogSource, LogStreamOptions, LogStreamStart};

fn append(path: &std::path::Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

fn record(t: &str, s: &str, d: &str, id: Option<u64>) -> String {
    match id {
        Some(id) => format!("{{\"t\":\"{t}\",\"s\":\"{s}\",\"d\":\"{d}\",\"id\":{id}}}\n"),
        None => format!("{{\"t\":\"{t}\",\"s\":\"{s}\",\"d\":\"{d}\"}}\n"),
    }
}

#[tokio::test]
async fn default_sources_exclude_system_and_system_adds_all_system_logs() {
    let home = Home::new();
    let dir = home.sandbox("box");
    let tap = Tap::spawn(&dir, 10 << 20, 4).await;
    tap.system("--- sandbox started ---");
    tap.chunk(1, LogSource::Stdout, "out\n");
    tap.chunk(1, LogSource::Stderr, "err\n");
    tap.chunk(2, LogSource::Output, "pty\n");
    tap.system("--- sandbox stopped (exit 0) ---");
    tap.flush().await;
    append(
        &dir.join("runtime.log"),
        b"2020-01-01T00:00:00.000Z  INFO tap started\n",
    );
    append(&dir.join("kernel.log"), b"[    0.000000] booting\n");

    let default = home
        .logs
        .read_logs("box", &LogOptions::default())
        .await
        .unwrap();
    let got: Vec<_> = default
        .iter()
        .map(|e| (e.source, text(e), e.session_id))
        .collect();
    assert_eq!(
        got,
        vec![
            (LogSource::Stdout, "out\n".into(), Some(1)),
            (LogSource::Stderr, "err\n".into(), Some(1)),
            (LogSource::Output, "pty\n".into(), Some(2)),
        ]
    );

    let system = LogOptions {
        sources: vec![LogSource::System],
        ..LogOptions::default()
    };
    let sys = home.logs.read_logs("box", &system).await.unwrap();
    let texts: Vec<_> = sys.iter().map(text).collect();
    assert_eq!(texts.len(), 4, "{texts:?}");
    // runtime.log's line carries its own (older) timestamp, so it sorts first.
    assert_eq!(texts[0], "INFO tap started");
    assert!(texts.contains(&"--- sandbox started ---".to_string()));
    assert!(texts.contains(&"--- sandbox stopped (exit 0) ---".to_string()));
    assert!(texts.contains(&"[    0.000000] booting".to_string()));
    assert!(sys
        .iter()
        .all(|e| e.source == LogSource::System && e.session_id.is_none()));

    let all = LogOptions {
        sources: LogSource::ALL.to_vec(),
        ..LogOptions::default()
    };
    assert_eq!(home.logs.read_logs("box", &all).await.unwrap().len(), 7);
}

#[tokio::test]
async fn rotated_files_are_read_oldest_first() {
    let home = Home::new();
    let dir = home.sandbox("rot");
    let tap = Tap::spawn(&dir, 4096, 4).await;
    tap.numbered(0..300);
    let stats = tap.flush().await;
    assert!(
        stats.generation >= 4,
        "expected several rotations, got {}",
        stats.generation
    );
    for g in 1..=4 {
        assert!(dir.join(format!("exec.log.{g}")).exists());
    }
    assert!(!dir.join("exec.log.5").exists());
    let entries = home
        .logs
        .read_logs("rot", &LogOptions::default())
        .await
        .unwrap();
    let numbers: Vec<u64> = entries.iter().map(number).collect();
    let first = numbers[0];
    assert!(first > 0, "the oldest records must have been rotated away");
    assert_eq!(numbers, (first..300).collect::<Vec<_>>());
    for g in 1..=4 {
        let len = std::fs::metadata(dir.join(format!("exec.log.{g}")))
            .unwrap()
            .len();
        assert!(len <= 4096, "exec.log.{g} is {len} bytes");
    }
}

#[tokio::test]
async fn resuming_from_any_entry_cursor_yields_exactly_the_rest() {
    let home = Home::new();
    let dir = home.sandbox("resume");
    let tap = Tap::spawn(&dir, 2048, 4).await;
    tap.numbered(0..120);
    tap.flush().await;
    let all = home
        .logs
        .read_logs("resume", &LogOptions::default())
        .await
        .unwrap();
    assert!(all.len() > 50);
    for i in (0..all.len()).step_by(7).chain([all.len() - 1]) {
        let opts = LogStreamOptions {
            start: LogStreamStart::From(all[i].cursor),
            ..LogStreamOptions::default()
        };
        let rest: Vec<_> = home
            .logs
            .log_stream("resume", &opts)
            .await
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
            .await;
        let want: Vec<u64> = all[i + 1..].iter().map(number).collect();
        assert_eq!(
            rest.iter().map(number).collect::<Vec<_>>(),
            want,
            "resuming after entry {i}"
        );
        // Cursors agree between the sorted read and the stream.
        for (a, b) in rest.iter().zip(&all[i + 1..]) {
            assert_eq!(a.cursor, b.cursor);
        }
    }
}

#[tokio::test]
async fn cursor_strings_round_trip() {
    let home = Home::new();
    let dir = home.sandbox("c");
    let tap = Tap::spawn(&dir, 1 << 20, 4).await;
    tap.numbered(0..3);
    tap.system("marker");
    tap.flush().await;
    append(&dir.join("runtime.log"), b"hello\n");
    let opts = LogOptions {
        sources: LogSource::ALL.to_vec(),
        ..LogOptions::default()
    };
    let snap = home.logs.read_logs_snapshot("c", &opts).await.unwrap();
    for cursor in snap.entries.iter().map(|e| e.cursor).chain([snap.cursor]) {
        let s = cursor.to_string();
        assert_eq!(s.parse::<LogCursor>().unwrap(), cursor);
        let json = serde_json::to_string(&cursor).unwrap();
        assert_eq!(serde_json::from_str::<LogCursor>(&json).unwrap(), cursor);
    }
    assert!("not-a-cursor".parse::<LogCursor>().is_err());
    let s = snap.cursor.to_string();
    assert!(
        s[..s.len() - 4].parse::<LogCursor>().is_err(),
        "a truncated cursor must not parse"
    );
}

#[tokio::test]
async fn follow_picks_up_appends_and_follows_through_rotation() {
    let home = Home::new();
    let dir = home.sandbox("f");
    let tap = Tap::spawn(&dir, 1024, 4).await;
    tap.numbered(0..5);
    tap.flush().await;
    let opts = LogStreamOptions {
        follow: true,
        ..LogStreamOptions::default()
    };
    let mut stream = home.logs.log_stream("f", &opts).await.unwrap();
    for i in 0..5 {
        assert_eq!(
            number(&next_within(&mut stream, 5).await.unwrap().unwrap()),
            i
        );
    }
    // Appends arrive; then enough to rotate several times (1 KiB files).
    let mut want = 5;
    for round in 0..10u64 {
        let start = 5 + round * 20;
        tap.numbered(start..start + 20);
        tap.flush().await;
        for _ in 0..20 {
            let e = next_within(&mut stream, 5).await.unwrap().unwrap();
            assert_eq!(number(&e), want);
            want += 1;
        }
    }
    assert!(tap.flush().await.generation >= 5);
    // Nothing else is pending.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn read_logs_is_in_strict_global_time_order() {
    let home = Home::new();
    let dir = home.sandbox("order");
    // exec.log written by another tool, with timestamps interleaving runtime.log's.
    let mut exec = String::new();
    for s in [1, 3, 5] {
        exec += &record(
            &format!("2026-05-01T10:00:0{s}.000Z"),
            "stdout",
            &format!("exec-{s}"),
            Some(1),
        );
    }
    exec += &record("2026-05-01T10:00:04.000Z", "system", "exec-4", None);
    append(&dir.join("exec.log"), exec.as_bytes());
    append(
        &dir.join("runtime.log"),
        b"2026-05-01T10:00:02.000Z runtime-2\n2026-05-01T10:00:06.000Z runtime-6\n",
    );
    append(
        &dir.join("kernel.log"),
        b"2026-05-01T10:00:00.500Z kernel-0\n",
    );
    let opts = LogOptions {
        sources: LogSource::ALL.to_vec(),
        ..LogOptions::default()
    };
    let entries = home.logs.read_logs("order", &opts).await.unwrap();
    let texts: Vec<_> = entries.iter().map(text).collect();
    assert_eq!(
        texts,
        [
            "kernel-0",
            "exec-1",
            "runtime-2",
            "exec-3",
            "exec-4",
            "exec-5",
            "runtime-6"
        ]
    );
    assert!(entries.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    // Resuming from a sorted entry's cursor gives exactly the later entries.
    let opts = LogStreamOptions {
        sources: LogSource::ALL.to_vec(),
        start: LogStreamStart::From(entries[2].cursor),
        ..LogStreamOptions::default()
    };
    let mut rest: Vec<String> = home
        .logs
        .log_stream("order", &opts)
        .await
        .unwrap()
        .map(|r| text(&r.unwrap()))
        .collect()
        .await;
    rest.sort();
    let mut want: Vec<String> = texts[3..].to_vec();
    want.sort();
    assert_eq!(rest, want);
}

#[tokio::test]
async fn snapshot_cursor_sits_past_filtered_entries() {
    let home = Home::new();
    let dir = home.sandbox("snap");
    let mut exec = String::new();
    for s in 0..6 {
        exec += &record(
            &format!("2026-05-01T10:00:0{s}.000Z"),
            "stdout",
            &format!("old-{s}"),
            Some(1),
        );
    }
    exec += &record("2026-05-01T10:00:07.000Z", "system", "marker", None);
    append(&dir.join("exec.log"), exec.as_bytes());
    let opts = LogOptions {
        since: Some(Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, 2).unwrap()),
        until: Some(Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, 4).unwrap()),
        ..LogOptions::default()
    };
    let snap = home.logs.read_logs_snapshot("snap", &opts).await.unwrap();
    assert_eq!(
        snap.entries.iter().map(text).collect::<Vec<_>>(),
        ["old-2", "old-3"]
    );
    append(
        &dir.join("exec.log"),
        record("2026-05-01T10:00:09.000Z", "stdout", "new", Some(1)).as_bytes(),
    );
    let stream_opts = LogStreamOptions {
        start: LogStreamStart::From(snap.cursor),
        ..LogStreamOptions::default()
    };
    let rest: Vec<_> = home
        .logs
        .log_stream("snap", &stream_opts)
        .await
        .unwrap()
        .map(|r| text(&r.unwrap()))
        .collect()
        .await;
    assert_eq!(rest, ["new"]);
}

#[tokio::test]
async fn foreign_cursor_is_refused_by_the_call() {
    let home = Home::new();
    let a = home.sandbox("a");
    let b = home.sandbox("b");
    append(
        &a.join("exec.log"),
        record("2026-05-01T10:00:00.000Z", "stdout", "a", Some(1)).as_bytes(),
    );
    append(
        &b.join("exec.log"),
        record("2026-05-01T10:00:00.000Z", "stdout", "b", Some(1)).as_bytes(),
    );
    let snap = home
        .logs
        .read_logs_snapshot("a", &LogOptions::default())
        .await
        .unwrap();
    let opts = LogStreamOptions {
        start: LogStreamStart::From(snap.cursor),
        ..LogStreamOptions::default()
    };
    let err = home.logs.log_stream("b", &opts).await.unwrap_err();
    assert!(matches!(err, Error::InvalidCursor(_)), "{err:?}");
    // A sandbox removed and created again under the same name is another sandbox.
    std::fs::remove_dir_all(&a).unwrap();
    home.sandbox("a");
    append(
        &a.join("exec.log"),
        record("2026-05-01T10:00:00.000Z", "stdout", "a2", Some(1)).as_bytes(),
    );
    let err = home.logs.log_stream("a", &opts).await.unwrap_err();
    assert!(matches!(err, Error::InvalidCursor(_)), "{err:?}");
}

#[tokio::test]
async fn since_until_tail_apply_in_that_order() {
    let home = Home::new();
    let dir = home.sandbox("stt");
    let mut exec = String::new();
    for s in 0..10 {
        exec += &record(
            &format!("2026-05-01T10:00:0{s}.000Z"),
            "stdout",
            &format!("{s}"),
            Some(1),
        );
    }
    append(&dir.join("exec.log"), exec.as_bytes());
    let t = |s| Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, s).unwrap();
    let read = |since, until, tail| {
        let logs = home.logs.clone();
        async move {
            let opts = LogOptions {
                since,
                until,
                tail,
                ..LogOptions::default()
            };
            logs.read_logs("stt", &opts)
                .await
                .unwrap()
                .iter()
                .map(text)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        read(Some(t(3)), None, None).await,
        ["3", "4", "5", "6", "7", "8", "9"]
    );
    assert_eq!(read(None, Some(t(3)), None).await, ["0", "1", "2"]);
    assert_eq!(read(Some(t(2)), Some(t(6)), Some(2)).await, ["4", "5"]);
    assert_eq!(read(None, None, Some(3)).await, ["7", "8", "9"]);
    assert_eq!(read(None, None, Some(0)).await, Vec::<String>::new());
    assert_eq!(read(None, None, Some(100)).await.len(), 10);
    // The stream: Since(t) starts at t inclusive; until ends before the first entry >= until.
    let opts = LogStreamOptions {
        start: LogStreamStart::Since(t(4)),
        until: Some(t(7)),
        follow: true,
        ..LogStreamOptions::default()
    };
    let got: Vec<_> = home
        .logs
        .log_stream("stt", &opts)
        .await
        .unwrap()
        .map(|r| text(&r.unwrap()))
        .collect()
        .await;
    assert_eq!(got, ["4", "5", "6"]);
}

#[tokio::test]
async fn non_utf8_bytes_come_back_exactly() {
    let home = Home::new();
    let dir = home.sandbox("bin");
    let tap = Tap::spawn(&dir, 1 << 20, 4).await;
    let payloads: Vec<Vec<u8>> = vec![
        b"\xff\xfe\x00binary\x80".to_vec(),
        (0u8..=255).collect(),
        "ok ✓\n".as_bytes().to_vec(),
        b"\xe2\x9c".to_vec(),
    ];
    for p in &payloads {
        tap.chunk(1, LogSource::Stdout, p.clone());
    }
    tap.flush().await;
    let raw = std::fs::read_to_string(dir.join("exec.log")).unwrap();
    assert_eq!(raw.matches("\"e\":\"b64\"").count(), 3, "{raw}");
    let entries = home
        .logs
        .read_logs("bin", &LogOptions::default())
        .await
        .unwrap();
    let got: Vec<Vec<u8>> = entries.iter().map(|e| e.data.to_vec()).collect();
    assert_eq!(got, payloads);
}

#[tokio::test]
async fn torn_last_line_waits_for_its_newline() {
    let home = Home::new();
    let dir = home.sandbox("torn");
    let path = dir.join("exec.log");
    let line = record("2026-05-01T10:00:00.000Z", "stdout", "whole", Some(1));
    append(&path, line.as_bytes());
    let torn = record("2026-05-01T10:00:01.000Z", "stdout", "torn", Some(1));
    let (head, tail) = torn.split_at(20);
    append(&path, head.as_bytes());
    let entries = home
        .logs
        .read_logs("torn", &LogOptions::default())
        .await
        .unwrap();
    assert_eq!(entries.iter().map(text).collect::<Vec<_>>(), ["whole"]);
    let opts = LogStreamOptions {
        follow: true,
        ..LogStreamOptions::default()
    };
    let mut stream = home.logs.log_stream("torn", &opts).await.unwrap();
    assert_eq!(
        text(&next_within(&mut stream, 5).await.unwrap().unwrap()),
        "whole"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(600), stream.next())
            .await
            .is_err()
    );
    append(&path, tail.as_bytes());
    let e = next_within(&mut stream, 5).await.unwrap().unwrap();
    assert_eq!(text(&e), "torn");
    // The snapshot cursor before the tail arrived resumes at the torn line's start.
    let snap_entries = home
        .logs
        .read_logs("torn", &LogOptions::default())
        .await
        .unwrap();
    assert_eq!(snap_entries[1].cursor, e.cursor);
}

#[tokio::test]
async fn bad_names_and_missing_sandboxes_are_typed_errors() {
    let home = Home::new();
    for bad in ["", &"x".repeat(129), "../x", "a/b", "-lead", "nul\0byte"] {
        let err = home
            .logs
            .read_logs(bad, &LogOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidName(ref n) if n == bad),
            "{bad:?}: {err:?}"
        );
        let err = home
            .logs
            .log_stream(bad, &LogStreamOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidName(_)), "{bad:?}: {err:?}");
    }
    assert!(
        !home.path().join("sandboxes").exists(),
        "bad names must touch nothing"
    );
    let err = home
        .logs
        .read_logs("ghost", &LogOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::SandboxNotFound(ref n) if n == "ghost"),
        "{err:?}"
    );
    let err = home
        .logs
        .log_stream("ghost", &LogStreamOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SandboxNotFound(_)), "{err:?}");
    assert_eq!(err.to_string(), "no such sandbox: ghost");
}

#[tokio::test]
async fn malformed_empty_unknown_and_huge_lines() {
    let home = Home::new();
    let dir = home.sandbox("messy");
    let path = dir.join("exec.log");
    append(
        &path,
        record("2026-05-01T10:00:00.000Z", "stdout", "first", Some(1)).as_bytes(),
    );
    append(&path, b"\n   \n{broken json\n\xff\xfe\xfd\n");
    append(
        &path,
        record(
            "2026-05-01T10:00:01.000Z",
            "video",
            "unknown source",
            Some(1),
        )
        .as_bytes(),
    );
    let huge = "h".repeat(16 << 20);
    append(
        &path,
        record("2026-05-01T10:00:02.000Z", "stderr", &huge, Some(3)).as_bytes(),
    );
    append(
        &path,
        record("2026-05-01T10:00:03.000Z", "stdout", "last", Some(1)).as_bytes(),
    );
    let entries = home
        .logs
        .read_logs("messy", &LogOptions::default())
        .await
        .unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(text(&entries[0]), "first");
    assert_eq!(entries[1].data.len(), 16 << 20);
    assert_eq!(entries[1].session_id, Some(3));
    assert_eq!(text(&entries[2]), "last");
    // Nothing was changed on disk.
    assert!(std::fs::read(&path).unwrap().starts_with(b"{\"t\""));
}

#[tokio::test]
async fn removed_log_dir_ends_a_follow_with_sandbox_removed() {
    let home = Home::new();
    let dir = home.sandbox("gone");
    append(
        &dir.join("exec.log"),
        record("2026-05-01T10:00:00.000Z", "stdout", "x", Some(1)).as_bytes(),
    );
    let opts = LogStreamOptions {
        follow: true,
        ..LogStreamOptions::default()
    };
    let mut stream = home.logs.log_stream("gone", &opts).await.unwrap();
    assert_eq!(
        text(&next_within(&mut stream, 5).await.unwrap().unwrap()),
        "x"
    );
    std::fs::remove_dir_all(home.path().join("sandboxes/gone")).unwrap();
    let err = next_within(&mut stream, 5).await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::SandboxRemoved(ref n) if n == "gone"),
        "{err:?}"
    );
    assert!(next_within(&mut stream, 5).await.is_none());
}

#[tokio::test]
async fn truncated_file_is_read_again_from_the_start() {
    let home = Home::new();
    let dir = home.sandbox("trunc");
    let path = dir.join("exec.log");
    for i in 0..5 {
        append(
            &path,
            record(
                "2026-05-01T10:00:00.000Z",
                "stdout",
                &format!("before-{i}"),
                Some(1),
            )
            .as_bytes(),
        );
    }
    let opts = LogStreamOptions {
        follow: true,
        ..LogStreamOptions::default()
    };
    let mut stream = home.logs.log_stream("trunc", &opts).await.unwrap();
    for _ in 0..5 {
        next_within(&mut stream, 5).await.unwrap().unwrap();
    }
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    append(
        &path,
        record("2026-05-01T10:00:01.000Z", "stdout", "after", Some(1)).as_bytes(),
    );
    let e = next_within(&mut stream, 5).await.unwrap().unwrap();
    assert_eq!(text(&e), "after");
}
