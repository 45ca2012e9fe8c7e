//! The default seccomp filter, loaded for real: a child of the test process
//! sets `no_new_privs`, loads the compiled program, and execs a command.
//! What ordinary programs do works; the escapes fail with `EPERM`; unknown
//! syscalls and foreign syscall ABIs get `ENOSYS`.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::sync::Arc;

use sandvisor::isolation::caps::{self, DOCKER_DEFAULT};
use sandvisor::isolation::seccomp;
use sandvisor::Seccomp;

const PYTHON: &str = "/usr/bin/python3";

fn default_program() -> Arc<Vec<u8>> {
    seccomp::compile(&Seccomp::Default, DOCKER_DEFAULT)
        .expect("the default profile compiles")
        .expect("a program")
}

/// Runs `program args…` under `filter` (`None`: unfiltered, for controls).
fn run(filter: Option<&Arc<Vec<u8>>>, program: &str, args: &[&str]) -> Output {
    let mut command = Command::new(program);
    command.args(args);
    if let Some(filter) = filter {
        let filter = Arc::clone(filter);
        // SAFETY: between fork and exec this calls only prctl and seccomp,
        // both async-signal-safe system calls, on memory owned by the closure.
        unsafe {
            command.pre_exec(move || {
                let fprog = libc::sock_fprog {
                    len: u16::try_from(filter.len() / 8)
                        .map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?,
                    filter: filter.as_ptr().cast_mut().cast(),
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &raw const fprog,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    command.output().expect("the command runs")
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Python that prints `errno` of one raw syscall (0 when it succeeded).
fn python_errno(call: &str) -> String {
    format!(
        "import ctypes, sys\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         libc.syscall.restype = ctypes.c_long\n\
         r = {call}\n\
         print(ctypes.get_errno() if r == -1 else 0)\n"
    )
}

fn errno_of(filter: &Arc<Vec<u8>>, call: &str) -> i32 {
    let output = run(Some(filter), PYTHON, &["-c", &python_errno(call)]);
    assert!(output.status.success(), "{}", text(&output));
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("an errno: {}", text(&output)))
}

#[test]
fn ordinary_commands_work() {
    let filter = default_program();
    let output = run(
        Some(&filter),
        "/bin/sh",
        &["-c", "echo ok; ls / >/dev/null; cat /etc/hostname; ps -e >/dev/null; busybox true && echo busybox"],
    );
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("ok\n") && stdout.contains("busybox"),
        "{}",
        text(&output)
    );

    let python = run(
        Some(&filter),
        PYTHON,
        &["-c", "import subprocess, threading, os, socket, tempfile\n\
                 t = threading.Thread(target=lambda: None); t.start(); t.join()\n\
                 socket.socketpair()\n\
                 tempfile.TemporaryFile().write(b'x')\n\
                 print(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip(), os.getpid() > 0)"],
    );
    assert!(python.status.success(), "{}", text(&python));
    assert_eq!(String::from_utf8_lossy(&python.stdout).trim(), "child True");

    // A terminal session: script(1) opens a pty pair and runs a shell on it.
    let pty = run(Some(&filter), "script", &["-qec", "tty", "/dev/null"]);
    assert!(pty.status.success(), "{}", text(&pty));
    assert!(
        String::from_utf8_lossy(&pty.stdout).contains("/dev/pts/"),
        "{}",
        text(&pty)
    );
}

#[test]
fn namespaces_and_mounts_are_refused_with_eperm() {
    let filter = default_program();
    let unshare = run(Some(&filter), "unshare", &["-U", "true"]);
    assert!(!unshare.status.success(), "{}", text(&unshare));
    assert!(
        String::from_utf8_lossy(&unshare.stderr).contains("Operation not permitted"),
        "{}",
        text(&unshare)
    );
    let mount = run(Some(&filter), "mount", &["-t", "tmpfs", "x", "/mnt"]);
    assert!(!mount.status.success(), "{}", text(&mount));

    let clone_flags = libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::SIGCHLD;
    assert_eq!(
        errno_of(
            &filter,
            &format!(
                "libc.syscall({}, {clone_flags}, 0, 0, 0, 0)",
                libc::SYS_clone
            )
        ),
        libc::EPERM,
        "clone with namespace flags"
    );
    assert_eq!(
        errno_of(
            &filter,
            &format!("libc.syscall({}, 0, 0)", libc::SYS_clone3)
        ),
        libc::ENOSYS,
        "clone3, whose flags the filter cannot see"
    );
    assert_eq!(
        errno_of(
            &filter,
            &format!("libc.syscall({}, {})", libc::SYS_setns, -1)
        ),
        libc::EPERM
    );
}

#[test]
fn keyrings_and_kernel_interfaces_are_refused_with_eperm() {
    let filter = default_program();
    for (name, call) in [
        (
            "keyctl",
            format!("libc.syscall({}, 0, 0, 0, 0, 0)", libc::SYS_keyctl),
        ),
        (
            "add_key",
            format!("libc.syscall({}, 0, 0, 0, 0, 0)", libc::SYS_add_key),
        ),
        ("bpf", format!("libc.syscall({}, 0, 0, 0)", libc::SYS_bpf)),
        (
            "perf_event_open",
            format!("libc.syscall({}, 0, 0, 0, 0, 0)", libc::SYS_perf_event_open),
        ),
        (
            "open_by_handle_at",
            format!("libc.syscall({}, 0, 0, 0)", libc::SYS_open_by_handle_at),
        ),
        (
            "init_module",
            format!("libc.syscall({}, 0, 0, 0)", libc::SYS_init_module),
        ),
        (
            "reboot",
            format!("libc.syscall({}, 0, 0, 0, 0)", libc::SYS_reboot),
        ),
        (
            "process_vm_readv",
            format!(
                "libc.syscall({}, 1, 0, 0, 0, 0, 0)",
                libc::SYS_process_vm_readv
            ),
        ),
        (
            "userfaultfd",
            format!("libc.syscall({}, 0)", libc::SYS_userfaultfd),
        ),
        (
            "socket(AF_VSOCK)",
            format!(
                "libc.syscall({}, {}, 1, 0)",
                libc::SYS_socket,
                libc::AF_VSOCK
            ),
        ),
        (
            // The kernel reads an int: high bits must not hide the family.
            "socket(AF_VSOCK | 1 << 32)",
            format!(
                "libc.syscall({}, ctypes.c_long({}), 1, 0)",
                libc::SYS_socket,
                (1u64 << 32) | libc::AF_VSOCK as u64
            ),
        ),
        (
            "io_uring_setup",
            format!("libc.syscall({}, 1, 0)", libc::SYS_io_uring_setup),
        ),
        (
            "settimeofday",
            format!("libc.syscall({}, 0, 0)", libc::SYS_settimeofday),
        ),
    ] {
        assert_eq!(errno_of(&filter, &call), libc::EPERM, "{name}");
    }
}

#[test]
fn unknown_syscalls_get_enosys() {
    let filter = default_program();
    assert_eq!(errno_of(&filter, "libc.syscall(1000)"), libc::ENOSYS);
    // A personality value outside the safe ones is not allowed.
    assert_eq!(
        errno_of(
            &filter,
            &format!("libc.syscall({}, 0x0040000)", libc::SYS_personality)
        ),
        libc::ENOSYS
    );
    assert_eq!(
        errno_of(
            &filter,
            &format!(
                "libc.syscall({}, ctypes.c_ulong(0xffffffff))",
                libc::SYS_personality
            )
        ),
        0,
        "querying the personality is allowed"
    );
}

/// `getpid` through the 32-bit `int 0x80` entry, from a page of machine
/// code: `mov eax, 20; int 0x80; ret`. Prints what eax came back with.
#[cfg(target_arch = "x86_64")]
const INT80_GETPID: &str = "import ctypes, mmap\n\
    code = bytes([0xb8, 20, 0, 0, 0, 0xcd, 0x80, 0xc3])\n\
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n\
    page.write(code)\n\
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))\n\
    print(ctypes.CFUNCTYPE(ctypes.c_int)(address)())\n";

#[cfg(target_arch = "x86_64")]
#[test]
fn foreign_syscall_abis_are_refused() {
    let filter = default_program();
    // x32: the same entry point, numbers with bit 30 set.
    assert_eq!(
        errno_of(
            &filter,
            &format!("libc.syscall({})", 0x4000_0000 | libc::SYS_getpid)
        ),
        libc::ENOSYS,
        "x32 getpid"
    );
    // ia32 through int 0x80: only when this kernel runs 32-bit code at all.
    let control = run(None, PYTHON, &["-c", INT80_GETPID]);
    let works = control.status.success()
        && String::from_utf8_lossy(&control.stdout)
            .trim()
            .parse::<i32>()
            .is_ok_and(|pid| pid > 0);
    if !works {
        eprintln!(
            "skipped the int 0x80 check: this kernel has no 32-bit syscall entry ({})",
            text(&control)
        );
        return;
    }
    let filtered = run(Some(&filter), PYTHON, &["-c", INT80_GETPID]);
    assert!(filtered.status.success(), "{}", text(&filtered));
    assert_eq!(
        String::from_utf8_lossy(&filtered.stdout).trim(),
        (-libc::ENOSYS).to_string(),
        "{}",
        text(&filtered)
    );
}

#[test]
fn a_capability_opens_its_syscalls() {
    let sys_admin = caps::parse("SYS_ADMIN").expect("a capability");
    let admin = seccomp::compile(&Seccomp::Default, DOCKER_DEFAULT | 1 << sys_admin)
        .expect("compiles")
        .expect("a program");
    // The test runs as root: with CAP_SYS_ADMIN granted the filter lets
    // unshare through, and the kernel allows it.
    let unshare = run(Some(&admin), "unshare", &["-U", "true"]);
    assert!(unshare.status.success(), "{}", text(&unshare));
}
