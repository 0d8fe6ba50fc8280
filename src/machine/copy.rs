//! Files between host and guest: `copy_from_host`, `copy_from_machine` and
//! `guest_screenshot`'s copy, through the command channel, streamed from
//! and to disk and verified end to end ([`Session::upload`],
//! [`Session::download`]). Every transfer has its own staging file, so
//! concurrent copies to one machine never share one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use super::{Machine, MachineError};
use crate::agent::wire::Shape;

use crate::guest::{GuestError, Session};
use crate::shell;

/// Bound on one transfer's round trip (the NixOS driver has none for copies).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bound on the small commands around a transfer.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

static NEXT_TRANSFER: AtomicU64 = AtomicU64::new(1);

/// A name no other transfer of this run uses.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT_TRANSFER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The directory part of a guest path, as `dirname` gives it.
fn guest_dirname(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(0) => "/".into(),
        Some(i) => trimmed[..i].into(),
        None if path.starts_with('/') => "/".into(),
        None => ".".into(),
    }
}

/// The last component of a guest path, as `basename` gives it.
fn guest_basename(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    trimmed.rsplit('/').next().unwrap_or(trimmed).to_owned()
}

impl Machine {
    fn host_file(
        &self,
        call: &'static str,
        doing: &'static str,
        path: &Path,
        error: std::io::Error,
    ) -> MachineError {
        MachineError::HostFile {
            machine: self.name().to_owned(),
            call,
            doing,
            path: path.to_owned(),
            error: std::sync::Arc::new(error),
        }
    }

    /// A small step of a copy that must exit 0; returns its stdout.
    async fn copy_step(&self, call: &'static str, command: String) -> Result<String, MachineError> {
        let out = self.execute(&command, STEP_TIMEOUT).await?;
        if out.status != 0 {
            return Err(MachineError::CopyStep {
                machine: self.name().to_owned(),
                call,
                stderr: out.stderr_text().trim().to_owned(),
                status: out.status,
                command,
            });
        }
        Ok(out.stdout_text())
    }

    /// Copies a host file or directory into the guest, as the NixOS driver
    /// does (`mkdir -p` of the target's directory, then `cp -r`): a target
    /// that is an existing directory receives the source under its own
    /// name. The data is streamed from disk in one round trip and checked
    /// on arrival (size and SHA-256); a mismatch fails the call and leaves
    /// the target untouched. With the agent the bytes travel raw; a
    /// directory travels as a tar stream either way.
    pub async fn copy_from_host(&self, source: &Path, target: &str) -> Result<(), MachineError> {
        const CALL: &str = "copy_from_host";
        let meta = tokio::fs::metadata(source)
            .await
            .map_err(|e| self.host_file(CALL, "", source, e))?;
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "source".into());
        let t = shell::quote(target);
        let kind = self
            .copy_step(
                CALL,
                format!(
                    "mkdir -p -- {} && if [ -d {t} ]; then echo dir; else echo other; fi",
                    shell::quote(&guest_dirname(target))
                ),
            )
            .await?;
        let dest = if kind.trim() == "dir" {
            format!("{}/{name}", target.trim_end_matches('/'))
        } else {
            target.to_owned()
        };
        // A directory travels as a tar archive written next to the state
        // dir first (its length must be known before the bash protocol
        // sends it).
        let archive = if meta.is_dir() {
            Some(self.tar_host_dir(source).await?)
        } else {
            None
        };
        let upload_from = archive
            .as_ref()
            .map(|a| a.path().to_owned())
            .unwrap_or_else(|| source.to_owned());
        use std::os::unix::fs::PermissionsExt as _;
        // cp creates the file with the source's mode less the umask.
        let mode = meta.permissions().mode() & 0o755;
        let shape = match archive {
            Some(_) => Shape::Tar,
            None => Shape::File,
        };
        let what = format!("{CALL} {} (to {dest})", source.display());
        let via_agent = self
            .with_agent(&what, |client| {
                let (from, dest) = (upload_from.clone(), dest.clone());
                async move {
                    let mut file = tokio::fs::File::open(&from)
                        .await
                        .map_err(|e| GuestError::HostFile(format!("{}: {e}", from.display())))?;
                    client
                        .upload(&dest, shape, mode, &mut file, TRANSFER_TIMEOUT)
                        .await
                }
            })
            .await?;
        if via_agent.is_some() {
            return Ok(());
        }
        let stage = format!("{}/.{}", guest_dirname(&dest), unique("attest-upload"));
        let sent = self.upload_file(&upload_from, &stage).await;
        if let Err(e) = sent {
            let _ = self
                .execute(&format!("rm -f -- {}", shell::quote(&stage)), STEP_TIMEOUT)
                .await;
            return Err(e);
        }
        let (s, d) = (shell::quote(&stage), shell::quote(&dest));
        let finish = match shape {
            Shape::Tar => format!(
                "trap 'rm -f -- {s}' EXIT; mkdir -p -- {d} && tar --no-same-owner -C {d} -xf {s}"
            ),
            Shape::File => {
                format!("chmod {mode:o} -- {s} && mv -f -- {s} {d} || {{ rm -f -- {s}; exit 1; }}")
            }
        };
        self.copy_step(CALL, finish).await.map(drop)
    }

    /// A host directory as a tar archive in the scratch dir (`tar -C dir
    /// -cf - .` as the `tar` crate writes it: symlinks stay links).
    async fn tar_host_dir(&self, source: &Path) -> Result<tempfile::NamedTempFile, MachineError> {
        let archive = tempfile::Builder::new()
            .prefix(".attest-upload-")
            .suffix(".tar")
            .tempfile_in(self.host_scratch_dir())
            .map_err(|e| {
                self.host_file(
                    "copy_from_host",
                    "a temporary archive in ",
                    &self.host_scratch_dir(),
                    e,
                )
            })?;
        let file = archive
            .reopen()
            .map_err(|e| self.host_file("copy_from_host", "reopening ", archive.path(), e))?;
        let dir = source.to_owned();
        let built = tokio::task::spawn_blocking(move || {
            let mut b = tar::Builder::new(std::io::BufWriter::new(file));
            b.follow_symlinks(false);
            b.append_dir_all(".", &dir)?;
            use std::io::Write as _;
            b.into_inner()?.flush()
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        built.map_err(|e| self.host_file("copy_from_host", "archiving ", source, e))?;
        Ok(archive)
    }

    /// Where host-side temporary files of transfers go.
    fn host_scratch_dir(&self) -> PathBuf {
        let dir = self.inner.state_dir.clone();
        if std::fs::create_dir_all(&dir).is_ok() {
            dir
        } else {
            std::env::temp_dir()
        }
    }

    async fn upload_file(&self, source: &Path, stage: &str) -> Result<(), MachineError> {
        let mut file = tokio::fs::File::open(source)
            .await
            .map_err(|e| self.host_file("copy_from_host", "", source, e))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| self.host_file("copy_from_host", "", source, e))?
            .len();
        let stage = stage.to_owned();
        let what = format!("copy_from_host {} (to {stage})", source.display());
        self.with_session(&what, move |s: &mut Session| {
            Box::pin(async move {
                s.upload(&stage, &mut file, len, TRANSFER_TIMEOUT)
                    .await
                    .map(drop)
            })
        })
        .await
    }

    /// Copies a guest file or directory to `target` on the host (a
    /// directory's contents are merged into `target`). The file is streamed
    /// to disk and checked (size and SHA-256 against the guest's file); a
    /// file that changes while it is copied fails the call. NixOS's
    /// `copy_from_vm(source, target_dir)` is this with `target` =
    /// `$out/target_dir/<basename of source>`.
    pub async fn copy_from_machine(&self, source: &str, target: &Path) -> Result<(), MachineError> {
        const CALL: &str = "copy_from_machine";
        let s = shell::quote(source);
        let agent = self.speaks_agent().await?;
        // The bash protocol sends a directory as a tar file the guest
        // writes first; the agent streams `tar`'s output directly.
        let tar = format!("${{TMPDIR:-/tmp}}/.{}.tar", unique("attest-download"));
        let make_tar = match agent {
            true => "echo dir".to_owned(),
            false => format!("tar -C {s} -cf \"{tar}\" . && echo \"dir {tar}\""),
        };
        let kind = self
            .copy_step(
                CALL,
                format!(
                    "if [ -d {s} ]; then {make_tar}; \
                     elif [ -e {s} ]; then echo file; \
                     else echo \"{source}: No such file or directory\" >&2; exit 1; fi"
                ),
            )
            .await?;
        let kind = kind.trim();
        if let Some(rest) = kind.strip_prefix("dir") {
            let archive = tempfile::Builder::new()
                .prefix(".attest-download-")
                .suffix(".tar")
                .tempfile_in(self.host_scratch_dir())
                .map_err(|e| {
                    self.host_file(CALL, "a temporary archive in ", &self.host_scratch_dir(), e)
                })?;
            let stage = rest.trim();
            let r = match agent {
                true => {
                    self.download_file(source, source, Shape::Tar, archive.path())
                        .await
                }
                false => {
                    let r = self
                        .download_file(source, stage, Shape::File, archive.path())
                        .await;
                    let _ = self
                        .execute(&format!("rm -f -- {}", shell::quote(stage)), STEP_TIMEOUT)
                        .await;
                    r
                }
            };
            r?;
            let (from, into) = (archive.path().to_owned(), target.to_owned());
            let unpacked = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&into)?;
                let file = std::fs::File::open(&from)?;
                let mut a = tar::Archive::new(std::io::BufReader::new(file));
                a.set_preserve_permissions(true);
                a.set_overwrite(true);
                a.unpack(&into)
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
            return unpacked.map_err(|e| self.host_file(CALL, "extracting into ", target, e));
        }
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| self.host_file(CALL, "creating ", parent, e))?;
        }
        // Written beside the target and renamed: a failed copy leaves no
        // half file under the target's name.
        let partial = tempfile::Builder::new()
            .prefix(".attest-download-")
            .tempfile_in(
                target
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            )
            .map_err(|e| self.host_file(CALL, "a temporary file next to ", target, e))?;
        self.download_file(source, source, Shape::File, partial.path())
            .await?;
        partial
            .persist(target)
            .map_err(|e| self.host_file(CALL, "renaming the download to ", target, e.error))?;
        Ok(())
    }

    /// Streams the guest's `source` into the host file `to`, over the
    /// agent when the machine speaks it, else a bash session (which sends
    /// only files: `shape` must be [`Shape::File`] there).
    async fn download_file(
        &self,
        shown: &str,
        source: &str,
        shape: Shape,
        to: &Path,
    ) -> Result<(), MachineError> {
        let mut file = tokio::fs::File::create(to)
            .await
            .map_err(|e| self.host_file("copy_from_machine", "", to, e))?;
        let source = source.to_owned();
        let what = format!("copy_from_machine {shown} (to {})", to.display());
        let via_agent = self
            .with_agent(&what, |client| {
                let (source, file) = (source.clone(), &mut file);
                async move {
                    client
                        .download(&source, shape, file, TRANSFER_TIMEOUT)
                        .await?;
                    file.shutdown()
                        .await
                        .map_err(|e| GuestError::HostFile(e.to_string()))
                }
            })
            .await?;
        if via_agent.is_some() {
            return Ok(());
        }
        self.with_session(&what, move |s: &mut Session| {
            Box::pin(async move {
                s.download(&source, &mut file, TRANSFER_TIMEOUT).await?;
                file.shutdown()
                    .await
                    .map_err(|e| GuestError::HostFile(e.to_string()))
            })
        })
        .await
    }

    /// A screenshot taken inside the guest (grim on Wayland, ImageMagick's
    /// `import` on X11, fbgrab on a framebuffer), copied to `target`. For
    /// backends whose VMM cannot capture the screen (firecracker,
    /// cloud-hypervisor).
    pub async fn guest_screenshot(&self, target: &Path) -> Result<(), MachineError> {
        let shot = format!("/tmp/.{}.png", unique("attest-guest-screenshot"));
        let capture = format!(
            "rm -f {shot}; \
             if command -v grim >/dev/null && [ -n \"${{WAYLAND_DISPLAY:-}}\" ]; then grim {shot}; \
             elif command -v import >/dev/null && [ -e /tmp/.X11-unix/X0 ]; then DISPLAY=:0 import -window root {shot}; \
             elif command -v fbgrab >/dev/null && [ -e /dev/fb0 ]; then fbgrab {shot} >/dev/null; \
             else echo 'guest_screenshot: the guest has no way to capture its screen: it needs grim (Wayland), ImageMagick import (X11) or fbgrab with /dev/fb0' >&2; exit 3; fi"
        );
        let out = self.execute(&capture, Duration::from_secs(60)).await?;
        if out.status != 0 {
            return Err(MachineError::Internal {
                machine: self.name().to_owned(),
                message: out.stderr_text().trim().to_owned(),
            });
        }
        let r = self.copy_from_machine(&shot, target).await;
        let _ = self.execute(&format!("rm -f {shot}"), STEP_TIMEOUT).await;
        r
    }
}

/// Where NixOS's `copy_from_vm(source, target_dir)` puts a guest path:
/// `<out_dir>/<target_dir>/<basename of source>`.
pub fn copy_from_vm_target(out_dir: &Path, source: &str, target_dir: &str) -> PathBuf {
    out_dir.join(target_dir).join(guest_basename(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_split_as_dirname_and_basename_do() {
        for (p, dir, base) in [
            ("/a/b/c", "/a/b", "c"),
            ("/a/b/c/", "/a/b", "c"),
            ("/c", "/", "c"),
            ("c", ".", "c"),
            ("a/c", "a", "c"),
        ] {
            assert_eq!(guest_dirname(p), dir, "{p}");
            assert_eq!(guest_basename(p), base, "{p}");
        }
        assert_eq!(
            copy_from_vm_target(Path::new("/out"), "/var/log/x.log", ""),
            Path::new("/out/x.log")
        );
        assert_eq!(
            copy_from_vm_target(Path::new("/out"), "/etc/nginx/", "cfg"),
            Path::new("/out/cfg/nginx")
        );
    }
}
