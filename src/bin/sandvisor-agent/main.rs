//! `sandvisor-agent`: the sandbox's PID 1, and the process that forks it.
//!
//! The host starts this binary once per runtime, with its end of the spawn
//! channel (`sandvisor::engine::protocol::spawn`) as standard input: that
//! process is the [spawner]. For each request it forks an [agent] that runs
//! one sandbox and speaks SAP with the host on the socket the request
//! carried.

mod agent;
mod spawner;

fn main() {
    spawner::serve()
}
