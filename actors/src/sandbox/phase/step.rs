//! The transitions: plain functions from a phase and an input to the next
//! phase and the actions to take (see the [module docs](super)).

use std::time::Duration;

use super::{Action, Context, Ending, Input, Phase};

/// The longest grace period a stop waits before SIGKILL: one year, the
/// longest the CLI and the control socket accept.
pub const LONGEST_GRACE: Duration = Duration::from_secs(365 * 24 * 3600);
use crate::protocol::BootStage;
use crate::sandbox::events::EscalationStep;
use crate::sandbox::lifecycle::{SandboxStatus, TerminationReason};
use crate::sandbox::{BootFailure, FreezeRefused};

/// Actions collected by a transition.
type Step = (Phase, Vec<Action>);

fn note(warn: bool, message: impl Into<String>) -> Action {
    Action::Note {
        warn,
        message: message.into(),
    }
}

/// The transition of `phase` on `input`.
pub fn step(phase: &Phase, input: Input, cx: &Context) -> Step {
    let unchanged = || (phase.clone(), Vec::new());
    if phase.is_ended() {
        return unchanged();
    }
    match input {
        Input::Stop(timeout) => stop(phase, timeout.unwrap_or(cx.stop_timeout), cx, Vec::new()),
        Input::Kill => kill(phase, cx, Vec::new()),
        Input::Drain(timeout) => drain(phase, timeout, cx),
        Input::Escalate(epoch) => match phase {
            Phase::Stopping { epoch: live, .. } if *live == epoch => {
                let actions = vec![
                    note(
                        true,
                        "did not stop within the timeout; escalating to SIGKILL",
                    ),
                    Action::Escalated {
                        from: EscalationStep::Term,
                        to: EscalationStep::Kill,
                    },
                ];
                kill(phase, cx, actions)
            }
            _ => unchanged(),
        },
        Input::KillTimedOut => match phase {
            Phase::Killing {
                status,
                from_host: false,
            } => (
                Phase::Killing {
                    status: *status,
                    from_host: true,
                },
                vec![
                    note(
                        true,
                        "the agent did not report the kill in time; killing PID 1 from the host",
                    ),
                    Action::Escalated {
                        from: EscalationStep::Kill,
                        to: EscalationStep::HostKill,
                    },
                    Action::KillFromHost,
                    Action::ArmKillTimeout(cx.kill_timeout),
                ],
            ),
            Phase::Killing {
                from_host: true, ..
            } => {
                let first = note(
                    true,
                    "still not gone after SIGKILL from the host; giving it up as crashed",
                );
                finish(phase, crashed(), cx, None, vec![first])
            }
            _ => unchanged(),
        },
        Input::DrainTimedOut => match phase {
            Phase::Draining | Phase::Stopping { drain: true, .. } => {
                let first = note(
                    true,
                    "exec sessions did not finish within the drain timeout; stopping",
                );
                stop(phase, cx.stop_timeout, cx, vec![first])
            }
            _ => unchanged(),
        },
        Input::SessionEnded => match phase {
            Phase::Draining if cx.sessions == 0 => {
                let first = note(false, "drained: no exec session left; stopping");
                stop(phase, cx.stop_timeout, cx, vec![first])
            }
            _ => unchanged(),
        },
        Input::BootTimedOut if !phase.booted() => {
            let failure = BootFailure {
                stage: silent_stage(cx),
                errno: libc::ETIMEDOUT,
                message: format!(
                    "the agent did not report ready within {:?}",
                    cx.boot_timeout
                ),
                exec_failed: false,
            };
            let actions = vec![
                Action::WriteBootError(failure.clone()),
                note(true, failure.message.clone()),
                Action::KillFromHost,
            ];
            let end = (
                SandboxStatus::Stopped,
                None,
                None,
                TerminationReason::Failed,
            );
            finish(phase, end, cx, Some(failure), actions)
        }
        Input::BootTimedOut => unchanged(),
        Input::Ready(pid) => ready(phase, pid, cx),
        Input::BootFailed(failure) => {
            let actions = vec![
                Action::WriteBootError(failure.clone()),
                note(
                    true,
                    format!("failed to start ({}): {}", failure.stage, failure.message),
                ),
            ];
            let end = (
                SandboxStatus::Stopped,
                None,
                None,
                TerminationReason::Failed,
            );
            finish(phase, end, cx, Some(failure), actions)
        }
        Input::Exited {
            code,
            signal,
            oom_killed,
        } => {
            // A requested stop explains the end whatever else happened; an
            // OOM kill explains any end but a successful one (a command that
            // survived a child's OOM kill completed).
            let reason = phase
                .stop_reason()
                .unwrap_or(if oom_killed && code != Some(0) {
                    TerminationReason::OutOfMemory
                } else if signal.is_some() {
                    TerminationReason::Signal
                } else if code == Some(0) {
                    TerminationReason::Completed
                } else {
                    TerminationReason::Failed
                });
            finish(
                phase,
                (SandboxStatus::Stopped, code, signal, reason),
                cx,
                None,
                Vec::new(),
            )
        }
        Input::Lost(reason) => match phase {
            Phase::Killing {
                from_host: true, ..
            } => {
                let first = note(false, format!("killed from the host: {reason}"));
                let end = (
                    SandboxStatus::Stopped,
                    None,
                    Some(libc::SIGKILL),
                    TerminationReason::Killed,
                );
                finish(phase, end, cx, None, vec![first])
            }
            // A guest that ends before its agent speaks did not boot: a
            // boot failure (stage `kernel`), not a crash of a running sandbox.
            Phase::Starting { .. } if cx.vm => {
                let first = note(
                    true,
                    format!("the microVM ended before its agent was ready: {reason}"),
                );
                let end = (
                    SandboxStatus::Stopped,
                    None,
                    None,
                    TerminationReason::Failed,
                );
                finish(phase, end, cx, None, vec![first])
            }
            _ => {
                let first = note(true, format!("lost the sandbox process: {reason}"));
                finish(phase, crashed(), cx, None, vec![first])
            }
        },
        Input::Abandon => finish(phase, crashed(), cx, None, Vec::new()),
        Input::Expired(reason) => match phase {
            Phase::Running { .. } => {
                let first = note(false, format!("{reason}: stopping"));
                match stop(phase, cx.stop_timeout, cx, vec![first]) {
                    (
                        Phase::Stopping {
                            deadline,
                            epoch,
                            drain,
                            ..
                        },
                        actions,
                    ) => (
                        Phase::Stopping {
                            reason,
                            deadline,
                            epoch,
                            drain,
                        },
                        actions,
                    ),
                    other => other,
                }
            }
            // Already ending, or not yet running (the limits start at Ready).
            _ => unchanged(),
        },
    }
}

/// Pauses (`true`) or resumes every process of the sandbox.
///
/// # Errors
/// [`FreezeRefused`] when the phase allows neither (starting, stopping,
/// ended). Pausing a paused sandbox, or resuming a running one, is `Ok` with
/// no action.
pub fn freeze(phase: &Phase, pause: bool) -> Result<Step, FreezeRefused> {
    let (from, to, signo, message) = if pause {
        let message = "paused: SIGSTOP to every process";
        (
            SandboxStatus::Running,
            SandboxStatus::Paused,
            libc::SIGSTOP,
            message,
        )
    } else {
        let message = "resumed: SIGCONT to every process";
        (
            SandboxStatus::Paused,
            SandboxStatus::Running,
            libc::SIGCONT,
            message,
        )
    };
    let status = phase.status();
    if status == to {
        return Ok((phase.clone(), Vec::new()));
    }
    let next = match phase {
        _ if status != from => None,
        Phase::Running { .. } => Some(Phase::Running { paused: pause }),
        // Killed while starting, then Ready: the status is a run's.
        Phase::Killing { from_host, .. } => Some(Phase::Killing {
            status: to,
            from_host: *from_host,
        }),
        _ => None,
    };
    let Some(next) = next else {
        return Err(match phase {
            Phase::Starting { .. } => FreezeRefused::Starting,
            Phase::Ended(_) => FreezeRefused::Ended,
            _ => FreezeRefused::Stopping,
        });
    };
    let actions = vec![
        Action::SignalAll(signo),
        Action::SetStatus { from: status, to },
        note(false, message),
    ];
    Ok((next, actions))
}

fn crashed() -> (SandboxStatus, Option<i32>, Option<i32>, TerminationReason) {
    (
        SandboxStatus::Crashed,
        None,
        None,
        TerminationReason::InternalError,
    )
}

/// The stage of a boot that failed without the agent saying why.
fn silent_stage(cx: &Context) -> BootStage {
    if cx.vm {
        BootStage::Kernel
    } else {
        BootStage::Other
    }
}

/// Ends the run; a run that never booted ends with a boot failure (`failure`,
/// or "ended before it was ready").
fn finish(
    phase: &Phase,
    (status, exit_code, signal, reason): (
        SandboxStatus,
        Option<i32>,
        Option<i32>,
        TerminationReason,
    ),
    cx: &Context,
    failure: Option<BootFailure>,
    mut actions: Vec<Action>,
) -> Step {
    let failure = failure.or_else(|| {
        let failure = (!phase.booted()).then(|| BootFailure {
            stage: silent_stage(cx),
            errno: 0,
            message: format!("the sandbox ended before it was ready ({reason})"),
            exec_failed: false,
        })?;
        // A guest that ended before its agent spoke failed to boot: its
        // record names the kernel stage and quotes the console.
        if failure.stage == BootStage::Kernel {
            actions.push(Action::WriteBootError(failure.clone()));
        }
        Some(failure)
    });
    let ending = Ending {
        from: phase.status(),
        status,
        exit_code,
        signal,
        reason,
        failure,
        at: cx.at,
    };
    actions.push(Action::Finish(ending.clone()));
    (Phase::Ended(ending), actions)
}

fn ready(phase: &Phase, pid: u32, cx: &Context) -> Step {
    match phase {
        Phase::Starting { stop: pending } => {
            let running = Phase::Running { paused: false };
            let actions = vec![Action::Started(pid)];
            match pending {
                Some(timeout) => stop(&running, *timeout, cx, actions),
                None => (running, actions),
            }
        }
        Phase::Killing {
            status: SandboxStatus::Starting,
            from_host,
        } => (
            Phase::Killing {
                status: SandboxStatus::Running,
                from_host: *from_host,
            },
            vec![Action::Started(pid)],
        ),
        // The agent reports Ready once.
        _ => (phase.clone(), Vec::new()),
    }
}

/// A stop with grace period `timeout`. A repeated stop sends the signals
/// again and may bring SIGKILL closer, never push it back.
fn stop(phase: &Phase, timeout: Duration, cx: &Context, mut actions: Vec<Action>) -> Step {
    let (reason, drain, armed) = match phase {
        Phase::Starting { stop: pending } => {
            // Nothing to signal yet: stop as soon as it runs (or kill at once).
            if timeout.is_zero() {
                return kill(phase, cx, actions);
            }
            let stop = Some(pending.map_or(timeout, |t| t.min(timeout)));
            return (Phase::Starting { stop }, actions);
        }
        Phase::Running { .. } => (TerminationReason::ShutdownRequested, false, None),
        Phase::Draining => (TerminationReason::DrainRequested, true, None),
        Phase::Stopping {
            reason,
            deadline,
            epoch,
            drain,
        } => (*reason, *drain, Some((*deadline, *epoch))),
        Phase::Killing { .. } | Phase::Ended(_) => return (phase.clone(), actions),
    };
    let status = phase.status();
    if status != SandboxStatus::Draining {
        actions.push(Action::SetStatus {
            from: status,
            to: SandboxStatus::Draining,
        });
    }
    let stopping = |deadline, epoch| Phase::Stopping {
        reason,
        deadline,
        epoch,
        drain,
    };
    if timeout.is_zero() {
        return kill(&stopping(cx.now, 0), cx, actions);
    }
    // A paused tree must run to act on the stop signal.
    actions.push(Action::SignalAll(cx.stop_signal));
    actions.push(Action::SignalAll(libc::SIGCONT));
    // A grace period past any real one (`Duration::MAX` from an embedder)
    // waits as long as the longest the CLI accepts instead of overflowing.
    let timeout = timeout.min(LONGEST_GRACE);
    let deadline = cx.now + timeout;
    if let Some((armed, epoch)) = armed {
        if armed <= deadline {
            return (stopping(armed, epoch), actions);
        }
    }
    let epoch = armed.map_or(1, |(_, epoch)| epoch + 1);
    actions.push(Action::ArmEscalation {
        epoch,
        after: timeout,
    });
    actions.push(note(
        false,
        format!(
            "stopping: signal {} to every process, SIGKILL in {timeout:?}",
            cx.stop_signal
        ),
    ));
    (stopping(deadline, epoch), actions)
}

fn kill(phase: &Phase, cx: &Context, mut actions: Vec<Action>) -> Step {
    let status = match phase {
        Phase::Killing { .. } | Phase::Ended(_) => return (phase.clone(), actions),
        Phase::Starting { .. } => SandboxStatus::Starting,
        _ => {
            let from = phase.status();
            if from != SandboxStatus::Draining {
                actions.push(Action::SetStatus {
                    from,
                    to: SandboxStatus::Draining,
                });
            }
            SandboxStatus::Draining
        }
    };
    actions.push(Action::KillThroughAgent);
    actions.push(Action::ArmKillTimeout(cx.kill_timeout));
    actions.push(note(false, "killing every process with SIGKILL"));
    (
        Phase::Killing {
            status,
            from_host: false,
        },
        actions,
    )
}

fn drain(phase: &Phase, timeout: Option<Duration>, cx: &Context) -> Step {
    let mut actions = Vec::new();
    let next = match phase {
        // No sessions yet: a drain is a stop once it runs.
        Phase::Starting { .. } => return stop(phase, cx.stop_timeout, cx, actions),
        Phase::Running { paused } => {
            if *paused {
                // Frozen sessions could not finish.
                actions.push(Action::SignalAll(libc::SIGCONT));
            }
            actions.push(Action::SetStatus {
                from: phase.status(),
                to: SandboxStatus::Draining,
            });
            Phase::Draining
        }
        Phase::Stopping {
            reason,
            deadline,
            epoch,
            drain: false,
        } => Phase::Stopping {
            reason: *reason,
            deadline: *deadline,
            epoch: *epoch,
            drain: true,
        },
        _ => return (phase.clone(), actions),
    };
    if cx.sessions == 0 {
        if let Phase::Draining = next {
            actions.push(note(false, "drained: no exec session left; stopping"));
            return stop(&next, cx.stop_timeout, cx, actions);
        }
        return (next, actions);
    }
    actions.push(note(
        false,
        format!("draining: waiting for {} exec sessions", cx.sessions),
    ));
    actions.push(Action::ArmDrainTimeout(timeout.unwrap_or(cx.stop_timeout)));
    (next, actions)
}
