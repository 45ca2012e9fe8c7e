//! Lifecycle events, asserted with actor message probes (`sandvisor::testing`).
//! What the SPEC promises whatever the backend runs on both backends
//! (`on_both!`).

mod common;

use common::backends;
use common::runtime;
use std::time::Duration;

use futures::StreamExt;
use sandvisor::testing::Probe;
use sandvisor::{
    Backend, EscalationStep, EventEnvelope, SandboxConfig, SandboxEvent, SandboxStatus,
};

/// A hang guard: a guest under TCG starts its first shell slowly.
const WAIT: Duration = Duration::from_secs(60);

on_both!(stop_escalation_is_an_exact_message_sequence);
async fn stop_escalation_is_an_exact_message_sequence(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    // No metrics: their samples would interleave with the sequence.
    let mut config = SandboxConfig::shell(
        "stubborn",
        "trap '' TERM; echo ready; while :; do sleep 0.1; done",
    )
    .with_backend(backend);
    config.metrics_interval = None;
    let sandbox = rt.create(config).await.unwrap();
    // Stop only once the shell ignores SIGTERM.
    let follow = sandvisor::LogStreamOptions {
        follow: true,
        ..Default::default()
    };
    let mut logs = sandbox.log_stream(&follow).await.unwrap();
    let ready = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut logs))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ready.data.as_ref(), b"ready\n");
    let mut probe = Probe::spawn().await.unwrap();
    sandbox.subscribe(probe.sink()).unwrap();
    sandbox.request_stop(Some(Duration::from_millis(300)));

    let mut events = Vec::new();
    for _ in 0..4 {
        match probe.expect_msg(WAIT).await {
            Ok(event) => events.push(event),
            Err(err) => panic!("{err}; received so far: {:?}", probe.received()),
        }
    }
    let kinds: Vec<SandboxEvent> = events.iter().map(|e| e.event.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            SandboxEvent::StatusChanged {
                from: SandboxStatus::Running,
                to: SandboxStatus::Draining
            },
            SandboxEvent::Escalated {
                from: EscalationStep::Term,
                to: EscalationStep::Kill
            },
            SandboxEvent::SessionExited {
                id: 1,
                code: None,
                signal: Some(9)
            },
            SandboxEvent::StatusChanged {
                from: SandboxStatus::Draining,
                to: SandboxStatus::Stopped
            },
        ]
    );
    assert!(events.iter().all(|e| e.sandbox == "stubborn"));
    assert!(
        events.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "sequence numbers have a gap"
    );
    probe
        .expect_no_msg(Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(probe.received().len(), 4);
}

on_both!(the_runtime_stream_carries_every_sandbox_s_events_in_order);
async fn the_runtime_stream_carries_every_sandbox_s_events_in_order(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let mut all = Box::pin(rt.events());
    for i in 0..5 {
        let mut config = SandboxConfig::new(format!("ev-{i}"), "true").with_backend(backend);
        config.metrics_interval = None;
        rt.create(config)
            .await
            .unwrap()
            .wait_until_stopped()
            .await
            .unwrap();
    }
    let mut per_sandbox: std::collections::BTreeMap<String, Vec<EventEnvelope>> =
        Default::default();
    while per_sandbox.values().map(Vec::len).sum::<usize>() < 20 {
        let event = tokio::time::timeout(WAIT, all.next())
            .await
            .unwrap()
            .unwrap();
        per_sandbox
            .entry(event.sandbox.clone())
            .or_default()
            .push(event);
    }
    assert_eq!(per_sandbox.len(), 5);
    for (name, events) in per_sandbox {
        let kinds: Vec<SandboxEvent> = events.iter().map(|e| e.event.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                SandboxEvent::StatusChanged {
                    from: SandboxStatus::Starting,
                    to: SandboxStatus::Running
                },
                SandboxEvent::SessionStarted { id: 1 },
                SandboxEvent::SessionExited {
                    id: 1,
                    code: Some(0),
                    signal: None
                },
                SandboxEvent::StatusChanged {
                    from: SandboxStatus::Running,
                    to: SandboxStatus::Stopped
                },
            ],
            "{name}"
        );
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4],
            "{name}"
        );
        // Every event carries the sandbox's one run.
        let runs = rt.runs(&name).await.unwrap();
        assert!(events.iter().all(|e| e.run == Some(runs[0].id)), "{name}");
    }
}

on_both!(each_run_of_a_restart_policy_numbers_its_own_events_and_carries_its_id);
async fn each_run_of_a_restart_policy_numbers_its_own_events_and_carries_its_id(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let mut all = Box::pin(rt.events());
    let mut config = SandboxConfig::shell("flaky", "exit 1").with_backend(backend);
    config.metrics_interval = None;
    config.restart = sandvisor::Restart::OnFailure {
        max_retries: Some(2),
    };
    config.restart_backoff.initial = Duration::from_millis(10);
    let sandbox = rt.create(config).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(60), sandbox.wait_until_stopped())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.exit_code, Some(1));
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e: &EventEnvelope| matches!(e.event, SandboxEvent::RestartEnded { .. }))
    {
        let event = tokio::time::timeout(WAIT, all.next())
            .await
            .unwrap()
            .unwrap();
        events.push(event);
    }
    let runs = rt.runs("flaky").await.unwrap();
    assert_eq!(runs.len(), 3, "the first run and two restarts");
    // Each run reached Ready, so each of its events has its row's id.
    assert!(
        events.iter().all(|e| e.run.is_some()),
        "{:?}",
        events.iter().map(|e| (e.run, e.seq)).collect::<Vec<_>>()
    );
    for (i, run) in runs.iter().enumerate() {
        let mine: Vec<&EventEnvelope> = events.iter().filter(|e| e.run == Some(run.id)).collect();
        let seqs: Vec<u64> = mine.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=mine.len() as u64).collect::<Vec<_>>(),
            "run {i}: numbered from 1 without gaps"
        );
        assert_eq!(
            mine[0].event,
            SandboxEvent::StatusChanged {
                from: SandboxStatus::Starting,
                to: SandboxStatus::Running
            },
            "run {i} starts its own sequence"
        );
        assert!(
            mine.iter().any(|e| e.event
                == SandboxEvent::SessionExited {
                    id: 1,
                    code: Some(1),
                    signal: None
                }),
            "run {i}: its exit"
        );
        // The policy's word on a run belongs to that run.
        let last = &mine.last().unwrap().event;
        if i < 2 {
            assert!(
                matches!(last, SandboxEvent::RestartScheduled { attempt, .. } if *attempt == i as u32 + 1),
                "run {i}: {last:?}"
            );
        } else {
            assert!(
                matches!(last, SandboxEvent::RestartEnded { .. }),
                "run {i}: {last:?}"
            );
        }
    }
}

on_both!(a_restarted_tap_and_rotations_are_events);
async fn a_restarted_tap_and_rotations_are_events(backend: Backend) {
    use sandvisor::engine::log::tap::RelayTapMsg;
    let (_home, rt) = backends::runtime(backend).await;
    let mut config = SandboxConfig::shell(
        "rot",
        "sleep 0.5; i=0; while [ $i -lt 3000 ]; do echo line-$i-padding-padding; i=$((i+1)); done; sleep 1000",
    )
    .with_backend(backend);
    config.log.max_bytes = 16 * 1024;
    let sandbox = rt.create(config).await.unwrap();
    let mut probe = Probe::spawn().await.unwrap();
    sandbox.subscribe(probe.sink()).unwrap();
    // The output starts after the probe subscribed: its rotations are seen.
    let rotated = probe
        .expect_match(
            |e| matches!(e.event, SandboxEvent::Rotated { generation: 1 }),
            WAIT,
        )
        .await
        .unwrap();
    let tap = sandbox
        .supervisor()
        .get_cell()
        .get_children()
        .into_iter()
        .find(|c| c.is_message_type_of::<RelayTapMsg>() == Some(true))
        .unwrap();
    tap.kill();
    let restarted = probe
        .expect_match(
            |e| {
                matches!(
                    e.event,
                    SandboxEvent::ChildRestarted {
                        actor: "relay_tap",
                        ..
                    }
                )
            },
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(restarted.sandbox, "rot");
    assert!(rotated.seq < restarted.seq);
    sandbox.kill().await.unwrap();
}

// Namespaces only: a VM's metrics are its cgroup's, qemu and the guest RAM
// it touched, not the sandbox's processes.
#[tokio::test]
async fn metrics_are_sampled_as_events_and_on_request() {
    let (_home, rt) = runtime().await;
    let mut config = SandboxConfig::shell("busy", "while :; do :; done");
    config.metrics_interval = Some(Duration::from_millis(300));
    let sandbox = rt.create(config).await.unwrap();
    let mut probe = Probe::spawn().await.unwrap();
    sandbox.subscribe(probe.sink()).unwrap();
    // The first sample only sets the baseline; later ones see the loop.
    let busy = probe
        .expect_match(
            |e| matches!(e.event, SandboxEvent::MetricsSampled(m) if m.cpu_percent > 50.0),
            WAIT,
        )
        .await
        .unwrap();
    let SandboxEvent::MetricsSampled(metrics) = busy.event else {
        unreachable!()
    };
    assert!(metrics.processes >= 2, "{metrics:?}");
    assert!(sandbox.metrics().await.unwrap().sampled_at <= chrono::Utc::now());
    sandbox.kill().await.unwrap();
    assert!(matches!(
        sandbox.metrics().await.unwrap_err(),
        sandvisor::Error::SandboxNotRunning(_)
    ));

    let script = "x=$(head -c 110000000 /dev/zero | tr '\\0' a); echo ready; sleep 1000";
    let sandbox = rt
        .create(SandboxConfig::shell("big", script))
        .await
        .unwrap();
    let mut memory = 0;
    for _ in 0..100 {
        memory = sandbox.metrics().await.unwrap().memory_bytes;
        if memory >= 100 << 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(memory >= 100 << 20, "memory_bytes {memory}");
    sandbox.kill().await.unwrap();

    let mut config = SandboxConfig::new("quiet", "sleep").args(["1000"]);
    config.metrics_interval = None;
    let sandbox = rt.create(config).await.unwrap();
    assert!(matches!(
        sandbox.metrics().await.unwrap_err(),
        sandvisor::Error::MetricsDisabled(_)
    ));
    sandbox.kill().await.unwrap();
}
