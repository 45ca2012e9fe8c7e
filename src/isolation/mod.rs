//! Isolation policy computed on the host before a sandbox starts: which
//! Linux capabilities it keeps ([`caps`]) and the seccomp filter every
//! session's process gets ([`seccomp`]).
//!
//! # Contract
//! - Everything here is pure policy: it reads a profile file at most, never
//!   changes the calling process. The agent applies the results (the
//!   capability mask and the compiled BPF bytes of
//!   `sandvisor_actors::protocol::isolation::Confinement`).
//! - Errors are reasons (strings); the caller names the config field
//!   (`cap_add[1]`, `seccomp`) in `Error::InvalidConfig`.

pub mod caps;
pub mod seccomp;

#[cfg(test)]
mod tests;
