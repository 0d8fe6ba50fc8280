//! The host side of the guest agent (`crate::agent`): bootstrap through the
//! bash backdoor, then many commands at once on one stream.
//!
//! Bootstrap, on a fresh backdoor connection: the shell checks whether
//! `/run/attest/agent-<hash>` exists (once per boot it does not: `/run` is a
//! tmpfs), receives the binary in one `head -c` (base64, so a tty line
//! discipline cannot mangle it), checks its SHA-256, runs it once with
//! `--version`, and only then `exec`s it in place of itself. Any step that
//! fails leaves a working shell, so the caller can use the bash protocol on
//! the same stream and log why ([`Fallback`]).
//!
//! The binary is the one `build.rs` embedded; `ATTEST_AGENT=<path>` replaces
//! it (other architectures, tests of the fallback).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::protocol::CommandOutput;
use super::session::{GuestError, GuestStream};
use super::upload_port::UploadPort;
use super::BANNER;
use crate::agent::wire::{self, Exec, Exit, Frame, Retry, Wait, Watch};

/// The agent binary built for this attest (empty when the build failed).
const EMBEDDED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/attest-agent"));
/// The same, gzipped (empty when the build failed).
const EMBEDDED_GZ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/attest-agent.gz"));
/// Why the build failed, or empty.
const BUILD_ERROR: &str = include_str!(concat!(env!("OUT_DIR"), "/attest-agent.error"));

/// Extra time the host waits beyond a command's timeout (enforced in the
/// guest) before it declares the agent unresponsive.
const REPLY_GRACE: Duration = Duration::from_secs(15);

/// Longest wait for the guest's answer to one bootstrap step after the
/// banner (a loaded TCG guest answers in well under a second).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait for the agent's upload (about 2 MB of base64 through a
/// tty; some seconds under TCG).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(180);

/// Which command protocol a machine speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Protocol {
    /// The bash backdoor only.
    Bash,
    /// The agent; fail when it cannot run.
    Agent,
    /// The agent where it runs, else bash (logged).
    #[default]
    Auto,
}

impl Protocol {
    /// The option's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Bash => "bash",
            Protocol::Agent => "agent",
            Protocol::Auto => "auto",
        }
    }
}

/// The agent binary to upload: `ATTEST_AGENT` or the embedded one.
pub fn agent_binary() -> Result<Vec<u8>, String> {
    if let Some(path) = std::env::var_os("ATTEST_AGENT") {
        return std::fs::read(&path)
            .map_err(|e| format!("ATTEST_AGENT={}: {e}", path.to_string_lossy()));
    }
    if EMBEDDED.is_empty() {
        return Err(format!(
            "this attest was built without its agent: {}",
            BUILD_ERROR.lines().next().unwrap_or("unknown build error")
        ));
    }
    Ok(EMBEDDED.to_vec())
}

/// The words of a command that needs no shell: plain words of safe
/// characters, not starting with a builtin, keyword or assignment. Anything
/// else (quotes, variables, redirections, globs, `;`, …) goes to bash.
/// `true`, `false` and `echo` are builtins whose programs behave the same
/// (except `echo --help`), so they run directly.
pub fn plain_words(command: &str) -> Option<Vec<String>> {
    const BASH_WORDS: &[&str] = &[
        "alias",
        "bg",
        "bind",
        "break",
        "builtin",
        "caller",
        "case",
        "cd",
        "command",
        "compgen",
        "complete",
        "compopt",
        "continue",
        "coproc",
        "declare",
        "dirs",
        "disown",
        "do",
        "done",
        "elif",
        "else",
        "enable",
        "esac",
        "eval",
        "exec",
        "exit",
        "export",
        "fc",
        "fg",
        "fi",
        "for",
        "function",
        "getopts",
        "hash",
        "help",
        "history",
        "if",
        "in",
        "jobs",
        "kill",
        "let",
        "local",
        "logout",
        "mapfile",
        "popd",
        "printf",
        "pushd",
        "pwd",
        "read",
        "readarray",
        "readonly",
        "return",
        "select",
        "set",
        "shift",
        "shopt",
        "source",
        "suspend",
        "test",
        "then",
        "time",
        "times",
        "trap",
        "type",
        "typeset",
        "ulimit",
        "umask",
        "unalias",
        "unset",
        "until",
        "wait",
        "while",
    ];
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:,+@%=".contains(c);
    let words: Vec<String> = command
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    let first = words.first()?;
    let needs_shell = !words.iter().all(|w| w.chars().all(safe))
        || BASH_WORDS.contains(&first.as_str())
        || first.contains('=')
        || (first == "echo" && words.iter().any(|w| w.starts_with("--")));
    (!needs_shell).then_some(words)
}

/// Why the agent is not used, and the stream back when its shell still works.
pub struct Fallback {
    /// What went wrong, for the log.
    pub reason: String,
    /// The backdoor stream, ready for `Session::establish` (a banner was
    /// re-printed), or `None` when its state is unknown.
    pub stream: Option<Box<dyn GuestStream>>,
}

type Reader = BufReader<ReadHalf<Box<dyn GuestStream>>>;
type Writer = WriteHalf<Box<dyn GuestStream>>;

/// A unix socket the agent connects to instead of serving the backdoor
/// stream it was started on (`attest-agent --connect`): the host listens at
/// `host`, which the guest sees at `guest`.
#[derive(Debug, Clone)]
pub struct DirectSocket {
    /// The path the host binds.
    pub host: std::path::PathBuf,
    /// The same socket as the guest names it.
    pub guest: String,
}

/// Where and how a backend wants its agent to serve.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The agent's own socket ([`crate::backend::Instance::agent_socket`]).
    pub direct: Option<DirectSocket>,
    /// Unacknowledged output an agent serving the backdoor stream may keep
    /// in flight ([`crate::backend::Instance::agent_window`]); `None`: the
    /// agent's default ([`wire::WINDOW`] on a terminal).
    pub window: Option<u64>,
    /// A raw channel for the agent's upload
    /// ([`crate::backend::Instance::agent_upload_port`]).
    pub upload: Option<UploadPort>,
}

/// Starts the agent on a fresh backdoor stream (see the module docs). With
/// `direct`, the agent serves that socket instead, and the backdoor stream
/// stays open beside it until the client is dropped; when the agent cannot
/// connect there, it serves the backdoor stream as without it. The
/// client's tasks run on `tasks` (the run's tracker: teardown awaits them).
pub async fn bootstrap(
    stream: Box<dyn GuestStream>,
    deadline: Instant,
    placement: Placement,
    tasks: &TaskTracker,
) -> Result<AgentClient, Fallback> {
    let Placement {
        direct,
        window,
        upload,
    } = placement;
    let mut boot = Boot::new(stream, deadline);
    boot.window = window;
    boot.upload_port = upload;
    match tokio::time::timeout_at(deadline.into(), boot.run(direct.as_ref())).await {
        Ok(Ok(None)) => Ok(AgentClient::start(boot, tasks)),
        Ok(Ok(Some(connected))) => {
            let mut client = AgentClient::start(connected, tasks);
            client._lifeline = Some(Mutex::new(boot));
            Ok(client)
        }
        Ok(Err(BootError::ShellUsable(reason))) => {
            let banner = format!("echo '{BANNER}'\n");
            let sent = boot.writer.write_all(banner.as_bytes()).await;
            Err(Fallback {
                reason,
                stream: sent
                    .ok()
                    .map(|()| boot.reader.into_inner().unsplit(boot.writer)),
            })
        }
        Ok(Err(BootError::ShellLost(reason))) => Err(Fallback {
            reason,
            stream: None,
        }),
        Err(_) => Err(Fallback {
            reason: format!(
                "the agent's bootstrap did not finish in time (it was {})",
                boot.step
            ),
            stream: None,
        }),
    }
}

/// The shell command that says whether the agent at `$__af` runs: a line
/// `ATTEST-BOOT-PROBE <status> <its --version output>`.
const PROBE_AGENT: &str =
    "__av=$(\"$__af\" --version 2>&1); echo \"ATTEST-BOOT-PROBE $? ${__av//[$'\\n\\r']/ }\"";

/// The agent's binary as it travels, and the pipeline stage (after the
/// transport's own decoding) that restores it.
#[derive(Clone)]
struct Payload {
    bytes: std::sync::Arc<Vec<u8>>,
    decode: &'static str,
}

impl Payload {
    fn raw(binary: &[u8]) -> Payload {
        Payload {
            bytes: std::sync::Arc::new(binary.to_vec()),
            decode: "",
        }
    }

    /// Gzipped: the build's copy for the embedded binary, else compressed
    /// once per binary (`ATTEST_AGENT`; every machine sends the same),
    /// named by `hash`.
    fn gzipped(binary: &[u8], hash: &str) -> Payload {
        use std::io::Write as _;
        type Cache = std::sync::Mutex<Option<(String, std::sync::Arc<Vec<u8>>)>>;
        static CACHE: Cache = std::sync::Mutex::new(None);
        let mut cache = CACHE.lock().expect("gzip cache lock");
        let bytes = match &*cache {
            Some((of, gz)) if of == hash => gz.clone(),
            _ => {
                let gz = if binary == EMBEDDED {
                    EMBEDDED_GZ.to_vec()
                } else {
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    enc.write_all(binary)
                        .and_then(|()| enc.finish())
                        .expect("gzip into memory")
                };
                let gz = std::sync::Arc::new(gz);
                *cache = Some((hash.to_owned(), gz.clone()));
                gz
            }
        };
        Payload {
            bytes,
            decode: "| gzip -d",
        }
    }
}

/// Makes `/run/attest` a directory the agent can run from. Debian's
/// initramfs mounts /run noexec: then /run/attest gets a small tmpfs of
/// its own (containers have an executable /run; a mount point there
/// already is the image's or the user's choice).
const PREPARE_RUN_ATTEST: &str = "mkdir -p /run/attest && { mountpoint -q /run/attest || ! findmnt -rno OPTIONS -T /run/attest 2>/dev/null | grep -qw noexec || mount -t tmpfs -o mode=0700,size=32m attest-agent /run/attest 2>/dev/null || true; }";

/// The shell line that runs `receive` (which writes the binary to
/// `$__af.$$`), then stores it as `$__af` if its hash is `hash` and runs
/// [`PROBE_AGENT`]: prints `ATTEST-BOOT-STORED` and the probe's line, or
/// `ATTEST-BOOT-FAILED`.
fn store_command(receive: &str, hash: &str) -> String {
    format!(
        "{receive}; \
         if [ \"$(sha256sum <\"$__af.$$\" 2>&1)\" = '{hash}  -' ] && chmod 700 \"$__af.$$\" && mv -f \"$__af.$$\" \"$__af\"; \
         then echo ATTEST-BOOT-STORED; {PROBE_AGENT}; else rm -f \"$__af.$$\" 2>/dev/null; echo ATTEST-BOOT-FAILED; fi\n"
    )
}

enum BootError {
    ShellUsable(String),
    ShellLost(String),
}

/// The bootstrap's conversation with the backdoor shell. Every step has its
/// own time limit, so a guest that stops answering is an error naming the
/// step, never a wait until the machine's boot deadline.
struct Boot {
    reader: Reader,
    writer: Writer,
    /// What the bootstrap is doing, for errors.
    step: &'static str,
    /// When that began, for the debug log.
    step_started: Instant,
    /// When the current step gives up.
    limit: Instant,
    /// When the whole bootstrap gives up.
    deadline: Instant,
    /// The agent's greeting asked for acks ([`wire::ACKS`]).
    acks: bool,
    /// `--window` for an agent serving this stream (see
    /// [`crate::backend::Instance::agent_window`]).
    window: Option<u64>,
    /// Where the binary can go raw instead of as base64 on the terminal.
    upload_port: Option<UploadPort>,
}

/// Removes a socket path when dropped.
struct Unlink(std::path::PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Boot {
    fn new(stream: Box<dyn GuestStream>, deadline: Instant) -> Boot {
        let (r, w) = tokio::io::split(stream);
        Boot {
            // Small frames come several per read; a payload bigger than
            // this goes from the socket straight into its own buffer.
            reader: BufReader::with_capacity(64 << 10, r),
            writer: w,
            step: "waiting for the backdoor shell's banner",
            step_started: Instant::now(),
            limit: deadline,
            deadline,
            acks: false,
            window: None,
            upload_port: None,
        }
    }

    /// The shell line that replaces the shell by the agent serving this
    /// stream.
    fn exec_agent(&self) -> String {
        match self.window {
            Some(w) => format!("exec \"$__af\" --window {w}\n"),
            None => "exec \"$__af\"\n".to_owned(),
        }
    }

    /// Starts a step that may take up to `within` (the banner: until the
    /// deadline, which covers the boot).
    fn begin(&mut self, step: &'static str, within: Duration) {
        self.log_step();
        self.step_started = Instant::now();
        self.step = step;
        self.limit = self.deadline.min(Instant::now() + within);
    }

    /// How long the current step took, for the debug log.
    fn log_step(&self) {
        tracing::debug!(
            "agent bootstrap: {} took {:?}",
            self.step,
            self.step_started.elapsed()
        );
    }

    fn timed_out(&self) -> BootError {
        BootError::ShellLost(format!(
            "the guest did not answer in time while {} (the agent's bootstrap over the backdoor shell)",
            self.step
        ))
    }

    /// Bootstraps the agent; `Some` when it serves `direct` (then that
    /// connection, greeted), `None` when it serves this stream.
    async fn run(&mut self, direct: Option<&DirectSocket>) -> Result<Option<Boot>, BootError> {
        let lost = |e: std::io::Error| BootError::ShellLost(format!("backdoor stream: {e}"));
        self.read_line_with(BANNER).await?;
        let binary = agent_binary().map_err(BootError::ShellUsable)?;
        let hash = hex(&Sha256::digest(&binary));
        let path = format!("/run/attest/agent-{}", &hash[..16]);
        // One round trip when the agent is there (it runs `--version` at
        // once), two when it is uploaded first: under TCG each costs.
        self.begin("checking for the agent under /run/attest", STEP_TIMEOUT);
        // Without the agent, the guest names its upload port's device.
        let find_port = match self.upload_port {
            Some(_) => format!(
                "for __p in /sys/class/virtio-ports/*; do read -r __n <\"$__p/name\" 2>/dev/null && [ \"$__n\" = {} ] && __ap=/dev/${{__p##*/}}; done; ",
                UploadPort::NAME
            ),
            None => String::new(),
        };
        self.send(&format!(
            "{}__af={path}; __ap=; __az=-; if [ -x \"$__af\" ]; then {PROBE_AGENT}; else {find_port}__oi=$IFS; IFS=:; for __d in $PATH; do [ -f \"$__d/gzip\" ] && [ -x \"$__d/gzip\" ] && __az=gz && break; done; IFS=$__oi; echo \"ATTEST-BOOT-NEED $__az $__ap\"; fi\n",
            super::protocol::NIXOS_BACKDOOR_ENV
        ))
        .await
        .map_err(lost)?;
        let mut probe = self.read_line_with("ATTEST-BOOT-").await?;
        if let Some(need) = probe.strip_prefix("ATTEST-BOOT-NEED") {
            let mut words = need.split_whitespace();
            // The binary goes compressed where the guest has gzip: half
            // the bytes, and a TCG guest's input costs more than its gunzip.
            let gz = words.next() == Some("gz");
            let device = words.next().unwrap_or_default().to_owned();
            let port = self
                .upload_port
                .clone()
                .filter(|_| device.starts_with("/dev/"));
            // Each way while the last failed in a way that leaves the
            // shell usable: the port, the terminal, then uncompressed.
            let mut ways = Vec::new();
            let preferred = match gz {
                true => Payload::gzipped(&binary, &hash),
                false => Payload::raw(&binary),
            };
            if let Some(port) = port {
                ways.push((Some(port), preferred.clone()));
            }
            ways.push((None, preferred));
            if gz {
                ways.push((None, Payload::raw(&binary)));
            }
            self.begin("uploading the agent", UPLOAD_TIMEOUT);
            let last = ways.len() - 1;
            for (i, (port, payload)) in ways.into_iter().enumerate() {
                let stored = match &port {
                    Some(port) => self.upload_through(port, &device, &payload, &hash).await,
                    None => self.upload(&payload, &hash).await,
                };
                match stored {
                    Ok(()) => break,
                    Err(BootError::ShellUsable(why)) if i < last => {
                        tracing::debug!("agent bootstrap: {why}; trying the next way");
                    }
                    Err(e) => return Err(e),
                }
            }
            self.begin("running `attest-agent --version`", STEP_TIMEOUT);
            probe = self.read_line_with("ATTEST-BOOT-PROBE ").await?;
        }
        let expected = format!("ATTEST-BOOT-PROBE 0 attest-agent {}", wire::VERSION);
        if probe.trim_end() != expected {
            let detail = probe.trim_start_matches("ATTEST-BOOT-PROBE ");
            return Err(BootError::ShellUsable(format!(
                "the agent cannot run in the guest (exit status and output of `{path} --version`: {detail})"
            )));
        }
        self.begin("waiting for the agent's greeting", STEP_TIMEOUT);
        if let Some(d) = direct {
            return self.exec_connected(d).await;
        }
        self.send(&self.exec_agent()).await.map_err(lost)?;
        self.read_greeting().await.map(|()| None)
    }

    /// Execs the agent with `--connect`, listening at `d` for it; its
    /// greeting on either stream says which one it serves.
    async fn exec_connected(&mut self, d: &DirectSocket) -> Result<Option<Boot>, BootError> {
        let lost = |e: std::io::Error| BootError::ShellLost(format!("backdoor stream: {e}"));
        let _ = std::fs::remove_file(&d.host);
        let Ok(listener) = tokio::net::UnixListener::bind(&d.host) else {
            // (A path too long for a socket, say.) The relayed stream works.
            self.send(&self.exec_agent()).await.map_err(lost)?;
            return self.read_greeting().await.map(|()| None);
        };
        let _unlink = Unlink(d.host.clone());
        self.send(&format!(
            "exec \"$__af\" --connect {}\n",
            crate::shell::quote(&d.guest)
        ))
        .await
        .map_err(lost)?;
        let limit = self.limit;
        let accepted = tokio::select! {
            accepted = tokio::time::timeout_at(limit.into(), listener.accept()) => accepted,
            greeted = self.read_greeting() => return greeted.map(|()| None),
        };
        let (socket, _) = accepted.map_err(|_| self.timed_out())?.map_err(|e| {
            BootError::ShellLost(format!("accepting the agent at {}: {e}", d.host.display()))
        })?;
        let mut connected = Boot::new(Box::new(socket), limit);
        connected.step = "waiting for the agent's greeting on its socket";
        connected.read_greeting().await?;
        Ok(Some(connected))
    }

    async fn read_greeting(&mut self) -> Result<(), BootError> {
        let hello = self.read_line_with(wire::HELLO).await?;
        self.log_step();
        let ours = format!("{} {}", wire::HELLO, wire::VERSION);
        self.acks = match hello.strip_prefix(&ours) {
            Some("") => false,
            Some(rest) if rest == format!(" {}", wire::ACKS) => true,
            _ => {
                return Err(BootError::ShellLost(format!(
                    "the agent greets with {hello:?}, this attest speaks version {}",
                    wire::VERSION
                )))
            }
        };
        Ok(())
    }

    async fn upload(&mut self, payload: &Payload, hash: &str) -> Result<(), BootError> {
        let lost = |e: std::io::Error| BootError::ShellLost(format!("uploading the agent: {e}"));
        let bytes = &payload.bytes;
        let mut data =
            Vec::with_capacity(super::protocol::upload_encoded_len(bytes.len() as u64) as usize);
        super::protocol::encode_upload_chunk(bytes, &mut data);
        // `head` always consumes exactly the data, whatever fails on the
        // right of the pipe, so the bytes never reach the shell as commands.
        let receive = format!(
            "head -c {} | {{ {PREPARE_RUN_ATTEST} && base64 -d {} >\"$__af.$$\"; cat >/dev/null; }}",
            data.len(),
            payload.decode
        );
        self.send(&store_command(&receive, hash))
            .await
            .map_err(lost)?;
        self.send(std::str::from_utf8(&data).expect("base64 is ASCII"))
            .await
            .map_err(lost)?;
        self.stored().await
    }

    /// Uploads the binary through the VM's upload port, which the guest
    /// found at `device`.
    async fn upload_through(
        &mut self,
        port: &UploadPort,
        device: &str,
        payload: &Payload,
        hash: &str,
    ) -> Result<(), BootError> {
        let lost = |e: std::io::Error| BootError::ShellLost(format!("uploading the agent: {e}"));
        // As on the terminal, `head` consumes all the bytes whatever fails
        // after it, so none stay in the port for the next boot.
        let receive = format!(
            "head -c {} <{device} | {{ {{ {PREPARE_RUN_ATTEST}; }} && cat {} >\"$__af.$$\"; cat >/dev/null; }}",
            payload.bytes.len(),
            payload.decode
        );
        self.send(&store_command(&receive, hash))
            .await
            .map_err(lost)?;
        let limit = self.limit;
        match tokio::time::timeout_at(limit.into(), port.write_all(&payload.bytes)).await {
            Ok(written) => written.map_err(lost)?,
            Err(_) => return Err(self.timed_out()),
        }
        self.stored().await
    }

    /// Reads the store command's verdict.
    async fn stored(&mut self) -> Result<(), BootError> {
        match self.read_line_with("ATTEST-BOOT-").await?.as_str() {
            "ATTEST-BOOT-STORED" => Ok(()),
            _ => Err(BootError::ShellUsable(
                "the agent could not be stored under /run/attest in the guest (no space, read-only, or corrupted on the way)".into(),
            )),
        }
    }

    async fn send(&mut self, text: &str) -> std::io::Result<()> {
        let w = &mut self.writer;
        let sent = tokio::time::timeout_at(self.limit.into(), async {
            w.write_all(text.as_bytes()).await?;
            w.flush().await
        })
        .await;
        sent.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the guest took no input in time while {}", self.step),
            ))
        })
    }

    /// The next line that starts with `prefix` (others are noise or echo),
    /// within the current step's limit.
    async fn read_line_with(&mut self, prefix: &str) -> Result<String, BootError> {
        let limit = self.limit;
        match tokio::time::timeout_at(limit.into(), self.next_line_with(prefix)).await {
            Ok(r) => r,
            Err(_) => Err(self.timed_out()),
        }
    }

    async fn next_line_with(&mut self, prefix: &str) -> Result<String, BootError> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| BootError::ShellLost(format!("backdoor stream: {e}")))?;
            if n == 0 {
                return Err(BootError::ShellLost(
                    "the backdoor shell closed the stream".into(),
                ));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            if prefix == BANNER && text.contains(BANNER) || text.starts_with(prefix) {
                return Ok(text.to_owned());
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Events of one request, from the reader task.
type Events = mpsc::UnboundedSender<Frame>;

/// How a command's reply arrives: its last frame ([`wire::EXIT`] or
/// [`wire::ERROR`]) with the outputs gathered before it.
struct Reply {
    last: Frame,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// What the reader task does with a request's frames.
enum Route {
    /// Hands every frame to the request's own task (transfers, shells,
    /// live output).
    Frames(Events),
    /// The same through a bounded queue: when the request's task falls
    /// behind (a download whose host file is written slower than the
    /// socket delivers), the reader waits for it, and the bytes wait in the
    /// stream instead of in attest's memory.
    Bounded(mpsc::Sender<Frame>),
    /// Reads a command's outputs straight into one buffer each, and hands
    /// them over with the last frame: the output exists once, never also
    /// as frames queued between the reader and the caller (a 1 GiB output
    /// peaked at 1105 MiB that way), and crosses no task boundary.
    Output {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        done: tokio::sync::oneshot::Sender<Reply>,
    },
}

struct Shared {
    pending: Mutex<HashMap<u32, Route>>,
    /// Set when the stream ended; no request can be answered after it.
    closed: AtomicBool,
    writer: tokio::sync::Mutex<Writer>,
    /// Where the client's tasks run.
    tasks: TaskTracker,
}

/// A running agent: many requests at once on one stream.
pub struct AgentClient {
    shared: Arc<Shared>,
    next_id: AtomicU32,
    reader_task: tokio::task::JoinHandle<()>,
    ack_task: Option<tokio::task::JoinHandle<()>>,
    /// The backdoor stream the agent was started on, when it serves a
    /// [`DirectSocket`]: held open (unused) as long as the client lives.
    _lifeline: Option<Mutex<Boot>>,
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.reader_task.abort();
        if let Some(t) = &self.ack_task {
            t.abort();
        }
    }
}

impl AgentClient {
    /// Talks to an agent that is already running on `stream` (shipped in
    /// the image, or started by [`bootstrap`]): waits for its greeting.
    /// The client's tasks run on `tasks`.
    pub async fn attach(
        stream: Box<dyn GuestStream>,
        deadline: Instant,
        tasks: &TaskTracker,
    ) -> Result<AgentClient, GuestError> {
        let mut boot = Boot::new(stream, deadline);
        let greeting = tokio::time::timeout_at(deadline.into(), boot.read_greeting())
            .await
            .map_err(|_| {
                GuestError::BannerTimeout(deadline.saturating_duration_since(Instant::now()))
            })?;
        greeting.map_err(|e| match e {
            BootError::ShellUsable(m) | BootError::ShellLost(m) => GuestError::Protocol(m),
        })?;
        Ok(AgentClient::start(boot, tasks))
    }

    fn start(boot: Boot, tasks: &TaskTracker) -> AgentClient {
        let Boot {
            reader,
            writer,
            acks,
            ..
        } = boot;
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            closed: AtomicBool::new(false),
            writer: tokio::sync::Mutex::new(writer),
            tasks: tasks.clone(),
        });
        // Acks cost a write per 16 KiB read: only for an agent that waits
        // for them.
        let (consumed, ack_task) = match acks {
            true => {
                let (tx, rx) = tokio::sync::watch::channel(0u64);
                (Some(tx), Some(tasks.spawn(send_acks(rx, shared.clone()))))
            }
            false => (None, None),
        };
        let reader_task = tasks.spawn(read_frames(reader, shared.clone(), consumed));
        AgentClient {
            shared,
            next_id: AtomicU32::new(1),
            reader_task,
            ack_task,
            _lifeline: None,
        }
    }

    /// Whether the stream still works.
    pub fn is_usable(&self) -> bool {
        !self.shared.closed.load(Ordering::SeqCst)
    }

    pub(super) fn request(&self) -> Result<(u32, mpsc::UnboundedReceiver<Frame>), GuestError> {
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((self.register(Route::Frames(tx))?, rx))
    }

    /// A request whose frames queue at most `depth` deep ([`Route::Bounded`]).
    pub(super) fn request_bounded(
        &self,
        depth: usize,
    ) -> Result<(u32, mpsc::Receiver<Frame>), GuestError> {
        let (tx, rx) = mpsc::channel(depth);
        Ok((self.register(Route::Bounded(tx))?, rx))
    }

    /// A command request whose outputs the reader gathers ([`Route::Output`]).
    fn request_output(&self) -> Result<(u32, tokio::sync::oneshot::Receiver<Reply>), GuestError> {
        let (done, rx) = tokio::sync::oneshot::channel();
        let route = Route::Output {
            stdout: Vec::new(),
            stderr: Vec::new(),
            done,
        };
        Ok((self.register(route)?, rx))
    }

    fn register(&self, route: Route) -> Result<u32, GuestError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).max(1);
        let mut pending = self.shared.pending.lock().expect("pending lock");
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(GuestError::Closed);
        }
        pending.insert(id, route);
        Ok(id)
    }

    pub(super) async fn send(&self, frame: Frame) -> Result<(), GuestError> {
        self.send_data(frame.kind, frame.id, &frame.payload).await
    }

    /// Sends one frame without assembling it (a data frame's payload is
    /// written from the caller's buffer, not copied into a new one).
    pub(super) async fn send_data(
        &self,
        kind: u8,
        id: u32,
        payload: &[u8],
    ) -> Result<(), GuestError> {
        let head = wire::header(kind, id, payload.len());
        let mut w = self.shared.writer.lock().await;
        w.write_all(&head).await?;
        w.write_all(payload).await?;
        w.flush().await?;
        Ok(())
    }

    /// Forgets request `id` when dropped, and tells the agent to stop it
    /// unless [`KillOnDrop::disarm`]ed (its reply was read).
    pub(super) fn kill_on_drop(&self, id: u32) -> KillOnDrop {
        KillOnDrop {
            shared: self.shared.clone(),
            id,
            armed: true,
        }
    }

    fn exec_frame(
        id: u32,
        command: &str,
        timeout: Duration,
        retry: Option<Retry>,
        watch: &[Watch],
    ) -> Frame {
        let exec = Exec {
            timeout_ms: timeout.as_millis().clamp(1, u64::MAX as u128) as u64,
            stdin: false,
            retry,
            words: plain_words(command).unwrap_or_default(),
            script: format!("set -euo pipefail; {command}"),
        };
        if watch.is_empty() {
            return Frame {
                kind: wire::EXEC,
                id,
                payload: exec.encode(),
            };
        }
        let wait = Wait {
            watch: watch.to_vec(),
            exec,
        };
        Frame {
            kind: wire::WAIT,
            id,
            payload: wait.encode(),
        }
    }

    /// Runs one command with the NixOS driver's semantics; the guest kills
    /// its process group at `timeout` (status 124).
    pub async fn execute(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, GuestError> {
        self.run_gathered(command, timeout, None, &[]).await
    }

    /// [`AgentClient::execute`], handing each chunk of output to `chunk`
    /// (`wire::STDOUT` or `wire::STDERR`, the bytes) as it arrives.
    pub async fn execute_streaming(
        &self,
        command: &str,
        timeout: Duration,
        chunk: &mut (dyn FnMut(u8, &[u8]) + Send),
    ) -> Result<CommandOutput, GuestError> {
        let (id, mut events) = self.request()?;
        let mut guard = self.kill_on_drop(id);
        self.send(Self::exec_frame(id, command, timeout, None, &[]))
            .await?;
        let mut out = CommandOutput {
            status: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        let collect = async {
            while let Some(f) = events.recv().await {
                match f.kind {
                    wire::STDOUT => {
                        chunk(f.kind, &f.payload);
                        out.stdout.extend_from_slice(&f.payload);
                    }
                    wire::STDERR => {
                        chunk(f.kind, &f.payload);
                        out.stderr.extend_from_slice(&f.payload);
                    }
                    _ => return Some(f),
                }
            }
            None
        };
        let limit = timeout + REPLY_GRACE;
        let last = tokio::time::timeout(limit, collect)
            .await
            .map_err(|_| GuestError::ReplyTimeout(limit))?
            .ok_or(GuestError::Closed)?;
        out.status = Self::status_of(&last)?;
        guard.disarm();
        Ok(out)
    }

    /// Runs `command` again and again in the guest until its status meets
    /// `retry` or `retry.within_ms` passed (one request for a whole wait;
    /// the agent pauses between tries, never less than a try costs). The
    /// last try's output; the caller checks whether it met the condition.
    /// With `watch`, a try follows the last one only when one of those
    /// directory entries changed or the fallback pause passed.
    pub async fn execute_until(
        &self,
        command: &str,
        per_try: Duration,
        retry: Retry,
        watch: &[Watch],
    ) -> Result<CommandOutput, GuestError> {
        self.run_gathered(command, per_try, Some(retry), watch)
            .await
    }

    /// One command whose outputs the reader task gathers.
    async fn run_gathered(
        &self,
        command: &str,
        timeout: Duration,
        retry: Option<Retry>,
        watch: &[Watch],
    ) -> Result<CommandOutput, GuestError> {
        let (id, reply) = self.request_output()?;
        // Dropped before the reply (cancelled, host timeout): kill it.
        let mut guard = self.kill_on_drop(id);
        self.send(Self::exec_frame(id, command, timeout, retry, watch))
            .await?;
        let within = retry.map_or(Duration::ZERO, |r| Duration::from_millis(r.within_ms));
        let limit = within + timeout + REPLY_GRACE;
        let reply = tokio::time::timeout(limit, reply)
            .await
            .map_err(|_| GuestError::ReplyTimeout(limit))?
            .map_err(|_| GuestError::Closed)?;
        let status = Self::status_of(&reply.last)?;
        guard.disarm();
        Ok(CommandOutput {
            status,
            stdout: reply.stdout,
            stderr: reply.stderr,
        })
    }

    /// The exit status a command's last frame reports.
    fn status_of(last: &Frame) -> Result<i32, GuestError> {
        match last.kind {
            wire::EXIT => Ok(Exit::decode(&last.payload)
                .map_err(GuestError::Wire)?
                .status),
            wire::ERROR => Err(GuestError::Protocol(format!(
                "the agent could not run the command: {}",
                String::from_utf8_lossy(&last.payload)
            ))),
            other => Err(GuestError::Protocol(format!(
                "unexpected frame kind {other}"
            ))),
        }
    }

    /// A bash backdoor shell tunnelled through one request: its stdin and
    /// stdout are the returned stream, which starts with the backdoor's
    /// banner, so `Session::establish` takes it as any other backdoor. For
    /// what still speaks the bash protocol (file transfers) on transports
    /// with a single stream (QEMU's hvc0), where a second connection would
    /// take the stream from the agent. Dropping the stream ends the shell
    /// and kills what it runs.
    pub async fn open_shell(&self) -> Result<tokio::io::DuplexStream, GuestError> {
        let (id, mut events) = self.request()?;
        let guard = KillOnDrop {
            shared: self.shared.clone(),
            id,
            armed: true,
        };
        let exec = Exec {
            timeout_ms: 0,
            stdin: true,
            retry: None,
            words: Vec::new(),
            script: format!("echo '{BANNER}'; exec bash --norc"),
        };
        self.send(Frame {
            kind: wire::EXEC,
            id,
            payload: exec.encode(),
        })
        .await?;
        let (ours, theirs) = tokio::io::duplex(256 << 10);
        let (mut from_session, mut to_session) = tokio::io::split(theirs);
        self.shared.tasks.spawn(async move {
            while let Some(f) = events.recv().await {
                match f.kind {
                    wire::STDOUT => {
                        if to_session.write_all(&f.payload).await.is_err() {
                            break;
                        }
                    }
                    // The shell's own complaints; commands' stderr travels
                    // in the bash protocol's framing on stdout.
                    wire::STDERR => {}
                    _ => break,
                }
            }
            let _ = to_session.shutdown().await;
        });
        let shared = self.shared.clone();
        self.shared.tasks.spawn(async move {
            let _guard = guard;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = from_session.read(&mut buf).await.unwrap_or(0);
                // An empty chunk closes the shell's stdin.
                let bytes = Frame {
                    kind: wire::STDIN,
                    id,
                    payload: buf[..n].to_vec(),
                }
                .encode();
                let mut w = shared.writer.lock().await;
                if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() || n == 0 {
                    break;
                }
            }
        });
        Ok(ours)
    }

    /// Starts a command and does not wait for it (`poweroff`, which takes
    /// the agent down with the machine).
    pub async fn send_fire_and_forget(&self, command: &str) -> Result<(), GuestError> {
        let (id, _events) = self.request()?;
        self.send(Self::exec_frame(
            id,
            command,
            Duration::from_secs(60),
            None,
            &[],
        ))
        .await
    }
}

pub(super) struct KillOnDrop {
    shared: Arc<Shared>,
    id: u32,
    armed: bool,
}

impl KillOnDrop {
    /// The request ended: nothing to stop.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .remove(&self.id);
        if !self.armed {
            return;
        }
        let (shared, id) = (self.shared.clone(), self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let tasks = self.shared.tasks.clone();
            tasks.spawn_on(
                async move {
                    let bytes = Frame {
                        kind: wire::KILL,
                        id,
                        payload: Vec::new(),
                    }
                    .encode();
                    let mut w = shared.writer.lock().await;
                    let _ = w.write_all(&bytes).await;
                    let _ = w.flush().await;
                },
                &rt,
            );
        }
    }
}

/// Tells the agent how much of its output arrived (see [`wire::ACK`]): the
/// latest count, whenever the reader has taken [`wire::ACK_EVERY`] more.
async fn send_acks(mut consumed: tokio::sync::watch::Receiver<u64>, shared: Arc<Shared>) {
    while consumed.changed().await.is_ok() {
        let n = *consumed.borrow_and_update();
        let bytes = Frame {
            kind: wire::ACK,
            id: 0,
            payload: wire::encode_ack(n),
        }
        .encode();
        let mut w = shared.writer.lock().await;
        if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
}

/// Routes frames to their requests until the stream ends; then every
/// pending request fails at once.
async fn read_frames(
    mut reader: Reader,
    shared: Arc<Shared>,
    consumed: Option<tokio::sync::watch::Sender<u64>>,
) {
    // Counted as bytes arrive, not per frame: a frame may be bigger than
    // the agent's window, which then waits for acks mid-frame.
    let (mut total, mut acked) = (0u64, 0u64);
    let mut count = |k: usize| {
        let Some(consumed) = &consumed else { return };
        total += k as u64;
        if total - acked >= wire::ACK_EVERY {
            acked = total;
            consumed.send_replace(total);
        }
    };
    loop {
        let mut head = [0u8; wire::HEADER];
        if reader.read_exact(&mut head).await.is_err() {
            break;
        }
        count(head.len());
        let Ok(h) = wire::decode_header(head) else {
            break;
        };
        // An output of a gathering request goes on the end of its buffer,
        // taken out of the map while it is read into (no lock across an
        // await); anything else is a frame of its own.
        let taken = matches!(h.kind, wire::STDOUT | wire::STDERR)
            .then(|| take_output(&shared, h.id, h.kind))
            .flatten();
        let gathering = taken.is_some();
        let mut payload = taken.unwrap_or_default();
        let start = payload.len();
        // Read into spare capacity: neither zeroed nor copied again.
        payload.reserve(h.payload_len);
        while payload.len() - start < h.payload_len {
            let want = (h.payload_len - (payload.len() - start)) as u64;
            match (&mut reader).take(want).read_buf(&mut payload).await {
                Ok(0) | Err(_) => break,
                Ok(k) => count(k),
            }
        }
        if payload.len() - start < h.payload_len {
            break;
        }
        if gathering {
            put_output(&shared, h.id, h.kind, payload);
            continue;
        }
        let frame = Frame {
            kind: h.kind,
            id: h.id,
            payload,
        };
        if let Some((tx, frame)) = route(&shared, frame) {
            let _ = tx.send(frame).await;
        }
    }
    shared.closed.store(true, Ordering::SeqCst);
    shared.pending.lock().expect("pending lock").clear();
}

/// The output buffer of `kind` of request `id`, when the reader gathers its
/// outputs ([`Route::Output`]); it stays empty in the map until
/// [`put_output`] puts it back.
fn take_output(shared: &Shared, id: u32, kind: u8) -> Option<Vec<u8>> {
    match shared.pending.lock().expect("pending lock").get_mut(&id) {
        Some(Route::Output { stdout, stderr, .. }) => Some(std::mem::take(match kind {
            wire::STDOUT => stdout,
            _ => stderr,
        })),
        _ => None,
    }
}

/// Puts back what [`take_output`] took, grown (unless the request was
/// dropped meanwhile).
fn put_output(shared: &Shared, id: u32, kind: u8, buf: Vec<u8>) {
    if let Some(Route::Output { stdout, stderr, .. }) =
        shared.pending.lock().expect("pending lock").get_mut(&id)
    {
        *match kind {
            wire::STDOUT => stdout,
            _ => stderr,
        } = buf;
    }
}

/// Hands a frame to its request; for a [`Route::Bounded`] one, returns the
/// frame and the queue the reader must wait on (outside the lock).
fn route(shared: &Shared, frame: Frame) -> Option<(mpsc::Sender<Frame>, Frame)> {
    let last = matches!(frame.kind, wire::EXIT | wire::ERROR | wire::DONE);
    let mut pending = shared.pending.lock().expect("pending lock");
    match pending.get_mut(&frame.id) {
        None => return None,
        // A retried command's try failed: its output is stale.
        Some(Route::Output { stdout, stderr, .. }) if frame.kind == wire::AGAIN => {
            stdout.clear();
            stderr.clear();
            return None;
        }
        Some(Route::Frames(tx)) if !last => {
            let tx = tx.clone();
            drop(pending);
            let _ = tx.send(frame);
            return None;
        }
        Some(Route::Bounded(tx)) if !last => return Some((tx.clone(), frame)),
        // Any other frame ends a gathered command (the caller checks it).
        Some(_) => {}
    }
    let ended = pending.remove(&frame.id);
    drop(pending);
    match ended {
        Some(Route::Frames(tx)) => {
            let _ = tx.send(frame);
        }
        Some(Route::Bounded(tx)) => return Some((tx, frame)),
        Some(Route::Output {
            stdout,
            stderr,
            done,
        }) => {
            let _ = done.send(Reply {
                last: frame,
                stdout,
                stderr,
            });
        }
        None => {}
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    //! Against the real agent code serving over a socketpair, with real
    //! commands (bash, coreutils) on this host.
    use super::*;

    /// The real agent serving on a socketpair, attached.
    pub(in crate::guest) fn local_agent() -> AgentClient {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let theirs2 = theirs.try_clone().unwrap();
        std::thread::spawn(move || crate::agent::serve(theirs, theirs2));
        ours.set_nonblocking(true).unwrap();
        let stream = tokio::net::UnixStream::from_std(ours).unwrap();
        futures_block(AgentClient::attach(
            Box::new(stream),
            Instant::now() + Duration::from_secs(5),
            &TaskTracker::new(),
        ))
        .unwrap()
    }

    fn futures_block<F: std::future::Future>(f: F) -> F::Output {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
    }

    const T: Duration = Duration::from_secs(10);

    #[tokio::test(flavor = "multi_thread")]
    async fn outputs_status_and_shell_semantics_match_the_bash_protocol() {
        let a = local_agent();
        let out = a
            .execute("echo out; echo err >&2; exit 3", T)
            .await
            .unwrap();
        assert_eq!(
            (out.status, &out.stdout[..], &out.stderr[..]),
            (3, &b"out\n"[..], &b"err\n"[..])
        );
        for cmd in ["false; true", "false | true", "echo $attest_unset_variable"] {
            assert_ne!(a.execute(cmd, T).await.unwrap().status, 0, "{cmd}");
        }
        let out = a.execute("no-such-program-attest x", T).await.unwrap();
        assert_eq!(out.status, 127);
        assert!(
            out.stderr_text().contains("command not found"),
            "{}",
            out.stderr_text()
        );
        let out = a.execute("cat", T).await.unwrap();
        assert_eq!((out.status, out.stdout.len()), (0, 0), "stdin is /dev/null");
        let out = a
            .execute(r#"printf '\x00\xff'"'"'x"$y'; echo "a'b""#, T)
            .await
            .unwrap();
        assert_eq!(out.stdout, b"\x00\xff'x\"$ya'b\n");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_timeout_kills_the_whole_group_with_status_124() {
        let a = local_agent();
        let marker = format!("attest-agent-test-{}", std::process::id());
        let t = Instant::now();
        let out = a
            .execute(
                &format!("(exec -a {marker} sleep 60) & sleep 60"),
                Duration::from_millis(500),
            )
            .await
            .unwrap();
        assert_eq!(out.status, 124);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let left = a
            .execute(
                &format!("pgrep -f '[{}]{}' || true", &marker[..1], &marker[1..]),
                T,
            )
            .await
            .unwrap();
        assert_eq!(left.stdout_text(), "", "the group was killed");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_background_process_holding_stdout_does_not_hold_the_reply() {
        let a = local_agent();
        let t = Instant::now();
        let out = a.execute("sleep 29 & echo started", T).await.unwrap();
        assert_eq!(out.stdout, b"started\n");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        a.execute("pkill -f 'sleep 29' || true", T).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn many_commands_run_at_once_and_big_outputs_arrive_whole() {
        let a = Arc::new(local_agent());
        let t = Instant::now();
        let runs: Vec<_> = (0..50)
            .map(|i| {
                let a = a.clone();
                tokio::spawn(async move { a.execute(&format!("sleep 1; echo {i}"), T).await })
            })
            .collect();
        for (i, r) in runs.into_iter().enumerate() {
            assert_eq!(r.await.unwrap().unwrap().stdout_text(), format!("{i}\n"));
        }
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let out = a.execute("head -c 50000000 /dev/zero", T).await.unwrap();
        assert_eq!(out.stdout.len(), 50_000_000);
    }

    /// Outputs are read straight into their request's buffers: interleaved
    /// frames of concurrent commands, stdout and stderr, each land whole in
    /// their own call's output.
    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_big_outputs_land_whole_in_their_own_calls() {
        let a = Arc::new(local_agent());
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let runs: Vec<_> = (0..4)
            .map(|i| {
                let (a, dir) = (a.clone(), dir.clone());
                tokio::spawn(async move {
                    let f = dir.path().join(format!("f{i}"));
                    let cmd = format!(
                        "head -c {n} /dev/urandom >{f}; cat {f}; sha256sum <{f} >&2",
                        n = 3_000_000 + i * 131_071,
                        f = f.display()
                    );
                    (i, a.execute(&cmd, T).await.unwrap())
                })
            })
            .collect();
        for r in runs {
            let (i, out) = r.await.unwrap();
            assert_eq!(out.stdout.len(), 3_000_000 + i * 131_071, "command {i}");
            let sum = hex(&Sha256::digest(&out.stdout));
            assert_eq!(out.stderr_text(), format!("{sum}  -\n"), "command {i}");
        }
    }

    /// The reader and ack tasks run on the tracker given, and end with the
    /// client: a run's teardown waits for them.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_clients_tasks_are_tracked_and_end_with_it() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let theirs2 = theirs.try_clone().unwrap();
        std::thread::spawn(move || crate::agent::serve_with(theirs, theirs2, Some(wire::WINDOW)));
        ours.set_nonblocking(true).unwrap();
        let tasks = TaskTracker::new();
        let a = AgentClient::attach(
            Box::new(tokio::net::UnixStream::from_std(ours).unwrap()),
            Instant::now() + T,
            &tasks,
        )
        .await
        .unwrap();
        assert_eq!(a.execute("echo hi", T).await.unwrap().stdout, b"hi\n");
        assert_eq!(tasks.len(), 2, "the reader and the ack task");
        tasks.close();
        let early = tokio::time::timeout(Duration::from_millis(200), tasks.wait()).await;
        assert!(early.is_err(), "the tasks ended while the client lives");
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("the client's tasks outlived it");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_dead_agent_fails_pending_calls_at_once() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let theirs2 = theirs.try_clone().unwrap();
        let shutdown = theirs.try_clone().unwrap();
        std::thread::spawn(move || crate::agent::serve(theirs, theirs2));
        ours.set_nonblocking(true).unwrap();
        let a = AgentClient::attach(
            Box::new(tokio::net::UnixStream::from_std(ours).unwrap()),
            Instant::now() + Duration::from_secs(5),
            &TaskTracker::new(),
        )
        .await
        .unwrap();
        let pending = tokio::spawn(async move { a.execute("sleep 31", T).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        shutdown.shutdown(std::net::Shutdown::Both).unwrap();
        let err = pending.await.unwrap().unwrap_err();
        assert!(matches!(err, GuestError::Closed), "{err:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    /// Reads from a blocking socket until `want` bytes came or `quiet` passed
    /// without any.
    fn read_for(s: &mut std::os::unix::net::UnixStream, want: usize, quiet: Duration) -> Vec<u8> {
        use std::io::Read;
        s.set_read_timeout(Some(quiet)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while got.len() < want {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    }

    #[test]
    fn a_windowed_agent_keeps_at_most_the_window_unacknowledged() {
        use std::io::Write;
        let (mut host, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let theirs2 = theirs.try_clone().unwrap();
        std::thread::spawn(move || crate::agent::serve_with(theirs, theirs2, Some(8192)));
        let greeting = format!("{} {} {}\n", wire::HELLO, wire::VERSION, wire::ACKS);
        let got = read_for(&mut host, greeting.len(), Duration::from_secs(5));
        assert_eq!(got, greeting.as_bytes());
        let exec = AgentClient::exec_frame(1, "head -c 100000 /dev/zero", T, None, &[]);
        host.write_all(&exec.encode()).unwrap();
        // Without acks, output stops at the window, whatever the command has.
        let first = read_for(&mut host, 100_000, Duration::from_millis(1500));
        assert_eq!(first.len(), 8192, "bytes in flight without an ack");
        let ack = Frame {
            kind: wire::ACK,
            id: 0,
            payload: wire::encode_ack(first.len() as u64),
        };
        host.write_all(&ack.encode()).unwrap();
        let more = read_for(&mut host, 100_000, Duration::from_millis(1500));
        assert_eq!(more.len(), 8192, "an ack opens the window once more");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_windowed_agent_delivers_big_outputs_whole_to_a_client_that_acks() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let theirs2 = theirs.try_clone().unwrap();
        std::thread::spawn(move || crate::agent::serve_with(theirs, theirs2, Some(wire::WINDOW)));
        ours.set_nonblocking(true).unwrap();
        let a = AgentClient::attach(
            Box::new(tokio::net::UnixStream::from_std(ours).unwrap()),
            Instant::now() + Duration::from_secs(5),
            &TaskTracker::new(),
        )
        .await
        .unwrap();
        let f = std::env::temp_dir().join(format!("attest-agent-window-{}", std::process::id()));
        let f = f.display();
        let out = a
            .execute(
                &format!("head -c 20000000 /dev/urandom >{f}; cat {f}; sha256sum <{f} >&2; rm {f}"),
                T,
            )
            .await
            .unwrap();
        assert_eq!(out.stdout.len(), 20_000_000);
        let sum = hex(&Sha256::digest(&out.stdout));
        assert_eq!(out.stderr_text(), format!("{sum}  -\n"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_shell_tunnelled_through_the_agent_speaks_the_bash_protocol() {
        let a = local_agent();
        let stream = a.open_shell().await.unwrap();
        let mut s = crate::guest::Session::establish(Box::new(stream), T)
            .await
            .unwrap();
        let out = s
            .execute("echo out; echo err >&2; exit 3", T)
            .await
            .unwrap();
        assert_eq!(
            (out.status, &out.stdout[..], &out.stderr[..]),
            (3, &b"out\n"[..], &b"err\n"[..])
        );
        let data = vec![7u8; 300_000];
        let path = std::env::temp_dir().join(format!("attest-agent-shell-{}", std::process::id()));
        let dest = path.display().to_string();
        s.upload(&dest, &mut &data[..], data.len() as u64, T)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        std::fs::remove_file(&path).unwrap();
        // The agent still serves commands next to the shell.
        assert_eq!(a.execute("echo ok", T).await.unwrap().stdout, b"ok\n");
    }

    fn retry(status: i32, equal: bool, within_ms: u64) -> Retry {
        Retry {
            status,
            equal,
            within_ms,
            first_pause_ms: 25,
            max_pause_ms: 500,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_wait_is_one_request_answered_in_the_guest_when_the_state_changes() {
        let a = local_agent();
        let dir = tempfile::tempdir().unwrap();
        let (flag, tries) = (dir.path().join("flag"), dir.path().join("tries"));
        let probe = format!(
            "echo try >>{t}; echo out-$(wc -l <{t}); test -e {f}",
            t = tries.display(),
            f = flag.display()
        );
        let made = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1200));
            std::fs::write(made, b"").unwrap();
        });
        let t = Instant::now();
        let out = a
            .execute_until(&probe, T, retry(0, true, 10_000), &[])
            .await
            .unwrap();
        assert_eq!(out.status, 0);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let n = std::fs::read_to_string(&tries).unwrap().lines().count();
        // Only the last try's output arrives; pauses grow (25, 50, … ms).
        assert_eq!(out.stdout_text(), format!("out-{n}\n"));
        assert!((3..=10).contains(&n), "{n} tries in 1.2 s");

        // Unmet by the deadline: the last try's result comes back.
        let t = Instant::now();
        let out = a
            .execute_until("echo never; exit 3", T, retry(0, true, 600), &[])
            .await
            .unwrap();
        assert_eq!((out.status, out.stdout_text().as_str()), (3, "never\n"));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    /// As with the bash protocol (`machine::tests`), the agent never starts
    /// the next try sooner than the last one took.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_wait_in_the_guest_never_polls_faster_than_a_try_costs() {
        let a = local_agent();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tries");
        let probe = format!("date +%s%N >>{}; sleep 0.3; false", log.display());
        let out = a
            .execute_until(&probe, T, retry(0, true, 3000), &[])
            .await
            .unwrap();
        assert_ne!(out.status, 0);
        assert_tries_apart(&log, 550);
    }

    /// Asserts that the tries logged in `log` (a `date +%s%N` line each, over
    /// 3 s) were at least 4 and started at least `ms` apart, but for the last
    /// one: a pause ends at the deadline, for one last try there.
    pub(crate) fn assert_tries_apart(log: &std::path::Path, ms: u64) {
        let starts: Vec<u64> = std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert!(starts.len() >= 4, "{} tries in 3 s", starts.len());
        let before_last = &starts[..starts.len() - 1];
        for gap in before_last.windows(2).map(|w| (w[1] - w[0]) / 1_000_000) {
            assert!(gap >= ms, "tries {gap} ms apart: {starts:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_abandoned_wait_stops_trying_in_the_guest() {
        let a = local_agent();
        let dir = tempfile::tempdir().unwrap();
        let tries = dir.path().join("tries");
        let probe = format!("echo try >>{}; false", tries.display());
        let wait = a.execute_until(&probe, T, retry(0, true, 60_000), &[]);
        assert!(tokio::time::timeout(Duration::from_millis(800), wait)
            .await
            .is_err());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = std::fs::read_to_string(&tries).unwrap().lines().count();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let later = std::fs::read_to_string(&tries).unwrap().lines().count();
        assert_eq!(n, later, "tries went on after the host gave up");
    }

    /// A wait with a watch tries again when the watched entry appears, not
    /// when its directory changes otherwise, and between changes its
    /// pauses grow: few tries while nothing happens, and an answer at once
    /// when it does. Polling every 25 ms makes ~130 tries in 3.3 s; pauses
    /// growing to 5 s without the watch answer ~3 s late.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_watched_wait_tries_rarely_and_answers_when_the_entry_appears() {
        let a = local_agent();
        let dir = tempfile::tempdir().unwrap();
        let (flag, tries) = (dir.path().join("flag"), dir.path().join("tries"));
        let probe = format!("echo try >>{}; test -e {}", tries.display(), flag.display());
        let (noise, made) = (dir.path().join("noise"), flag.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(3300) {
                std::fs::write(&noise, b"x").unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            std::fs::write(made, b"").unwrap();
        });
        let watch = [Watch::Entry {
            dir: dir.path().display().to_string(),
            name: "flag".into(),
        }];
        let patient = Retry {
            max_pause_ms: 5000,
            ..retry(0, true, 20_000)
        };
        let t = Instant::now();
        let out = a.execute_until(&probe, T, patient, &watch).await.unwrap();
        assert_eq!(out.status, 0);
        let took = t.elapsed();
        assert!(
            (Duration::from_millis(3300)..Duration::from_millis(3800)).contains(&took),
            "answered after {took:?}"
        );
        let n = std::fs::read_to_string(&tries).unwrap().lines().count();
        assert!(n <= 9, "{n} tries in 3.3 s");
    }

    /// Whether process `pid` is gone (or a zombie: nothing reaps orphans in
    /// a container whose PID 1 does not).
    fn gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(s) => s
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        }
    }

    /// Abandoning a watched wait while its check runs kills the check's
    /// process group at once, and no further try starts.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_abandoned_watched_wait_kills_its_running_check() {
        let a = local_agent();
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let probe = format!("sleep 30 & echo $! >>{}; wait", pids.display());
        let watch = [Watch::Entry {
            dir: dir.path().display().to_string(),
            name: "flag".into(),
        }];
        let wait = a.execute_until(&probe, T, retry(0, true, 60_000), &watch);
        assert!(tokio::time::timeout(Duration::from_millis(500), wait)
            .await
            .is_err());
        let t = Instant::now();
        let pid: u32 = loop {
            let text = std::fs::read_to_string(&pids).unwrap_or_default();
            if let Some(p) = text.lines().next() {
                break p.trim().parse().unwrap();
            }
            assert!(t.elapsed() < Duration::from_secs(5), "no try started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        while !gone(pid) {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "the check outlived the wait"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = std::fs::read_to_string(&pids).unwrap().lines().count();
        assert_eq!(n, 1, "tries went on after the host gave up");
    }

    #[tokio::test]
    async fn a_shell_that_stops_answering_fails_the_bootstrap_naming_the_step() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (_shell_reads, mut shell_writes) = theirs.into_split();
        shell_writes
            .write_all(format!("noise\n{BANNER}\n").as_bytes())
            .await
            .unwrap();
        let t = Instant::now();
        let Err(f) = bootstrap(
            Box::new(ours),
            Instant::now() + Duration::from_secs(2),
            Placement::default(),
            &TaskTracker::new(),
        )
        .await
        else {
            panic!("bootstrapped an agent that never answered");
        };
        assert!(
            f.reason
                .contains("while checking for the agent under /run/attest"),
            "{}",
            f.reason
        );
        assert!(f.stream.is_none(), "the shell's state is unknown");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    /// The built agent, written into `dir`.
    fn built_agent(dir: &std::path::Path) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("attest-agent");
        std::fs::write(&path, agent_binary().expect("this build has its agent")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        path
    }

    /// Starts the built agent with `args`, its stdin/stdout one end of a
    /// socketpair; the other end is returned.
    fn spawn_agent(
        agent: &std::path::Path,
        args: &[&str],
    ) -> (std::process::Child, std::os::unix::net::UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let child = spawn_fresh_binary(|| {
            std::process::Command::new(agent)
                .args(args)
                .stdin(std::os::fd::OwnedFd::from(theirs.try_clone().unwrap()))
                .stdout(std::os::fd::OwnedFd::from(theirs.try_clone().unwrap()))
                .stderr(std::process::Stdio::null())
                .spawn()
        });
        (child, ours)
    }

    /// Spawns a binary this test just wrote. A child another test thread
    /// forks meanwhile holds its write descriptor until it execs: ETXTBSY
    /// for a moment.
    fn spawn_fresh_binary(
        mut spawn: impl FnMut() -> std::io::Result<std::process::Child>,
    ) -> std::process::Child {
        let mut tries = 0;
        loop {
            match spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => return r.unwrap(),
            }
        }
    }

    fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "the agent did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn with_connect_the_agent_serves_that_socket_else_its_stdin_and_stdout() {
        let dir = tempfile::tempdir().unwrap();
        let agent = built_agent(dir.path());
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (mut child, mut stdio) = spawn_agent(&agent, &["--connect", path.to_str().unwrap()]);
        let (socket, _) = tokio::time::timeout(T, listener.accept())
            .await
            .expect("the agent connects")
            .unwrap();
        let a = AgentClient::attach(Box::new(socket), Instant::now() + T, &TaskTracker::new())
            .await
            .unwrap();
        assert_eq!(
            a.execute("echo direct", T).await.unwrap().stdout,
            b"direct\n"
        );
        let on_stdio =
            tokio::task::block_in_place(|| read_for(&mut stdio, 1, Duration::from_millis(300)));
        assert!(on_stdio.is_empty(), "{on_stdio:?} on stdout");
        drop(a);
        assert!(wait_exit(&mut child).success(), "ends with its socket");

        // Nothing listens there: it greets and serves on stdin/stdout.
        let gone = dir.path().join("no-such-dir/agent.sock");
        let (mut child, stdio) = spawn_agent(&agent, &["--connect", gone.to_str().unwrap()]);
        stdio.set_nonblocking(true).unwrap();
        let a = AgentClient::attach(
            Box::new(tokio::net::UnixStream::from_std(stdio).unwrap()),
            Instant::now() + T,
            &TaskTracker::new(),
        )
        .await
        .unwrap();
        assert_eq!(
            a.execute("echo relayed", T).await.unwrap().stdout,
            b"relayed\n"
        );
        drop(a);
        assert!(wait_exit(&mut child).success(), "ends with its stdin");
    }

    /// The built agent on a real terminal (a pty in raw mode, as hvc0).
    #[test]
    fn on_a_terminal_bytes_that_are_not_frames_hand_it_back_to_a_shell() {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = built_agent(dir.path());
        let pty = nix::pty::openpty(None, None).unwrap();
        let mut t = tcgetattr(&pty.slave).unwrap();
        cfmakeraw(&mut t);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &t).unwrap();
        let slave = std::fs::File::from(pty.slave);
        let mut child = spawn_fresh_binary(|| {
            std::process::Command::new(&path)
                .stdin(slave.try_clone().unwrap())
                .stdout(slave.try_clone().unwrap())
                .stderr(std::process::Stdio::null())
                .spawn()
        });
        drop(slave);
        let mut master = std::fs::File::from(pty.master);
        let mut reader = master.try_clone().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let mut wait_for = |needle: &str| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !String::from_utf8_lossy(&seen).contains(needle) {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(b) => seen.extend_from_slice(&b),
                    Err(_) => panic!("no {needle:?} in {:?}", String::from_utf8_lossy(&seen)),
                }
            }
        };
        wait_for(&format!("{} {}", wire::HELLO, wire::VERSION));
        // What a restored VM's new host connection sends first, cut inside
        // its quotes (a terminal delivers it in pieces of any size): no part
        // of it may reach the shell, or the shell sits in an open quote.
        let wake = crate::guest::wake_line();
        let (first, rest) = wake.split_at(wake.find("backdoor").unwrap());
        master.write_all(first.as_bytes()).unwrap();
        master.flush().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        master.write_all(rest.as_bytes()).unwrap();
        wait_for(BANNER);
        master.write_all(b"echo shell-$((6*7))\n").unwrap();
        wait_for("shell-42");
        master.write_all(b"exit\n").unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }

    #[test]
    fn only_plain_word_lists_skip_the_shell() {
        assert_eq!(
            plain_words("systemctl is-active x.service"),
            Some(vec![
                "systemctl".into(),
                "is-active".into(),
                "x.service".into()
            ])
        );
        assert_eq!(
            plain_words("curl -sf http://server:80/a"),
            Some(vec![
                "curl".into(),
                "-sf".into(),
                "http://server:80/a".into()
            ])
        );
        assert_eq!(plain_words("true"), Some(vec!["true".into()]));
        for shell in [
            "echo --help",
            "exit 3",
            "a=b c",
            "ls *",
            "x | y",
            "x; y",
            "echo $HOME",
            "cat 'a b'",
            "x > f",
            "~/bin",
            "",
        ] {
            assert_eq!(plain_words(shell), None, "{shell:?}");
        }
    }
}
