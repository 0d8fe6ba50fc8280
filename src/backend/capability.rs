//! What a node's backend can do beyond running commands: one table per
//! backend ([`support`]), read by the static check (`attest check` refuses a
//! call on a node whose backend cannot do it, naming node, backend and what
//! to do) and by [`crate::machine::Machine`] before it asks the backend, so
//! check and run give the same answer with the same words.

use crate::config::{BackendConfig, BackendKind};

/// Something a script method needs that not every backend has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capability {
    /// A display to capture (`screenshot`).
    Screen,
    /// OCR of the display (`get_screen_text`, `get_screen_text_variants`, `wait_for_text`).
    ScreenText,
    /// A virtual keyboard (`send_key`, `send_chars`).
    Keyboard,
    /// Input on the serial console (`send_console`).
    ConsoleInput,
    /// The QEMU monitor and QMP (`send_monitor_command`, `wait_for_qmp_event`).
    Monitor,
    /// Taking the node's vlan links down and up (`block`, `unblock`).
    LinkControl,
    /// A host port forwarded into the guest (`forward_port`).
    PortForward,
    /// Saving and restoring the whole machine (`snapshot_create`, `snapshot_restore`).
    Snapshot,
    /// `reboot()` from the driver.
    Reboot,
    /// Powering the machine off from the driver (`shutdown`, `crash`).
    PowerOff,
    /// Leaving the initrd (`switch_root`).
    SwitchRoot,
    /// The kernel's virtual terminals, `/dev/vcsN` (`get_tty_text`,
    /// `wait_until_tty_matches`, `dump_tty_contents`).
    VirtualTerminals,
}

/// Every script method that needs a capability, with it.
pub const METHODS: &[(&str, Capability)] = &[
    ("screenshot", Capability::Screen),
    ("get_screen_text", Capability::ScreenText),
    ("get_screen_text_variants", Capability::ScreenText),
    ("wait_for_text", Capability::ScreenText),
    ("send_key", Capability::Keyboard),
    ("send_chars", Capability::Keyboard),
    ("send_console", Capability::ConsoleInput),
    ("send_monitor_command", Capability::Monitor),
    ("wait_for_qmp_event", Capability::Monitor),
    ("block", Capability::LinkControl),
    ("unblock", Capability::LinkControl),
    ("forward_port", Capability::PortForward),
    ("snapshot_create", Capability::Snapshot),
    ("snapshot_restore", Capability::Snapshot),
    ("reboot", Capability::Reboot),
    ("shutdown", Capability::PowerOff),
    ("crash", Capability::PowerOff),
    ("switch_root", Capability::SwitchRoot),
    ("get_tty_text", Capability::VirtualTerminals),
    ("wait_until_tty_matches", Capability::VirtualTerminals),
    ("dump_tty_contents", Capability::VirtualTerminals),
];

impl Capability {
    /// The capability a script method needs, if any.
    pub fn of_method(method: &str) -> Option<Capability> {
        METHODS.iter().find(|(m, _)| *m == method).map(|(_, c)| *c)
    }
}

/// Why a backend cannot do something, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The backend.
    pub backend: BackendKind,
    /// Why not.
    pub why: &'static str,
    /// What to do instead.
    pub instead: &'static str,
}

impl Refusal {
    /// The one text check and run both print after the call's name.
    pub fn message(&self, method: &str, node: &str) -> String {
        format!(
            "{method} is not supported by the {} backend of node `{node}`: {}; {}",
            self.backend, self.why, self.instead
        )
    }
}

const NO_DISPLAY_INSTEAD: &str =
    "run this node on the qemu backend, or capture the screen inside the guest with guest_screenshot()";
const USE_QEMU: &str = "run this node on the qemu backend";

fn refuse(backend: BackendKind, why: &'static str, instead: &'static str) -> Result<(), Refusal> {
    Err(Refusal {
        backend,
        why,
        instead,
    })
}

/// The table: whether a node with these backend settings has `cap`.
pub fn support(backend: &BackendConfig, cap: Capability) -> Result<(), Refusal> {
    let kind = backend.kind();
    let no = |why, instead| refuse(kind, why, instead);
    use Capability::*;
    match backend {
        BackendConfig::Qemu(q) => match cap {
            ScreenText if !q.enable_ocr => no(
                "OCR is not enabled for this node",
                "set \"enable_ocr\": true in its qemu settings",
            ),
            _ => Ok(()),
        },
        BackendConfig::Nspawn(_) => match cap {
            LinkControl | Reboot | PowerOff => Ok(()),
            Screen | ScreenText => no("a container has no display", NO_DISPLAY_INSTEAD),
            Keyboard => no(
                "a container has no keyboard",
                "type into a program with succeed() instead, or run this node on the qemu backend",
            ),
            ConsoleInput => no("its console is read-only", USE_QEMU),
            Monitor => no("there is no QEMU monitor", USE_QEMU),
            PortForward => no(
                "its network is private to the test",
                "reach it from another node of the test, or run this node on the qemu backend",
            ),
            Snapshot => no(
                "containers cannot be saved and restored",
                "run this node on qemu, firecracker or cloud-hypervisor",
            ),
            SwitchRoot => no(
                "a container boots without an initrd",
                "run this node on the qemu backend",
            ),
            VirtualTerminals => no(
                "a container has no virtual terminals (/dev/vcsN)",
                "read the program's output with succeed() or the journal instead",
            ),
        },
        BackendConfig::Firecracker(_) | BackendConfig::CloudHypervisor(_) => match cap {
            LinkControl | Snapshot | Reboot | PowerOff | SwitchRoot | VirtualTerminals => Ok(()),
            Screen | ScreenText => no("the microVM has no display", NO_DISPLAY_INSTEAD),
            Keyboard => no("the microVM has no keyboard", USE_QEMU),
            ConsoleInput => no("its serial console is output only", USE_QEMU),
            Monitor => no("there is no QEMU monitor", USE_QEMU),
            PortForward => no(
                "the microVM has no user-mode network",
                "reach it from another node of the test, or run this node on the qemu backend",
            ),
        },
        BackendConfig::Ssh(s) => ssh(s.owned, cap),
    }
}

/// The ssh backend's table (`owned`: the node says attest may power it off).
pub fn ssh(owned: bool, cap: Capability) -> Result<(), Refusal> {
    let no = |why, instead| refuse(BackendKind::Ssh, why, instead);
    use Capability::*;
    match cap {
        VirtualTerminals => Ok(()),
        PowerOff if owned => Ok(()),
        PowerOff => no(
            "attest never powers off a host it did not start",
            "set \"owned\": true on the node if this test may power it off",
        ),
        Reboot => no(
            "attest does not reboot an existing host",
            "run `systemctl reboot` with execute(…, #{ check_return: false }) if the host is yours",
        ),
        Screen | ScreenText => no(
            "attest reaches the host only through ssh, it sees no display",
            "capture the screen inside the guest with guest_screenshot()",
        ),
        Keyboard => no("attest reaches the host only through ssh", USE_QEMU),
        ConsoleInput => no("attest reaches the host only through ssh", USE_QEMU),
        Monitor => no("there is no QEMU monitor", USE_QEMU),
        LinkControl | PortForward => no(
            "attest does not manage the network of an existing host",
            "change the host's network with succeed() if the host is yours",
        ),
        Snapshot => no(
            "an existing host cannot be saved and restored",
            "run this node on qemu, firecracker or cloud-hypervisor",
        ),
        SwitchRoot => no("an existing host has left its initrd long ago", USE_QEMU),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NspawnConfig, QemuConfig};

    #[test]
    fn every_method_maps_to_its_capability() {
        assert_eq!(
            Capability::of_method("screenshot"),
            Some(Capability::Screen)
        );
        assert_eq!(Capability::of_method("crash"), Some(Capability::PowerOff));
        assert_eq!(Capability::of_method("succeed"), None);
    }

    #[test]
    fn refusals_name_backend_node_and_what_to_do() {
        let nspawn = BackendConfig::Nspawn(NspawnConfig::default());
        let r = support(&nspawn, Capability::Screen).unwrap_err();
        assert_eq!(
            r.message("screenshot", "server"),
            "screenshot is not supported by the nspawn backend of node `server`: a container has \
             no display; run this node on the qemu backend, or capture the screen inside the \
             guest with guest_screenshot()"
        );
        assert!(support(&nspawn, Capability::Reboot).is_ok());
        let qemu = BackendConfig::Qemu(QemuConfig::default());
        assert!(support(&qemu, Capability::Screen).is_ok());
        assert!(support(&qemu, Capability::ScreenText)
            .unwrap_err()
            .instead
            .contains("enable_ocr"));
    }
}
