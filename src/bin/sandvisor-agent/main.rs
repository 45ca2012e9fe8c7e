//! `sandvisor-agent`: the sandbox's PID 1, and the process that forks it.
//!
//! The host starts this binary once per runtime, with its end of the spawn
//! channel (`sandvisor_actors::protocol::spawn`) as standard input: that
//! process is the [spawner]. For each request it forks an [agent] that runs
//! one sandbox and speaks SAP with the host on the socket the request
//! carried — or, for a microVM, the [launcher] of the VM. In the VM's guest
//! the same binary is `/init` of the initramfs: the [guest]'s PID 1, which
//! brings the guest up and runs the agent there.
//!
//! Its wire formats come straight from the protocol module of
//! `sandvisor-actors`, a leaf that links none of the actors; the binary uses
//! nothing of the `sandvisor` library.

mod agent;
mod guest;
mod launcher;
mod spawner;

fn main() {
    // The kernel runs the initramfs's `/init` as PID 1; the host never
    // starts this binary as PID 1 of anything (agents are forked, not
    // executed).
    if std::process::id() == 1 && std::env::args_os().next().is_some_and(|arg| arg == "/init") {
        guest::boot()
    }
    spawner::serve()
}
