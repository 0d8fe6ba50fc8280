//! The guest channel: one command protocol ([`protocol`]) spoken over many
//! transports (virtconsole socket, unix socket, hybrid vsock, ssh session).
//! A transport is any byte stream; [`Session`] is the protocol on one stream.

pub mod agent;
mod agent_transfer;
pub mod protocol;
mod session;

pub use agent_transfer::CORRUPT_ENV;
pub use protocol::CommandOutput;
pub use session::{GuestError, GuestStream, Session, Transfer};

/// The line every backdoor shell prints before it reads commands.
pub const BANNER: &str = "Spawning backdoor root shell...";
