//! [`Session`]: the command protocol over one byte stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::protocol::{CommandOutput, Framer};
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
    Io(String),
    /// No banner arrived in time.
    #[error("no backdoor banner within {0:?}")]
    BannerTimeout(Duration),
    /// No reply arrived in time (the guest-side timeout should have fired first).
    #[error("no reply within {0:?}: the guest shell is unresponsive")]
    ReplyTimeout(Duration),
    /// The guest sent something that is not a valid reply.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl From<std::io::Error> for GuestError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset => GuestError::Closed,
            _ => GuestError::Io(e.to_string()),
        }
    }
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Extra time the host waits beyond the guest-side `timeout` before it gives
/// the session up as hung.
const REPLY_GRACE: Duration = Duration::from_secs(15);

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
    /// `on_noise` receives lines that arrive before the banner (console output
    /// on shared transports such as hvc0).
    pub async fn establish(
        stream: Box<dyn GuestStream>,
        banner_timeout: Duration,
    ) -> Result<Session, GuestError> {
        let (r, w) = tokio::io::split(stream);
        let mut session = Session {
            reader: BufReader::new(r),
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
        if self.poisoned {
            return Err(GuestError::Protocol(
                "session was abandoned by an earlier call".into(),
            ));
        }
        // Poisoned until the reply is read: if this future is dropped midway
        // (cancellation, host timeout) the stream is out of step.
        self.poisoned = true;
        let secs = timeout.as_secs_f64().ceil().max(1.0) as u64;
        let (line, seq) = self.framer.encode(command, secs);
        self.writer.write_all(line.as_bytes()).await?;
        self.writer.flush().await?;
        let host_limit = Duration::from_secs(secs) + REPLY_GRACE;
        let out = tokio::time::timeout(host_limit, self.read_reply(seq))
            .await
            .map_err(|_| GuestError::ReplyTimeout(host_limit))??;
        self.poisoned = false;
        Ok(out)
    }

    async fn read_reply(&mut self, seq: u64) -> Result<CommandOutput, GuestError> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = self.reader.read_until(b'\n', &mut line).await?;
            if n == 0 {
                return Err(GuestError::Closed);
            }
            if let Some(out) = self
                .framer
                .decode(&line, seq)
                .map_err(GuestError::Protocol)?
            {
                return Ok(out);
            }
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

#[cfg(test)]
mod tests {
    //! Against a real local `bash`, the shell every backdoor runs.
    use super::*;
    use tokio::process::Command;

    /// A local backdoor: banner + bash over a socketpair, like the guests'.
    async fn local_session() -> (Session, tokio::process::Child) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd: std::os::fd::OwnedFd = theirs.into();
        let fd2 = fd.try_clone().unwrap();
        let child = Command::new("bash")
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
        let out = s
            .execute("echo out; echo err >&2; exit 3", Duration::from_secs(5))
            .await
            .unwrap();
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
        let out = s
            .execute("cat; echo done", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(out.stdout, b"done\n");
        // The session still works: cat did not eat the next command.
        let out = s
            .execute("echo next", Duration::from_secs(5))
            .await
            .unwrap();
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
        s.execute("pkill -f 'sleep 30' || true", Duration::from_secs(5))
            .await
            .unwrap();
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
}
