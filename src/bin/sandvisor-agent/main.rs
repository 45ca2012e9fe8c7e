//! `sandvisor-agent`: the sandbox's PID 1, and the process that forks it.
//!
//! The host starts this binary once per runtime, with its end of the spawn
//! channel (`sandvisor_actors::protocol::spawn`) as standard input: that
//! process is the [spawner]. For each request it forks an [agent] that runs
//! one sandbox and speaks SAP with the host on the socket the request
//! carried.
//!
//! Its wire formats come straight from the protocol module of
//! `sandvisor-actors`, a leaf that links none of the actors; the binary uses
//! nothing of the `sandvisor` library.

mod agent;
mod spawner;

fn main() {
    spawner::serve()
}
