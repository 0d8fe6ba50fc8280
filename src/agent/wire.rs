//! The agent's wire format, shared by the guest ([`super::serve`]) and the
//! host client (`guest::agent`). Free of I/O and std-only: the agent is built
//! without any crate.
//!
//! After `exec`, the agent prints one text line, [`HELLO`] followed by the
//! protocol version (and [`ACKS`] when it wants them), so a host can tell
//! it from shell noise. Everything after that line is frames, in both
//! directions:
//!
//! ```text
//! u32 LE  length of what follows (kind + id + payload)
//! u8      kind
//! u32 LE  request id (chosen by the host; 0 is never used)
//! …       payload
//! ```
//!
//! Many requests are in flight at once; every frame names its request.

/// The first bytes of the agent's greeting line.
pub const HELLO: &str = "ATTEST-AGENT";

/// The protocol version; host and agent must agree exactly.
pub const VERSION: u32 = 8;

/// The word that ends the greeting (`ATTEST-AGENT 5 acks`) of an agent that
/// keeps a window (see [`ACK`]); the host sends acks only to such an agent.
pub const ACKS: &str = "acks";

/// Ends the line a host writes to a backdoor terminal whose agent it no
/// longer speaks to (a VM restored from a snapshot):
/// `echo 'Spawning backdoor root shell...' #attest-wake`. A shell prints
/// the banner (the rest is a comment); an agent takes the bytes for a bad
/// frame, swallows input through this mark so no part of the line reaches
/// the shell it hands the terminal to, and prints the banner itself.
pub const WAKE_MARK: &str = "#attest-wake";

/// Largest payload either side sends or accepts.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Largest payload of the output and download frames the agent sends.
/// Below glibc's mmap threshold as attest sets it (256 KiB): each frame's
/// buffer is then reused from malloc's arena, where a bigger one would be
/// mapped and faulted in afresh (page faults are most of the cost of a
/// byte on a paravirtualized host).
pub const DATA_CHUNK: usize = 128 * 1024;

/// Bytes of kind + id.
const HEAD: usize = 5;

/// Unacknowledged bytes an agent on a tty keeps in flight. QEMU's socket
/// towards the host takes about 200 KiB (`wmem_default`) before it drops a
/// virtconsole's output; this stays well below it, and the host acks every
/// [`ACK_EVERY`] bytes so the window never runs dry on a fast host.
pub const WINDOW: u64 = 96 * 1024;

/// How often (in bytes consumed) the host sends [`ACK`].
pub const ACK_EVERY: u64 = 16 * 1024;

/// Host → agent: run a command. Payload: [`Exec`].
pub const EXEC: u8 = 1;
/// Host → agent: kill a command's process group, or abandon a transfer
/// (the host gave up on it).
pub const KILL: u8 = 2;
/// Host → agent: receive a file or a tar stream. Payload: [`Transfer`].
/// [`DATA`] frames follow, then [`END`].
pub const PUT: u8 = 3;
/// Both ways: raw bytes of a transfer.
pub const DATA: u8 = 4;
/// Host → agent: an upload's data ended. Payload: [`Digest`] of what was sent.
pub const END: u8 = 5;
/// Host → agent: send a file, or a directory as a tar stream. Payload:
/// [`Transfer`]. The agent answers with [`DATA`] frames, then [`DONE`].
pub const GET: u8 = 6;
/// Host → agent: bytes for the stdin of a command started with
/// [`Exec::stdin`]; an empty payload closes it.
pub const STDIN: u8 = 7;
/// Host → agent: the host has consumed this many bytes of frames (u64 LE,
/// counted from the first frame after the greeting). An agent whose output
/// can be lost when the host falls behind (a virtconsole: QEMU drops what
/// its socket does not take) keeps at most [`WINDOW`] bytes unacknowledged.
pub const ACK: u8 = 8;
/// Host → agent: a wait: run a command with an [`Exec::retry`] condition,
/// trying again only when a watched directory entry changed or the
/// fallback pause passed. Payload: [`Wait`]. Replies as an `EXEC` with
/// `retry`: output, [`AGAIN`] between tries, then [`EXIT`] or [`ERROR`].
pub const WAIT: u8 = 9;
/// Agent → host: bytes the command wrote to stdout.
pub const STDOUT: u8 = 16;
/// Agent → host: bytes the command wrote to stderr.
pub const STDERR: u8 = 17;
/// Agent → host: the command ended. Payload: [`Exit`].
pub const EXIT: u8 = 18;
/// Agent → host: the request could not be served. Payload: UTF-8 text.
pub const ERROR: u8 = 19;
/// Agent → host: a transfer ended. Payload: [`Digest`] of what the agent
/// wrote (upload, after checking it against the host's) or sent (download).
pub const DONE: u8 = 20;
/// Agent → host: a try of an [`Exec::retry`] command did not meet its
/// condition; the output so far is stale and the next try follows.
pub const AGAIN: u8 = 21;

/// What a transfer moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One regular file.
    File,
    /// A directory, as a ustar stream made or read by the guest's `tar`.
    Tar,
}

/// A [`PUT`] or [`GET`] request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// File or directory.
    pub shape: Shape,
    /// Permission bits of an uploaded file (ignored otherwise).
    pub mode: u32,
    /// The guest path: the file, or the directory a tar stream is made of
    /// or extracted into.
    pub path: Vec<u8>,
}

impl Transfer {
    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(5 + self.path.len());
        v.push(match self.shape {
            Shape::File => 0,
            Shape::Tar => 1,
        });
        v.extend_from_slice(&self.mode.to_le_bytes());
        v.extend_from_slice(&self.path);
        v
    }

    /// Parses the payload.
    pub fn decode(p: &[u8]) -> Result<Transfer, WireError> {
        let mut r = Reader(p);
        let shape = match r.take(1)?[0] {
            0 => Shape::File,
            1 => Shape::Tar,
            other => return Err(WireError::UnknownShape(other)),
        };
        let mode = r.u32()?;
        if r.0.is_empty() || r.0.contains(&0) {
            return Err(WireError::BadPath);
        }
        Ok(Transfer {
            shape,
            mode,
            path: r.0.to_vec(),
        })
    }
}

/// Size and SHA-256 of a transfer's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    /// Bytes.
    pub size: u64,
    /// Their SHA-256.
    pub sha256: [u8; 32],
}

impl Digest {
    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.sha256);
        v
    }

    /// Parses the payload.
    pub fn decode(p: &[u8]) -> Result<Digest, WireError> {
        let mut r = Reader(p);
        let size = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
        let sha256 = r.take(32)?.try_into().expect("32 bytes");
        Ok(Digest { size, sha256 })
    }

    /// The hash in lowercase hex, as `sha256sum` prints it.
    pub fn hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it is.
    pub kind: u8,
    /// The request it belongs to.
    pub id: u32,
    /// Its content.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + HEAD + self.payload.len());
        encode_head(&mut v, self.kind, self.id, self.payload.len());
        v.extend_from_slice(&self.payload);
        v
    }
}

/// Bytes of a frame before its payload: length, kind, id.
pub const HEADER: usize = 4 + HEAD;

/// A frame's header for a payload of `len` bytes.
pub fn header(kind: u8, id: u32, len: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&((HEAD + len) as u32).to_le_bytes());
    h[4] = kind;
    h[5..].copy_from_slice(&id.to_le_bytes());
    h
}

/// Appends a frame header for a payload of `len` bytes.
pub fn encode_head(out: &mut Vec<u8>, kind: u8, id: u32, len: usize) {
    out.extend_from_slice(&header(kind, id, len));
}

/// What a frame's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the frame is.
    pub kind: u8,
    /// The request it belongs to.
    pub id: u32,
    /// Bytes of payload that follow.
    pub payload_len: usize,
}

/// Parses and checks a frame's header; the payload is read straight into
/// a buffer of its own size (no copy, no zeroing).
pub fn decode_header(h: [u8; HEADER]) -> Result<Header, WireError> {
    Ok(Header {
        kind: h[4],
        id: u32::from_le_bytes([h[5], h[6], h[7], h[8]]),
        payload_len: check_len(&h)?,
    })
}

/// Checks the length field (the first 4 bytes of `h`); the payload's length.
pub fn check_len(h: &[u8]) -> Result<usize, WireError> {
    let n = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if !(HEAD..=HEAD + MAX_PAYLOAD).contains(&n) {
        return Err(WireError::BadLength(n));
    }
    Ok(n - HEAD)
}

/// What to run. `words` non-empty: exec them directly (a plain word list);
/// the agent falls back to `bash -c` with `script` when that exec fails, so
/// errors read as bash's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// Milliseconds before the process group is killed (0: never).
    pub timeout_ms: u64,
    /// The command's stdin is a pipe fed by [`STDIN`] frames, not `/dev/null`
    /// (a bash backdoor session tunnelled through the agent).
    pub stdin: bool,
    /// Run it again until its status meets a condition (a wait answered
    /// in the guest); `None`: once.
    pub retry: Option<Retry>,
    /// The argv for a direct exec, or empty.
    pub words: Vec<String>,
    /// The bash script (`set -euo pipefail; <command>`).
    pub script: String,
}

impl Exec {
    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&self.timeout_ms.to_le_bytes());
        v.push(self.stdin as u8);
        match &self.retry {
            None => v.push(0),
            Some(r) => {
                v.push(1);
                v.extend_from_slice(&r.status.to_le_bytes());
                v.push(r.equal as u8);
                v.extend_from_slice(&r.within_ms.to_le_bytes());
                v.extend_from_slice(&r.first_pause_ms.to_le_bytes());
                v.extend_from_slice(&r.max_pause_ms.to_le_bytes());
            }
        }
        v.extend_from_slice(&(self.words.len() as u32).to_le_bytes());
        for w in &self.words {
            v.extend_from_slice(&(w.len() as u32).to_le_bytes());
            v.extend_from_slice(w.as_bytes());
        }
        v.extend_from_slice(self.script.as_bytes());
        v
    }

    /// Parses the payload.
    pub fn decode(p: &[u8]) -> Result<Exec, WireError> {
        let mut r = Reader(p);
        let timeout_ms = r.u64()?;
        let stdin = r.take(1)?[0] != 0;
        let retry = match r.take(1)?[0] {
            0 => None,
            _ => Some(Retry {
                status: r.u32()? as i32,
                equal: r.take(1)?[0] != 0,
                within_ms: r.u64()?,
                first_pause_ms: r.u64()?,
                max_pause_ms: r.u64()?,
            }),
        };
        let n = r.u32()?;
        let mut words = Vec::new();
        for _ in 0..n {
            let len = r.u32()? as usize;
            words.push(r.text(len)?);
        }
        let script = r.text(r.0.len())?;
        Ok(Exec {
            timeout_ms,
            stdin,
            retry,
            words,
            script,
        })
    }
}

/// When a retried command is done: its status equals `status` (`equal`)
/// or differs from it (not `equal`), or `within_ms` passed. Between tries
/// the agent pauses `first_pause_ms`, doubling up to `max_pause_ms`, and
/// never less than the last try took (a wait must not steal the CPU from
/// the boot it waits for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The status the condition is about.
    pub status: i32,
    /// Done when the status equals it (else: when it differs).
    pub equal: bool,
    /// Milliseconds after which the last try's result is the answer.
    pub within_ms: u64,
    /// The first pause between tries.
    pub first_pause_ms: u64,
    /// The longest pause between tries.
    pub max_pause_ms: u64,
}

impl Retry {
    /// Whether a try that ended with `status` ends the wait.
    pub fn met_by(&self, status: i32) -> bool {
        (status == self.status) == self.equal
    }
}

/// What a [`WAIT`] watches: a change there may change the wait's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// `name` in `dir` appearing, changing or going away (every entry
    /// when `name` is empty). A `dir` that does not exist yet is watched
    /// through its nearest existing ancestor.
    Entry {
        /// An absolute directory path.
        dir: String,
        /// An entry of it, or empty for all.
        name: String,
    },
    /// The system manager's D-Bus signals naming this unit: one answers
    /// the next try at once. Where the agent reaches them, they replace
    /// the wait's `Entry` watches, which stand in for them otherwise, and
    /// the agent asks the manager for the unit's state before each try:
    /// while it is on its way (activating, inactive with a job), no try
    /// runs; active, with a `when_active`, that is the answer (stdout,
    /// status 0) without a try.
    Unit {
        /// As systemctl completes the name: `nginx.service`.
        name: String,
        /// What the probe prints for the unit active, or empty: the probe
        /// judges an active unit.
        when_active: String,
    },
}

/// A [`WAIT`] request: what to watch, then the command with its condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    /// Entries whose changes wake the next try.
    pub watch: Vec<Watch>,
    /// The command; its `retry` must be set.
    pub exec: Exec,
}

impl Wait {
    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(self.watch.len() as u32).to_le_bytes());
        for w in &self.watch {
            let (tag, texts) = match w {
                Watch::Entry { dir, name } => (0u8, [dir.as_str(), name.as_str()]),
                Watch::Unit { name, when_active } => (1u8, [name.as_str(), when_active.as_str()]),
            };
            v.push(tag);
            for s in texts {
                v.extend_from_slice(&(s.len() as u32).to_le_bytes());
                v.extend_from_slice(s.as_bytes());
            }
        }
        v.extend_from_slice(&self.exec.encode());
        v
    }

    /// Parses the payload.
    pub fn decode(p: &[u8]) -> Result<Wait, WireError> {
        let mut r = Reader(p);
        let n = r.u32()?;
        let mut watch = Vec::new();
        for _ in 0..n {
            let tag = r.take(1)?[0];
            let len = r.u32()? as usize;
            let first = r.text(len)?;
            let len = r.u32()? as usize;
            let second = r.text(len)?;
            watch.push(match tag {
                0 => Watch::Entry {
                    dir: first,
                    name: second,
                },
                1 => Watch::Unit {
                    name: first,
                    when_active: second,
                },
                other => return Err(WireError::UnknownWatch(other)),
            });
        }
        Ok(Wait {
            watch,
            exec: Exec::decode(r.0)?,
        })
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit status as a shell reports it (128 + signal when killed,
    /// 124 when the timeout fired, as `timeout(1)` reports it).
    pub status: i32,
    /// The signal that killed it, or 0.
    pub signal: i32,
    /// Whether the timeout fired.
    pub timed_out: bool,
}

impl Exit {
    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(9);
        v.extend_from_slice(&self.status.to_le_bytes());
        v.extend_from_slice(&self.signal.to_le_bytes());
        v.push(self.timed_out as u8);
        v
    }

    /// Parses the payload.
    pub fn decode(p: &[u8]) -> Result<Exit, WireError> {
        let mut r = Reader(p);
        let status = r.u32()? as i32;
        let signal = r.u32()? as i32;
        let timed_out = r.take(1)?[0] != 0;
        Ok(Exit {
            status,
            signal,
            timed_out,
        })
    }
}

/// Why a frame or payload does not parse. (`Display` by hand: the agent
/// is std only.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A transfer's shape byte is neither file nor tar.
    UnknownShape(u8),
    /// A transfer's path is empty or has NUL bytes.
    BadPath,
    /// A wait's watch kind byte is neither entry nor unit.
    UnknownWatch(u8),
    /// A length field outside what a frame may be.
    BadLength(usize),
    /// A payload shorter than its fields.
    EndsEarly(usize),
    /// A text field is not UTF-8.
    NotUtf8,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::UnknownShape(s) => write!(f, "unknown transfer shape {s}"),
            WireError::BadPath => f.write_str("a transfer needs a path without NUL bytes"),
            WireError::UnknownWatch(k) => write!(f, "unknown watch kind {k}"),
            WireError::BadLength(n) => write!(f, "bad frame length {n}"),
            WireError::EndsEarly(n) => write!(f, "payload ends early: need {n} more bytes"),
            WireError::NotUtf8 => f.write_str("text is not UTF-8"),
        }
    }
}

impl std::error::Error for WireError {}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::EndsEarly(n));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn text(&mut self, n: usize) -> Result<String, WireError> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| WireError::NotUtf8)
    }
}

/// The payload of an [`ACK`] frame.
pub fn encode_ack(consumed: u64) -> Vec<u8> {
    consumed.to_le_bytes().to_vec()
}

/// Parses an [`ACK`] payload.
pub fn decode_ack(p: &[u8]) -> Result<u64, WireError> {
    Reader(p).u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let f = Frame {
            kind: STDOUT,
            id: 7,
            payload: b"\0\xffhello".to_vec(),
        };
        let bytes = f.encode();
        let h = decode_header(bytes[..HEADER].try_into().unwrap()).unwrap();
        assert_eq!((h.kind, h.id), (f.kind, f.id));
        assert_eq!(&bytes[HEADER..], &f.payload[..]);
        assert_eq!(h.payload_len, f.payload.len());
    }

    #[test]
    fn exec_and_exit_round_trip() {
        let e = Exec {
            timeout_ms: 1500,
            stdin: true,
            retry: Some(Retry {
                status: 75,
                equal: false,
                within_ms: 9000,
                first_pause_ms: 25,
                max_pause_ms: 500,
            }),
            words: vec!["systemctl".into(), "is-active".into(), "x y".into()],
            script: "set -euo pipefail; systemctl is-active 'x y'".into(),
        };
        assert_eq!(Exec::decode(&e.encode()).unwrap(), e);
        let w = Wait {
            watch: vec![
                Watch::Entry {
                    dir: "/run/systemd/units".into(),
                    name: "invocation:a b.service".into(),
                },
                Watch::Unit {
                    name: "a b.service".into(),
                    when_active: "active 0\n".into(),
                },
                Watch::Entry {
                    dir: "/tmp".into(),
                    name: String::new(),
                },
            ],
            exec: e.clone(),
        };
        assert_eq!(Wait::decode(&w.encode()).unwrap(), w);
        assert!(Wait::decode(&w.encode()[..9]).is_err());
        let x = Exit {
            status: 137,
            signal: 9,
            timed_out: true,
        };
        assert_eq!(Exit::decode(&x.encode()).unwrap(), x);
        let t = Transfer {
            shape: Shape::Tar,
            mode: 0o644,
            path: b"/srv/a b".to_vec(),
        };
        assert_eq!(Transfer::decode(&t.encode()).unwrap(), t);
        let d = Digest {
            size: 1 << 40,
            sha256: [7; 32],
        };
        assert_eq!(Digest::decode(&d.encode()).unwrap(), d);
    }

    #[test]
    fn bad_lengths_and_short_payloads_are_errors() {
        assert!(decode_header([0; HEADER]).is_err());
        let too_long = header(STDOUT, 1, MAX_PAYLOAD + 1);
        assert!(decode_header(too_long).is_err());
        assert!(decode_header(header(STDOUT, 1, MAX_PAYLOAD)).is_ok());
        assert!(Exec::decode(&[1, 2, 3]).is_err());
        assert!(Exit::decode(&[0; 8]).is_err());
        assert!(Transfer::decode(&[0, 0, 0, 0, 0]).is_err(), "no path");
        assert!(Transfer::decode(&[9, 0, 0, 0, 0, b'/']).is_err());
        assert!(Digest::decode(&[0; 39]).is_err());
    }
}
