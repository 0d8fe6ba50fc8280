//! The few system calls std does not wrap. Declared by hand: the agent is
//! built by a bare `rustc` call without the `libc` crate.

use std::ffi::{c_int, c_long, c_short, c_ulong};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Signal numbers and poll flags (the same on every Linux architecture).
pub const SIGKILL: c_int = 9;
#[allow(missing_docs)]
pub const SIGTERM: c_int = 15;
#[allow(missing_docs)]
pub const POLLIN: c_short = 0x1;
const F_GETFL: c_int = 3;
const F_SETFL: c_int = 4;
const O_NONBLOCK: c_int = 0o4000;
const F_SETPIPE_SZ: c_int = 1031;
/// The same number on every Linux architecture (added in 5.3).
const SYS_PIDFD_OPEN: c_long = 434;

/// `struct pollfd`.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(missing_docs)]
pub struct PollFd {
    pub fd: c_int,
    pub events: c_short,
    pub revents: c_short,
}

extern "C" {
    fn setsid() -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn poll(fds: *mut PollFd, nfds: c_ulong, timeout: c_int) -> c_int;
    fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
    fn syscall(n: c_long, ...) -> c_long;
    fn inotify_init1(flags: c_int) -> c_int;
    fn inotify_add_watch(fd: c_int, path: *const std::ffi::c_char, mask: u32) -> c_int;
}

/// Makes the calling (child) process the leader of a new session and group.
pub fn new_session() -> std::io::Result<()> {
    // SAFETY: setsid takes no arguments and only changes this process.
    if unsafe { setsid() } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `sig` to the process group `pgid`.
pub fn kill_group(pgid: u32, sig: c_int) {
    // Never signal group 0 or -1 (ourselves, everything).
    if pgid > 1 {
        // SAFETY: kill has no memory effects; a stale group only gives ESRCH.
        unsafe { kill(-(pgid as c_int), sig) };
    }
}

/// Waits until one of `fds` is ready or `timeout_ms` passes (-1: forever).
pub fn wait_ready(fds: &mut [PollFd], timeout_ms: c_int) -> std::io::Result<usize> {
    // SAFETY: the pointer and length describe a live, exclusively borrowed slice.
    let n = unsafe { poll(fds.as_mut_ptr(), fds.len() as c_ulong, timeout_ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// Puts a descriptor into non-blocking mode.
pub fn set_nonblocking(fd: &impl AsRawFd) -> std::io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no pointers involved.
    let flags = unsafe { fcntl(fd, F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { fcntl(fd, F_SETFL, flags | O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Asks for a pipe buffer of `bytes` (best effort: the kernel caps it at
/// `/proc/sys/fs/pipe-max-size` for unprivileged processes).
pub fn grow_pipe(fd: &impl AsRawFd, bytes: usize) {
    // SAFETY: F_SETPIPE_SZ on a descriptor we own; no pointers involved.
    unsafe { fcntl(fd.as_raw_fd(), F_SETPIPE_SZ, bytes as c_int) };
}

/// A descriptor that becomes readable when process `pid` exits, where the
/// kernel has pidfds (5.3+); `None` makes the caller poll `try_wait`.
pub fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { syscall(SYS_PIDFD_OPEN, pid as c_int, 0 as c_int) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor; nobody else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as c_int) })
}

/// inotify event bits (`<sys/inotify.h>`).
pub const IN_MODIFY: u32 = 0x2;
#[allow(missing_docs)]
pub const IN_ATTRIB: u32 = 0x4;
#[allow(missing_docs)]
pub const IN_CLOSE_WRITE: u32 = 0x8;
#[allow(missing_docs)]
pub const IN_MOVED_FROM: u32 = 0x40;
#[allow(missing_docs)]
pub const IN_MOVED_TO: u32 = 0x80;
#[allow(missing_docs)]
pub const IN_CREATE: u32 = 0x100;
#[allow(missing_docs)]
pub const IN_DELETE: u32 = 0x200;
#[allow(missing_docs)]
pub const IN_DELETE_SELF: u32 = 0x400;
#[allow(missing_docs)]
pub const IN_MOVE_SELF: u32 = 0x800;
#[allow(missing_docs)]
pub const IN_Q_OVERFLOW: u32 = 0x4000;
#[allow(missing_docs)]
pub const IN_IGNORED: u32 = 0x8000;
#[allow(missing_docs)]
pub const IN_ONLYDIR: u32 = 0x0100_0000;
const IN_NONBLOCK: c_int = O_NONBLOCK;
const IN_CLOEXEC: c_int = 0o2_000_000;

/// A non-blocking inotify instance, or the reason there is none.
pub fn inotify() -> std::io::Result<OwnedFd> {
    // SAFETY: inotify_init1 takes flags and returns a new descriptor.
    let fd = unsafe { inotify_init1(IN_NONBLOCK | IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Watches `path` on inotify instance `fd` (the same path again returns
/// the same watch descriptor).
pub fn add_watch(fd: &impl AsRawFd, path: &str, mask: u32) -> std::io::Result<i32> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a NUL-terminated string alive for the call.
    let wd = unsafe { inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
    if wd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(wd)
}
