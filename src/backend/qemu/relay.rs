//! The host ends of QEMU's chardev sockets. The backdoor is a socket pair
//! attest makes for every QEMU process (start, and again for a QEMU restored
//! from a snapshot); the serial console is a socket attest listens on and
//! QEMU connects to.
//!
//! [`ShellRelay`] owns the virtconsole connection and gives the driver
//! *sessions*: in-memory streams relayed to the current connection. The
//! driver drops its session on reboot or restore and asks for a new one, but
//! the guest's hvc0 stays the same connection across a guest reboot, so the
//! real socket must outlive sessions. Bytes that arrive while no session is
//! attached (the banner before the driver connects) are kept for the next one.
//!
//! [`SerialRelay`] drains the serial console into the [`ConsoleLog`] and
//! lets `send_console` write to it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::console::ConsoleLog;
use crate::process::pump_lines;

/// Bytes kept while no session is attached.
const MAX_PENDING: usize = 1 << 20;

type Writer = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

#[derive(Default)]
struct State {
    /// The current connection's write half.
    writer: Option<Writer>,
    /// Which accepted connection is current.
    generation: u64,
    /// The attached session's inbound channel.
    sink: Option<mpsc::UnboundedSender<Vec<u8>>>,
    pending: Vec<u8>,
    /// Which session `sink` belongs to.
    session: u64,
}

/// The virtconsole backdoor socket and its sessions.
pub struct ShellRelay {
    state: Arc<Mutex<State>>,
    /// Counts connections (0: no QEMU was started yet).
    connected: watch::Receiver<u64>,
    announce: watch::Sender<u64>,
    /// The send buffer QEMU's end of the socket got (bytes).
    send_buffer: std::sync::atomic::AtomicUsize,
    /// Where the connection readers and the session pumps run.
    tasks: TaskTracker,
}

/// The send buffer asked for QEMU's end of the backdoor socket: at the
/// ~50 MB/s a TCG guest writes its console, about half a second of attest
/// not reading (a loaded host) before QEMU would drop bytes. The kernel
/// charges it only as it fills.
pub const QEMU_SEND_BUFFER: usize = 32 << 20;

/// Enlarges `socket`'s send buffer to [`QEMU_SEND_BUFFER`]; without
/// `CAP_NET_ADMIN` (not root) the kernel caps it at `net.core.wmem_max`.
/// The size it got.
fn enlarge_send_buffer(socket: &std::os::unix::net::UnixStream) -> usize {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(socket, sockopt::SndBufForce, &QEMU_SEND_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &QEMU_SEND_BUFFER);
    }
    getsockopt(socket, sockopt::SndBuf).unwrap_or(0)
}

/// The agent's window (unacknowledged output) for a send buffer of `size`:
/// a quarter of it, since the kernel counts each of QEMU's writes (a page
/// of the guest's hvc output at most) with its bookkeeping; never below
/// the default the agent was sized for with ~200 KiB, and at most 8 MiB
/// (beyond that the ack round trips no longer limit a TCG guest).
pub fn agent_window(size: usize) -> u64 {
    (size as u64 / 4).clamp(crate::agent::wire::WINDOW, 8 << 20)
}

/// Why a relay failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RelayError {
    /// The backdoor's socket pair could not be made.
    #[error("cannot create the backdoor socket pair: {source}")]
    Pair {
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The socket could not be bound.
    #[error("cannot listen on {}: {source}", path.display())]
    Listen {
        /// The socket.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// QEMU is not connected to the socket (not yet, or no longer).
    #[error("the {socket} is not connected")]
    NotConnected {
        /// `backdoor socket` or `serial console`.
        socket: &'static str,
    },
    /// Writing to QEMU failed.
    #[error("cannot write to the {socket}: {source}")]
    Write {
        /// `backdoor socket` or `serial console`.
        socket: &'static str,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
}

const BACKDOOR: &str = "backdoor socket";
const SERIAL: &str = "serial console";

fn bind(path: &Path) -> Result<UnixListener, RelayError> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(|e| RelayError::Listen {
        path: path.to_owned(),
        source: Arc::new(e),
    })
}

impl ShellRelay {
    /// A relay with no connection yet; its tasks run on `tasks`. Each QEMU
    /// gets its end of a fresh socket pair ([`ShellRelay::socket_for_qemu`]).
    pub fn new(tasks: &TaskTracker) -> ShellRelay {
        let (tx, rx) = watch::channel(0u64);
        ShellRelay {
            state: Arc::default(),
            connected: rx,
            announce: tx,
            send_buffer: Default::default(),
            tasks: tasks.clone(),
        }
    }

    /// A connected socket pair for the next QEMU: QEMU's end (its
    /// `-chardev socket,fd=…`, see [`super::args::SHELL_FD`]) and ours, which
    /// becomes the current connection at once.
    ///
    /// Why a pair and not a socket QEMU connects to: QEMU drops virtconsole
    /// output its socket cannot take (no flow control for consoles, see
    /// `flush_buf` in QEMU's `hw/char/virtio-console.c`), and a unix
    /// socket's capacity is its *sender's* send buffer (~200 KiB by
    /// default). Only the creator of QEMU's socket can enlarge it, so attest
    /// creates it: [`QEMU_SEND_BUFFER`] (root) or the sysctl maximum.
    pub fn socket_for_qemu(&self) -> Result<std::os::unix::net::UnixStream, RelayError> {
        let io = |e: std::io::Error| RelayError::Pair {
            source: Arc::new(e),
        };
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(io)?;
        let size = enlarge_send_buffer(&theirs);
        self.send_buffer
            .store(size, std::sync::atomic::Ordering::Relaxed);
        ours.set_nonblocking(true).map_err(io)?;
        let ours = tokio::net::UnixStream::from_std(ours).map_err(io)?;
        self.adopt(ours);
        Ok(theirs)
    }

    /// Makes `stream` the current connection: a new QEMU (a restore) makes
    /// whatever the old one sent stale.
    fn adopt(&self, stream: tokio::net::UnixStream) {
        let (mut r, w) = stream.into_split();
        let generation = {
            let mut g = self.state.lock().expect("relay lock");
            g.generation += 1;
            g.writer = Some(Arc::new(tokio::sync::Mutex::new(w)));
            g.pending.clear();
            g.sink = None;
            g.generation
        };
        self.announce.send_modify(|n| *n += 1);
        let state = self.state.clone();
        self.tasks.spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut g = state.lock().expect("relay lock");
                if g.generation != generation {
                    return;
                }
                let chunk = buf[..n].to_vec();
                let delivered = match &g.sink {
                    Some(s) => s.send(chunk.clone()).is_ok(),
                    None => false,
                };
                if !delivered {
                    g.sink = None;
                    if g.pending.len() + n <= MAX_PENDING {
                        g.pending.extend_from_slice(&chunk);
                    }
                }
            }
            let mut g = state.lock().expect("relay lock");
            if g.generation == generation {
                // QEMU closed it: the attached session sees EOF.
                g.writer = None;
                g.sink = None;
            }
        });
    }

    /// Whether QEMU is connected right now.
    pub fn is_connected(&self) -> bool {
        self.state.lock().expect("relay lock").writer.is_some()
    }

    /// The send buffer of the latest QEMU's end of the socket (bytes).
    pub fn send_buffer(&self) -> usize {
        self.send_buffer.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many connections (QEMU processes) there were so far.
    pub fn connections(&self) -> u64 {
        *self.connected.borrow()
    }

    /// Writes to the current connection directly (not through a session).
    pub async fn write_raw(&self, bytes: &[u8]) -> Result<(), RelayError> {
        let w = self
            .state
            .lock()
            .expect("relay lock")
            .writer
            .clone()
            .ok_or(RelayError::NotConnected { socket: BACKDOOR })?;
        let mut w = w.lock().await;
        w.write_all(bytes).await.map_err(|e| RelayError::Write {
            socket: BACKDOOR,
            source: Arc::new(e),
        })
    }

    /// A new session on the current connection; detaches the previous one.
    pub fn session(&self) -> Result<DuplexStream, RelayError> {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (mut sr, mut sw) = tokio::io::split(server);
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (generation, session) = {
            let mut g = self.state.lock().expect("relay lock");
            if g.writer.is_none() {
                return Err(RelayError::NotConnected { socket: BACKDOOR });
            }
            let pending = std::mem::take(&mut g.pending);
            if !pending.is_empty() {
                let _ = tx.send(pending);
            }
            g.sink = Some(tx);
            g.session += 1;
            (g.generation, g.session)
        };
        // guest -> session
        let state = self.state.clone();
        self.tasks.spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if sw.write_all(&chunk).await.is_err() {
                    // The session was dropped: if nobody replaced it, keep
                    // these bytes for the next one (a banner after reboot).
                    let mut g = state.lock().expect("relay lock");
                    let ours = g.sink.is_some() && g.session == session;
                    if ours {
                        g.sink = None;
                        let mut kept = chunk;
                        while let Ok(more) = rx.try_recv() {
                            kept.extend_from_slice(&more);
                        }
                        kept.append(&mut g.pending);
                        g.pending = kept;
                    }
                    break;
                }
            }
            // Detached or QEMU gone: the session reads EOF.
            let _ = sw.shutdown().await;
        });
        // session -> guest
        let state = self.state.clone();
        self.tasks.spawn(async move {
            let mut buf = vec![0u8; 16 << 10];
            loop {
                let n = match sr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let w = {
                    let g = state.lock().expect("relay lock");
                    // A detached session's late writes (an old agent
                    // client's ack) would reach whoever has the terminal now.
                    if g.generation != generation || g.session != session {
                        break;
                    }
                    g.writer.clone()
                };
                let Some(w) = w else { break };
                if w.lock().await.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        Ok(client)
    }
}

/// The serial console socket: drained line by line into the console log.
pub struct SerialRelay {
    writer: Arc<Mutex<Option<Writer>>>,
    acceptor: JoinHandle<()>,
}

impl Drop for SerialRelay {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl SerialRelay {
    /// Listens on `path`; every connection is drained into `console` by a
    /// task on `tasks`.
    pub fn listen(
        path: &Path,
        console: ConsoleLog,
        tasks: &TaskTracker,
    ) -> Result<SerialRelay, RelayError> {
        let listener = bind(path)?;
        let writer: Arc<Mutex<Option<Writer>>> = Arc::default();
        let acceptor = {
            let writer = writer.clone();
            let tasks = tasks.clone();
            tasks.clone().spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (r, w) = stream.into_split();
                    *writer.lock().expect("serial lock") =
                        Some(Arc::new(tokio::sync::Mutex::new(w)));
                    let console = console.clone();
                    pump_lines(r, move |l| console.push_line(&l), &tasks);
                }
            })
        };
        Ok(SerialRelay { writer, acceptor })
    }

    /// Writes text to the serial console.
    pub async fn send(&self, text: &str) -> Result<(), RelayError> {
        let w = self
            .writer
            .lock()
            .expect("serial lock")
            .clone()
            .ok_or(RelayError::NotConnected { socket: SERIAL })?;
        let mut w = w.lock().await;
        w.write_all(text.as_bytes())
            .await
            .map_err(|e| RelayError::Write {
                socket: SERIAL,
                source: Arc::new(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixStream;

    #[tokio::test]
    async fn sessions_come_and_go_but_the_connection_stays() {
        let relay = ShellRelay::new(&TaskTracker::new());
        assert!(!relay.is_connected());
        // "QEMU" starts and the guest prints its banner before anyone listens.
        let guest = relay.socket_for_qemu().unwrap();
        guest.set_nonblocking(true).unwrap();
        let guest = UnixStream::from_std(guest).unwrap();
        let (gr, mut gw) = guest.into_split();
        let mut gr = BufReader::new(gr).lines();
        gw.write_all(b"banner\n").await.unwrap();
        while !relay.is_connected() {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let s1 = relay.session().unwrap();
        let mut s1 = BufReader::new(s1);
        let mut line = String::new();
        s1.read_line(&mut line).await.unwrap();
        assert_eq!(line, "banner\n");
        s1.get_mut().write_all(b"cmd1\n").await.unwrap();
        assert_eq!(gr.next_line().await.unwrap().unwrap(), "cmd1");
        drop(s1);
        // After a "reboot" the driver attaches again to the same connection.
        gw.write_all(b"banner again\n").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut s2 = BufReader::new(relay.session().unwrap());
        line.clear();
        s2.read_line(&mut line).await.unwrap();
        assert_eq!(line, "banner again\n");
        s2.get_mut().write_all(b"cmd2\n").await.unwrap();
        assert_eq!(gr.next_line().await.unwrap().unwrap(), "cmd2");
        // QEMU goes away: the session sees EOF at once.
        drop(gw);
        drop(gr);
        line.clear();
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s2.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(relay.connections(), 1);
    }

    /// What lets a loaded host fall behind a guest's burst without QEMU
    /// dropping bytes: QEMU's end holds far more than the default ~200 KiB.
    #[test]
    fn qemus_end_of_the_backdoor_holds_megabytes() {
        use nix::sys::socket::{getsockopt, sockopt};
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _entered = rt.enter();
        let relay = ShellRelay::new(&TaskTracker::new());
        let theirs = relay.socket_for_qemu().unwrap();
        let size = getsockopt(&theirs, sockopt::SndBuf).unwrap();
        let floor = if nix::unistd::geteuid().is_root() {
            QEMU_SEND_BUFFER
        } else {
            // Capped by net.core.wmem_max, which the kernel doubles.
            std::fs::read_to_string("/proc/sys/net/core/wmem_max")
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        assert!(size >= floor, "send buffer {size} < {floor}");
        assert_eq!(relay.send_buffer(), size);
        // The agent's window grows with it, within its bounds.
        let window = agent_window(size);
        assert!((crate::agent::wire::WINDOW..=8 << 20).contains(&window));
        if nix::unistd::geteuid().is_root() {
            assert_eq!(window, 8 << 20);
        }
        assert_eq!(agent_window(0), crate::agent::wire::WINDOW);
    }
}
