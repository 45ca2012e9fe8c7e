//! The supervisor's health checks (see the [`health`](crate::sandbox::health)
//! module for the states).
//!
//! - `HealthDue` (a run timer, first `interval` after Ready, then `interval`
//!   after each result) starts a check as an exec session through the agent
//!   link, unlogged: its output goes only to a collector task, not to
//!   `exec.log`, and does not count as activity. It is not in the user
//!   sessions (`sessions`), so it publishes no session events, and neither
//!   keeps an idle sandbox alive nor holds up a drain. One check runs at a
//!   time; a paused sandbox skips its checks.
//! - Checks are numbered across runs (session ids start again with each
//!   run), so a late result of a run that ended never counts for the next.
//!   A result that comes while the sandbox is paused does not count either.
//! - `HealthDeadline` (`timeout` after the start) kills a check still
//!   running as an exec deadline does (`SessionInput::Expire`); its result
//!   then says `timed_out`.
//! - The collector task sends `HealthChecked` with the result; the
//!   supervisor adds it to the run's tracker, records the report on the run
//!   row, and on a change publishes `HealthChanged` and notes it in
//!   `runtime.log`. Turning unhealthy with `on_unhealthy: Stop` or `Restart`
//!   stops the run with reason `Unhealthy` (for `Restart` the restart policy
//!   is told to restart it).

use chrono::{DateTime, Utc};
use ractor::{ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot};

use super::SupervisorState;
use crate::protocol::ExecSpec;
use crate::sandbox::events::SandboxEvent;
use crate::sandbox::health::{Health, HealthResult, OnUnhealthy, OutputCap};
use crate::sandbox::phase::{Input, Phase};
use crate::sandbox::policy::RestartEnd;
use crate::sandbox::{
    AgentLinkMsg, ExecItem, ExecRefused, SessionInput, SupervisorMsg, TerminationReason,
};

impl SupervisorState {
    /// Arms the run's next health check, if it has one.
    pub(super) fn arm_health_check(&mut self, myself: &ActorRef<SupervisorMsg>) {
        if let Some(interval) = self.spec.health.as_ref().map(|spec| spec.interval) {
            self.arm_run_timer(myself, interval, || SupervisorMsg::HealthDue);
        }
    }

    /// Records the run's health on its row (a failed write is noted: the
    /// checks go on).
    pub(super) async fn record_health(&self) {
        let Some(run_id) = self.run_id else {
            return;
        };
        if let Err(err) = self
            .store
            .health_recorded(run_id, self.health.report())
            .await
        {
            self.note(true, &format!("cannot record the health: {err}"));
        }
    }

    /// `HealthDue`: starts a check while the sandbox runs.
    pub(super) fn health_due(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(spec) = self.spec.health.clone() else {
            return Ok(());
        };
        if self.health_check.is_some() {
            return Ok(());
        }
        let link = match (&self.phase, &self.link) {
            (Phase::Running { paused: false }, Some(link)) => link.clone(),
            (Phase::Running { paused: true }, _) => {
                self.arm_health_check(myself);
                return Ok(());
            }
            // Ending: the run's checks end with it.
            _ => return Ok(()),
        };
        self.next_session += 1;
        let session = self.next_session;
        let (output, items) = mpsc::unbounded_channel();
        let (reply, started) = oneshot::channel();
        link.cast(AgentLinkMsg::Exec {
            spec: ExecSpec {
                session,
                logged: false,
                run: spec.run.clone(),
            },
            logged: false,
            output,
            reply: reply.into(),
        })?;
        self.health_checks += 1;
        let check = self.health_checks;
        self.health_check = Some(check);
        let timeout = spec.timeout;
        self.arm_run_timer(myself, timeout, move || SupervisorMsg::HealthDeadline {
            check,
            session,
        });
        tokio::spawn(collect(myself.clone(), check, Utc::now(), started, items));
        Ok(())
    }

    /// `HealthDeadline`: kills the check if it still runs.
    pub(super) fn health_deadline(
        &self,
        check: u64,
        session: u64,
    ) -> Result<(), ActorProcessingErr> {
        if self.health_check == Some(check) {
            self.to_link(AgentLinkMsg::Session {
                session,
                input: SessionInput::Expire,
            })?;
        }
        Ok(())
    }

    /// `HealthChecked`: the check's result; the input that ends an
    /// unhealthy run, if its `on_unhealthy` says so.
    pub(super) async fn health_checked(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        check: u64,
        result: HealthResult,
    ) -> Option<Input> {
        // A check of a run that ended (or is ending) says nothing.
        if self.health_check != Some(check) {
            return None;
        }
        self.health_check = None;
        match self.phase {
            Phase::Running { paused: false } => {}
            // A check the pause froze (and its timeout may have killed)
            // says nothing about the sandbox.
            Phase::Running { paused: true } => {
                self.arm_health_check(myself);
                return None;
            }
            _ => return None,
        }
        let spec = self.spec.health.clone()?;
        let in_start_period = self
            .running_since
            .is_some_and(|since| since.elapsed() < spec.start_period);
        let summary = summary(&result);
        let change = self.health.record(result, spec.retries, in_start_period);
        self.record_health().await;
        if let Some(change) = change {
            self.publish(SandboxEvent::HealthChanged {
                from: change.from,
                to: change.to,
            });
            self.note(
                change.to == Health::Unhealthy,
                &format!(
                    "health: {} -> {} (last check: {summary})",
                    change.from, change.to
                ),
            );
            if change.to == Health::Unhealthy {
                match spec.on_unhealthy {
                    OnUnhealthy::None => {}
                    OnUnhealthy::Stop => {
                        self.stopped_by.get_or_insert(RestartEnd::Unhealthy);
                        return Some(Input::Expired(TerminationReason::Unhealthy));
                    }
                    OnUnhealthy::Restart => {
                        self.unhealthy_restart = true;
                        return Some(Input::Expired(TerminationReason::Unhealthy));
                    }
                }
            }
        }
        self.arm_health_check(myself);
        None
    }
}

/// How a check ended, in words for `runtime.log`.
fn summary(result: &HealthResult) -> String {
    match (result.exit_code, result.signal) {
        _ if result.timed_out => "timed out".into(),
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => format!("did not run: {}", result.output),
    }
}

/// Collects a check's output (the first 4 KiB) and exit, and tells the
/// supervisor.
async fn collect(
    supervisor: ActorRef<SupervisorMsg>,
    check: u64,
    start: DateTime<Utc>,
    started: oneshot::Receiver<Result<(u64, u32), ExecRefused>>,
    mut items: mpsc::UnboundedReceiver<ExecItem>,
) {
    let mut output = OutputCap::default();
    let ended = match started.await {
        Ok(Ok(_)) => loop {
            match items.recv().await {
                Some(ExecItem::Output { data, .. }) => output.push(&data),
                Some(ExecItem::InputTaken { .. }) => {}
                Some(ExecItem::Exited {
                    code,
                    signal,
                    timed_out,
                }) => break (code, signal, timed_out),
                None => {
                    output.push(b"the sandbox ended during the check");
                    break (None, None, false);
                }
            }
        },
        Ok(Err(ExecRefused::Failed { message, .. })) => {
            output.push(message.as_bytes());
            (None, None, false)
        }
        Ok(Err(_)) | Err(_) => {
            output.push(b"the sandbox does not run");
            (None, None, false)
        }
    };
    let (exit_code, signal, timed_out) = ended;
    // A supervisor that is gone has no health to keep.
    let _ = supervisor.cast(SupervisorMsg::HealthChecked {
        check,
        result: HealthResult {
            start,
            end: Utc::now(),
            exit_code,
            signal,
            timed_out,
            output: output.text(),
        },
    });
}
