//! What the supervisor does for the phase machine: each [`Action`] executed,
//! in order, before the next message (see the [supervisor](super) docs).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::ActorProcessingErr;
use ractor::{ActorRef, ActorStatus};

use super::SupervisorState;
use crate::log::tap::{append_system_record, Chunk, RelayTapMsg};
use crate::protocol::BootStage;
use crate::protocol::SignalTarget;
use crate::sandbox::events::SandboxEvent;
use crate::sandbox::health::HealthTracker;
use crate::sandbox::lifecycle::PendingRestart;
use crate::sandbox::lifecycle::{RunEnd, SandboxStatus};
use crate::sandbox::metrics::Sampler;
use crate::sandbox::phase::{Action, Ending, Phase};
use crate::sandbox::policy::{Decision, RestartEnd, RunSummary};
use crate::sandbox::{
    boot_error, stopped_marker, AgentLinkMsg, BootFailure, SandboxEnded, SupervisorMsg,
    UnrecordedEnd,
};

impl SupervisorState {
    pub(super) async fn execute(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        mut actions: Vec<Action>,
    ) -> Result<(), ActorProcessingErr> {
        boot_error::with_console(&self.spec.log_dir, &mut actions);
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
                    self.arm_run_timer(myself, after, move || SupervisorMsg::Escalate { epoch });
                }
                Action::ArmKillTimeout(after) => {
                    self.arm_run_timer(myself, after, || SupervisorMsg::KillTimedOut);
                }
                Action::ArmDrainTimeout(after) => {
                    self.arm_run_timer(myself, after, || SupervisorMsg::DrainTimedOut);
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

    /// Arms a timer that belongs to the current run: it is aborted when the
    /// run ends, so it never reaches the next one.
    pub(super) fn arm_run_timer(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        after: Duration,
        msg: impl FnOnce() -> SupervisorMsg + Send + 'static,
    ) {
        // Fired timers are dropped as new ones come: a long run with an idle
        // check or many timed execs keeps only the live handles.
        self.run_timers.retain(|timer| !timer.is_finished());
        self.run_timers.push(myself.send_after(after, msg));
    }

    pub(super) fn to_link(&self, msg: AgentLinkMsg) -> Result<(), ActorProcessingErr> {
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
        if let Some((run_id, started_at)) = self.adopted.take() {
            return self
                .readopted(myself, pid, host_pid, run_id, started_at)
                .await;
        }
        if let Some(vm) = &self.spec.vm.plan.vm {
            let accel = if vm.kvm { "kvm" } else { "tcg" };
            self.note(
                false,
                &format!(
                    "microVM up: qemu microvm ({accel}), {} vCPU, {} MiB, kernel {}",
                    vm.vcpus, vm.memory_mib, vm.kernel
                ),
            );
        }
        match self
            .store
            .run_started(
                &self.spec.name,
                host_pid,
                self.host,
                Utc::now(),
                self.restarts.attempts(),
            )
            .await
        {
            Ok(run_id) => {
                self.run_id = Some(run_id);
                self.events.run_recorded(run_id);
            }
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
        self.running_since = Some(Instant::now());
        if let Some(limit) = self.spec.max_lifetime {
            self.arm_run_timer(myself, limit, || SupervisorMsg::LifetimeExceeded);
        }
        self.arm_run_checks(myself).await;
        // Routine: the embedding service's log, not the sandbox's file.
        tracing::info!(sandbox = %self.spec.name, pid, host_pid, "started");
        if let Some(started) = self.started.take() {
            let _ = started.send(Ok(pid));
        }
        Ok(())
    }

    /// [`Action::Started`] for a run taken over from a dead host: its row
    /// exists (moved to this host by the runtime), so nothing is recorded;
    /// the timers start again, a lifetime limit counting from the run's
    /// start.
    async fn readopted(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        pid: u32,
        host_pid: u32,
        run_id: i64,
        started_at: chrono::DateTime<Utc>,
    ) -> Result<(), ActorProcessingErr> {
        self.run_id = Some(run_id);
        self.events.run_recorded(run_id);
        let message = format!(
            "re-adopted by host process {} (agent pid {host_pid}); output resumes where exec.log ends",
            std::process::id()
        );
        self.note(false, &message);
        if let Some(interval) = self.spec.metrics_interval {
            self.sampler = Some(Sampler::new(host_pid));
            self.metrics_timer =
                Some(myself.send_interval(interval, || SupervisorMsg::SampleMetrics));
        }
        let ran = (Utc::now() - started_at).to_std().unwrap_or_default();
        self.running_since = Instant::now().checked_sub(ran).or(Some(Instant::now()));
        if let Some(limit) = self.spec.max_lifetime {
            let left = limit.saturating_sub(ran).max(Duration::from_millis(1));
            self.arm_run_timer(myself, left, || SupervisorMsg::LifetimeExceeded);
        }
        self.arm_run_checks(myself).await;
        tracing::info!(sandbox = %self.spec.name, pid, host_pid, run_id, "re-adopted");
        if let Some(started) = self.started.take() {
            let _ = started.send(Ok(pid));
        }
        Ok(())
    }

    /// The health check and idle timers of a run that has started.
    pub(super) async fn arm_run_checks(&mut self, myself: &ActorRef<SupervisorMsg>) {
        if self.spec.health.is_some() {
            // `ps` shows `health: starting` until the first result.
            self.record_health().await;
            self.arm_health_check(myself);
        }
        if let Some(limit) = self.spec.idle_timeout {
            self.idle = (self.output_count.load(Ordering::Relaxed), Instant::now());
            self.arm_run_timer(myself, (limit / 4).max(Duration::from_millis(1)), || {
                SupervisorMsg::IdleCheck
            });
        }
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
            let written = matches!(written, Ok(Ok(_)))
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
        // Between runs (a restart pending) there is nothing to sample.
        self.metrics = None;
        for timer in self.run_timers.drain(..) {
            timer.abort();
        }
        if let Some(link) = self.link.take() {
            // Its agent is gone; a restart gets a link of its own.
            link.stop(None);
        }
        if let Some(network) = self.network.take() {
            // Its namespace is gone with the agent: so goes its helper.
            network.stop(None);
        }
        self.publish(SandboxEvent::StatusChanged { from, to: status });
        tracing::info!(sandbox = %self.spec.name, %status, %reason, ?exit_code, ?signal, "ended");
        // The first start's boot failure goes to its starter as an error,
        // not to the policy.
        let first_boot_failed = failure.is_some() && self.started.is_some();
        let run = RunSummary {
            reason,
            ran_for: self.running_since.take().map(|since| since.elapsed()),
            stopped_by: self.stopped_by,
            unrecorded: unrecorded.is_some(),
            unhealthy_restart: self.unhealthy_restart,
        };
        let decision = if first_boot_failed {
            Decision::NoPolicy
        } else {
            self.restarts
                .decide(self.spec.restart, &self.spec.backoff, run)
        };
        match decision {
            Decision::Restart { attempt, delay } => {
                if self.schedule_restart(myself, status, attempt, delay).await {
                    return Ok(());
                }
                self.end_restarts(RestartEnd::Unrecorded).await;
            }
            Decision::End(end) => self.end_restarts(end).await,
            Decision::NoPolicy => {}
        }
        self.final_end(myself, unrecorded, failure)
    }

    /// Ends the supervisor: tells the parent, answers the waiters (and the
    /// starter, of a boot failure), stops.
    pub(super) fn final_end(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        unrecorded: Option<UnrecordedEnd>,
        failure: Option<BootFailure>,
    ) -> Result<(), ActorProcessingErr> {
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

    /// Records and announces restart `attempt` after `delay`, and arms its
    /// timer; `false` if the store refused it (no restart then).
    async fn schedule_restart(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        ended: SandboxStatus,
        attempt: u32,
        delay: Duration,
    ) -> bool {
        let pending = PendingRestart {
            attempt,
            delay,
            at: Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX),
        };
        let recorded = self
            .store
            .set_restart(&self.spec.name, SandboxStatus::Starting, Some(pending))
            .await;
        if let Err(err) = recorded {
            self.note(
                true,
                &format!("cannot record the restart ({err}); not restarting"),
            );
            return false;
        }
        self.publish(SandboxEvent::StatusChanged {
            from: ended,
            to: SandboxStatus::Starting,
        });
        self.publish(SandboxEvent::RestartScheduled { attempt, delay });
        self.note(
            false,
            &format!(
                "restart policy {}: restart {attempt} in {delay:?}",
                self.spec.restart
            ),
        );
        let timer = myself.send_after(delay, move || SupervisorMsg::RestartDue { attempt });
        self.pending_restart = Some((pending, timer));
        true
    }

    /// Records on the last run why no restart follows, and publishes it.
    async fn end_restarts(&mut self, end: RestartEnd) {
        if let Some(run_id) = self.run_id {
            if let Err(err) = self.store.restart_ended(run_id, end).await {
                self.note(
                    true,
                    &format!("cannot record why restarting ended ({end}): {err}"),
                );
            }
        }
        self.note(
            false,
            &format!(
                "restart policy {}: not restarting ({end})",
                self.spec.restart
            ),
        );
        self.publish(SandboxEvent::RestartEnded { reason: end });
    }

    /// A stop, kill or drain while a restart waits: the restart is called
    /// off, the last run's status comes back, and the supervisor ends.
    pub(super) async fn call_off_restart(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let Some((_, timer)) = self.pending_restart.take() else {
            return Ok(());
        };
        timer.abort();
        let ended = self.phase.status();
        if let Err(err) = self.store.set_restart(&self.spec.name, ended, None).await {
            self.note(true, &format!("cannot record the status {ended}: {err}"));
        }
        self.publish(SandboxEvent::StatusChanged {
            from: SandboxStatus::Starting,
            to: ended,
        });
        self.end_restarts(RestartEnd::StopRequested).await;
        self.final_end(myself, None, None)
    }

    /// `RestartDue`: starts the next run (a new agent link; the run row
    /// comes at Ready).
    pub(super) async fn restart_due(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        attempt: u32,
    ) -> Result<(), ActorProcessingErr> {
        if self
            .pending_restart
            .as_ref()
            .is_none_or(|(pending, _)| pending.attempt != attempt)
        {
            return Ok(());
        }
        self.pending_restart = None;
        if let Err(err) = self
            .store
            .set_restart(&self.spec.name, SandboxStatus::Starting, None)
            .await
        {
            self.note(true, &format!("cannot record the restart as due: {err}"));
        }
        self.phase = Phase::Starting { stop: None };
        self.run_id = None;
        self.events.new_run();
        self.init_pid = None;
        self.sessions.clear();
        self.next_session = 1;
        self.metrics = None;
        self.stopped_by = None;
        self.health = HealthTracker::default();
        self.health_check = None;
        self.unhealthy_restart = false;
        let mut vm = self.spec.vm.clone();
        // Each run has its own cgroup; the last one's may not be gone yet.
        vm.cgroup_id = format!("{}-r{attempt}", vm.cgroup_id);
        let children = super::spawn_link(
            myself,
            vm,
            &self.tap_tx,
            &self.backend,
            &self.output_count,
            None,
            &self.spec.tap,
        )
        .await?;
        self.link = Some(children.link);
        self.network = children.network;
        self.arm_run_timer(myself, self.boot_timeout, || SupervisorMsg::BootTimedOut);
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
