//! File transfers in the guest. An upload is written to a staging file
//! beside its target and renamed into place only when its size and SHA-256
//! equal what the host says it sent; a download is read once, hashed as it
//! is sent. Directories travel as tar streams of the guest's own `tar` (the
//! agent is std-only, so it has no tar code of its own; `tar` is essential
//! on every distribution the backdoor runs on).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use super::command::{frame, read_into_frame, Out};
use super::sha256::Sha256;
use super::wire::{Digest, Shape, Transfer, DATA, DONE, ERROR, HEADER};

/// Frames of one upload queued between the connection's reader and the
/// thread writing the file: the reader waits (and so does the host) rather
/// than buffering a whole file.
pub const UPLOAD_QUEUE: usize = 16;

/// Chunks queued towards a transfer's hashing thread.
const HASH_QUEUE: usize = 4;

/// Hashes what `feed` sends on a thread of `scope`, so that hashing
/// overlaps the transfer's I/O instead of adding to it (SHA-256 costs
/// about as much CPU as moving the bytes).
fn hash_beside<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
) -> (
    std::sync::mpsc::SyncSender<Vec<u8>>,
    std::thread::ScopedJoinHandle<'s, Digest>,
) {
    let (feed, chunks) = sync_channel::<Vec<u8>>(HASH_QUEUE);
    let hasher = scope.spawn(move || {
        let mut hash = Sha256::new();
        for chunk in chunks {
            hash.update(&chunk);
        }
        Digest {
            size: hash.bytes(),
            sha256: hash.finish(),
        }
    });
    (feed, hasher)
}

/// What the connection's reader hands an upload's thread.
pub enum Msg {
    /// Bytes of the upload, in order.
    Data(Vec<u8>),
    /// The host's digest of everything it sent.
    End(Digest),
}

fn path_of(t: &Transfer) -> PathBuf {
    PathBuf::from(OsString::from_vec(t.path.clone()))
}

/// Why a transfer failed in the guest. The host gets its text in an
/// [`ERROR`] frame, so the text names the cause too (the agent is std-only:
/// no `thiserror`, hence the impls by hand).
#[derive(Debug)]
pub enum TransferError {
    /// A step on a guest path failed: what it was, the path, the error.
    Io {
        doing: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The guest's `tar` could not be started or waited for.
    Tar {
        doing: &'static str,
        source: std::io::Error,
    },
    /// The guest's `tar` (`-c` or `-x`) failed on `dir`.
    TarFailed {
        mode: &'static str,
        dir: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// An upload's bytes differ from what the host says it sent.
    Mismatch {
        path: PathBuf,
        got: Digest,
        sent: Digest,
        /// A tar stream: some of it may be extracted already.
        partly_extracted: bool,
    },
    /// A directory where a file was asked for.
    IsDirectory(PathBuf),
    /// A regular file's size changed while it was sent.
    Changed {
        path: PathBuf,
        opened: u64,
        read: u64,
        now: u64,
    },
    /// The host abandoned the upload: nothing to report.
    Abandoned,
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::Io {
                doing,
                path,
                source,
            } => write!(f, "{doing} {}: {source}", path.display()),
            TransferError::Tar { doing, source } => write!(f, "{doing}: {source}"),
            TransferError::TarFailed {
                mode,
                dir,
                status,
                stderr,
            } => write!(
                f,
                "tar {mode} -C {} failed in the guest ({status}): {}",
                dir.display(),
                stderr.trim()
            ),
            TransferError::Mismatch {
                path,
                got,
                sent,
                partly_extracted,
            } => {
                write!(
                    f,
                    "{} arrived different from what was sent: {} bytes with SHA-256 {} in the guest, {} bytes with SHA-256 {} sent",
                    path.display(),
                    got.size,
                    got.hex(),
                    sent.size,
                    sent.hex()
                )?;
                if *partly_extracted {
                    f.write_str(" (some of it may have been extracted already)")?;
                }
                Ok(())
            }
            TransferError::IsDirectory(p) => write!(f, "{}: Is a directory", p.display()),
            TransferError::Changed {
                path,
                opened,
                read,
                now,
            } => write!(
                f,
                "{} changed while it was copied: {opened} bytes when opened, {read} read, {now} now",
                path.display()
            ),
            TransferError::Abandoned => f.write_str("abandoned by the host"),
        }
    }
}

impl std::error::Error for TransferError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransferError::Io { source, .. } | TransferError::Tar { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_error(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TransferError {
    let path = path.to_owned();
    move |source| TransferError::Io {
        doing,
        path,
        source,
    }
}

fn tar_error(doing: &'static str) -> impl FnOnce(std::io::Error) -> TransferError {
    move |source| TransferError::Tar { doing, source }
}

fn fail(out: &Out, id: u32, e: TransferError) {
    let _ = out.send(frame(ERROR, id, e.to_string().as_bytes()));
}

fn finish(out: &Out, id: u32, d: Digest) {
    let _ = out.send(frame(DONE, id, &d.encode()));
}

/// Where an upload goes until it is checked.
enum Sink {
    File { stage: PathBuf, file: std::fs::File },
    Tar { child: Child, errors: ErrorText },
}

/// Receives one upload ([`Msg`]s on `rx`) and answers on `out`.
pub fn receive(id: u32, t: Transfer, rx: Receiver<Msg>, out: Out) {
    let dest = path_of(&t);
    let mut sink = match open_sink(id, &t, &dest) {
        Ok(s) => s,
        Err(e) => return fail(&out, id, e),
    };
    let (expected, got, write_error) = std::thread::scope(|s| {
        let (feed, hasher) = hash_beside(s);
        let mut write_error = None;
        let expected = loop {
            match rx.recv() {
                Ok(Msg::Data(bytes)) => {
                    if write_error.is_none() {
                        write_error = sink.write(&bytes).err();
                    }
                    let _ = feed.send(bytes);
                }
                Ok(Msg::End(d)) => break Some(d),
                // The host abandoned the upload or the connection ended.
                Err(_) => break None,
            }
        };
        drop(feed);
        (
            expected,
            hasher.join().expect("the hashing thread"),
            write_error,
        )
    });
    let result = sink.close(expected, got, write_error, &dest, t.mode);
    match (expected, result) {
        (None, _) => {}
        (Some(_), Ok(())) => finish(&out, id, got),
        (Some(_), Err(e)) => fail(&out, id, e),
    }
}

fn open_sink(id: u32, t: &Transfer, dest: &Path) -> Result<Sink, TransferError> {
    match t.shape {
        Shape::File => {
            let dir = match dest.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let stage = dir.join(format!(".attest-put-{}-{id}", std::process::id()));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&stage)
                .map_err(io_error("cannot write", &stage))?;
            Ok(Sink::File { stage, file })
        }
        Shape::Tar => {
            std::fs::create_dir_all(dest).map_err(io_error("cannot create", dest))?;
            let mut child = Command::new("tar")
                .args(["--no-same-owner", "-x", "-f", "-", "-C"])
                .arg(dest)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(tar_error("cannot run tar in the guest"))?;
            let errors = ErrorText::collect(child.stderr.take());
            Ok(Sink::Tar { child, errors })
        }
    }
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File { file, .. } => file.write_all(bytes),
            Sink::Tar { child, .. } => match child.stdin.as_mut() {
                Some(stdin) => stdin.write_all(bytes),
                None => Ok(()),
            },
        }
    }

    /// Ends the upload: a file is renamed into place only when `got`
    /// equals `expected`; an abandoned one (`expected` None) is removed.
    fn close(
        self,
        expected: Option<Digest>,
        got: Digest,
        write_error: Option<std::io::Error>,
        dest: &Path,
        mode: u32,
    ) -> Result<(), TransferError> {
        let mismatch = |partly_extracted| {
            expected
                .filter(|e| *e != got)
                .map(|sent| TransferError::Mismatch {
                    path: dest.to_owned(),
                    got,
                    sent,
                    partly_extracted,
                })
        };
        match self {
            Sink::File { stage, file } => {
                drop(file);
                let done = match (expected, mismatch(false), write_error) {
                    (None, _, _) => Err(TransferError::Abandoned),
                    (_, Some(m), _) => Err(m),
                    (_, None, Some(e)) => Err(io_error("writing", &stage)(e)),
                    (_, None, None) => std::fs::set_permissions(
                        &stage,
                        std::fs::Permissions::from_mode(mode & 0o7777),
                    )
                    .and_then(|()| std::fs::rename(&stage, dest))
                    .map_err(io_error("cannot put the file at", dest)),
                };
                if done.is_err() {
                    let _ = std::fs::remove_file(&stage);
                }
                done
            }
            Sink::Tar { mut child, errors } => {
                drop(child.stdin.take());
                if expected.is_none() {
                    let _ = child.kill();
                }
                let status = child.wait();
                let stderr = errors.text();
                if let Some(m) = mismatch(true) {
                    return Err(m);
                }
                match status {
                    Ok(s) if s.success() => Ok(()),
                    Ok(status) => Err(TransferError::TarFailed {
                        mode: "-x",
                        dir: dest.to_owned(),
                        status,
                        stderr,
                    }),
                    Err(e) => Err(tar_error("waiting for tar")(e)),
                }
            }
        }
    }
}

/// Sends one download on `out` until it ends or `cancelled` is set.
pub fn send(id: u32, t: Transfer, out: Out, cancelled: Arc<AtomicBool>) {
    let path = path_of(&t);
    let result = match t.shape {
        Shape::File => send_file(id, &path, &out, &cancelled),
        Shape::Tar => send_tar(id, &path, &out, &cancelled),
    };
    match result {
        Ok(Some(d)) => finish(&out, id, d),
        Ok(None) => {}
        Err(e) => fail(&out, id, e),
    }
}

/// Streams `r` (`path`, for errors) as [`DATA`] frames; `None` when
/// cancelled or the host is
/// gone. Three stages run at once: this thread reads, a second one hashes
/// and a third (the connection's writer) sends.
fn stream(
    id: u32,
    path: &Path,
    mut r: impl Read,
    out: &Out,
    cancelled: &AtomicBool,
) -> Result<Option<Digest>, TransferError> {
    std::thread::scope(|s| {
        let (to_host, frames) = sync_channel::<Vec<u8>>(HASH_QUEUE);
        let hashed = s.spawn(move || {
            let mut hash = Sha256::new();
            for f in frames {
                hash.update(&f[HEADER..]);
                out.send(f).ok()?;
            }
            Some(Digest {
                size: hash.bytes(),
                sha256: hash.finish(),
            })
        });
        let read = loop {
            if cancelled.load(Ordering::Relaxed) {
                break Ok(false);
            }
            match read_into_frame(&mut r, DATA, id) {
                Ok(Some(f)) => {
                    if to_host.send(f).is_err() {
                        break Ok(false);
                    }
                }
                Ok(None) => break Ok(true),
                Err(e) => break Err(io_error("reading", path)(e)),
            }
        };
        drop(to_host);
        let digest = hashed.join().expect("the hashing thread");
        let complete = read?;
        Ok(digest.filter(|_| complete))
    })
}

fn send_file(
    id: u32,
    path: &Path,
    out: &Out,
    cancelled: &AtomicBool,
) -> Result<Option<Digest>, TransferError> {
    let file = std::fs::File::open(path).map_err(io_error("cannot read", path))?;
    let meta = file.metadata().map_err(io_error("cannot read", path))?;
    if meta.is_dir() {
        return Err(TransferError::IsDirectory(path.to_owned()));
    }
    let digest = stream(id, path, &file, out, cancelled)?;
    if let Some(d) = digest.filter(|_| meta.is_file()) {
        let now = file.metadata().map(|m| m.len()).unwrap_or(d.size);
        if d.size != meta.len() || now != meta.len() {
            return Err(TransferError::Changed {
                path: path.to_owned(),
                opened: meta.len(),
                read: d.size,
                now,
            });
        }
    }
    Ok(digest)
}

fn send_tar(
    id: u32,
    dir: &Path,
    out: &Out,
    cancelled: &AtomicBool,
) -> Result<Option<Digest>, TransferError> {
    let mut child = Command::new("tar")
        .args(["-c", "-f", "-", "-C"])
        .arg(dir)
        .arg(".")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(tar_error("cannot run tar in the guest"))?;
    let errors = ErrorText::collect(child.stderr.take());
    let stdout = child.stdout.take().expect("piped");
    let digest = stream(id, dir, stdout, out, cancelled);
    if !matches!(digest, Ok(Some(_))) {
        let _ = child.kill();
    }
    let status = child.wait().map_err(tar_error("waiting for tar"))?;
    let digest = digest?;
    if digest.is_some() && !status.success() {
        return Err(TransferError::TarFailed {
            mode: "-c",
            dir: dir.to_owned(),
            status,
            stderr: errors.text(),
        });
    }
    Ok(digest)
}

/// A child's stderr, read on a thread of its own (a full pipe would stall
/// it), kept up to a few KiB.
struct ErrorText(Option<std::thread::JoinHandle<String>>);

impl ErrorText {
    fn collect(stderr: Option<std::process::ChildStderr>) -> ErrorText {
        ErrorText(stderr.map(|mut e| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = e.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if kept.len() < 8192 {
                        kept.extend_from_slice(&buf[..n]);
                    }
                }
                String::from_utf8_lossy(&kept).into_owned()
            })
        }))
    }

    fn text(self) -> String {
        self.0.and_then(|h| h.join().ok()).unwrap_or_default()
    }
}
