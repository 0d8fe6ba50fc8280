//! Raw file transfers over the agent ([`crate::agent::wire`]'s `PUT`/`GET`):
//! no base64, any size, streamed in frames (neither side holds the file),
//! checked on arrival: the receiving side's size and SHA-256 of the bytes
//! must equal the sender's, or the call fails (an upload is then not
//! renamed into place). Many transfers run at once, each with its own id.

use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::agent::AgentClient;
use super::session::{GuestError, Transfer};
use crate::agent::wire::{self, Digest, Frame, Shape};

/// Bytes per `DATA` frame of an upload.
const CHUNK: usize = 512 * 1024;

/// Data frames of a download queued between the connection's reader and
/// the call writing the host file (4 MiB of the agent's 128 KiB frames);
/// beyond that the reader waits, and so does the agent.
const DOWNLOAD_QUEUE: usize = 32;

/// Test hook: `upload` or `download` flips one byte of the first data
/// frame of every transfer in that direction, in flight (after the sender
/// hashed it, before the receiver does), to show that the check catches it.
pub const CORRUPT_ENV: &str = "ATTEST_TEST_CORRUPT_TRANSFER";

fn corrupt(direction: &str) -> bool {
    std::env::var(CORRUPT_ENV).is_ok_and(|v| v == direction)
}

/// SHA-256 of a transfer's bytes on a thread of its own: hashing costs
/// about as much CPU as moving the bytes, so in line with the I/O it
/// halved the throughput; beside it, the two overlap. Chunks are handed
/// over once sent or written, and come back for reuse.
struct HashBeside {
    feed: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    result: tokio::sync::oneshot::Receiver<Digest>,
}

/// Chunks queued towards the hashing thread (the sender waits beyond).
const HASH_QUEUE: usize = 4;

impl HashBeside {
    fn start() -> HashBeside {
        let (feed, chunks) = std::sync::mpsc::sync_channel::<Vec<u8>>(HASH_QUEUE);
        let (give_back, spare) = std::sync::mpsc::sync_channel(HASH_QUEUE + 1);
        let (done, result) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let (mut hasher, mut size) = (Sha256::new(), 0u64);
            for chunk in chunks {
                hasher.update(&chunk);
                size += chunk.len() as u64;
                let _ = give_back.try_send(chunk);
            }
            let _ = done.send(Digest {
                size,
                sha256: hasher.finalize().into(),
            });
        });
        HashBeside {
            feed: Some(feed),
            spare,
            result,
        }
    }

    /// Hashes `chunk` after the ones before it. Blocks only while the
    /// hashing thread is [`HASH_QUEUE`] chunks behind.
    async fn add(&mut self, chunk: Vec<u8>) {
        let Some(feed) = &self.feed else { return };
        if let Err(std::sync::mpsc::TrySendError::Full(chunk)) = feed.try_send(chunk) {
            let feed = feed.clone();
            let _ = tokio::task::spawn_blocking(move || feed.send(chunk)).await;
        }
    }

    /// A chunk the hashing thread is done with, to fill again.
    fn spare(&self) -> Option<Vec<u8>> {
        self.spare.try_recv().ok()
    }

    /// The size and hash of everything added.
    async fn finish(mut self) -> Result<Digest, GuestError> {
        self.feed = None;
        self.result
            .await
            .map_err(|_| GuestError::Transfer("the hashing thread ended early".into()))
    }
}

fn refused(f: &Frame) -> GuestError {
    GuestError::Transfer(String::from_utf8_lossy(&f.payload).into_owned())
}

impl AgentClient {
    /// Streams `data` to the guest path `dest`: a regular file with
    /// permission bits `mode` (written beside `dest`, renamed into place
    /// once checked), or with [`Shape::Tar`] a tar stream extracted into
    /// the directory `dest`. `timeout` bounds the whole transfer.
    pub async fn upload(
        &self,
        dest: &str,
        shape: Shape,
        mode: u32,
        data: &mut (dyn AsyncRead + Unpin + Send),
        timeout: Duration,
    ) -> Result<Transfer, GuestError> {
        let (id, mut events) = self.request()?;
        let mut guard = self.kill_on_drop(id);
        let work = async {
            let put = wire::Transfer {
                shape,
                mode,
                path: dest.as_bytes().to_vec(),
            };
            self.send(Frame {
                kind: wire::PUT,
                id,
                payload: put.encode(),
            })
            .await?;
            let mut hash = HashBeside::start();
            let mut flip = corrupt("upload");
            loop {
                // Buffers come back from the hashing thread: a fresh one
                // per chunk would be mapped and faulted in anew each time.
                let mut chunk = hash.spare().unwrap_or_default();
                chunk.resize(CHUNK, 0);
                let n = read_full(data, &mut chunk).await?;
                if n == 0 {
                    break;
                }
                chunk.truncate(n);
                // The agent refused early (cannot write there): stop sending.
                if let Ok(f) = events.try_recv() {
                    return Err(match f.kind {
                        wire::ERROR => refused(&f),
                        other => GuestError::Protocol(format!("unexpected frame kind {other}")),
                    });
                }
                // The test hook flips a byte of what is sent, not of what
                // is hashed.
                let flipped = std::mem::take(&mut flip);
                if flipped {
                    chunk[0] ^= 0xff;
                }
                self.send_data(wire::DATA, id, &chunk).await?;
                if flipped {
                    chunk[0] ^= 0xff;
                }
                hash.add(chunk).await;
            }
            let sent = hash.finish().await?;
            self.send(Frame {
                kind: wire::END,
                id,
                payload: sent.encode(),
            })
            .await?;
            let f = events.recv().await.ok_or(GuestError::Closed)?;
            match f.kind {
                wire::DONE => {
                    let got = Digest::decode(&f.payload).map_err(GuestError::Wire)?;
                    if got != sent {
                        return Err(GuestError::Transfer(format!(
                            "{dest} arrived different from what was sent: {} bytes with SHA-256 {} in the guest, {} bytes with SHA-256 {} sent",
                            got.size, got.hex(), sent.size, sent.hex()
                        )));
                    }
                    Ok(Transfer {
                        bytes: sent.size,
                        sha256: sent.hex(),
                    })
                }
                wire::ERROR => Err(refused(&f)),
                other => Err(GuestError::Protocol(format!(
                    "unexpected frame kind {other}"
                ))),
            }
        };
        let r = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| GuestError::ReplyTimeout(timeout))?;
        if r.is_ok() {
            guard.disarm();
        }
        r
    }

    /// Streams the guest file `source` (or with [`Shape::Tar`] the
    /// directory `source` as a tar stream) into `out`, and checks it
    /// against the agent's size and SHA-256 of what it sent. A regular file
    /// that changes size while it is read fails the call. `timeout` bounds
    /// the whole transfer.
    pub async fn download(
        &self,
        source: &str,
        shape: Shape,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        timeout: Duration,
    ) -> Result<Transfer, GuestError> {
        let (id, mut events) = self.request_bounded(DOWNLOAD_QUEUE)?;
        let mut guard = self.kill_on_drop(id);
        let work = async {
            let get = wire::Transfer {
                shape,
                mode: 0,
                path: source.as_bytes().to_vec(),
            };
            self.send(Frame {
                kind: wire::GET,
                id,
                payload: get.encode(),
            })
            .await?;
            let mut hash = HashBeside::start();
            let mut flip = corrupt("download");
            while let Some(mut f) = events.recv().await {
                match f.kind {
                    wire::DATA => {
                        if std::mem::take(&mut flip) && !f.payload.is_empty() {
                            f.payload[0] ^= 0xff;
                        }
                        out.write_all(&f.payload).await.map_err(|e| {
                            GuestError::HostFile(format!("writing the host file: {e}"))
                        })?;
                        hash.add(f.payload).await;
                    }
                    wire::DONE => {
                        out.flush()
                            .await
                            .map_err(|e| GuestError::HostFile(e.to_string()))?;
                        let sent = Digest::decode(&f.payload).map_err(GuestError::Wire)?;
                        let got = hash.finish().await?;
                        if got != sent {
                            return Err(GuestError::Transfer(format!(
                                "{source} arrived different from the guest's file: {} bytes with SHA-256 {} sent by the guest, {} bytes with SHA-256 {} received",
                                sent.size, sent.hex(), got.size, got.hex()
                            )));
                        }
                        return Ok(Transfer {
                            bytes: got.size,
                            sha256: got.hex(),
                        });
                    }
                    wire::ERROR => return Err(refused(&f)),
                    other => {
                        return Err(GuestError::Protocol(format!(
                            "unexpected frame kind {other}"
                        )))
                    }
                }
            }
            Err(GuestError::Closed)
        };
        let r = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| GuestError::ReplyTimeout(timeout))?;
        if r.is_ok() {
            guard.disarm();
        }
        r
    }
}

/// Fills `buf` unless the source ends first; returns the bytes read.
async fn read_full(
    data: &mut (dyn AsyncRead + Unpin + Send),
    buf: &mut [u8],
) -> Result<usize, GuestError> {
    let mut got = 0;
    while got < buf.len() {
        let n = data
            .read(&mut buf[got..])
            .await
            .map_err(|e| GuestError::HostFile(format!("reading the host file: {e}")))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    //! Against the real agent code serving over a socketpair, on real files.
    use super::*;
    use crate::guest::agent::tests::local_agent;
    use tokio::io::{AsyncBufReadExt, BufReader};

    const T: Duration = Duration::from_secs(30);

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
            .collect()
    }

    async fn put(a: &AgentClient, dest: &str, data: &[u8]) -> Result<Transfer, GuestError> {
        let mut r = data;
        a.upload(dest, Shape::File, 0o640, &mut r, T).await
    }

    async fn get(a: &AgentClient, source: &str, shape: Shape) -> Result<Vec<u8>, GuestError> {
        let mut out = Vec::new();
        a.download(source, shape, &mut out, T).await?;
        Ok(out)
    }

    fn staged(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".attest-put-"))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn files_of_awkward_sizes_round_trip_exactly() {
        let a = local_agent();
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, (3 << 20) + 7] {
            let data = bytes(len, len as u8);
            let dest = dir.path().join(format!("f{len}"));
            let dest = dest.to_str().unwrap();
            let t = put(&a, dest, &data).await.unwrap();
            assert_eq!(t.bytes, len as u64);
            assert!(std::fs::read(dest).unwrap() == data, "upload of {len}");
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dest).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640);
            assert!(
                get(&a, dest, Shape::File).await.unwrap() == data,
                "download of {len}"
            );
        }
        assert!(staged(dir.path()).is_empty());
    }

    /// A download many times the reader's queue, into a host file that
    /// takes its bytes slowly: the reader waits, and every byte arrives.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_download_into_a_slow_writer_arrives_whole() {
        let a = local_agent();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let data = bytes(DOWNLOAD_QUEUE * 128 * 1024 * 3 + 5, 7);
        std::fs::write(&path, &data).unwrap();
        let (mut near, mut far) = tokio::io::duplex(64 * 1024);
        let slow = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                tokio::time::sleep(Duration::from_micros(300)).await;
                match far.read(&mut buf).await.unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let t = a
            .download(path.to_str().unwrap(), Shape::File, &mut near, T)
            .await
            .unwrap();
        drop(near);
        assert_eq!(t.bytes, data.len() as u64);
        assert!(
            slow.await.unwrap() == data,
            "the download arrived different"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn directories_travel_as_tar_streams() {
        let a = local_agent();
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("sub")).unwrap();
        std::fs::write(src.path().join("sub/deep.bin"), bytes(70_000, 3)).unwrap();
        std::fs::write(src.path().join("top.txt"), "top\n").unwrap();
        let tar = get(&a, src.path().to_str().unwrap(), Shape::Tar)
            .await
            .unwrap();
        let dest = tempfile::tempdir().unwrap();
        let into = dest.path().join("copy");
        let mut r = &tar[..];
        a.upload(into.to_str().unwrap(), Shape::Tar, 0, &mut r, T)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(into.join("sub/deep.bin")).unwrap(),
            bytes(70_000, 3)
        );
        assert_eq!(
            std::fs::read_to_string(into.join("top.txt")).unwrap(),
            "top\n"
        );
        let err = get(&a, "/nonexistent-attest-dir", Shape::Tar)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("tar"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn failures_name_the_path_and_the_client_goes_on() {
        let a = local_agent();
        let err = put(&a, "/nonexistent-attest-dir/f", &bytes(3 << 20, 1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent-attest-dir"), "{err}");
        let err = get(&a, "/nonexistent-attest-file", Shape::File)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("No such file or directory"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let err = get(&a, dir.path().to_str().unwrap(), Shape::File)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("Is a directory"), "{err}");
        let out = a.execute("echo still here", T).await.unwrap();
        assert_eq!(out.stdout, b"still here\n");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_uploads_to_one_directory_are_independent() {
        let a = std::sync::Arc::new(local_agent());
        let dir = tempfile::tempdir().unwrap();
        let runs: Vec<_> = (0..8u8)
            .map(|i| {
                let (a, path) = (a.clone(), dir.path().join(format!("f{i}")));
                tokio::spawn(
                    async move { put(&a, path.to_str().unwrap(), &bytes(2 << 20, i)).await },
                )
            })
            .collect();
        for r in runs {
            r.await.unwrap().unwrap();
        }
        for i in 0..8u8 {
            let got = std::fs::read(dir.path().join(format!("f{i}"))).unwrap();
            assert!(got == bytes(2 << 20, i), "f{i}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_abandoned_upload_leaves_nothing_behind() {
        let a = local_agent();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        // Some data, then a source that never ends: the upload is
        // cancelled by its timeout.
        let (stalled, _keep) = tokio::io::duplex(1024);
        let first = bytes(3 * CHUNK, 1);
        let mut r = (&first[..]).chain(stalled);
        let err = a
            .upload(
                dest.to_str().unwrap(),
                Shape::File,
                0o644,
                &mut r,
                Duration::from_millis(300),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, GuestError::ReplyTimeout(_)), "{err:?}");
        let t = std::time::Instant::now();
        while !staged(dir.path()).is_empty() && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(staged(dir.path()).is_empty(), "{:?}", staged(dir.path()));
        assert!(!dest.exists());
    }

    /// The real agent behind a proxy that flips one byte of every data
    /// frame, in both directions.
    async fn agent_behind_a_corrupting_proxy() -> AgentClient {
        let (ours, proxy_near) = tokio::net::UnixStream::pair().unwrap();
        let (proxy_far, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let theirs2 = theirs.try_clone().unwrap();
        std::thread::spawn(move || crate::agent::serve(theirs, theirs2));
        proxy_far.set_nonblocking(true).unwrap();
        let proxy_far = tokio::net::UnixStream::from_std(proxy_far).unwrap();
        let (near_r, near_w) = tokio::io::split(proxy_near);
        let (far_r, far_w) = tokio::io::split(proxy_far);
        tokio::spawn(flip_frames(BufReader::new(near_r), far_w, false));
        tokio::spawn(flip_frames(BufReader::new(far_r), near_w, true));
        AgentClient::attach(
            Box::new(ours),
            std::time::Instant::now() + T,
            &tokio_util::task::TaskTracker::new(),
        )
        .await
        .unwrap()
    }

    async fn flip_frames(
        mut r: BufReader<impl AsyncRead + Unpin>,
        mut w: impl AsyncWrite + Unpin,
        greeting: bool,
    ) -> std::io::Result<()> {
        if greeting {
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line).await?;
            w.write_all(&line).await?;
        }
        loop {
            let mut len = [0u8; 4];
            r.read_exact(&mut len).await?;
            let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
            r.read_exact(&mut body).await?;
            if body[0] == wire::DATA && body.len() > 5 {
                body[5] ^= 0x01;
            }
            w.write_all(&len).await?;
            w.write_all(&body).await?;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_frame_corrupted_in_flight_fails_the_call_either_way() {
        let a = agent_behind_a_corrupting_proxy().await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let err = put(&a, dest.to_str().unwrap(), &bytes(100_000, 9))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("arrived different"), "{err}");
        assert!(!dest.exists(), "a corrupted upload was put in place");
        assert!(staged(dir.path()).is_empty());
        std::fs::write(&dest, bytes(100_000, 9)).unwrap();
        let err = get(&a, dest.to_str().unwrap(), Shape::File)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("arrived different"), "{err}");
    }
}
