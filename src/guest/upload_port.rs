//! A raw byte channel into a VM guest for the agent's binary, beside the
//! backdoor terminal: a QEMU virtio-serial port named [`UploadPort::NAME`]
//! (`/dev/vportNpM` in the guest, found through
//! `/sys/class/virtio-ports/*/name`) whose host end attest holds.
//!
//! Why: the backdoor is a terminal (hvc0), and a terminal hands the guest
//! its input a few bytes per driver call; under TCG the agent's 2.2 MB of
//! base64 took 4 s through it. The port takes the raw bytes in big reads.

use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;

/// The host end of the current VM process's upload port (a restore starts
/// a new process, with a new pair). Clones share it.
#[derive(Debug, Clone, Default)]
pub struct UploadPort {
    ours: Arc<Mutex<Option<tokio::net::UnixStream>>>,
}

impl UploadPort {
    /// The port's name, as the guest sees it.
    pub const NAME: &'static str = "org.attest.upload";

    /// A fresh connected pair for the next VM process: its end (for
    /// `-chardev socket,fd=…`) is returned, ours replaces the last one.
    pub fn pair_for_vm(&self) -> std::io::Result<std::os::unix::net::UnixStream> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let ours = tokio::net::UnixStream::from_std(ours)?;
        *self.ours.lock().expect("upload port lock") = Some(ours);
        Ok(theirs)
    }

    /// Writes `data` into the port; the guest reads it from the device.
    pub async fn write_all(&self, data: &[u8]) -> std::io::Result<()> {
        let taken = self.ours.lock().expect("upload port lock").take();
        let Some(mut stream) = taken else {
            return Err(std::io::Error::other("the VM has no upload port"));
        };
        let written = stream.write_all(data).await;
        let mut slot = self.ours.lock().expect("upload port lock");
        // A new VM process may have put its own end meanwhile.
        if slot.is_none() {
            *slot = Some(stream);
        }
        written
    }
}
