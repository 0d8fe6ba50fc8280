//! The test's network: the IP plan ([`plan`]: `192.168.<vlan>.<n>`,
//! `2001:db8:<vlan>::<n>`, eth1…)
//! and the switch it runs on. For containers (and microVM TAPs) the switch is
//! one Linux bridge per vlan inside a private network namespace
//! ([`SwitchNamespace`]) that dies with attest, so no bridge or veth can leak.

mod error;
pub mod plan;
mod switch_ns;
mod vde;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use error::NetError;
pub use switch_ns::SwitchNamespace;
pub use vde::VdeSwitches;

/// The vlans of a test and their switches, created on first use.
pub struct Network {
    vlans: BTreeSet<u8>,
    switch: Mutex<Option<Arc<SwitchNamespace>>>,
    vde: tokio::sync::Mutex<Option<Arc<VdeSwitches>>>,
}

impl Network {
    /// A network with these vlans; nothing is created yet.
    pub fn new(vlans: impl IntoIterator<Item = u8>) -> Network {
        Network {
            vlans: vlans.into_iter().collect(),
            switch: Mutex::new(None),
            vde: tokio::sync::Mutex::new(None),
        }
    }

    /// The vlans.
    pub fn vlans(&self) -> &BTreeSet<u8> {
        &self.vlans
    }

    /// The bridge namespace, with one bridge `br<vlan>` per vlan.
    pub fn switch(&self) -> Result<Arc<SwitchNamespace>, NetError> {
        let mut g = self.switch.lock().map_err(|_| NetError::Poisoned)?;
        if let Some(s) = g.as_ref() {
            return Ok(s.clone());
        }
        let ns = Arc::new(SwitchNamespace::create()?);
        for v in &self.vlans {
            // No multicast snooping: without an MLD querier a bridge can
            // stop forwarding IPv6 neighbour discovery to a port it has not
            // seen a report from (a container attached after it joined).
            ns.ip(&[
                "link",
                "add",
                &bridge_name(*v),
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ])?;
            ns.ip(&["link", "set", &bridge_name(*v), "up"])?;
        }
        *g = Some(ns.clone());
        Ok(ns)
    }

    /// The VDE switches (one per vlan, for QEMU), started in `dir` on first
    /// use, watched by tasks on `tasks`.
    pub async fn vde_switches(
        &self,
        dir: &std::path::Path,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Result<Arc<VdeSwitches>, NetError> {
        let mut g = self.vde.lock().await;
        if let Some(s) = g.as_ref() {
            return Ok(s.clone());
        }
        let s = Arc::new(VdeSwitches::start(dir, self.vlans.iter().copied(), tasks).await?);
        *g = Some(s.clone());
        Ok(s)
    }

    /// Lets the VDE switches go: they end when the last machine holding
    /// them is gone (at teardown, once every machine has ended).
    pub async fn release_switches(&self) {
        self.vde.lock().await.take();
    }

    /// [`Network::switch`] on a blocking thread, for async callers: the
    /// first call creates the namespace and its bridges with `ip`.
    pub async fn switch_async(self: &Arc<Self>) -> Result<Arc<SwitchNamespace>, NetError> {
        let net = self.clone();
        tokio::task::spawn_blocking(move || net.switch())
            .await
            .map_err(|e| NetError::IpTask {
                reason: e.to_string(),
            })?
    }

    /// The namespace path machines' helpers enter (`nsenter --net=…`).
    pub async fn netns_path(self: &Arc<Self>) -> Result<PathBuf, NetError> {
        Ok(self.switch_async().await?.path().to_owned())
    }

    /// Attaches the host end `ifname` (made by a machine's process, so it may
    /// not exist yet) to the vlan's bridge and brings it up.
    pub async fn attach(
        self: &Arc<Self>,
        ifname: &str,
        vlan: u8,
        timeout: Duration,
    ) -> Result<(), NetError> {
        let switch = self.switch_async().await?;
        let bridge = bridge_name(vlan);
        let args = ["link", "set", ifname, "master", &bridge, "up"];
        crate::process::retry(Instant::now() + timeout, Duration::from_millis(20), || {
            switch.ip_async(&args)
        })
        .await
        .map_err(|e| NetError::Attach {
            ifname: ifname.to_owned(),
            vlan,
            source: Box::new(e),
        })
    }

    /// Sets a host end down (`block`) or up (`unblock`).
    pub async fn set_link(self: &Arc<Self>, ifname: &str, up: bool) -> Result<(), NetError> {
        self.switch_async()
            .await?
            .ip_async(&["link", "set", ifname, if up { "up" } else { "down" }])
            .await
    }
}

/// The bridge of a vlan.
pub fn bridge_name(vlan: u8) -> String {
    format!("br{vlan}")
}
