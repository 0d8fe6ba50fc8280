//! [`Session`]: the command protocol over one byte stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::protocol::{self, CommandOutput, Field, Framer, Request, Step};
use super::BANNER;

/// A byte stream to a backdoor shell.
pub trait GuestStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> GuestStream for T {}

/// Why a guest command could not be run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuestError {
    /// The stream ended: the guest, its shell or the transport went away.
    #[error("guest channel closed")]
    Closed,
    /// The stream failed.
    #[error("guest channel I/O failed: {0}")]
    Io(#[source] std::sync::Arc<std::io::Error>),
    /// No banner arrived in time.
    #[error("no backdoor banner within {0:?}")]
    BannerTimeout(Duration),
    /// No reply arrived in time (the guest-side timeout should have fired first).
    #[error("no reply within {0:?}: the guest shell is unresponsive")]
    ReplyTimeout(Duration),
    /// The session cannot be used (abandoned by an earlier call).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A command cannot be framed, or the guest sent something that is not
    /// a valid reply.
    #[error("protocol error: {0}")]
    Reply(#[source] protocol::ProtocolError),
    /// The agent sent a frame that does not parse.
    #[error("protocol error: {0}")]
    Wire(#[source] crate::agent::wire::WireError),
    /// A file transfer failed in the guest, or arrived different from what
    /// was sent (size or SHA-256); the session itself is still usable.
    #[error("{0}")]
    Transfer(String),
    /// Reading or writing the host side of a transfer failed.
    #[error("{0}")]
    HostFile(String),
    /// The guest agent could not be started or restarted (the bootstrap's
    /// reason).
    #[error("{0}")]
    AgentStart(String),
}

impl From<std::io::Error> for GuestError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset => GuestError::Closed,
            _ => GuestError::Io(std::sync::Arc::new(e)),
        }
    }
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Extra time the host waits beyond the guest-side `timeout` before it gives
/// the session up as hung.
const REPLY_GRACE: Duration = Duration::from_secs(15);

/// Read buffer of a session: big outputs arrive in few reads.
const READ_BUFFER: usize = 256 * 1024;

/// Raw bytes read from the host file per upload step (whole upload lines).
const UPLOAD_STEP: usize = protocol::UPLOAD_LINE_BYTES * 64;

/// What a verified transfer moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes, as counted on both ends.
    pub bytes: u64,
    /// SHA-256 (hex), as computed on both ends.
    pub sha256: String,
}

/// The guest's view of a file: `<size> <sha256>` on stdout.
fn describe_file(path: &str) -> String {
    let p = crate::shell::quote(path);
    format!("s=$(stat -c %s -- {p}); h=$(sha256sum <{p}); echo \"$s ${{h%% *}}\"")
}

/// [`describe_file`] for an upload's `dest`, whose hash was taken as it was
/// written (the second pass over the file was a third of a copy's time).
fn describe_upload(dest: &str) -> String {
    let p = crate::shell::quote(dest);
    let h = crate::shell::quote(&protocol::upload_hash_file(dest));
    format!(
        "h=$(cat -- {h} 2>/dev/null || true); rm -f -- {h}; s=$(stat -c %s -- {p}); echo \"$s ${{h%% *}}\""
    )
}

/// Parses [`describe_file`]'s output.
fn parse_description(out: &CommandOutput) -> Result<(u64, String), GuestError> {
    let text = out.stdout_text();
    let mut it = text.split_whitespace();
    match (it.next().and_then(|s| s.parse().ok()), it.next()) {
        (Some(size), Some(hash)) if hash.len() == 64 => Ok((size, hash.to_owned())),
        _ => Err(GuestError::Transfer(format!(
            "the guest described the file as {:?}",
            text.trim()
        ))),
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a download's data field goes.
struct DataSink<'a> {
    out: &'a mut (dyn AsyncWrite + Unpin + Send),
    hasher: Sha256,
    bytes: u64,
}

/// The command protocol on one stream. A session is used by one command at a
/// time; a machine keeps a pool of them for concurrency.
pub struct Session {
    reader: BufReader<tokio::io::ReadHalf<Box<dyn GuestStream>>>,
    writer: tokio::io::WriteHalf<Box<dyn GuestStream>>,
    framer: Framer,
    /// Set once a command was abandoned mid-way; the session is then unusable.
    poisoned: bool,
}

impl Session {
    /// Waits for the banner on a fresh stream and prepares the shell.
    /// Lines that arrive before the banner (console output on shared
    /// transports such as hvc0) are skipped.
    pub async fn establish(
        stream: Box<dyn GuestStream>,
        banner_timeout: Duration,
    ) -> Result<Session, GuestError> {
        let (r, w) = tokio::io::split(stream);
        let mut session = Session {
            reader: BufReader::with_capacity(READ_BUFFER, r),
            writer: w,
            framer: Framer::new(NEXT_SESSION.fetch_add(1, Ordering::Relaxed)),
            poisoned: false,
        };
        tokio::time::timeout(banner_timeout, session.read_banner())
            .await
            .map_err(|_| GuestError::BannerTimeout(banner_timeout))??;
        let init = session.framer.init_line();
        session.writer.write_all(init.as_bytes()).await?;
        // One round trip proves the shell reads and answers.
        let probe = session.execute("true", Duration::from_secs(30)).await?;
        if probe.status != 0 {
            return Err(GuestError::Protocol(format!(
                "the backdoor shell cannot run `true` (status {}): {}",
                probe.status,
                probe.stderr_text().trim()
            )));
        }
        Ok(session)
    }

    async fn read_banner(&mut self) -> Result<(), GuestError> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = self.reader.read_until(b'\n', &mut line).await?;
            if n == 0 {
                return Err(GuestError::Closed);
            }
            if String::from_utf8_lossy(&line).contains(BANNER) {
                return Ok(());
            }
        }
    }

    /// Whether the session can take another command.
    pub fn is_usable(&self) -> bool {
        !self.poisoned
    }

    /// Runs one command. `timeout` is enforced in the guest (`timeout(1)`,
    /// status 124) and, with a grace period, on the host.
    pub async fn execute(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, GuestError> {
        self.round_trip(command, timeout, Request::Command, None, None)
            .await
            .map(|(out, _)| out)
    }

    /// Writes `len` bytes read from `data` to the guest file `dest` (created
    /// or truncated; its directory must exist) in one round trip, streamed,
    /// and checks them on arrival: the guest's size and SHA-256 of `dest`
    /// must equal the host's of the bytes sent. `timeout` bounds the whole
    /// transfer.
    pub async fn upload(
        &mut self,
        dest: &str,
        data: &mut (dyn AsyncRead + Unpin + Send),
        len: u64,
        timeout: Duration,
    ) -> Result<Transfer, GuestError> {
        let request = Request::Upload {
            dest,
            encoded_len: protocol::upload_encoded_len(len),
        };
        let (out, sent) = self
            .round_trip(
                &describe_upload(dest),
                timeout,
                request,
                Some((data, len)),
                None,
            )
            .await?;
        let sent = sent.expect("an upload reports what it sent");
        if out.status != 0 {
            return Err(GuestError::Transfer(format!(
                "writing {dest} in the guest failed (exit status {}): {}",
                out.status,
                out.stderr_text().trim()
            )));
        }
        // A write that failed in the guest (`tee: …: No space left on
        // device`) leaves its reason on stderr and a short or undescribed
        // file: the reason, not the symptom.
        let described = parse_description(&out);
        let arrived =
            matches!(&described, Ok((size, hash)) if *size == len && *hash == sent.sha256);
        let stderr = out.stderr_text();
        if !arrived && sent.short.is_none() && !stderr.trim().is_empty() {
            return Err(GuestError::Transfer(format!(
                "writing {dest} in the guest failed: {}",
                stderr.trim()
            )));
        }
        let (size, hash) = described?;
        if let Some(short) = sent.short {
            return Err(GuestError::HostFile(format!(
                "the host file ended after {short} of {len} bytes: it changed while being copied"
            )));
        }
        if size != len || hash != sent.sha256 {
            return Err(GuestError::Transfer(format!(
                "{dest} arrived different from what was sent: {size} bytes with SHA-256 {hash} in the guest, \
                 {len} bytes with SHA-256 {} sent",
                sent.sha256
            )));
        }
        Ok(Transfer {
            bytes: len,
            sha256: hash,
        })
    }

    /// Streams the guest file `source` into `out` in one round trip and
    /// checks it: the guest's size and SHA-256 of `source` (taken before
    /// sending) must equal the host's of the bytes received, so a file that
    /// changes while it is copied fails the call. `timeout` bounds the whole
    /// transfer.
    pub async fn download(
        &mut self,
        source: &str,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        timeout: Duration,
    ) -> Result<Transfer, GuestError> {
        let mut sink = DataSink {
            out,
            hasher: Sha256::new(),
            bytes: 0,
        };
        let (reply, _) = self
            .round_trip(
                &describe_file(source),
                timeout,
                Request::Download { source },
                None,
                Some(&mut sink),
            )
            .await?;
        if reply.status != 0 {
            return Err(GuestError::Transfer(format!(
                "reading {source} in the guest failed (exit status {}): {}",
                reply.status,
                reply.stderr_text().trim()
            )));
        }
        let (size, hash) = parse_description(&reply)?;
        sink.out
            .flush()
            .await
            .map_err(|e| GuestError::HostFile(e.to_string()))?;
        let got = hex(&sink.hasher.finalize());
        if size != sink.bytes || hash != got {
            return Err(GuestError::Transfer(format!(
                "{source} arrived different from the guest's file: {size} bytes with SHA-256 {hash} in the guest, \
                 {} bytes with SHA-256 {got} received (did the file change while it was copied?)",
                sink.bytes
            )));
        }
        Ok(Transfer {
            bytes: size,
            sha256: hash,
        })
    }

    async fn round_trip(
        &mut self,
        command: &str,
        timeout: Duration,
        request: Request<'_>,
        upload: Option<(&mut (dyn AsyncRead + Unpin + Send), u64)>,
        sink: Option<&mut DataSink<'_>>,
    ) -> Result<(CommandOutput, Option<Sent>), GuestError> {
        if self.poisoned {
            return Err(GuestError::Protocol(
                "session was abandoned by an earlier call".into(),
            ));
        }
        let secs = timeout.as_secs_f64().ceil().max(1.0) as u64;
        let (line, seq) = self
            .framer
            .encode_request(command, secs, request)
            .map_err(GuestError::Reply)?;
        // Poisoned until the reply is read: if this future is dropped midway
        // (cancellation, host timeout) the stream is out of step.
        self.poisoned = true;
        let host_limit = Duration::from_secs(secs) + REPLY_GRACE;
        let work = async {
            self.writer.write_all(line.as_bytes()).await?;
            let sent = match upload {
                Some((data, len)) => Some(self.send_payload(data, len).await?),
                None => None,
            };
            self.writer.flush().await?;
            let out = self.read_reply(seq, sink).await?;
            Ok::<_, GuestError>((out, sent))
        };
        let r = tokio::time::timeout(host_limit, work)
            .await
            .map_err(|_| GuestError::ReplyTimeout(host_limit))??;
        self.poisoned = false;
        Ok(r)
    }

    /// Sends exactly the announced payload: `len` bytes of `data` as upload
    /// lines. A source that ends early is padded (the guest must read every
    /// announced byte) and reported.
    async fn send_payload(
        &mut self,
        data: &mut (dyn AsyncRead + Unpin + Send),
        len: u64,
    ) -> Result<Sent, GuestError> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; UPLOAD_STEP];
        let mut encoded = Vec::with_capacity(UPLOAD_STEP / 3 * 4 + UPLOAD_STEP / 1000 + 8);
        let mut left = len;
        let mut short = None;
        while left > 0 {
            let want = (UPLOAD_STEP as u64).min(left) as usize;
            let mut got = 0;
            while got < want && short.is_none() {
                let n = data
                    .read(&mut buf[got..want])
                    .await
                    .map_err(|e| GuestError::HostFile(format!("reading the host file: {e}")))?;
                if n == 0 {
                    short = Some(len - left + got as u64);
                }
                got += n;
            }
            if got < want {
                buf[got..want].fill(0);
            }
            hasher.update(&buf[..got]);
            encoded.clear();
            protocol::encode_upload_chunk(&buf[..want], &mut encoded);
            self.writer.write_all(&encoded).await?;
            left -= want as u64;
        }
        Ok(Sent {
            sha256: hex(&hasher.finalize()),
            short,
        })
    }

    async fn read_reply(
        &mut self,
        seq: u64,
        mut sink: Option<&mut DataSink<'_>>,
    ) -> Result<CommandOutput, GuestError> {
        let mut parser = self.framer.parser(seq);
        let mut out = CommandOutput {
            status: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                return Err(GuestError::Closed);
            }
            let (used, step) = parser.step(buf).map_err(GuestError::Reply)?;
            match step {
                Step::Continue => {}
                Step::Bytes(Field::Stdout, b) => out.stdout.extend_from_slice(b),
                Step::Bytes(Field::Stderr, b) => out.stderr.extend_from_slice(b),
                Step::Bytes(Field::Data, b) => match sink.as_deref_mut() {
                    Some(s) => {
                        s.out.write_all(b).await.map_err(|e| {
                            GuestError::HostFile(format!("writing the host file: {e}"))
                        })?;
                        s.hasher.update(b);
                        s.bytes += b.len() as u64;
                    }
                    None => {
                        return Err(GuestError::Protocol(
                            "a data field in the reply to a plain command".into(),
                        ))
                    }
                },
                Step::Done(status) => {
                    self.reader.consume(used);
                    out.status = status;
                    return Ok(out);
                }
            }
            self.reader.consume(used);
        }
    }

    /// Sends a line that gets no reply (e.g. `poweroff`, after which the
    /// shell disappears).
    pub async fn send_fire_and_forget(&mut self, command: &str) -> Result<(), GuestError> {
        self.poisoned = true;
        let mut line = command.replace('\n', " ");
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        self.writer.flush().await?;
        Ok(())
    }
}

/// What an upload sent.
struct Sent {
    sha256: String,
    /// Set when the source ended early: bytes it had.
    short: Option<u64>,
}

#[cfg(test)]
mod tests {
    //! Against a real local `bash`, the shell every backdoor runs.
    use super::*;
    use tokio::process::Command;

    /// A local backdoor: banner + bash over a socketpair, like the guests'.
    async fn local_session() -> (Session, tokio::process::Child) {
        local_session_with_path(None).await
    }

    /// [`local_session`] with `dir` first in the shell's PATH.
    async fn local_session_with_path(
        dir: Option<&std::path::Path>,
    ) -> (Session, tokio::process::Child) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd: std::os::fd::OwnedFd = theirs.into();
        let fd2 = fd.try_clone().unwrap();
        let mut cmd = Command::new("bash");
        if let Some(dir) = dir {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", dir.display()));
        }
        let child = cmd
            .args(["-c", &format!("echo '{BANNER}'; exec bash --norc")])
            .stdin(fd)
            .stdout(fd2)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        ours.set_nonblocking(true).unwrap();
        let stream = tokio::net::UnixStream::from_std(ours).unwrap();
        let s = Session::establish(Box::new(stream), Duration::from_secs(5))
            .await
            .unwrap();
        (s, child)
    }

    #[tokio::test]
    async fn stdout_stderr_and_status_are_separate() {
        let (mut s, _c) = local_session().await;
        let out = run(&mut s, "echo out; echo err >&2; exit 3").await;
        assert_eq!(out.status, 3);
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[tokio::test]
    async fn binary_and_quoting_survive() {
        let (mut s, _c) = local_session().await;
        let out = s
            .execute(
                r#"printf '\x00\xff'"'"'x"$y'; echo "a'b""#,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(out.stdout, b"\x00\xff'x\"$ya'b\n");
    }

    #[tokio::test]
    async fn stdin_is_not_the_protocol_stream() {
        let (mut s, _c) = local_session().await;
        let out = run(&mut s, "cat; echo done").await;
        assert_eq!(out.stdout, b"done\n");
        // The session still works: cat did not eat the next command.
        let out = run(&mut s, "echo next").await;
        assert_eq!(out.stdout, b"next\n");
    }

    #[tokio::test]
    async fn background_process_holding_stdout_does_not_hang() {
        let (mut s, _c) = local_session().await;
        let t = std::time::Instant::now();
        let out = s
            .execute("sleep 30 & echo started", Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(out.stdout, b"started\n");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        run(&mut s, "pkill -f 'sleep 30' || true").await;
    }

    #[tokio::test]
    async fn commands_run_with_the_nixos_shell_options() {
        let (mut s, _c) = local_session().await;
        for (cmd, why) in [
            ("false; true", "errexit"),
            ("false | true", "pipefail"),
            ("echo $attest_unset_variable", "nounset"),
        ] {
            let out = s.execute(cmd, Duration::from_secs(5)).await.unwrap();
            assert_ne!(out.status, 0, "{cmd:?} must fail ({why})");
        }
    }

    #[tokio::test]
    async fn guest_timeout_gives_status_124() {
        let (mut s, _c) = local_session().await;
        let out = s.execute("sleep 5", Duration::from_secs(1)).await.unwrap();
        assert_eq!(out.status, 124);
        assert!(s.is_usable());
    }

    #[tokio::test]
    async fn a_dead_shell_fails_the_pending_call_at_once() {
        let (mut s, _c) = local_session().await;
        let t = std::time::Instant::now();
        let err = s
            .execute(
                "kill -9 $(ps -o ppid= -p $PPID); sleep 30",
                Duration::from_secs(60),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, GuestError::Closed), "{err:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn large_output_arrives_whole() {
        let (mut s, _c) = local_session().await;
        let out = s
            .execute(
                "head -c 3000000 /dev/zero | tr '\\0' x",
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert_eq!(out.stdout.len(), 3_000_000);
    }

    #[tokio::test]
    async fn output_files_are_gone_when_the_reply_is_read() {
        let (mut s, c) = local_session().await;
        // `exec bash --norc` keeps the child's pid: it is the backdoor shell.
        let shell = c.id().unwrap().to_string();
        for _ in 0..3 {
            run(&mut s, "echo out; echo err >&2").await;
        }
        let left: Vec<_> = std::fs::read_dir("/dev/shm")
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!(".attest-{shell}-")))
            .collect();
        assert!(left.is_empty(), "left in /dev/shm: {left:?}");
    }

    async fn run(s: &mut Session, command: &str) -> CommandOutput {
        s.execute(command, Duration::from_secs(5)).await.unwrap()
    }

    async fn upload_bytes(
        s: &mut Session,
        dest: &str,
        data: &[u8],
    ) -> Result<Transfer, GuestError> {
        let mut r = data;
        s.upload(dest, &mut r, data.len() as u64, Duration::from_secs(30))
            .await
    }

    #[tokio::test]
    async fn uploads_and_downloads_are_exact_and_verified() {
        let (mut s, _c) = local_session().await;
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 2303, 2304, 2305, 1 << 20, 3 * (1 << 20) + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let dest = dir.path().join(format!("up-{len}"));
            let t = upload_bytes(&mut s, dest.to_str().unwrap(), &data)
                .await
                .unwrap();
            assert_eq!(t.bytes, len as u64);
            assert_eq!(std::fs::read(&dest).unwrap(), data, "upload of {len}");
            let mut back = Vec::new();
            let t2 = s
                .download(dest.to_str().unwrap(), &mut back, Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(back, data, "download of {len}");
            assert_eq!(t2, t);
        }
        // The shell reads on right after the payload.
        let out = run(&mut s, "echo next").await;
        assert_eq!(out.stdout, b"next\n");
    }

    /// A guest with no room left: the error says so (it said "the guest
    /// described the file as …" before).
    #[tokio::test]
    async fn a_full_guest_disk_is_named_as_the_reason() {
        let (mut s, _c) = local_session().await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("full");
        std::os::unix::fs::symlink("/dev/full", &dest).unwrap();
        let err = upload_bytes(&mut s, dest.to_str().unwrap(), &[b'x'; 100_000])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("No space left on device"), "{err}");
        assert!(s.is_usable());
    }

    #[tokio::test]
    async fn a_failed_write_drains_the_payload_and_the_session_goes_on() {
        let (mut s, _c) = local_session().await;
        let data = vec![b'x'; 500_000];
        let err = upload_bytes(&mut s, "/nonexistent-dir/f", &data)
            .await
            .unwrap_err();
        assert!(matches!(err, GuestError::Transfer(_)), "{err:?}");
        assert!(
            err.to_string().contains("No such file or directory"),
            "{err}"
        );
        assert!(s.is_usable());
        let out = run(&mut s, "echo still here").await;
        assert_eq!(out.stdout, b"still here\n");
    }

    /// A guest whose `sha256sum` lies: the host's comparison must catch it.
    #[tokio::test]
    async fn a_hash_mismatch_fails_the_transfer() {
        let bin = tempfile::tempdir().unwrap();
        let fake = bin.path().join("sha256sum");
        std::fs::write(&fake, "#!/bin/sh\ncat >/dev/null; echo 0000000000000000000000000000000000000000000000000000000000000000 -\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (mut s, _c) = local_session_with_path(Some(bin.path())).await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let err = upload_bytes(&mut s, dest.to_str().unwrap(), b"payload")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("arrived different"), "{err}");
        let mut back = Vec::new();
        let err = s
            .download(dest.to_str().unwrap(), &mut back, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("arrived different"), "{err}");
        assert!(s.is_usable());
    }

    #[tokio::test]
    async fn a_host_file_that_ends_early_is_reported() {
        let (mut s, _c) = local_session().await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let mut r: &[u8] = b"only this";
        let err = s
            .upload(
                dest.to_str().unwrap(),
                &mut r,
                100_000,
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("changed while being copied"),
            "{err}"
        );
        let out = run(&mut s, "echo ok").await;
        assert_eq!(out.stdout, b"ok\n");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Any command text reaches bash unchanged (ANSI-C quoting).
        #[test]
        fn any_command_text_reaches_bash_unchanged(text in "[^\\x00]{0,200}") {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (mut s, _c) = local_session().await;
                let cmd = format!("printf %s {}", crate::shell::quote(&text));
                let out = s.execute(&cmd, Duration::from_secs(5)).await.unwrap();
                assert_eq!(out.stdout_text(), text);
            });
        }
    }
}
