//! The guest channel: one command protocol ([`protocol`]) spoken over many
//! transports (virtconsole socket, unix socket, hybrid vsock, ssh session).
//! A transport is any byte stream; [`Session`] is the protocol on one stream.

pub mod agent;
mod agent_transfer;
pub mod protocol;
mod session;
pub mod upload_port;

pub use agent_transfer::CORRUPT_ENV;
pub use protocol::CommandOutput;
pub use session::{GuestError, GuestStream, Session, Transfer};

/// The line every backdoor shell prints before it reads commands.
pub const BANNER: &str = "Spawning backdoor root shell...";

/// What a host writes to a backdoor terminal it reconnects to (a VM restored
/// from a snapshot): a shell prints the banner again; an agent hands the
/// terminal to a shell that does (see `agent::wire::WAKE_MARK`). The newline
/// first ends any partial line.
pub fn wake_line() -> String {
    format!("\necho '{BANNER}' {}\n", crate::agent::wire::WAKE_MARK)
}
