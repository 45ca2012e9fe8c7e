//! Every transition of the phase machine, without a process or an actor.

use std::time::{Duration, Instant};

use super::*;
use crate::protocol::BootStage;
use crate::sandbox::events::EscalationStep;
use crate::sandbox::FreezeRefused;

const STOP: Duration = Duration::from_secs(10);
const KILL: Duration = Duration::from_secs(5);

fn cx(now: Instant, sessions: usize) -> Context {
    Context {
        stop_signal: libc::SIGTERM,
        stop_timeout: STOP,
        kill_timeout: KILL,
        boot_timeout: Duration::from_secs(30),
        vm: false,
        sessions,
        now,
        at: Utc::now(),
    }
}

fn starting() -> Phase {
    Phase::Starting { stop: None }
}

fn running() -> Phase {
    Phase::Running { paused: false }
}

/// Runs `inputs` from `phase`, returning the last phase and every action.
fn run(phase: Phase, inputs: Vec<Input>, cx: &Context) -> (Phase, Vec<Action>) {
    inputs
        .into_iter()
        .fold((phase, Vec::new()), |(phase, mut all), input| {
            let (next, actions) = step(&phase, input, cx);
            all.extend(actions);
            (next, all)
        })
}

fn without_notes(actions: &[Action]) -> Vec<Action> {
    actions
        .iter()
        .filter(|a| !matches!(a, Action::Note { .. }))
        .cloned()
        .collect()
}

fn ending(actions: &[Action]) -> Ending {
    match actions.last() {
        Some(Action::Finish(ending)) => ending.clone(),
        other => panic!("expected Finish last, got {other:?}"),
    }
}

fn set_status(from: SandboxStatus, to: SandboxStatus) -> Action {
    Action::SetStatus { from, to }
}

#[test]
fn start_then_exit_completes() {
    let now = Instant::now();
    let (phase, actions) = run(
        starting(),
        vec![
            Input::Ready(7),
            Input::Exited {
                code: Some(0),
                signal: None,
                oom_killed: false,
            },
        ],
        &cx(now, 0),
    );
    assert_eq!(actions[0], Action::Started(7));
    let end = ending(&actions);
    assert_eq!(end.from, SandboxStatus::Running);
    assert_eq!(end.status, SandboxStatus::Stopped);
    assert_eq!(end.reason, TerminationReason::Completed);
    assert_eq!(end.failure, None);
    assert!(phase.is_ended());
}

#[test]
fn exits_on_their_own_are_completed_failed_or_signal() {
    let now = Instant::now();
    for (code, signal, reason) in [
        (Some(0), None, TerminationReason::Completed),
        (Some(3), None, TerminationReason::Failed),
        (None, Some(11), TerminationReason::Signal),
    ] {
        let (_, actions) = step(
            &running(),
            Input::Exited {
                code,
                signal,
                oom_killed: false,
            },
            &cx(now, 0),
        );
        assert_eq!(ending(&actions).reason, reason);
    }
}

#[test]
fn an_oom_kill_ends_the_run_out_of_memory_unless_it_completed_or_was_stopped() {
    let now = Instant::now();
    for (code, signal, reason) in [
        (None, Some(libc::SIGKILL), TerminationReason::OutOfMemory),
        (Some(137), None, TerminationReason::OutOfMemory),
        (Some(0), None, TerminationReason::Completed),
    ] {
        let exited = Input::Exited {
            code,
            signal,
            oom_killed: true,
        };
        let (_, actions) = step(&running(), exited, &cx(now, 0));
        assert_eq!(ending(&actions).reason, reason);
    }
    let (stopping, _) = step(&running(), Input::Stop(None), &cx(now, 0));
    let exited = Input::Exited {
        code: None,
        signal: Some(libc::SIGKILL),
        oom_killed: true,
    };
    let (_, actions) = step(&stopping, exited, &cx(now, 0));
    assert_eq!(
        ending(&actions).reason,
        TerminationReason::ShutdownRequested
    );
}

#[test]
fn stop_while_starting_is_carried_out_at_ready_with_the_shortest_timeout() {
    let now = Instant::now();
    let cx = cx(now, 0);
    let (phase, actions) = run(
        starting(),
        vec![
            Input::Stop(Some(Duration::from_secs(8))),
            Input::Stop(Some(Duration::from_secs(20))),
        ],
        &cx,
    );
    assert!(actions.is_empty());
    assert_eq!(
        phase,
        Phase::Starting {
            stop: Some(Duration::from_secs(8))
        }
    );
    let (phase, actions) = step(&phase, Input::Ready(1), &cx);
    assert_eq!(
        without_notes(&actions),
        vec![
            Action::Started(1),
            set_status(SandboxStatus::Running, SandboxStatus::Draining),
            Action::SignalAll(libc::SIGTERM),
            Action::SignalAll(libc::SIGCONT),
            Action::ArmEscalation {
                epoch: 1,
                after: Duration::from_secs(8)
            },
        ]
    );
    let (_, actions) = step(
        &phase,
        Input::Exited {
            code: None,
            signal: Some(libc::SIGTERM),
            oom_killed: false,
        },
        &cx,
    );
    assert_eq!(
        ending(&actions).reason,
        TerminationReason::ShutdownRequested
    );
}

#[test]
fn stop_with_zero_timeout_while_starting_kills_without_a_status_change() {
    let now = Instant::now();
    let (phase, actions) = step(&starting(), Input::Stop(Some(Duration::ZERO)), &cx(now, 0));
    assert_eq!(
        without_notes(&actions),
        vec![Action::KillThroughAgent, Action::ArmKillTimeout(KILL)]
    );
    assert_eq!(phase.status(), SandboxStatus::Starting);
    // Ready after the kill: the run is recorded, and stays being killed.
    let (phase, actions) = step(&phase, Input::Ready(1), &cx(now, 0));
    assert_eq!(actions, vec![Action::Started(1)]);
    assert_eq!(phase.status(), SandboxStatus::Running);
    let (_, actions) = step(
        &phase,
        Input::Exited {
            code: None,
            signal: Some(9),
            oom_killed: false,
        },
        &cx(now, 0),
    );
    let end = ending(&actions);
    assert_eq!(end.reason, TerminationReason::Killed);
    assert_eq!(end.failure, None);
}

#[test]
fn killed_before_ready_ends_as_a_boot_failure() {
    let now = Instant::now();
    let (_, actions) = run(
        starting(),
        vec![
            Input::Kill,
            Input::Exited {
                code: None,
                signal: Some(9),
                oom_killed: false,
            },
        ],
        &cx(now, 0),
    );
    let end = ending(&actions);
    assert_eq!(end.reason, TerminationReason::Killed);
    let failure = end.failure.expect("a run that never booted");
    assert_eq!(failure.stage, BootStage::Other);
    assert!(failure.message.contains("ended before it was ready"));
}

#[test]
fn kill_while_stopping_goes_to_killing_and_ignores_later_stops() {
    let now = Instant::now();
    let cx = cx(now, 0);
    let (phase, _) = step(&running(), Input::Stop(None), &cx);
    let (phase, actions) = step(&phase, Input::Kill, &cx);
    assert_eq!(
        without_notes(&actions),
        vec![Action::KillThroughAgent, Action::ArmKillTimeout(KILL)]
    );
    assert_eq!(
        phase,
        Phase::Killing {
            status: SandboxStatus::Draining,
            from_host: false
        }
    );
    for input in [
        Input::Stop(None),
        Input::Kill,
        Input::Drain(None),
        Input::Escalate(1),
    ] {
        let (same, actions) = step(&phase, input, &cx);
        assert_eq!(same, phase);
        assert!(actions.is_empty());
    }
}

#[test]
fn kill_while_running_sets_draining_first() {
    let now = Instant::now();
    let (_, actions) = step(&running(), Input::Kill, &cx(now, 0));
    assert_eq!(
        without_notes(&actions),
        vec![
            set_status(SandboxStatus::Running, SandboxStatus::Draining),
            Action::KillThroughAgent,
            Action::ArmKillTimeout(KILL),
        ]
    );
}

#[test]
fn escalation_goes_term_kill_host_kill_then_crashed() {
    let now = Instant::now();
    let cx = cx(now, 0);
    let (phase, _) = step(&running(), Input::Stop(Some(Duration::from_secs(1))), &cx);
    // A stale timer does nothing.
    let (same, actions) = step(&phase, Input::Escalate(7), &cx);
    assert_eq!((same, actions), (phase.clone(), Vec::new()));
    let (phase, actions) = step(&phase, Input::Escalate(1), &cx);
    assert_eq!(
        without_notes(&actions),
        vec![
            Action::Escalated {
                from: EscalationStep::Term,
                to: EscalationStep::Kill
            },
            Action::KillThroughAgent,
            Action::ArmKillTimeout(KILL),
        ]
    );
    let (phase, actions) = step(&phase, Input::KillTimedOut, &cx);
    assert_eq!(
        without_notes(&actions),
        vec![
            Action::Escalated {
                from: EscalationStep::Kill,
                to: EscalationStep::HostKill
            },
            Action::KillFromHost,
            Action::ArmKillTimeout(KILL),
        ]
    );
    let (phase, actions) = step(&phase, Input::KillTimedOut, &cx);
    let end = ending(&actions);
    assert_eq!(end.status, SandboxStatus::Crashed);
    assert_eq!(end.reason, TerminationReason::InternalError);
    assert!(phase.is_ended());
}

#[test]
fn lost_after_the_host_kill_is_a_kill() {
    let now = Instant::now();
    let cx = cx(now, 0);
    let (phase, _) = run(running(), vec![Input::Kill, Input::KillTimedOut], &cx);
    let (_, actions) = step(&phase, Input::Lost("closed".into()), &cx);
    let end = ending(&actions);
    assert_eq!(end.status, SandboxStatus::Stopped);
    assert_eq!(end.signal, Some(libc::SIGKILL));
    assert_eq!(end.reason, TerminationReason::Killed);
}

#[test]
fn agent_lost_is_a_crash() {
    let now = Instant::now();
    let (_, actions) = step(&running(), Input::Lost("closed".into()), &cx(now, 0));
    let end = ending(&actions);
    assert_eq!(end.from, SandboxStatus::Running);
    assert_eq!(end.status, SandboxStatus::Crashed);
    assert_eq!(end.reason, TerminationReason::InternalError);
    assert!(
        matches!(&actions[0], Action::Note { warn: true, message } if message.contains("closed"))
    );
}

#[test]
fn boot_timeout_writes_the_error_kills_from_host_and_fails() {
    let now = Instant::now();
    let (phase, actions) = step(&starting(), Input::BootTimedOut, &cx(now, 0));
    let failure = match &actions[0] {
        Action::WriteBootError(failure) => failure.clone(),
        other => panic!("expected WriteBootError, got {other:?}"),
    };
    assert_eq!(failure.errno, libc::ETIMEDOUT);
    assert_eq!(failure.message, "the agent did not report ready within 30s");
    assert!(actions.contains(&Action::KillFromHost));
    let end = ending(&actions);
    assert_eq!(end.status, SandboxStatus::Stopped);
    assert_eq!(end.reason, TerminationReason::Failed);
    assert_eq!(end.failure, Some(failure));
    assert!(phase.is_ended());
    // Once running, the boot timer is stale.
    let (_, actions) = step(&running(), Input::BootTimedOut, &cx(now, 0));
    assert!(actions.is_empty());
}

#[test]
fn a_microvm_that_ends_or_times_out_before_ready_fails_at_the_kernel_stage() {
    let now = Instant::now();
    let vm = Context {
        vm: true,
        ..cx(now, 0)
    };
    let (phase, actions) = step(
        &starting(),
        Input::Lost("the guest powered off".into()),
        &vm,
    );
    let end = ending(&actions);
    assert_eq!(
        (end.status, end.reason),
        (SandboxStatus::Stopped, TerminationReason::Failed)
    );
    let failure = end.failure.clone().unwrap();
    assert_eq!(failure.stage, BootStage::Kernel);
    assert!(actions.contains(&Action::WriteBootError(failure)));
    assert!(phase.is_ended());
    let (_, actions) = step(&starting(), Input::BootTimedOut, &vm);
    assert_eq!(ending(&actions).failure.unwrap().stage, BootStage::Kernel);
    // The same loss in the namespace backend is a crash, stage `other`.
    let (_, actions) = step(&starting(), Input::Lost("gone".into()), &cx(now, 0));
    let end = ending(&actions);
    assert_eq!(end.status, SandboxStatus::Crashed);
    assert_eq!(end.failure.unwrap().stage, BootStage::Other);
}

#[test]
fn boot_failure_is_recorded_and_fails() {
    let now = Instant::now();
    let failure = BootFailure {
        stage: BootStage::Mount,
        errno: 1,
        message: "no".into(),
        exec_failed: false,
    };
    let (_, actions) = step(&starting(), Input::BootFailed(failure.clone()), &cx(now, 0));
    assert_eq!(actions[0], Action::WriteBootError(failure.clone()));
    let end = ending(&actions);
    assert_eq!(end.reason, TerminationReason::Failed);
    assert_eq!(end.failure, Some(failure));
}

#[test]
fn repeated_stop_brings_the_deadline_closer_never_later() {
    let now = Instant::now();
    let (phase, _) = step(
        &running(),
        Input::Stop(Some(Duration::from_secs(10))),
        &cx(now, 0),
    );
    // Later: signals again, the armed deadline stands, no new timer.
    let (later, actions) = step(
        &phase,
        Input::Stop(Some(Duration::from_secs(30))),
        &cx(now, 0),
    );
    assert_eq!(later, phase);
    assert_eq!(
        actions,
        vec![
            Action::SignalAll(libc::SIGTERM),
            Action::SignalAll(libc::SIGCONT)
        ]
    );
    // Closer: a new epoch, armed for the shorter time.
    let (closer, actions) = step(
        &phase,
        Input::Stop(Some(Duration::from_secs(2))),
        &cx(now, 0),
    );
    assert!(actions.contains(&Action::ArmEscalation {
        epoch: 2,
        after: Duration::from_secs(2)
    }));
    match closer {
        Phase::Stopping {
            deadline, epoch, ..
        } => {
            assert_eq!(deadline, now + Duration::from_secs(2));
            assert_eq!(epoch, 2);
        }
        other => panic!("expected Stopping, got {other:?}"),
    }
    // The first timer is stale now.
    let (_, actions) = step(&closer, Input::Escalate(1), &cx(now, 0));
    assert!(actions.is_empty());
    // Zero kills at once.
    let (killing, _) = step(&closer, Input::Stop(Some(Duration::ZERO)), &cx(now, 0));
    assert!(matches!(killing, Phase::Killing { .. }));
}

#[test]
fn an_endless_grace_period_waits_a_year_instead_of_overflowing() {
    let now = Instant::now();
    let (phase, actions) = step(&running(), Input::Stop(Some(Duration::MAX)), &cx(now, 0));
    assert!(actions.contains(&Action::ArmEscalation {
        epoch: 1,
        after: LONGEST_GRACE
    }));
    match phase {
        Phase::Stopping { deadline, .. } => assert_eq!(deadline, now + LONGEST_GRACE),
        other => panic!("expected Stopping, got {other:?}"),
    }
}

#[test]
fn drain_with_sessions_waits_then_stops_when_the_last_ends() {
    let now = Instant::now();
    let (phase, actions) = step(
        &running(),
        Input::Drain(Some(Duration::from_secs(3))),
        &cx(now, 2),
    );
    assert_eq!(phase, Phase::Draining);
    assert_eq!(
        without_notes(&actions),
        vec![
            set_status(SandboxStatus::Running, SandboxStatus::Draining),
            Action::ArmDrainTimeout(Duration::from_secs(3)),
        ]
    );
    // One session left: nothing yet.
    let (phase, actions) = step(&phase, Input::SessionEnded, &cx(now, 1));
    assert_eq!((phase.clone(), actions), (Phase::Draining, Vec::new()));
    let (phase, actions) = step(&phase, Input::SessionEnded, &cx(now, 0));
    assert_eq!(
        without_notes(&actions),
        vec![
            Action::SignalAll(libc::SIGTERM),
            Action::SignalAll(libc::SIGCONT),
            Action::ArmEscalation {
                epoch: 1,
                after: STOP
            },
        ]
    );
    let (_, actions) = step(
        &phase,
        Input::Exited {
            code: Some(0),
            signal: None,
            oom_killed: false,
        },
        &cx(now, 0),
    );
    assert_eq!(ending(&actions).reason, TerminationReason::DrainRequested);
}

#[test]
fn drain_without_sessions_stops_at_once_and_a_paused_tree_is_thawed() {
    let now = Instant::now();
    let paused = Phase::Running { paused: true };
    let (phase, actions) = step(&paused, Input::Drain(None), &cx(now, 0));
    assert_eq!(
        without_notes(&actions),
        vec![
            Action::SignalAll(libc::SIGCONT),
            set_status(SandboxStatus::Paused, SandboxStatus::Draining),
            Action::SignalAll(libc::SIGTERM),
            Action::SignalAll(libc::SIGCONT),
            Action::ArmEscalation {
                epoch: 1,
                after: STOP
            },
        ]
    );
    assert!(matches!(
        phase,
        Phase::Stopping {
            reason: TerminationReason::DrainRequested,
            drain: true,
            ..
        }
    ));
    // A second drain changes nothing.
    let (same, actions) = step(&phase, Input::Drain(None), &cx(now, 0));
    assert_eq!((same, actions), (phase, Vec::new()));
}

#[test]
fn drain_timeout_stops_with_sessions_still_running() {
    let now = Instant::now();
    let (phase, _) = step(&running(), Input::Drain(None), &cx(now, 1));
    let (phase, actions) = step(&phase, Input::DrainTimedOut, &cx(now, 1));
    assert!(matches!(&actions[0], Action::Note { warn: true, .. }));
    assert!(actions.contains(&Action::SignalAll(libc::SIGTERM)));
    assert!(matches!(
        phase,
        Phase::Stopping {
            reason: TerminationReason::DrainRequested,
            ..
        }
    ));
    // Without a drain, the timer is stale.
    let (_, actions) = step(&running(), Input::DrainTimedOut, &cx(now, 1));
    assert!(actions.is_empty());
}

#[test]
fn drain_while_starting_is_a_stop_once_running() {
    let now = Instant::now();
    let (phase, actions) = step(
        &starting(),
        Input::Drain(Some(Duration::from_secs(1))),
        &cx(now, 0),
    );
    assert!(actions.is_empty());
    assert_eq!(phase, Phase::Starting { stop: Some(STOP) });
}

#[test]
fn pause_and_resume_only_while_running() {
    let (paused, actions) = freeze(&running(), true).expect("running pauses");
    assert_eq!(paused, Phase::Running { paused: true });
    assert_eq!(
        without_notes(&actions),
        vec![
            Action::SignalAll(libc::SIGSTOP),
            set_status(SandboxStatus::Running, SandboxStatus::Paused),
        ]
    );
    // Idempotent both ways.
    assert_eq!(freeze(&paused, true), Ok((paused.clone(), Vec::new())));
    assert_eq!(freeze(&running(), false), Ok((running(), Vec::new())));
    let (resumed, _) = freeze(&paused, false).expect("paused resumes");
    assert_eq!(resumed, running());

    let now = Instant::now();
    let (stopping, _) = step(&running(), Input::Stop(None), &cx(now, 0));
    let (ended, _) = step(&running(), Input::Lost("x".into()), &cx(now, 0));
    for pause in [true, false] {
        assert_eq!(freeze(&starting(), pause), Err(FreezeRefused::Starting));
        assert_eq!(
            freeze(&Phase::Draining, pause),
            Err(FreezeRefused::Stopping)
        );
        assert_eq!(freeze(&stopping, pause), Err(FreezeRefused::Stopping));
        assert_eq!(freeze(&ended, pause), Err(FreezeRefused::Ended));
    }
}

#[test]
fn ended_ignores_everything() {
    let now = Instant::now();
    let (ended, _) = step(&running(), Input::Lost("x".into()), &cx(now, 0));
    for input in [
        Input::Stop(None),
        Input::Kill,
        Input::Ready(1),
        Input::Exited {
            code: Some(0),
            signal: None,
            oom_killed: false,
        },
        Input::KillTimedOut,
        Input::BootTimedOut,
        Input::Abandon,
    ] {
        let (same, actions) = step(&ended, input, &cx(now, 0));
        assert_eq!(same, ended);
        assert!(actions.is_empty());
    }
}

#[test]
fn abandon_crashes_from_any_live_phase() {
    let now = Instant::now();
    for phase in [starting(), running(), Phase::Draining] {
        let (next, actions) = step(&phase, Input::Abandon, &cx(now, 0));
        assert_eq!(ending(&actions).status, SandboxStatus::Crashed);
        assert!(next.is_ended());
    }
}

#[test]
fn an_expired_limit_stops_with_its_reason_and_only_while_running() {
    let now = Instant::now();
    for reason in [
        TerminationReason::IdleTimeout,
        TerminationReason::LifetimeExceeded,
    ] {
        let (phase, actions) = run(
            running(),
            vec![
                Input::Expired(reason),
                Input::Exited {
                    code: None,
                    signal: Some(libc::SIGTERM),
                    oom_killed: false,
                },
            ],
            &cx(now, 0),
        );
        assert_eq!(
            without_notes(&actions)[..4],
            [
                set_status(SandboxStatus::Running, SandboxStatus::Draining),
                Action::SignalAll(libc::SIGTERM),
                Action::SignalAll(libc::SIGCONT),
                Action::ArmEscalation {
                    epoch: 1,
                    after: STOP
                },
            ]
        );
        assert_eq!(ending(&actions).reason, reason);
        assert!(phase.is_ended());
        // Starting, stopping or ended: the limit changes nothing.
        for phase in [starting(), Phase::Draining] {
            let (next, actions) = step(&phase, Input::Expired(reason), &cx(now, 0));
            assert_eq!((next, actions), (phase, Vec::new()));
        }
    }
}
