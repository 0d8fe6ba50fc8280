//! `attest-agent`: the guest side of the agent protocol ([`wire`]). It
//! replaces the backdoor shell on its connection (stdin/stdout), runs each
//! command with one fork+exec in its own session, streams the outputs back
//! and serves many requests at once, one thread each.
//!
//! std only, no crates: `build.rs` compiles this module tree with a bare
//! `rustc` call into a static binary that attest embeds and uploads into
//! guests (`guest::agent`). The library also compiles it, for tests and lints.

mod command;
pub mod sha256;
mod sys;
mod transfer;
mod unit_signals;
mod wait;
pub mod wire;

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

use transfer::Msg;
use wire::{
    Digest, Exec, Frame, Transfer, Wait, ACK, DATA, END, EXEC, GET, HELLO, KILL, PUT, STDIN,
    VERSION, WAIT,
};

/// Requests with a process: id → process group (0 while none runs). A
/// `KILL` removes the entry; a try spawned after that is killed at once.
type Registry = Arc<Mutex<HashMap<u32, u32>>>;

/// Running downloads: request id → set to stop it.
type Downloads = Arc<Mutex<HashMap<u32, Arc<AtomicBool>>>>;

/// Frames buffered towards the host before command threads wait: a fast
/// producer stalls instead of filling the guest's memory.
const QUEUE: usize = 64;

/// The agent's `main`: `--version` prints the version, otherwise serves
/// stdin/stdout until stdin closes. `--window BYTES` caps unacknowledged
/// output (0: none); by default it is [`wire::WINDOW`] when stdout is a
/// terminal (a virtconsole, whose host side drops what it cannot take).
/// `--connect PATH` serves a unix socket the host listens on instead (see
/// [`connect`]); stdin/stdout then stay open, unused, until it ends.
pub fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--version") {
        println!("attest-agent {VERSION}");
        return;
    }
    let option = |name: &str| {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1).cloned()
    };
    if let Some(path) = option("--connect") {
        if connect(&path) {
            std::process::exit(0);
        }
    }
    let on_tty = std::io::stdout().is_terminal();
    let window = match option("--window") {
        Some(w) => w.parse::<u64>().ok(),
        None => on_tty.then_some(wire::WINDOW),
    }
    .filter(|w| *w > 0);
    // Raw descriptors: std's stdout is line-buffered, and frames are binary.
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map(std::fs::File::from);
    let ended = match (
        dup(std::io::stdin().as_fd()),
        dup(std::io::stdout().as_fd()),
    ) {
        (Ok(input), Ok(output)) => serve_with(input, output, window),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("attest-agent: cannot use stdin/stdout: {e}");
            Ended::Closed
        }
    };
    if let (Ended::Broken(why, seen), true) = (&ended, on_tty) {
        become_shell(why, seen);
    }
    std::process::exit(0);
}

/// Serves the unix socket at `path`, which the host listens on (a
/// directory it shares with the guest, as nspawn's `/run/backdoor`): the
/// bytes then go straight between the host and the agent, not through the
/// backdoor's relay (`socat` with 8 KiB buffers moves a few hundred MB/s;
/// a direct socket several GB/s). `false` when it cannot connect: then the
/// agent serves stdin/stdout as usual, and the host sees its greeting there.
fn connect(path: &str) -> bool {
    let stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("attest-agent: cannot connect to {path}: {e}; serving stdin/stdout");
            return false;
        }
    };
    match stream.try_clone() {
        Ok(input) => {
            serve_with(input, stream, None);
            true
        }
        Err(e) => {
            eprintln!("attest-agent: {path}: {e}; serving stdin/stdout");
            false
        }
    }
}

/// How serving ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The host closed the stream between frames.
    Closed,
    /// The stream stopped making sense (not a frame, read error): why, and
    /// the bytes read from where it stopped (those taken for the bad frame
    /// and the rest of the input buffer).
    Broken(String, Vec<u8>),
}

/// On a terminal the agent is the machine's only backdoor (hvc0 has one
/// shell and no restart). Bytes that are not frames mean the host no longer
/// speaks the protocol on it: a VM restored from a snapshot, whose new host
/// connection asks for the shell's banner. The agent hands the terminal back
/// to a backdoor shell, which the host bootstraps again.
///
/// The host's line arrives on the terminal in pieces of any size: what the
/// agent read of it is gone, what it did not would reach the shell. A piece
/// cut inside the line's quotes left the shell in an open quote, taking
/// the bootstrap's commands as text, and the host waited for answers that
/// never came. So the agent reads through the line's end ([`wire::WAKE_MARK`])
/// first, and only then prints the banner the host waits for.
fn become_shell(why: &str, seen: &[u8]) -> ! {
    use std::os::unix::process::CommandExt;
    eprintln!("attest-agent: {why}; handing the terminal back to a backdoor shell");
    if !swallow_wake_line(seen.to_vec(), WAKE_WAIT) {
        eprintln!(
            "attest-agent: no `{}` line within {} s; the shell gets what follows",
            wire::WAKE_MARK,
            WAKE_WAIT.as_secs()
        );
    }
    let mut out = std::io::stdout();
    let _ = out.write_all(format!("\n{}\n", BACKDOOR_BANNER).as_bytes());
    let _ = out.flush();
    let e = std::process::Command::new("bash").arg("--norc").exec();
    eprintln!("attest-agent: cannot start bash: {e}");
    std::process::exit(1);
}

/// How long [`become_shell`] waits for the rest of the host's wake-up line.
const WAKE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads stdin until what was read holds [`wire::WAKE_MARK`] and its line's
/// end, or `within` passes; `false` then.
fn swallow_wake_line(mut seen: Vec<u8>, within: std::time::Duration) -> bool {
    let needle = format!("{}\n", wire::WAKE_MARK).into_bytes();
    let found = |seen: &[u8]| seen.windows(needle.len()).any(|w| w == needle.as_slice());
    let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned() else {
        return found(&seen);
    };
    let mut input = std::fs::File::from(fd);
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    while !found(&seen) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut fds = [sys::PollFd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&input),
            events: sys::POLLIN,
            revents: 0,
        }];
        match sys::wait_ready(&mut fds, left.as_millis().min(i32::MAX as u128) as i32) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(_) => return false,
        }
        match input.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        // Only the tail can still hold the start of the mark.
        if seen.len() > 2 * buf.len() {
            seen.drain(..seen.len() - needle.len());
        }
    }
    true
}

/// `guest::BANNER`, which the std-only agent cannot import.
pub const BACKDOOR_BANNER: &str = "Spawning backdoor root shell...";

/// Serves requests from `input`, replying on `output`, until `input` ends or
/// fails, without flow control. Kills the process groups of commands still
/// running then.
pub fn serve(input: impl Read, output: impl Write + Send + 'static) -> Ended {
    serve_with(input, output, None)
}

/// [`serve`], keeping at most `window` bytes of frames unacknowledged.
pub fn serve_with(
    input: impl Read,
    output: impl Write + Send + 'static,
    window: Option<u64>,
) -> Ended {
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
    let credit = window.map(|w| Arc::new(Credit::new(w)));
    let writer = {
        let credit = credit.clone();
        let acks = match window {
            Some(_) => format!(" {}", wire::ACKS),
            None => String::new(),
        };
        let greeting = format!("{HELLO} {VERSION}{acks}\n").into_bytes();
        std::thread::spawn(move || write_frames(greeting, rx, output, credit.as_deref()))
    };
    let registry: Registry = Arc::default();
    let downloads: Downloads = Arc::default();
    // Uploads in progress: their data goes to their own threads.
    let mut uploads: HashMap<u32, SyncSender<Msg>> = HashMap::new();
    let mut stdins: HashMap<u32, Sender<Vec<u8>>> = HashMap::new();
    let mut input = BufReader::with_capacity(256 * 1024, input);
    // Errors go out from their own thread: with the writer waiting for
    // credit and the queue full, this loop must keep reading acks.
    let reply_error = |id: u32, msg: String| {
        let tx = tx.clone();
        std::thread::spawn(move || tx.send(error_frame(id, &msg)));
    };
    let ended = loop {
        let frame = match read_frame(&mut input) {
            Ok(Some(f)) => f,
            Ok(None) => break Ended::Closed,
            Err((e, mut seen)) => {
                seen.extend_from_slice(input.buffer());
                break Ended::Broken(e, seen);
            }
        };
        match frame.kind {
            EXEC => match Exec::decode(&frame.payload) {
                Ok(exec) => {
                    let stdin = exec.stdin.then(|| {
                        let (stx, srx) = channel();
                        stdins.insert(frame.id, stx);
                        srx
                    });
                    // Registered here, before the thread runs: a KILL that
                    // comes first still finds (and removes) the request.
                    registry.lock().expect("registry").insert(frame.id, 0);
                    let (tx, registry) = (tx.clone(), registry.clone());
                    std::thread::spawn(move || match exec.retry {
                        // An EXEC retried until its status meets `retry`:
                        // the wait loop without anything to watch.
                        Some(retry) => wait::run(frame.id, &exec, retry, &[], tx, registry),
                        None => command::run(frame.id, exec, stdin, tx, registry),
                    });
                }
                Err(e) => reply_error(frame.id, format!("bad exec request: {e}")),
            },
            WAIT => match Wait::decode(&frame.payload) {
                Ok(Wait {
                    watch,
                    exec:
                        exec @ Exec {
                            retry: Some(retry), ..
                        },
                }) => {
                    registry.lock().expect("registry").insert(frame.id, 0);
                    let (tx, registry) = (tx.clone(), registry.clone());
                    std::thread::spawn(move || {
                        wait::run(frame.id, &exec, retry, &watch, tx, registry)
                    });
                }
                Ok(_) => reply_error(frame.id, "a wait without a condition".to_owned()),
                Err(e) => reply_error(frame.id, format!("bad wait request: {e}")),
            },
            STDIN => {
                let close = frame.payload.is_empty();
                let gone = match stdins.get(&frame.id) {
                    Some(s) => s.send(frame.payload).is_err(),
                    None => false,
                };
                if close || gone {
                    stdins.remove(&frame.id);
                }
            }
            ACK => match (wire::decode_ack(&frame.payload), &credit) {
                (Ok(n), Some(c)) => c.acked(n),
                (Ok(_), None) => {}
                (Err(e), _) => break Ended::Broken(format!("bad ack: {e}"), Vec::new()),
            },
            KILL => {
                // Removed: a retried command stops between tries too.
                if let Some(pgid) = registry.lock().expect("registry").remove(&frame.id) {
                    sys::kill_group(pgid, sys::SIGKILL);
                }
                // Dropping its inbox makes an upload remove its staging file.
                uploads.remove(&frame.id);
                if let Some(stop) = downloads.lock().expect("downloads").get(&frame.id) {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            PUT => match Transfer::decode(&frame.payload) {
                Ok(t) => {
                    let (inbox, rx) = sync_channel(transfer::UPLOAD_QUEUE);
                    uploads.insert(frame.id, inbox);
                    let tx = tx.clone();
                    std::thread::spawn(move || transfer::receive(frame.id, t, rx, tx));
                }
                Err(e) => reply_error(frame.id, format!("bad upload request: {e}")),
            },
            DATA => {
                // Blocks while the upload's queue is full: the host's data
                // waits in the stream instead of in memory.
                let gone = match uploads.get(&frame.id) {
                    Some(inbox) => inbox.send(Msg::Data(frame.payload)).is_err(),
                    None => false,
                };
                if gone {
                    uploads.remove(&frame.id);
                }
            }
            END => {
                if let Some(inbox) = uploads.remove(&frame.id) {
                    match Digest::decode(&frame.payload) {
                        Ok(d) => {
                            let _ = inbox.send(Msg::End(d));
                        }
                        Err(e) => reply_error(frame.id, format!("bad upload end: {e}")),
                    }
                }
            }
            GET => match Transfer::decode(&frame.payload) {
                Ok(t) => {
                    let stop = Arc::new(AtomicBool::new(false));
                    downloads
                        .lock()
                        .expect("downloads")
                        .insert(frame.id, stop.clone());
                    let (tx, downloads) = (tx.clone(), downloads.clone());
                    std::thread::spawn(move || {
                        transfer::send(frame.id, t, tx, stop);
                        downloads.lock().expect("downloads").remove(&frame.id);
                    });
                }
                Err(e) => reply_error(frame.id, format!("bad download request: {e}")),
            },
            other => reply_error(frame.id, format!("unknown request kind {other}")),
        }
    };
    if let Ended::Broken(e, _) = &ended {
        eprintln!("attest-agent: {e}");
    }
    // The host is gone: nothing it started may outlive the connection.
    for pgid in registry.lock().expect("registry").values() {
        sys::kill_group(*pgid, sys::SIGKILL);
    }
    drop(uploads);
    for stop in downloads.lock().expect("downloads").values() {
        stop.store(true, Ordering::Relaxed);
    }
    drop(stdins);
    if let Some(c) = &credit {
        c.close();
    }
    drop(tx);
    let _ = writer.join();
    ended
}

/// Flow control: how much of the output the host has taken.
struct Credit {
    window: u64,
    state: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl Credit {
    fn new(window: u64) -> Credit {
        Credit {
            window,
            state: Mutex::new((0, false)),
            changed: Condvar::new(),
        }
    }

    fn acked(&self, n: u64) {
        let mut g = self.state.lock().expect("credit");
        g.0 = g.0.max(n);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.state.lock().expect("credit").1 = true;
        self.changed.notify_all();
    }

    /// Bytes that may be written once `sent` were; flushes and waits for
    /// acks when none may.
    fn room(&self, sent: u64, flush: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<u64> {
        let free = |g: &(u64, bool)| self.window.saturating_sub(sent.saturating_sub(g.0));
        let closed = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "input closed");
        {
            let g = self.state.lock().expect("credit");
            if g.1 {
                return Err(closed());
            }
            if free(&g) > 0 {
                return Ok(free(&g));
            }
        }
        // What is buffered must reach the host, or it never acks.
        flush()?;
        let mut g = self.state.lock().expect("credit");
        loop {
            if g.1 {
                return Err(closed());
            }
            if free(&g) > 0 {
                return Ok(free(&g));
            }
            g = self.changed.wait(g).expect("credit");
        }
    }
}

fn error_frame(id: u32, msg: &str) -> Vec<u8> {
    Frame {
        kind: wire::ERROR,
        id,
        payload: msg.as_bytes().to_vec(),
    }
    .encode()
}

/// `Ok(None)` at a clean end of the stream (between frames); for a bad
/// frame, why and the bytes it took (a length that is not one: the input
/// is not frames).
fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, (String, Vec<u8>)> {
    // The length alone first: bytes that are not frames (a terminal's
    // line) are told apart after four bytes, not nine.
    let mut head = [0u8; wire::HEADER];
    match r.read_exact(&mut head[..4]) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err((format!("reading a frame: {e}"), Vec::new())),
    }
    wire::check_len(&head).map_err(|e| (e.to_string(), head[..4].to_vec()))?;
    r.read_exact(&mut head[4..])
        .map_err(|e| (format!("reading a frame: {e}"), Vec::new()))?;
    let h = wire::decode_header(head).map_err(|e| (e.to_string(), Vec::new()))?;
    let mut payload = vec![0u8; h.payload_len];
    r.read_exact(&mut payload)
        .map_err(|e| (format!("reading a frame body: {e}"), Vec::new()))?;
    Ok(Some(Frame {
        kind: h.kind,
        id: h.id,
        payload,
    }))
}

/// Writes the greeting, then queued frames, flushing whenever the queue
/// runs empty (and before waiting for credit).
fn write_frames(
    greeting: Vec<u8>,
    rx: Receiver<Vec<u8>>,
    output: impl Write,
    credit: Option<&Credit>,
) {
    // Smaller than a data frame: small frames (exits, stderr lines) are
    // gathered into one write, data frames go out without a copy.
    let mut w = BufWriter::with_capacity(64 * 1024, output);
    if w.write_all(&greeting).and_then(|()| w.flush()).is_err() {
        return;
    }
    let mut sent = 0u64;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(buf) = next.take() {
            if put(&mut w, &buf, &mut sent, credit).is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if w.flush().is_err() {
            return;
        }
    }
}

fn put<W: Write>(
    w: &mut BufWriter<W>,
    mut buf: &[u8],
    sent: &mut u64,
    credit: Option<&Credit>,
) -> std::io::Result<()> {
    let Some(credit) = credit else {
        return w.write_all(buf);
    };
    while !buf.is_empty() {
        let room = credit.room(*sent, || w.flush())?;
        let n = room.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n])?;
        *sent += n as u64;
        buf = &buf[n..];
    }
    Ok(())
}
