//! What the supervisor does for the phase machine: each [`Action`] executed,
//! in order, before the next message (see the [supervisor](super) docs).

use chrono::Utc;
use ractor::ActorProcessingErr;
use ractor::{ActorRef, ActorStatus};

use super::SupervisorState;
use crate::log::tap::{append_system_record, Chunk, RelayTapMsg};
use crate::protocol::BootStage;
use crate::protocol::SignalTarget;
use crate::sandbox::events::SandboxEvent;
use crate::sandbox::lifecycle::{RunEnd, SandboxStatus};
use crate::sandbox::metrics::Sampler;
use crate::sandbox::phase::{Action, Ending};
use crate::sandbox::{
    boot_error, stopped_marker, AgentLinkMsg, BootFailure, SandboxEnded, SupervisorMsg,
    UnrecordedEnd,
};

impl SupervisorState {
    pub(super) async fn execute(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        actions: Vec<Action>,
    ) -> Result<(), ActorProcessingErr> {
        for action in actions {
            match action {
                Action::SetStatus { from, to } => {
                    // A status between start and end (Stopping, Paused) is
                    // advisory: the run goes on without it.
                    if let Err(err) = self.store.set_status(&self.spec.name, to).await {
                        self.note(true, &format!("cannot record the status {to}: {err}"));
                    }
                    self.publish(SandboxEvent::StatusChanged { from, to });
                }
                Action::SignalAll(signo) => self.to_link(AgentLinkMsg::Signal {
                    target: SignalTarget::All,
                    signo,
                })?,
                Action::KillThroughAgent => self.to_link(AgentLinkMsg::Kill)?,
                Action::KillFromHost => self.to_link(AgentLinkMsg::KillFromHost)?,
                Action::ArmEscalation { epoch, after } => {
                    myself.send_after(after, move || SupervisorMsg::Escalate { epoch });
                }
                Action::ArmKillTimeout(after) => {
                    myself.send_after(after, || SupervisorMsg::KillTimedOut);
                }
                Action::ArmDrainTimeout(after) => {
                    myself.send_after(after, || SupervisorMsg::DrainTimedOut);
                }
                Action::Escalated { from, to } => {
                    self.publish(SandboxEvent::Escalated { from, to });
                }
                Action::Note { warn, message } => self.note(warn, &message),
                Action::Started(pid) => self.started(myself, pid).await?,
                Action::WriteBootError(failure) => boot_error::write(&self.spec.log_dir, &failure),
                Action::Finish(ending) => self.finish(myself, ending).await?,
            }
        }
        Ok(())
    }

    fn to_link(&self, msg: AgentLinkMsg) -> Result<(), ActorProcessingErr> {
        if let Some(link) = &self.link {
            link.cast(msg)?;
        }
        Ok(())
    }

    /// [`Action::Started`]: the run row, events, sampling, the starter's answer.
    async fn started(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        pid: u32,
    ) -> Result<(), ActorProcessingErr> {
        let host_pid = self.init_pid.unwrap_or(pid);
        match self
            .store
            .run_started(&self.spec.name, host_pid, self.host, Utc::now())
            .await
        {
            Ok(run_id) => self.run_id = Some(run_id),
            Err(err) => {
                // A run nobody could find again (no row says it runs) must
                // not go on: it ends Crashed, which is recorded later.
                let why = format!("cannot record the run: {err}");
                if let Some(started) = self.started.take() {
                    let _ = started.send(Err(BootFailure {
                        stage: BootStage::Other,
                        errno: 0,
                        message: why.clone(),
                        exec_failed: false,
                    }));
                }
                myself.cast(SupervisorMsg::Abandon(format!(
                    "{why}; killing the sandbox"
                )))?;
                return Ok(());
            }
        }
        // `run_started` recorded Running with the run row.
        self.publish(SandboxEvent::StatusChanged {
            from: SandboxStatus::Starting,
            to: SandboxStatus::Running,
        });
        self.publish(SandboxEvent::SessionStarted { id: 1 });
        if let Some(interval) = self.spec.metrics_interval {
            self.sampler = Some(Sampler::new(host_pid));
            self.metrics_timer =
                Some(myself.send_interval(interval, || SupervisorMsg::SampleMetrics));
        }
        boot_error::remove(&self.spec.log_dir);
        // Routine: the embedding service's log, not the sandbox's file.
        tracing::info!(sandbox = %self.spec.name, pid, host_pid, "started");
        if let Some(started) = self.started.take() {
            let _ = started.send(Ok(pid));
        }
        Ok(())
    }

    /// [`Action::Finish`]: marker, run row, session events, waiters; then
    /// the supervisor stops.
    async fn finish(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        ending: Ending,
    ) -> Result<(), ActorProcessingErr> {
        let Ending {
            from,
            status,
            exit_code,
            signal,
            reason,
            failure,
            at,
        } = ending;
        if failure.is_none() {
            let marker = stopped_marker(&match (exit_code, signal) {
                (_, Some(signal)) => format!("signal {signal}"),
                (Some(code), None) => format!("exit {code}"),
                (None, None) => reason.to_string(),
            });
            // The marker goes after every chunk of the run: the agent link
            // reports the exit only once all output is written. Waiting for
            // it makes the marker visible to whoever hears of the end.
            let chunk = Chunk::system(marker.clone(), at);
            let written = ractor::call_t!(self.tap, RelayTapMsg::Append, 5_000, vec![chunk]);
            let written = matches!(written, Ok(Ok(())))
                // A tap that gave up (its restart budget spent) is gone and
                // no other writes the file: write the marker directly.
                || (matches!(self.tap.get_status(), ActorStatus::Stopped | ActorStatus::Stopping)
                    && append_system_record(&self.spec.log_dir, &marker, at).is_ok());
            if !written {
                self.note(true, "could not write the stopped marker to exec.log");
            }
        }
        let end = RunEnd {
            status,
            exit_code,
            signal,
            reason,
            at,
        };
        let ended = UnrecordedEnd {
            run_id: self.run_id,
            end,
        };
        let unrecorded = match ended.record(self.store.as_ref(), &self.spec.name).await {
            Ok(()) => None,
            Err(err) => {
                self.note(
                    true,
                    &format!("cannot record the end of the run yet ({err}); the runtime retries"),
                );
                Some(ended)
            }
        };
        if self.run_id.is_some() && failure.is_none() {
            // Sessions still counted here were not reported by the agent
            // (it was lost or killed from the host): they ended with it.
            let mut orphaned: Vec<u64> = self.sessions.drain().collect();
            orphaned.sort_unstable();
            for id in orphaned {
                self.publish(SandboxEvent::SessionExited {
                    id,
                    code: None,
                    signal: None,
                });
            }
            self.publish(SandboxEvent::SessionExited {
                id: 1,
                code: exit_code,
                signal,
            });
        }
        if let Some(timer) = self.metrics_timer.take() {
            timer.abort();
        }
        self.sampler = None;
        self.publish(SandboxEvent::StatusChanged { from, to: status });
        tracing::info!(sandbox = %self.spec.name, %status, %reason, ?exit_code, ?signal, "ended");
        let outcome = self
            .outcome()
            .ok_or("the phase machine finished without ending")?;
        if let Some(ended) = &self.ended {
            // A parent that is gone has nothing to forget.
            let _ = ended.send_message(SandboxEnded {
                name: self.spec.name.clone(),
                supervisor: myself.get_id(),
                unrecorded,
            });
        }
        for waiter in self.stop_waiters.drain(..) {
            let _ = waiter.send(outcome.clone());
        }
        if let (Some(failure), Some(started)) = (failure, self.started.take()) {
            let _ = started.send(Err(failure));
        }
        myself.stop(None);
        Ok(())
    }

    /// A line in `runtime.log` and in `tracing`.
    pub(super) fn note(&self, warn: bool, message: &str) {
        let level = if warn {
            tracing::warn!(sandbox = %self.spec.name, "{message}");
            tracing::Level::WARN
        } else {
            tracing::info!(sandbox = %self.spec.name, "{message}");
            tracing::Level::INFO
        };
        crate::log::runtime_log::append(&self.spec.log_dir, level, &self.spec.name, message);
    }
}
