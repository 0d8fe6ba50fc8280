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
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use super::command::{frame, read_into_frame, Out};
use super::sha256::Sha256;
use super::wire::{Digest, Shape, Transfer, DATA, DONE, ERROR, HEADER};

/// Frames of one upload queued between the connection's reader and the
/// thread writing the file: the reader waits (and so does the host) rather
/// than buffering a whole file.
pub const UPLOAD_QUEUE: usize = 16;

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

fn fail(out: &Out, id: u32, msg: String) {
    let _ = out.send(frame(ERROR, id, msg.as_bytes()));
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
    let mut hash = Sha256::new();
    let mut write_error = None;
    let expected = loop {
        match rx.recv() {
            Ok(Msg::Data(bytes)) => {
                hash.update(&bytes);
                if write_error.is_none() {
                    write_error = sink.write(&bytes).err();
                }
            }
            Ok(Msg::End(d)) => break Some(d),
            // The host abandoned the upload or the connection ended.
            Err(_) => break None,
        }
    };
    let got = Digest {
        size: hash.bytes(),
        sha256: hash.finish(),
    };
    let result = sink.close(expected, got, write_error, &dest, t.mode);
    match (expected, result) {
        (None, _) => {}
        (Some(_), Ok(())) => finish(&out, id, got),
        (Some(_), Err(e)) => fail(&out, id, e),
    }
}

fn open_sink(id: u32, t: &Transfer, dest: &Path) -> Result<Sink, String> {
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
                .map_err(|e| format!("cannot write {}: {e}", stage.display()))?;
            Ok(Sink::File { stage, file })
        }
        Shape::Tar => {
            std::fs::create_dir_all(dest)
                .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
            let mut child = Command::new("tar")
                .args(["--no-same-owner", "-x", "-f", "-", "-C"])
                .arg(dest)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot run tar in the guest: {e}"))?;
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
    ) -> Result<(), String> {
        let mismatch = expected.filter(|e| *e != got).map(|e| {
            format!(
                "{} arrived different from what was sent: {} bytes with SHA-256 {} in the guest, {} bytes with SHA-256 {} sent",
                dest.display(),
                got.size,
                got.hex(),
                e.size,
                e.hex()
            )
        });
        match self {
            Sink::File { stage, file } => {
                drop(file);
                let done = match (expected, mismatch, write_error) {
                    (None, _, _) => Err(String::new()),
                    (_, Some(m), _) => Err(m),
                    (_, None, Some(e)) => Err(format!("writing {}: {e}", stage.display())),
                    (_, None, None) => std::fs::set_permissions(
                        &stage,
                        std::fs::Permissions::from_mode(mode & 0o7777),
                    )
                    .and_then(|()| std::fs::rename(&stage, dest))
                    .map_err(|e| format!("cannot put the file at {}: {e}", dest.display())),
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
                if let Some(m) = mismatch {
                    return Err(format!("{m} (some of it may have been extracted already)"));
                }
                match status {
                    Ok(s) if s.success() => Ok(()),
                    Ok(s) => Err(format!(
                        "tar -x -C {} failed in the guest ({s}): {}",
                        dest.display(),
                        stderr.trim()
                    )),
                    Err(e) => Err(format!("waiting for tar: {e}")),
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

/// Streams `r` as [`DATA`] frames; `None` when cancelled or the host is gone.
fn stream(
    id: u32,
    mut r: impl Read,
    out: &Out,
    cancelled: &AtomicBool,
) -> Result<Option<Digest>, String> {
    let mut hash = Sha256::new();
    loop {
        if cancelled.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let f = match read_into_frame(&mut r, DATA, id) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(format!("reading: {e}")),
        };
        hash.update(&f[HEADER..]);
        if out.send(f).is_err() {
            return Ok(None);
        }
    }
    Ok(Some(Digest {
        size: hash.bytes(),
        sha256: hash.finish(),
    }))
}

fn send_file(
    id: u32,
    path: &Path,
    out: &Out,
    cancelled: &AtomicBool,
) -> Result<Option<Digest>, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if meta.is_dir() {
        return Err(format!("{shown}: Is a directory"));
    }
    let digest = stream(id, &file, out, cancelled).map_err(|e| format!("{shown}: {e}"))?;
    if let Some(d) = digest.filter(|_| meta.is_file()) {
        let now = file.metadata().map(|m| m.len()).unwrap_or(d.size);
        if d.size != meta.len() || now != meta.len() {
            return Err(format!(
                "{shown} changed while it was copied: {} bytes when opened, {} read, {now} now",
                meta.len(),
                d.size
            ));
        }
    }
    Ok(digest)
}

fn send_tar(
    id: u32,
    dir: &Path,
    out: &Out,
    cancelled: &AtomicBool,
) -> Result<Option<Digest>, String> {
    let mut child = Command::new("tar")
        .args(["-c", "-f", "-", "-C"])
        .arg(dir)
        .arg(".")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run tar in the guest: {e}"))?;
    let errors = ErrorText::collect(child.stderr.take());
    let stdout = child.stdout.take().expect("piped");
    let digest = stream(id, stdout, out, cancelled);
    if !matches!(digest, Ok(Some(_))) {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| format!("waiting for tar: {e}"))?;
    let digest = digest?;
    if digest.is_some() && !status.success() {
        return Err(format!(
            "tar -c -C {} failed in the guest ({status}): {}",
            dir.display(),
            errors.text().trim()
        ));
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
