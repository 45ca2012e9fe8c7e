//! Linux capability names and sets. A set is a `u64` mask: bit `n` is
//! capability number `n` (`capabilities(7)`), as in
//! `Confinement::capabilities`.
//!
//! Names are those of the `caps` crate's table (the kernel's, through
//! `CAP_CHECKPOINT_RESTORE`), written with or without `CAP_`, in any case.

use std::str::FromStr;

use caps::Capability;

const fn bit(cap: Capability) -> u64 {
    1 << cap as u8
}

/// Docker's default capability set: what a sandbox keeps unless `cap_add`
/// / `cap_drop` say otherwise.
pub const DOCKER_DEFAULT: u64 = bit(Capability::CAP_CHOWN)
    | bit(Capability::CAP_DAC_OVERRIDE)
    | bit(Capability::CAP_FSETID)
    | bit(Capability::CAP_FOWNER)
    | bit(Capability::CAP_MKNOD)
    | bit(Capability::CAP_NET_RAW)
    | bit(Capability::CAP_SETGID)
    | bit(Capability::CAP_SETUID)
    | bit(Capability::CAP_SETFCAP)
    | bit(Capability::CAP_SETPCAP)
    | bit(Capability::CAP_NET_BIND_SERVICE)
    | bit(Capability::CAP_SYS_CHROOT)
    | bit(Capability::CAP_KILL)
    | bit(Capability::CAP_AUDIT_WRITE);

/// The word that stands for every capability in `cap_add` / `cap_drop`.
const ALL: &str = "ALL";

/// Every capability this table knows.
fn all() -> u64 {
    caps::all().iter().fold(0, |mask, cap| mask | cap.bitmask())
}

/// The number of the capability called `name` (`"NET_ADMIN"`,
/// `"CAP_NET_ADMIN"`, `"net_admin"`), or `None` for an unknown name (and
/// for `"ALL"`, which is not a capability).
pub fn parse(name: &str) -> Option<u32> {
    Capability::from_str(&caps::to_canonical(name.trim()))
        .ok()
        .map(|cap| u32::from(cap.index()))
}

/// The capability set for a sandbox: Docker's default set, minus
/// `cap_drop`, plus `cap_add` (Docker's order). `"ALL"` in `cap_drop`
/// starts from nothing; `"ALL"` in `cap_add` gives every capability except
/// those `cap_drop` names.
///
/// # Errors
/// `(field, reason)` for a name that is not a capability, `field` being
/// `cap_add[i]` or `cap_drop[i]`.
pub fn resolve(cap_add: &[String], cap_drop: &[String]) -> Result<u64, (String, String)> {
    let add = mask_of("cap_add", cap_add)?;
    let drop = mask_of("cap_drop", cap_drop)?;
    let mask = if add.all {
        all() & !drop.named
    } else if drop.all {
        add.named
    } else {
        (DOCKER_DEFAULT & !drop.named) | add.named
    };
    Ok(mask)
}

/// The names (without `CAP_`) of the capabilities in `mask`, by number; a
/// bit this table has no name for shows as its number.
pub fn names(mask: u64) -> Vec<String> {
    let mut known: Vec<Capability> = caps::all().into_iter().collect();
    known.sort_by_key(Capability::index);
    (0..64u8)
        .filter(|n| mask & (1 << n) != 0)
        .map(|n| match known.iter().find(|cap| cap.index() == n) {
            Some(cap) => cap.to_string().trim_start_matches("CAP_").to_owned(),
            None => n.to_string(),
        })
        .collect()
}

/// A `cap_add` or `cap_drop` list, parsed.
struct Named {
    /// The list says `ALL`.
    all: bool,
    /// The capabilities it names.
    named: u64,
}

fn mask_of(field: &str, names: &[String]) -> Result<Named, (String, String)> {
    let mut out = Named {
        all: false,
        named: 0,
    };
    for (i, name) in names.iter().enumerate() {
        if name.trim().eq_ignore_ascii_case(ALL) {
            out.all = true;
            continue;
        }
        match parse(name) {
            Some(n) => out.named |= 1 << n,
            None => {
                return Err((
                    format!("{field}[{i}]"),
                    format!("unknown capability {name:?} (use a name from capabilities(7), with or without CAP_, or ALL)"),
                ))
            }
        }
    }
    Ok(out)
}
