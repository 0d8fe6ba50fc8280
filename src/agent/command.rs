//! One command: spawn (one fork+exec, own session and process group, stdin
//! from `/dev/null` or, for a tunnelled shell, the host's `STDIN` frames),
//! stream its outputs, enforce its timeout, report how it ended.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use super::sys::{self, PollFd, POLLIN};
use super::wire::{
    encode_head, header, Exec, Exit, DATA_CHUNK, ERROR, EXIT, HEADER, STDERR, STDOUT,
};
use super::Registry;

/// How long a command may ignore SIGTERM after its timeout before the whole
/// group gets SIGKILL (as `timeout -k 5`).
const KILL_AFTER: Duration = Duration::from_secs(5);

/// Without pidfds, how often to check whether the child has exited while a
/// background process keeps its pipes open.
const EXIT_TICK_MS: i32 = 20;

/// The size stdout pipes are grown to, so a fast writer fills several
/// frames per wake-up.
const PIPE: usize = 1024 * 1024;

/// Frames, encoded, on their way to the writer thread.
pub type Out = SyncSender<Vec<u8>>;

/// One encoded frame.
pub fn frame(kind: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + payload.len());
    encode_head(&mut v, kind, id, payload.len());
    v.extend_from_slice(payload);
    v
}

/// Reads what `r` has, up to [`DATA_CHUNK`] bytes, straight into a new
/// frame of `kind` (header filled in: the bytes are not copied again on
/// their way out). `Ok(None)` at end of file.
pub fn read_into_frame(r: &mut impl Read, kind: u8, id: u32) -> std::io::Result<Option<Vec<u8>>> {
    let mut v = vec![0u8; HEADER + DATA_CHUNK];
    let n = loop {
        match r.read(&mut v[HEADER..]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => break other?,
        }
    };
    if n == 0 {
        return Ok(None);
    }
    v.truncate(HEADER + n);
    v[..HEADER].copy_from_slice(&header(kind, id, n));
    Ok(Some(v))
}

fn spawn(argv: &[String], piped_stdin: bool) -> std::io::Result<Child> {
    let mut c = Command::new(&argv[0]);
    let stdin = match piped_stdin {
        true => Stdio::piped(),
        false => Stdio::null(),
    };
    c.args(&argv[1..])
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe and touches nothing of the parent.
    unsafe { c.pre_exec(sys::new_session) };
    c.spawn()
}

/// Runs one request (a single try: a retried one goes to
/// [`super::wait::run`]) to the end; sends its frames on `out`.
pub fn run(id: u32, exec: Exec, stdin: Option<Receiver<Vec<u8>>>, out: Out, registry: Registry) {
    if let Some((ended, pipes)) = run_once(id, &exec, stdin, &out, &registry) {
        registry.lock().expect("registry").remove(&id);
        let _ = out.send(frame(EXIT, id, &ended.encode()));
        // The reply is out; a background process may keep writing
        // without getting SIGPIPE, as it could into the bash
        // protocol's output files.
        drain(pipes, id, &out);
    }
}

/// One try: spawn, stream, wait for the exit. `None` when it could not be
/// spawned (the error frame is sent). Leaves the registry entry at 0.
pub(super) fn run_once(
    id: u32,
    exec: &Exec,
    stdin: Option<Receiver<Vec<u8>>>,
    out: &Out,
    registry: &Registry,
) -> Option<(Exit, Pipes)> {
    let shell = || vec!["bash".to_owned(), "-c".to_owned(), exec.script.clone()];
    // A word list is exec'd directly; if that fails (no such program, a
    // shell builtin), bash runs it and reports the error in its own words.
    let piped = stdin.is_some();
    let child = match exec.words.is_empty() {
        false => spawn(&exec.words, piped).or_else(|_| spawn(&shell(), piped)),
        true => spawn(&shell(), piped),
    };
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot run bash: {e}");
            let _ = out.send(frame(ERROR, id, msg.as_bytes()));
            return None;
        }
    };
    if let (Some(rx), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Its own thread: a command that does not read must not stall the
        // agent's request loop. An empty chunk or a gone host closes it.
        std::thread::spawn(move || {
            while let Ok(chunk) = rx.recv() {
                if chunk.is_empty() || pipe.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
    }
    let pid = child.id();
    match registry.lock().expect("registry").get_mut(&id) {
        Some(entry) => *entry = pid,
        // Killed before it started.
        None => sys::kill_group(pid, sys::SIGKILL),
    }
    let timeout = (exec.timeout_ms > 0).then(|| Duration::from_millis(exec.timeout_ms));
    let ended = watch(id, &mut child, timeout, out);
    if let Some(entry) = registry.lock().expect("registry").get_mut(&id) {
        *entry = 0;
    }
    Some(ended)
}

pub(super) struct Pipes {
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
}

impl Pipes {
    /// Forwards what is available on the ready pipes; `forward` false
    /// discards it into `buf` (after the reply, for background processes).
    fn pump(&mut self, ready: &[bool; 2], id: u32, out: &Out, forward: bool, buf: &mut [u8]) {
        if ready[0] {
            pump_one(&mut self.stdout, STDOUT, id, out, forward, buf);
        }
        if ready[1] {
            pump_one(&mut self.stderr, STDERR, id, out, forward, buf);
        }
    }

    fn poll_fds(&self) -> Vec<PollFd> {
        let fd = |o: Option<i32>| PollFd {
            fd: o.unwrap_or(-1),
            events: POLLIN,
            revents: 0,
        };
        vec![
            fd(self.stdout.as_ref().map(|p| p.as_raw_fd())),
            fd(self.stderr.as_ref().map(|p| p.as_raw_fd())),
        ]
    }

    fn open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }
}

/// Reads until the pipe would block; closes it at end of file.
fn pump_one<R: Read>(
    pipe: &mut Option<R>,
    kind: u8,
    id: u32,
    out: &Out,
    forward: bool,
    buf: &mut [u8],
) {
    let Some(p) = pipe else { return };
    loop {
        let read = match forward {
            true => read_into_frame(p, kind, id),
            false => p.read(buf).map(|n| (n > 0).then(Vec::new)),
        };
        match read {
            Ok(None) => {
                *pipe = None;
                return;
            }
            Ok(Some(f)) => {
                if forward && out.send(f).is_err() {
                    *pipe = None;
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => {
                *pipe = None;
                return;
            }
        }
    }
}

fn millis_until(t: Instant) -> i32 {
    t.saturating_duration_since(Instant::now())
        .as_millis()
        .min(i32::MAX as u128) as i32
}

/// Streams outputs until the child exits, enforcing the timeout; then
/// forwards what it wrote before exiting and returns the pipes, which
/// background processes may still hold.
fn watch(id: u32, child: &mut Child, timeout: Option<Duration>, out: &Out) -> (Exit, Pipes) {
    let pgid = child.id();
    let mut pipes = Pipes {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
    };
    if let Some(p) = &pipes.stdout {
        let _ = sys::set_nonblocking(p);
        sys::grow_pipe(p, PIPE);
    }
    if let Some(p) = &pipes.stderr {
        let _ = sys::set_nonblocking(p);
    }
    let pidfd = sys::pidfd_open(pgid);
    let started = Instant::now();
    let mut term_at = timeout.map(|t| started + t);
    let mut kill_at: Option<Instant> = None;
    let mut timed_out = false;
    let status = loop {
        let mut fds = pipes.poll_fds();
        if let Some(p) = &pidfd {
            fds.push(PollFd {
                fd: p.as_raw_fd(),
                events: POLLIN,
                revents: 0,
            });
        }
        let next = [term_at, kill_at].into_iter().flatten().min();
        let mut wait = next.map_or(-1, millis_until);
        if pidfd.is_none() && (!pipes.open() || !(0..=EXIT_TICK_MS).contains(&wait)) {
            wait = EXIT_TICK_MS;
        }
        if sys::wait_ready(&mut fds, wait).is_err() {
            std::thread::sleep(Duration::from_millis(EXIT_TICK_MS as u64));
        }
        let ready = [fds[0].revents != 0, fds[1].revents != 0];
        pipes.pump(&ready, id, out, true, &mut []);
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        let now = Instant::now();
        if term_at.is_some_and(|t| now >= t) {
            term_at = None;
            timed_out = true;
            sys::kill_group(pgid, sys::SIGTERM);
            kill_at = Some(now + KILL_AFTER);
        }
        if kill_at.is_some_and(|t| now >= t) {
            kill_at = None;
            sys::kill_group(pgid, sys::SIGKILL);
        }
    };
    // What the child wrote before it exited is in the pipes now.
    pipes.pump(&[true, true], id, out, true, &mut []);
    if timed_out {
        // Nothing of a timed-out command survives it.
        sys::kill_group(pgid, sys::SIGKILL);
    }
    let signal = status.signal().unwrap_or(0);
    let exit = Exit {
        status: if timed_out {
            124
        } else {
            status.code().unwrap_or(128 + signal)
        },
        signal,
        timed_out,
    };
    (exit, pipes)
}

/// Discards what background processes still write to a finished command's
/// pipes, until they close them.
pub(super) fn drain(mut pipes: Pipes, id: u32, out: &Out) {
    let mut buf = vec![0u8; 64 * 1024];
    while pipes.open() {
        let mut fds = pipes.poll_fds();
        let _ = sys::wait_ready(&mut fds, -1);
        let ready = [fds[0].revents != 0, fds[1].revents != 0];
        pipes.pump(&ready, id, out, false, &mut buf);
    }
}
