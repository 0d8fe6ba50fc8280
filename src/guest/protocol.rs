//! Framing of the command protocol (README, "How it works"), free of I/O so
//! it can be tested exhaustively.
//!
//! One round trip per command. The host sends one line of bash; the guest's
//! backdoor shell runs the command (ANSI-C quoted, under `timeout`, stdin
//! from `/dev/null`, stdout and stderr into per-command files so a background
//! process holding stdout cannot stall the reply) and streams the reply:
//!
//! ```text
//! \n<marker> <seq> <status> <stdout b64> <stderr b64> <data b64> .\n
//! ```
//!
//! Each field is `base64 -w0` written straight to the channel (the guest
//! holds no output in shell variables); base64 has no space or newline, so
//! the fields delimit themselves and [`ReplyParser`] decodes them as they
//! arrive. The data field carries a guest file for downloads
//! ([`Request::Download`]) and is empty otherwise. Uploads
//! ([`Request::Upload`]) send the file's base64 right after the line: the
//! backdoor shell reads non-seekable input byte by byte, so `head -c N` in
//! it gets exactly the payload and the shell reads on after it.
//!
//! Process cost per command in the guest: `timeout`, `bash`, one `rm` for
//! the output files (removed before the reply ends); the output encoders run
//! only when there is output.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::shell;

/// Seconds `timeout` waits after SIGTERM before SIGKILL.
const KILL_AFTER: u32 = 5;

/// Raw bytes per line of an upload's base64 (3072 characters a line: far
/// under a tty's 4095-character line limit, were the tty ever cooked).
pub const UPLOAD_LINE_BYTES: usize = 2304;

/// What a guest command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit status (124 when the guest-side timeout fired).
    pub status: i32,
    /// Standard output, byte for byte.
    pub stdout: Vec<u8>,
    /// Standard error, byte for byte.
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// stdout as text (lossy for non-UTF-8 bytes).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy for non-UTF-8 bytes).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// stdout as text without a copy when it is valid UTF-8 (big outputs).
    pub fn into_stdout_text(self) -> String {
        String::from_utf8(self.stdout)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// What travels besides the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// A plain command.
    Command,
    /// Before the command runs, the outer shell writes the `encoded_len`
    /// bytes of base64 that follow the line, decoded, to the guest file
    /// `dest`. The payload is consumed whole even when writing fails.
    Upload {
        /// Guest path written (created or truncated; its directory must exist).
        dest: &'a str,
        /// Exact length of the base64 text after the line.
        encoded_len: u64,
    },
    /// When the command exits 0, the guest file `source` follows in the
    /// reply's data field.
    Download {
        /// Guest path streamed.
        source: &'a str,
    },
}

/// Why a command cannot be framed or its reply cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A bash word cannot hold NUL.
    #[error("a command cannot contain a NUL byte")]
    NulInCommand,
    /// The header of this command's reply has non-ASCII bytes.
    #[error("reply header is not ASCII")]
    HeaderNotAscii,
    /// The header's sequence number is not a number.
    #[error("bad sequence number {0:?}")]
    BadSequence(String),
    /// The header's exit status is not a number.
    #[error("bad exit status {0:?}")]
    BadStatus(String),
    /// A line that starts like a header goes on with something else.
    #[error("malformed reply header: {0:?}")]
    BadHeader(String),
    /// A field ended in the middle of a base64 quantum.
    #[error("{0:?} field is truncated base64")]
    TruncatedField(Field),
    /// A field holds a byte that is neither base64 nor its separator.
    #[error("malformed reply: byte {byte:#04x} in the {field:?} field")]
    FieldByte {
        /// The byte.
        byte: u8,
        /// The field.
        field: Field,
    },
    /// The reply does not end with ` .` and a newline.
    #[error("malformed reply end: byte {0:#04x} after the data field")]
    BadEnd(u8),
    /// A field's base64 does not decode.
    #[error("reply is not valid base64: {0}")]
    Base64(#[source] base64::DecodeSliceError),
}

/// Where an upload leaves `sha256sum`'s line for the bytes it wrote to
/// `dest` (the command of the upload reads and removes it).
pub fn upload_hash_file(dest: &str) -> String {
    format!("{dest}.sha256")
}

/// Quotes `s` as a bash ANSI-C string (`$'…'`): every byte outside a safe
/// set becomes `\xHH`, so no quoting bug can reach the shell and no process
/// is needed to decode it. NUL cannot be part of a bash word: an error.
pub fn ansi_c_quote(s: &str) -> Result<String, ProtocolError> {
    if s.contains('\0') {
        return Err(ProtocolError::NulInCommand);
    }
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("$'");
    for &b in s.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => out.push(b as char),
            b' ' | b'-' | b'_' | b'.' | b'/' | b',' | b':' | b'=' | b'+' | b'@' | b'%' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('\'');
    Ok(out)
}

/// The exact length of [`encode_upload_chunk`]'s output for `len` bytes.
pub fn upload_encoded_len(len: u64) -> u64 {
    let line = UPLOAD_LINE_BYTES as u64;
    let (full, rest) = (len / line, len % line);
    let rest_len = if rest > 0 {
        rest.div_ceil(3) * 4 + 1
    } else {
        0
    };
    full * (line / 3 * 4 + 1) + rest_len
}

/// Appends the upload encoding of `chunk` to `out`: base64 lines of
/// [`UPLOAD_LINE_BYTES`] bytes. Every chunk but the last must be a multiple
/// of [`UPLOAD_LINE_BYTES`] long, so the pieces concatenate into one stream.
pub fn encode_upload_chunk(chunk: &[u8], out: &mut Vec<u8>) {
    for line in chunk.chunks(UPLOAD_LINE_BYTES) {
        let start = out.len();
        out.resize(start + line.len().div_ceil(3) * 4, 0);
        let n = B64
            .encode_slice(line, &mut out[start..])
            .expect("sized for the line");
        out.truncate(start + n);
        out.push(b'\n');
    }
}

/// The per-session state of the framing: marker and sequence numbers.
#[derive(Debug, Clone)]
pub struct Framer {
    marker: String,
    seq: u64,
}

impl Framer {
    /// A framer with a marker that is unique to this session.
    pub fn new(session_id: u64) -> Framer {
        Framer {
            marker: format!("ATTEST-REPLY-{session_id:x}-{:x}", std::process::id()),
            seq: 0,
        }
    }

    /// The marker that starts this session's replies.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// The line that prepares a fresh backdoor shell: no prompts, no history
    /// expansion, the directory for output files, and their removal when the
    /// shell ends (a command abandoned mid-way leaves its files behind).
    ///
    /// `/dev/shm` first: the backdoor starts before `tmp.mount`, and a tmpfs
    /// mounted over `/tmp` between writing and reading a command's output
    /// would hide it. `/dev/shm` is mounted before PID 1's first unit.
    pub fn init_line(&self) -> String {
        format!(
            "set +o histexpand 2>/dev/null; unset HISTFILE; PS1=; PS2=; {NIXOS_BACKDOOR_ENV}\
         __ad=/dev/shm; [ -d \"$__ad\" ] && [ -w \"$__ad\" ] || __ad=${{TMPDIR:-/tmp}}; \
         trap 'rm -f \"$__ad\"/.attest-$$-*' EXIT\n"
        )
    }

    /// Encodes one command; returns the line to send and its sequence number.
    /// The command runs as the NixOS driver runs it: `bash -c 'set -euo
    /// pipefail; <command>'`, so `false; true` fails here as it does there.
    pub fn encode(
        &mut self,
        command: &str,
        timeout_secs: u64,
    ) -> Result<(String, u64), ProtocolError> {
        self.encode_request(command, timeout_secs, Request::Command)
    }

    /// [`Framer::encode`] with an upload or a download.
    pub fn encode_request(
        &mut self,
        command: &str,
        timeout_secs: u64,
        request: Request<'_>,
    ) -> Result<(String, u64), ProtocolError> {
        let quoted = ansi_c_quote(&format!("set -euo pipefail; {command}"))?;
        self.seq += 1;
        let seq = self.seq;
        let (receive, err_redirect) = match request {
            Request::Upload { dest, encoded_len } => (
                // `cat` drains what `base64 -d` left when writing failed:
                // unread payload would run as commands. The data is hashed
                // as it is written (into `<dest>.sha256`, see
                // [`upload_hash_file`]), not read a second time.
                format!(
                    "head -c {encoded_len} | {{ base64 -d 2>\"$__ae\" | tee -- {} 2>>\"$__ae\" | sha256sum 2>>\"$__ae\" >{}; __x=${{PIPESTATUS[0]}}; cat >/dev/null; exit $__x; }}; ",
                    shell::quote(dest),
                    shell::quote(&upload_hash_file(dest))
                ),
                "2>>",
            ),
            _ => (String::new(), "2>"),
        };
        let data = match request {
            Request::Download { source } => {
                format!("[ $__as = 0 ] && base64 -w0 <{}; ", shell::quote(source))
            }
            _ => String::new(),
        };
        let line = format!(
            "__ao=\"$__ad/.attest-$$-{seq}.out\"; __ae=\"$__ad/.attest-$$-{seq}.err\"; {receive}\
             timeout -k {KILL_AFTER} {timeout_secs} bash -c {quoted} </dev/null >\"$__ao\" {err_redirect}\"$__ae\"; __as=$?; \
             printf '\\n%s %s %s ' {marker} {seq} \"$__as\"; [ -s \"$__ao\" ] && base64 -w0 <\"$__ao\"; printf ' '; \
             [ -s \"$__ae\" ] && base64 -w0 <\"$__ae\"; printf ' '; {data}rm -f \"$__ao\" \"$__ae\"; printf ' .\\n'\n",
            marker = self.marker,
        );
        Ok((line, seq))
    }

    /// A parser for the reply to command `seq`.
    pub fn parser(&self, seq: u64) -> ReplyParser {
        ReplyParser::new(&self.marker, seq)
    }
}

/// What NixOS's backdoor shell sets up before it serves the driver
/// (`test-instrumentation.nix`): commands run in `/tmp`, with
/// `DISPLAY=:0.0` and no pager. A guest's own backdoor may not (the Debian
/// image's starts in `/`), so attest sets it on every backdoor shell, and
/// the agent inherits it from the shell it replaces.
pub const NIXOS_BACKDOOR_ENV: &str = "cd /tmp 2>/dev/null; export DISPLAY=:0.0 PAGER=; ";

/// The three base64 fields of a reply, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The command's stdout.
    Stdout,
    /// The command's stderr.
    Stderr,
    /// A downloaded file.
    Data,
}

const FIELDS: [Field; 3] = [Field::Stdout, Field::Stderr, Field::Data];

/// Decoded bytes handed out per step, at most (bounds the scratch buffer).
const SCRATCH: usize = 256 * 1024;

/// Longest header (`<marker> <seq> <status> `) and longest noise kept while
/// looking for one; the rest of a noise line is skipped unread.
const HEADER_MAX: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line: collecting a possible header.
    Header,
    /// Skipping to the end of a line that is not this reply's header.
    SkipLine,
    /// Decoding field `n`.
    Field(usize),
    /// After the data field: expecting `.`, optional `\r`, `\n`.
    Trailer,
    /// The reply was read.
    Done,
}

/// One step of [`ReplyParser::step`].
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// More input is needed.
    Continue,
    /// Bytes of a field, decoded.
    Bytes(Field, &'a [u8]),
    /// The reply is complete; the command's exit status.
    Done(i32),
}

/// A push parser for one reply: feed it what the channel has, it says how
/// much it consumed and hands out decoded bytes as they arrive. Lines before
/// the reply (noise, stale replies of abandoned commands) are skipped
/// without being kept.
#[derive(Debug)]
pub struct ReplyParser {
    marker: Vec<u8>,
    seq: u64,
    state: State,
    header: Vec<u8>,
    status: i32,
    carry: [u8; 4],
    carry_len: usize,
    scratch: Vec<u8>,
}

impl ReplyParser {
    /// A parser for the reply to command `seq` of the session with `marker`.
    pub fn new(marker: &str, seq: u64) -> ReplyParser {
        ReplyParser {
            marker: format!("{marker} ").into_bytes(),
            seq,
            state: State::Header,
            header: Vec::new(),
            status: 0,
            carry: [0; 4],
            carry_len: 0,
            // Room for one carried quantum on top of a full run.
            scratch: vec![0; SCRATCH + 3],
        }
    }

    /// Consumes a prefix of `input`; returns how much and what came of it.
    /// Call again with the rest (or more input) until [`Step::Done`].
    pub fn step(&mut self, input: &[u8]) -> Result<(usize, Step<'_>), ProtocolError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                State::Done => return Ok((used, Step::Done(self.status))),
                _ if rest.is_empty() => return Ok((used, Step::Continue)),
                State::SkipLine => match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        used += i + 1;
                        self.state = State::Header;
                    }
                    None => return Ok((input.len(), Step::Continue)),
                },
                State::Header => {
                    used += self.header_byte(rest[0])?;
                }
                State::Field(n) => {
                    let (took, decoded) = self.field_bytes(n, rest)?;
                    used += took;
                    if decoded > 0 {
                        return Ok((used, Step::Bytes(FIELDS[n], &self.scratch[..decoded])));
                    }
                }
                State::Trailer => {
                    used += 1;
                    match rest[0] {
                        b'.' | b'\r' => {}
                        b'\n' => self.state = State::Done,
                        other => return Err(ProtocolError::BadEnd(other)),
                    }
                }
            }
        }
    }

    /// One byte at a line start; returns bytes consumed (always 1).
    fn header_byte(&mut self, b: u8) -> Result<usize, ProtocolError> {
        if b == b'\n' {
            self.header.clear();
            return Ok(1);
        }
        if self.header.is_empty() && b == b'\r' {
            return Ok(1);
        }
        self.header.push(b);
        let h = &self.header;
        let m = &self.marker;
        if h.len() <= m.len() {
            if h[..] != m[..h.len()] {
                self.header.clear();
                self.state = State::SkipLine;
            }
            return Ok(1);
        }
        let after = &h[m.len()..];
        let spaces = after.iter().filter(|&&c| c == b' ').count();
        if b == b' ' && spaces == 2 {
            let text = std::str::from_utf8(after).map_err(|_| ProtocolError::HeaderNotAscii)?;
            let mut parts = text.split(' ');
            let (seq, status) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let seq: u64 = seq
                .parse()
                .map_err(|_| ProtocolError::BadSequence(seq.to_owned()))?;
            let status: Result<i32, ProtocolError> = status
                .parse()
                .map_err(|_| ProtocolError::BadStatus(status.to_owned()));
            self.header.clear();
            if seq != self.seq {
                // The reply of an older command that was abandoned.
                self.state = State::SkipLine;
                return Ok(1);
            }
            self.status = status?;
            self.state = State::Field(0);
        } else if h.len() > HEADER_MAX || !(b.is_ascii_digit() || b == b' ' || b == b'-') {
            return Err(ProtocolError::BadHeader(
                String::from_utf8_lossy(h).into_owned(),
            ));
        }
        Ok(1)
    }

    /// Decodes base64 of field `n` from `rest`; returns (consumed, decoded
    /// bytes now in scratch).
    fn field_bytes(&mut self, n: usize, rest: &[u8]) -> Result<(usize, usize), ProtocolError> {
        let run = rest
            .iter()
            .take(SCRATCH / 3 * 4)
            .position(|&b| !is_b64(b))
            .unwrap_or(rest.len().min(SCRATCH / 3 * 4));
        let mut took = 0;
        let mut out = 0;
        if self.carry_len > 0 {
            let need = (4 - self.carry_len).min(run);
            self.carry[self.carry_len..self.carry_len + need].copy_from_slice(&rest[..need]);
            self.carry_len += need;
            took += need;
            if self.carry_len == 4 {
                out += decode_into(&self.carry, &mut self.scratch[..])?;
                self.carry_len = 0;
            }
        }
        let whole = (run - took) / 4 * 4;
        if whole > 0 {
            out += decode_into(&rest[took..took + whole], &mut self.scratch[out..])?;
            took += whole;
        }
        let left = run - took;
        self.carry[..left].copy_from_slice(&rest[took..run]);
        self.carry_len += left;
        took = run;
        if run < rest.len() && !is_b64(rest[run]) {
            if self.carry_len != 0 {
                return Err(ProtocolError::TruncatedField(FIELDS[n]));
            }
            if rest[run] != b' ' {
                return Err(ProtocolError::FieldByte {
                    byte: rest[run],
                    field: FIELDS[n],
                });
            }
            took += 1;
            self.state = if n + 1 < FIELDS.len() {
                State::Field(n + 1)
            } else {
                State::Trailer
            };
        }
        Ok((took, out))
    }
}

fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
}

fn decode_into(b64: &[u8], out: &mut [u8]) -> Result<usize, ProtocolError> {
    B64.decode_slice(b64, out).map_err(ProtocolError::Base64)
}

/// Drives a parser over a complete reply held in memory (tests, small replies).
pub fn parse_all(
    parser: &mut ReplyParser,
    mut input: &[u8],
) -> Result<Option<CommandOutput>, ProtocolError> {
    let mut out = CommandOutput {
        status: 0,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    loop {
        let (used, step) = parser.step(input)?;
        match step {
            Step::Bytes(Field::Stdout, b) => out.stdout.extend_from_slice(b),
            Step::Bytes(Field::Stderr | Field::Data, b) => out.stderr.extend_from_slice(b),
            Step::Done(status) => {
                out.status = status;
                return Ok(Some(out));
            }
            Step::Continue => {
                if used == input.len() {
                    return Ok(None);
                }
            }
        }
        input = &input[used..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reply(marker: &str, seq: u64, status: i32, out: &[u8], err: &[u8], data: &[u8]) -> Vec<u8> {
        format!(
            "\n{marker} {seq} {status} {} {} {} .\n",
            B64.encode(out),
            B64.encode(err),
            B64.encode(data)
        )
        .into_bytes()
    }

    #[test]
    fn a_reply_for_the_current_command_decodes() {
        let mut f = Framer::new(7);
        let (_, seq) = f.encode("echo hi", 10).unwrap();
        let r = reply(f.marker(), seq, 3, b"hi\n", b"", b"");
        let out = parse_all(&mut f.parser(seq), &r).unwrap().unwrap();
        assert_eq!(out.status, 3);
        assert_eq!(out.stdout, b"hi\n");
        assert!(out.stderr.is_empty());
    }

    #[test]
    fn noise_stale_replies_and_garbage_are_told_apart() {
        let mut f = Framer::new(1);
        let (_, seq) = f.encode("true", 10).unwrap();
        let mut input = b"Spawning backdoor root shell...\n".to_vec();
        input.extend(reply(f.marker(), seq - 1, 0, b"old", b"", b""));
        input.extend(reply(f.marker(), seq, 0, b"new", b"", b""));
        let out = parse_all(&mut f.parser(seq), &input).unwrap().unwrap();
        assert_eq!(out.stdout, b"new");
        let bad = format!("\n{} {seq} 0 !!! \n", f.marker());
        assert_eq!(
            parse_all(&mut f.parser(seq), bad.as_bytes()),
            Err(ProtocolError::FieldByte {
                byte: b'!',
                field: Field::Stdout
            })
        );
        let truncated = format!("\n{} {seq} 0 QUJ  .\n", f.marker());
        assert_eq!(
            parse_all(&mut f.parser(seq), truncated.as_bytes()),
            Err(ProtocolError::TruncatedField(Field::Stdout))
        );
    }

    #[test]
    fn the_command_travels_quoted_and_stdin_is_null() {
        let mut f = Framer::new(1);
        let (line, _) = f.encode("echo 'quoted' \"$HOME\" `x`", 5).unwrap();
        assert!(
            line.contains(&ansi_c_quote("set -euo pipefail; echo 'quoted' \"$HOME\" `x`").unwrap())
        );
        assert!(line.contains("</dev/null"));
        assert!(line.contains("timeout -k 5 5 bash -c"));
        assert_eq!(line.matches('\n').count(), 1, "exactly one line: {line}");
        assert_eq!(f.encode("a\0b", 5), Err(ProtocolError::NulInCommand));
    }

    #[test]
    fn each_command_removes_its_output_files_before_the_reply_ends() {
        let mut f = Framer::new(1);
        let (line, _) = f.encode("true", 1).unwrap();
        let rm = line.find("rm -f \"$__ao\" \"$__ae\"").expect("rm");
        assert!(rm < line.rfind("printf ' .").unwrap());
    }

    #[test]
    fn upload_encoding_has_the_announced_length() {
        for len in [0usize, 1, 2, 3, 4, 2303, 2304, 2305, 4608, 10_000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut enc = Vec::new();
            for c in data.chunks(UPLOAD_LINE_BYTES * 3) {
                encode_upload_chunk(c, &mut enc);
            }
            assert_eq!(enc.len() as u64, upload_encoded_len(len as u64), "{len}");
            let text: String = String::from_utf8(enc).unwrap().split('\n').collect();
            assert_eq!(B64.decode(text).unwrap(), data);
        }
    }

    proptest! {
        /// Any outputs, any noise before them, any chunking of the stream:
        /// the parser yields exactly the reply's bytes.
        #[test]
        fn replies_decode_under_arbitrary_chunking(
            out in proptest::collection::vec(any::<u8>(), 0..3000),
            err in proptest::collection::vec(any::<u8>(), 0..300),
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            status in 0i32..256,
            noise in "[ -~]{0,300}",
            cuts in proptest::collection::vec(1usize..700, 1..40),
        ) {
            let mut f = Framer::new(3);
            let (_, seq) = f.encode("x", 1).unwrap();
            let mut stream = format!("{noise}\n").into_bytes();
            stream.extend(reply(f.marker(), seq, status, &out, &err, &data));
            stream.extend(b"after the reply");
            let mut p = f.parser(seq);
            let (mut o, mut e, mut d) = (Vec::new(), Vec::new(), Vec::new());
            let mut pos = 0;
            let mut cut = cuts.iter().cycle();
            let done = loop {
                let end = (pos + cut.next().unwrap()).min(stream.len());
                let mut chunk = &stream[pos..end];
                let mut fin = None;
                while !chunk.is_empty() || fin.is_none() {
                    let (used, step) = p.step(chunk).unwrap();
                    match step {
                        Step::Bytes(Field::Stdout, b) => o.extend_from_slice(b),
                        Step::Bytes(Field::Stderr, b) => e.extend_from_slice(b),
                        Step::Bytes(Field::Data, b) => d.extend_from_slice(b),
                        Step::Done(s) => { fin = Some(s); pos += used; break; }
                        Step::Continue => { pos += used; break; }
                    }
                    pos += used;
                    chunk = &chunk[used..];
                }
                if let Some(s) = fin { break s; }
                prop_assert!(pos < stream.len(), "stream ended before the reply did");
            };
            prop_assert_eq!(done, status);
            prop_assert_eq!(o, out);
            prop_assert_eq!(e, err);
            prop_assert_eq!(d, data);
            prop_assert_eq!(&stream[pos..], b"after the reply");
        }
    }
}
