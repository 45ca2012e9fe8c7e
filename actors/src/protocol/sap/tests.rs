use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::protocol::{BootStage, CommandSpec, Confinement, Rlimit};

/// A frame's exact bytes: length prefix, kind, payload.
fn framed(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// The one frame `bytes` hold, all of them.
fn decode_one(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = Frame::decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty());
    frame
}

fn start() -> Frame {
    Frame::Start(StartSpec {
        name: "n".into(),
        run: CommandSpec {
            command: "sh".into(),
            args: vec!["-c".into(), "echo hi".into()],
            env: vec![("A".into(), "1".into())],
            cwd: None,
            stdin: true,
            ..CommandSpec::default()
        },
        pid_namespace: true,
        mount_namespace: true,
        net_namespace: false,
        uts_namespace: true,
        ipc_namespace: false,
        cgroup_namespace: true,
        confine: Some(Confinement {
            capabilities: 0x3,
            seccomp: Some(std::sync::Arc::new(vec![1, 2, 3])),
            rlimits: vec![Rlimit {
                resource: 4,
                soft: 0,
                hard: 0,
            }],
        }),
    })
}

#[test]
fn frames_round_trip_and_split_anywhere() {
    let frames = vec![
        start(),
        Frame::Signal {
            target: SignalTarget::All,
            signo: 15,
        },
        Frame::Signal {
            target: SignalTarget::Session(3),
            signo: 9,
        },
        Frame::Exec(ExecSpec {
            session: 2,
            logged: true,
            run: CommandSpec {
                command: "cat".into(),
                args: vec![],
                env: vec![("PATH".into(), "/bin".into())],
                cwd: Some("/tmp".into()),
                stdin: true,
                tty: true,
                rows: 24,
                cols: 80,
                user: Some(crate::protocol::Ids {
                    uid: 1000,
                    gid: 100,
                }),
                files: Some(crate::protocol::FileOp::Mkdir {
                    path: "/x".into(),
                    parents: true,
                }),
            },
        }),
        Frame::OutputConsumed {
            session: 2,
            bytes: 65536,
        },
        Frame::Resize {
            session: 2,
            rows: 50,
            cols: 132,
        },
        Frame::Stdin {
            session: 2,
            data: b"in\xff".to_vec(),
        },
        Frame::Stdin {
            session: 2,
            data: Vec::new(),
        },
        Frame::SessionStarted { session: 2, pid: 7 },
        Frame::StdinConsumed {
            session: 2,
            bytes: 1 << 40,
        },
        Frame::SessionFailed {
            session: 3,
            errno: 2,
            message: "nope".into(),
            exec_failed: true,
        },
        Frame::Ready { pid: 2 },
        Frame::Output {
            session: 1,
            stream: OutputStream::Stderr,
            data: Bytes::from_static(b"\xff\x00bytes"),
        },
        Frame::Output {
            session: 7,
            stream: OutputStream::Stdout,
            data: Bytes::new(),
        },
        Frame::Exited {
            session: 1,
            status: ExitStatus {
                code: None,
                signal: Some(9),
            },
        },
        Frame::BootError(BootError {
            stage: BootStage::Config,
            errno: 2,
            message: "no such file".into(),
            exec_failed: true,
        }),
        Frame::Written(WrittenMark {
            frames: 1 << 33,
            file: 77,
            offset: 10 << 20,
        }),
        Frame::Adopted(Adoption {
            pid: 3,
            written: WrittenMark::default(),
            last_session: 9,
        }),
    ];
    let mut wire = Vec::new();
    for f in &frames {
        f.encode(&mut wire);
    }
    for split in [1, 3, 4, 5, 17, wire.len() - 1] {
        let mut buf = BytesMut::from(&wire[..split]);
        let mut rest = &wire[split..];
        let mut got = Vec::new();
        loop {
            while let Some(frame) = Frame::decode(&mut buf).unwrap() {
                got.push(frame);
            }
            if rest.is_empty() {
                break;
            }
            let take = rest.len().min(split);
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }
}

#[test]
fn frames_have_pinned_bytes() {
    let pinned: Vec<(Frame, Vec<u8>)> = vec![
        (
            start(),
            framed(
                1,
                br#"{"name":"n","command":"sh","args":["-c","echo hi"],"env":[["A","1"]],"cwd":null,"stdin":true,"tty":false,"rows":0,"cols":0,"user":null,"pid_namespace":true,"mount_namespace":true,"net_namespace":false,"uts_namespace":true,"ipc_namespace":false,"cgroup_namespace":true,"confine":{"capabilities":3,"seccomp":"AQID","rlimits":[{"resource":4,"soft":0,"hard":0}]}}"#,
            ),
        ),
        (
            Frame::Signal {
                target: SignalTarget::Session(3),
                signo: 9,
            },
            framed(2, br#"{"target":{"session":3},"signo":9}"#),
        ),
        (
            Frame::Stdin {
                session: 2,
                data: b"in".to_vec(),
            },
            vec![0, 0, 0, 11, 4, 0, 0, 0, 0, 0, 0, 0, 2, b'i', b'n'],
        ),
        (
            Frame::Output {
                session: 1,
                stream: OutputStream::Stderr,
                data: Bytes::from_static(b"\xff\x00"),
            },
            vec![0, 0, 0, 12, 0x83, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0xff, 0],
        ),
        (
            Frame::Exited {
                session: 1,
                status: ExitStatus {
                    code: None,
                    signal: Some(9),
                },
            },
            framed(0x84, br#"{"session":1,"code":null,"signal":9}"#),
        ),
        (
            Frame::Exited {
                session: 2,
                status: ExitStatus {
                    code: Some(3),
                    signal: None,
                },
            },
            framed(0x84, br#"{"session":2,"code":3,"signal":null}"#),
        ),
        (
            Frame::BootError(BootError {
                stage: BootStage::BuildVm,
                errno: 2,
                message: "no such file".into(),
                exec_failed: false,
            }),
            framed(
                0x85,
                br#"{"stage":"build_vm","errno":2,"message":"no such file"}"#,
            ),
        ),
        (
            Frame::SessionFailed {
                session: 3,
                errno: 2,
                message: "nope".into(),
                exec_failed: false,
            },
            framed(0x87, br#"{"session":3,"errno":2,"message":"nope"}"#),
        ),
    ];
    for (frame, bytes) in pinned {
        let mut wire = Vec::new();
        frame.encode(&mut wire);
        assert_eq!(wire, bytes, "{frame:?}");
        assert_eq!(decode_one(&bytes), frame);
    }
}

#[test]
fn output_data_shares_the_read_buffer() {
    let mut wire = Vec::new();
    Frame::Output {
        session: 4,
        stream: OutputStream::Output,
        data: Bytes::from_static(b"chunk"),
    }
    .encode(&mut wire);
    let mut buf = BytesMut::with_capacity(1024);
    buf.put_slice(&wire);
    let base = buf.as_ptr() as usize;
    let Some(Frame::Output { data, .. }) = Frame::decode(&mut buf).unwrap() else {
        panic!("not an output frame");
    };
    assert_eq!(&data[..], b"chunk");
    // The data sits where it was read: right after the 14 header bytes.
    assert_eq!(data.as_ptr() as usize, base + 14);
}

#[test]
fn bad_frames_are_errors() {
    let decode = |bytes: &[u8]| Frame::decode(&mut BytesMut::from(bytes));
    assert!(matches!(decode(&[0, 0, 0, 0]), Err(FrameError::Length(0))));
    assert!(matches!(
        decode(&[0xff, 0, 0, 0, 1]),
        Err(FrameError::Length(_))
    ));
    assert!(matches!(
        decode(&[0, 0, 0, 1, 0x7f]),
        Err(FrameError::Kind(0x7f))
    ));
    assert!(matches!(
        decode(&[0, 0, 0, 2, SIGNAL, b'{']),
        Err(FrameError::Payload { .. })
    ));
    assert!(matches!(
        decode(&[0, 0, 0, 3, OUTPUT, 0, 0]),
        Err(FrameError::Payload { .. })
    ));
    assert!(matches!(
        decode(&[0, 0, 0, 10, OUTPUT, 0, 0, 0, 0, 0, 0, 0, 1, 9]),
        Err(FrameError::Payload { .. })
    ));
    assert!(matches!(decode(&[0, 0, 0, 2, READY]), Ok(None)));
}

#[test]
fn an_exec_spec_without_logged_is_logged() {
    let spec: ExecSpec =
        serde_json::from_str(r#"{"session":2,"command":"sh","args":[],"env":[],"cwd":null}"#)
            .unwrap();
    assert!(spec.logged);
}

#[test]
fn a_malformed_adoption_is_a_payload_error() {
    let mut buf = BytesMut::from(&framed(ADOPTED, br#"{"pid":"x"}"#)[..]);
    assert!(matches!(
        Frame::decode(&mut buf),
        Err(FrameError::Payload { kind: ADOPTED, .. })
    ));
}
