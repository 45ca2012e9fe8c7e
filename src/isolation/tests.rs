//! Capability names and sets; seccomp profiles parsed, refused and compiled.

use std::io::Write;

use super::caps;
use super::seccomp::{self, Seccomp};

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

#[test]
fn capability_names_parse_with_or_without_cap_in_any_case() {
    assert_eq!(caps::parse("NET_ADMIN"), Some(12));
    assert_eq!(caps::parse("CAP_NET_ADMIN"), Some(12));
    assert_eq!(caps::parse("net_admin"), Some(12));
    assert_eq!(caps::parse("cap_sys_admin"), Some(21));
    assert_eq!(caps::parse("CHECKPOINT_RESTORE"), Some(40));
    assert_eq!(caps::parse("ALL"), None);
    assert_eq!(caps::parse("NOT_A_CAP"), None);
    assert_eq!(caps::parse(""), None);
}

#[test]
fn the_default_set_is_dockers() {
    assert_eq!(caps::DOCKER_DEFAULT, 0x00000000a80425fb);
    assert_eq!(
        caps::names(caps::DOCKER_DEFAULT),
        strings(&[
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "FSETID",
            "KILL",
            "SETGID",
            "SETUID",
            "SETPCAP",
            "NET_BIND_SERVICE",
            "NET_RAW",
            "SYS_CHROOT",
            "MKNOD",
            "AUDIT_WRITE",
            "SETFCAP",
        ])
    );
    assert_eq!(caps::resolve(&[], &[]), Ok(caps::DOCKER_DEFAULT));
}

#[test]
fn drop_applies_before_add() {
    let mask = caps::resolve(&strings(&["NET_ADMIN"]), &strings(&["chown", "CAP_KILL"]));
    assert_eq!(
        mask,
        Ok((caps::DOCKER_DEFAULT & !(1 << 0) & !(1 << 5)) | 1 << 12)
    );
    // Named in both: added back, as Docker does.
    assert_eq!(
        caps::resolve(&strings(&["KILL"]), &strings(&["KILL"])),
        Ok(caps::DOCKER_DEFAULT)
    );
}

#[test]
fn all_in_either_list() {
    assert_eq!(caps::resolve(&[], &strings(&["ALL"])), Ok(0));
    assert_eq!(
        caps::resolve(&strings(&["NET_RAW"]), &strings(&["all"])),
        Ok(1 << 13)
    );
    let all = caps::resolve(&strings(&["ALL"]), &[]).map(u64::count_ones);
    assert_eq!(all, Ok(41));
    let all_but_admin = caps::resolve(&strings(&["ALL"]), &strings(&["SYS_ADMIN"]));
    assert_eq!(all_but_admin.map(|mask| mask & 1 << 21), Ok(0));
    assert_eq!(
        caps::names(u64::MAX >> 23).last().map(String::as_str),
        Some("CHECKPOINT_RESTORE")
    );
}

#[test]
fn unknown_capabilities_name_their_field() {
    let (field, reason) = caps::resolve(&strings(&["NET_ADMIN", "FLY"]), &[]).unwrap_err();
    assert_eq!(field, "cap_add[1]");
    assert!(reason.contains("\"FLY\""), "{reason}");
    let (field, _) = caps::resolve(&[], &strings(&["CAP_NOPE"])).unwrap_err();
    assert_eq!(field, "cap_drop[0]");
}

#[test]
fn names_of_bits_without_a_name_are_numbers() {
    assert_eq!(caps::names(1 << 0 | 1 << 50), strings(&["CHOWN", "50"]));
    assert!(caps::names(0).is_empty());
}

fn profile(text: &str) -> (tempfile::NamedTempFile, Seccomp) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write profile");
    let seccomp = Seccomp::Profile(file.path().to_owned());
    (file, seccomp)
}

fn check_error(text: &str) -> String {
    let (_file, seccomp) = profile(text);
    seccomp::check(&seccomp).expect_err("the profile is refused")
}

/// A small profile in Docker's format using every feature.
const PROFILE: &str = r#"{
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 38,
    "architectures": ["SCMP_ARCH_X86_64"],
    "syscalls": [
        {"names": ["read", "write", "exit_group", "execve"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
         "excludes": {"caps": ["CAP_SYS_ADMIN"]}, "comment": "no namespaces"},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"},
                  {"index": 0, "value": 16, "op": "SCMP_CMP_NE"}]},
        {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"], "minKernel": "4.8"}}
    ]
}"#;

/// A profile whose compiled filter is longer than the kernel loads: one
/// argument rule per value of `personality`.
fn oversized_profile() -> String {
    let rules = (0..5000)
        .map(|value| {
            format!(
                r#"{{"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{{"index": 0, "value": {value}, "op": "SCMP_CMP_EQ"}}]}}"#
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    format!(r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{rules}]}}"#)
}

#[test]
fn a_profile_longer_than_the_kernel_loads_is_refused_at_check() {
    let reason = check_error(&oversized_profile());
    assert!(reason.contains("instructions"), "{reason}");
    assert!(reason.contains("4096"), "{reason}");
    let (_file, seccomp) = profile(&oversized_profile());
    assert!(seccomp::compile(&seccomp, caps::DOCKER_DEFAULT).is_err_and(|r| r.contains("4096")));
}

/// The limit `check` applies is the kernel's: a filter of exactly
/// [`seccomp::MAX_INSTRUCTIONS`] instructions loads, one more does not
/// (`EINVAL`). Each load runs in a forked child, which the filter would
/// otherwise confine.
#[test]
fn the_limit_is_the_kernels() {
    let allow = libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    };
    for (len, expected) in [
        (seccomp::MAX_INSTRUCTIONS, 0),
        (seccomp::MAX_INSTRUCTIONS + 1, libc::EINVAL),
    ] {
        let program = vec![allow; len];
        let prog = libc::sock_fprog {
            len: len as u16,
            filter: program.as_ptr().cast_mut(),
        };
        // SAFETY: the child only makes raw syscalls and _exits.
        match unsafe { libc::fork() } {
            0 => unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let ret = libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog);
                let errno = *libc::__errno_location();
                libc::_exit(if ret == 0 { 0 } else { errno });
            },
            pid => {
                let mut status = 0;
                // SAFETY: waiting on our own child.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                assert!(libc::WIFEXITED(status));
                assert_eq!(libc::WEXITSTATUS(status), expected, "{len} instructions");
            }
        }
    }
}

#[test]
fn a_docker_profile_checks_and_compiles() {
    let (_file, seccomp) = profile(PROFILE);
    assert_eq!(seccomp::check(&seccomp), Ok(()));
    let plain = seccomp::compile(&seccomp, caps::DOCKER_DEFAULT)
        .expect("compiles")
        .expect("a program");
    let admin = seccomp::compile(&seccomp, caps::DOCKER_DEFAULT | 1 << 21)
        .expect("compiles")
        .expect("a program");
    assert_eq!(plain.len() % 8, 0);
    assert_ne!(plain, admin, "includes/excludes caps change the program");
}

#[test]
fn the_default_profile_compiles_once_per_mask() {
    let first = seccomp::compile(&Seccomp::Default, caps::DOCKER_DEFAULT)
        .expect("compiles")
        .expect("a program");
    assert!(!first.is_empty());
    assert_eq!(first.len() % 8, 0, "whole sock_filter instructions");
    let again = seccomp::compile(&Seccomp::Default, caps::DOCKER_DEFAULT)
        .expect("compiles")
        .expect("a program");
    assert!(std::sync::Arc::ptr_eq(&first, &again), "cached");
    let admin = seccomp::compile(&Seccomp::Default, caps::DOCKER_DEFAULT | 1 << 21)
        .expect("compiles")
        .expect("a program");
    assert_ne!(first, admin);
    assert_eq!(seccomp::check(&Seccomp::Default), Ok(()));
}

#[test]
fn unconfined_has_no_program() {
    assert_eq!(seccomp::compile(&Seccomp::Unconfined, 0), Ok(None));
    assert_eq!(seccomp::check(&Seccomp::Unconfined), Ok(()));
}

#[test]
fn seccomp_serializes_snake_case() {
    let json = serde_json::to_string(&Seccomp::Profile("/p.json".into())).expect("json");
    assert_eq!(json, r#"{"profile":"/p.json"}"#);
    assert_eq!(
        serde_json::to_string(&Seccomp::Unconfined).expect("json"),
        r#""unconfined""#
    );
}

#[test]
fn malformed_profiles_say_what_is_wrong() {
    let missing = seccomp::check(&Seccomp::Profile("/nonexistent/profile.json".into()));
    assert!(missing.is_err_and(|reason| reason.contains("/nonexistent/profile.json")));

    assert!(check_error("{not json").contains("not a seccomp profile"));
    assert!(
        check_error(r#"{"defaultAction": "SCMP_ACT_ALLOW", "sycalls": []}"#).contains("sycalls")
    );
    assert!(check_error(r#"{"defaultAction": "SCMP_ACT_EXPLODE"}"#).contains("SCMP_ACT_EXPLODE"));
    let syscall = check_error(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read", "frobnicate"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    assert!(
        syscall.contains("syscalls[0]") && syscall.contains("frobnicate"),
        "{syscall}"
    );
    let op = check_error(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ROUGHLY"}]}]}"#,
    );
    assert!(
        op.contains("syscalls[0].args[0]") && op.contains("SCMP_CMP_ROUGHLY"),
        "{op}"
    );
    let action = check_error(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_MAYBE"}]}"#,
    );
    assert!(
        action.contains("syscalls[0].action") && action.contains("SCMP_ACT_MAYBE"),
        "{action}"
    );
    let arch =
        check_error(r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_Z80"]}"#);
    assert!(arch.contains("SCMP_ARCH_Z80"), "{arch}");
    let cap = check_error(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_FLY"]}}]}"#,
    );
    assert!(
        cap.contains("includes.caps") && cap.contains("CAP_FLY"),
        "{cap}"
    );
    let notify = check_error(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}"#,
    );
    assert!(notify.contains("SCMP_ACT_NOTIFY"), "{notify}");
    let index = check_error(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    assert!(index.contains("index 6"), "{index}");
    let empty = check_error(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    assert!(empty.contains("no syscall names"), "{empty}");
}
