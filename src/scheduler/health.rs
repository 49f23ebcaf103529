//! Builder health: whether each builder may be given work. The local machine and the fixed-output pool
//! are always up; a remote builder is probed at start-up and then periodically with `nix store ping`
//! under a time limit ([`crate::nix::remote::ping`]), one probe task per remote builder owned by the
//! scheduler loop, which reports each result to the loop's inbox. A builder starts "unknown" (no work until
//! its first probe answers), is "up" while probes answer, and "down" (with Nix's reason) when one does not
//! or when the loop lost it during a batch; a down builder is probed again after a backoff doubling from
//! [`BACKOFF_START`] up to the probe interval, and at once when the loop asks (a lost builder).
//!
//! This file holds the states, the probe task and the public [`BuilderStatus`]; the loop (`engine/`)
//! decides what a state change does to the work (see `engine/dispatch.rs` and `engine/events.rs`).

use std::time::Duration;

use async_channel::Receiver;
use futures_lite::future;
use serde::{Deserialize, Serialize};

use super::builders::{BuilderKind, BuilderSpec};

/// The first wait before probing a down builder again; it doubles up to the probe interval.
pub const BACKOFF_START: Duration = Duration::from_secs(1);

/// Whether a builder may be given work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    /// A remote builder not probed yet: no work until its first probe answers.
    Unknown,
    Up,
    /// `reason`: Nix's words from the failed probe, or how the builder was lost during a batch.
    Down {
        reason: String,
    },
}

impl Health {
    /// `up`, `down` or `unknown`.
    pub fn name(&self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down { .. } => "down",
        }
    }
}

/// One builder as `ekaci status` and `GET /v1/builders` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderStatus {
    /// `local`, `fixed-output` or the remote URI.
    pub name: String,
    /// `local`, `fixed-output` or `remote`.
    pub kind: String,
    pub systems: Vec<String>,
    pub max_jobs: u32,
    pub speed_factor: u32,
    pub supported_features: Vec<String>,
    pub mandatory_features: Vec<String>,
    pub health: Health,
    /// When the builder entered its current health (Unix ms).
    pub since_ms: u64,
    /// When it was last probed (Unix ms); `None` for the local machine and before the first probe.
    pub last_probe_ms: Option<u64>,
    /// Failed probes in a row.
    pub failed_probes: u32,
    /// Derivations building on it now.
    pub building: usize,
}

/// The wait after `failures` failed probes in a row: [`BACKOFF_START`] doubling, at most `interval`.
pub fn backoff(failures: u32, interval: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    BACKOFF_START.saturating_mul(1 << exponent).min(interval).max(Duration::from_millis(100))
}

/// How a remote builder is probed.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The store URI with the machine's SSH key and host key as parameters.
    pub store_uri: String,
    /// Between probes of an up builder.
    pub interval: Duration,
    /// One probe's time limit.
    pub timeout: Duration,
}

impl Probe {
    /// The probe of `spec`, or `None` for a builder on this machine.
    pub fn of(spec: &BuilderSpec, interval: Duration, timeout: Duration) -> Option<Probe> {
        match &spec.kind {
            BuilderKind::Remote { uri, ssh_key, host_key } => Some(Probe {
                store_uri: crate::nix::remote::probe_uri(uri, ssh_key.as_deref(), host_key.as_deref()),
                interval,
                timeout,
            }),
            BuilderKind::Local | BuilderKind::FixedOutput => None,
        }
    }
}

/// Probes one builder for as long as `report` accepts results: at once, then after `interval` while it
/// answers, after the [`backoff`] while it does not, and at once whenever `wake` receives.
pub async fn probe_loop(probe: Probe, wake: Receiver<()>, report: impl Fn(Result<(), String>) -> Option<()>) {
    let mut failures = 0u32;
    loop {
        let result =
            crate::nix::remote::ping(&probe.store_uri, probe.timeout).await.map_err(|e| e.to_string());
        failures = if result.is_ok() { 0 } else { failures.saturating_add(1) };
        if report(result).is_none() {
            return;
        }
        let wait = if failures == 0 { probe.interval } else { backoff(failures, probe.interval) };
        let timer = async {
            smol::Timer::after(wait).await;
        };
        let woken = async {
            if wake.recv().await.is_err() {
                future::pending::<()>().await;
            }
        };
        future::or(timer, woken).await;
        // Several wake-ups while probing count as one.
        while wake.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_interval() {
        let interval = Duration::from_secs(60);
        let waits: Vec<u64> = (1..=8).map(|f| backoff(f, interval).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(u32::MAX, interval), interval);
        assert_eq!(backoff(3, Duration::from_secs(2)), Duration::from_secs(2));
    }

    #[test]
    fn only_remote_builders_are_probed() {
        let local = BuilderSpec::local(vec!["x86_64-linux".into()], Vec::new(), 2);
        assert!(Probe::of(&local, Duration::from_secs(1), Duration::from_secs(1)).is_none());
        let remote =
            crate::scheduler::builders::parse_machines("ssh-ng://b1 x86_64-linux /k 2 1 - - QUJD", "x")
                .expect("machines");
        let p = Probe::of(&remote[0], Duration::from_secs(5), Duration::from_secs(3)).expect("remote");
        assert_eq!(p.store_uri, "ssh-ng://b1?ssh-key=/k&base64-ssh-public-host-key=QUJD");
    }
}
