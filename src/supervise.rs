//! Supervision of the daemon's long-running service loops: [`supervise`] runs one loop, catches a panic
//! in it (or a failed start), logs the panic's message, marks the loop down in the process-wide
//! [`down`] list (which `/healthz` reports, answering 503 while it is not empty), counts the restart in
//! `eka_ci_service_restarts_total{service}` and starts the loop again after a backoff (1 s, doubling to
//! 60 s; reset once a run of the loop has lasted a minute). The loop is up again as soon as its new run
//! starts.
//!
//! It also holds the one test hook for this: `EKA_CI_TEST_PANIC_WHILE=<service>[,<service>…]:<path>`, read once
//! at start-up, makes the named loops panic at each start while `<path>` exists. It is compiled in always
//! (so the real binary can be tested); only someone who controls the server's environment can set it,
//! and all it can do is what a bug could. This module never decides what a loop does.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;

/// The first wait before a restart.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait before a restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run that lasted this long resets the backoff to [`FIRST_BACKOFF`].
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The environment variable of the test hook (see the module documentation).
pub const TEST_PANIC_ENV: &str = "EKA_CI_TEST_PANIC_WHILE";

fn down_list() -> &'static Mutex<BTreeMap<&'static str, &'static str>> {
    static DOWN: OnceLock<Mutex<BTreeMap<&'static str, &'static str>>> = OnceLock::new();
    DOWN.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// The loops that are down now (waiting to restart), by name, with `panicked` or `failed`. The
/// panic's message and the error are only logged: `/healthz` may be public.
pub fn down() -> BTreeMap<&'static str, &'static str> {
    match down_list().lock() {
        Ok(list) => list.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn set_down(service: &'static str, why: Option<&'static str>) {
    let mut list = match down_list().lock() {
        Ok(list) => list,
        Err(poisoned) => poisoned.into_inner(),
    };
    match why {
        Some(why) => list.insert(service, why),
        None => list.remove(service),
    };
}

/// The test hook's setting, read once.
fn test_panic() -> &'static Option<(String, PathBuf)> {
    static HOOK: OnceLock<Option<(String, PathBuf)>> = OnceLock::new();
    HOOK.get_or_init(|| {
        let value = std::env::var(TEST_PANIC_ENV).ok()?;
        let (service, path) = value.split_once(':')?;
        tracing::warn!(
            services = service,
            "test hook {TEST_PANIC_ENV} is set: these loops panic while a file exists"
        );
        Some((service.to_string(), PathBuf::from(path)))
    })
}

/// Reads the test hook's setting now (at start-up), so that a later change of the environment changes
/// nothing.
pub fn init() {
    let _ = test_panic();
}

fn maybe_test_panic(service: &str) {
    if let Some((names, path)) = test_panic() {
        if names.split(',').any(|name| name == service) && path.exists() {
            panic!("test panic injected by {TEST_PANIC_ENV} into {service}");
        }
    }
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs the loop `service` made by `start` until one of its runs returns `Ok(())` (it stopped on
/// purpose, e.g. at shutdown) or `shutdown` closes while it waits to restart. A run that panics or
/// returns an error is logged and restarted after a backoff; meanwhile the loop is listed in [`down`].
pub async fn supervise<F, Fut, E>(service: &'static str, shutdown: async_channel::Receiver<()>, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let restarts = crate::metrics::global().service_restarts.with_label_values(&[service]);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let began = Instant::now();
        let run = start();
        let outcome = AssertUnwindSafe(async {
            maybe_test_panic(service);
            set_down(service, None);
            run.await
        })
        .catch_unwind()
        .await;
        let why = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                tracing::error!(service, error = %e, "service loop failed; restarting after a backoff");
                "failed"
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                tracing::error!(service, panic = %message, "service loop panicked; restarting after a backoff");
                "panicked"
            }
        };
        set_down(service, Some(why));
        restarts.inc();
        if began.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        if sleep_or_shutdown(backoff, &shutdown).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Waits `duration`, or less if shutdown begins first: true when it did (the caller should return).
/// What every periodic service loop waits with.
pub async fn sleep_or_shutdown(
    duration: std::time::Duration,
    shutdown: &async_channel::Receiver<()>,
) -> bool {
    let stop = async {
        let _ = shutdown.recv().await;
        true
    };
    let wait = async {
        smol::Timer::after(duration).await;
        false
    };
    stop.or(wait).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_run_is_restarted_and_listed_down_until_it_runs_again() {
        let (_tx, rx) = async_channel::bounded::<()>(1);
        let runs = std::cell::Cell::new(0);
        smol::block_on(supervise("unit-test-loop", rx, || {
            runs.set(runs.get() + 1);
            let n = runs.get();
            async move {
                if n == 1 {
                    panic!("first run fails");
                }
                // The second run sees itself up again, and the first panic was counted.
                assert!(!down().contains_key("unit-test-loop"));
                Ok::<(), String>(())
            }
        }));
        assert_eq!(runs.get(), 2);
        let counted = crate::metrics::global().service_restarts.with_label_values(&["unit-test-loop"]).get();
        assert_eq!(counted, 1);
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        let a: Box<dyn std::any::Any + Send> = Box::new("static");
        let b: Box<dyn std::any::Any + Send> = Box::new(String::from("owned"));
        assert_eq!(panic_message(a.as_ref()), "static");
        assert_eq!(panic_message(b.as_ref()), "owned");
    }
}
