//! NixOS `polling_condition`: a condition checked before machine commands
//! while a block runs, at most once per interval, failing the block when it
//! does not hold.
//!
//! ```rhai
//! let foo_running = polling_condition(|| machine.succeed("pgrep -x foo"),
//!                                     #{ seconds_interval: 10, description: "foo is running" });
//! foo_running.during(|| {
//!     machine.succeed("…");   // checked before this command (when due)
//! });
//! foo_running.wait(#{ timeout: 30 });
//! ```
//!
//! The condition fails when it throws or returns `false`, and holds
//! otherwise. NixOS applies Python's truth to the result (`None` holds); a
//! Rhai block has no `None`, it returns its last value, so `|| m.succeed(…)`
//! holds here whatever its output. A condition is never checked from inside
//! itself.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rhai::{Dynamic, Engine, FnPtr, Map, NativeCallContext};

use super::common::{err, first_line, secs, sleep_until_cancelled, timeout_of, R};
use super::flow::{DueCheck, Flow};
use super::ScriptContext;
use crate::machine::DEFAULT_TIMEOUT;
use crate::report::Reporter;

/// A condition made by `polling_condition`. Clones share it.
#[derive(Clone)]
pub struct PollingCondition {
    inner: Arc<Mutex<State>>,
}

struct State {
    condition: FnPtr,
    seconds_interval: f64,
    description: String,
    last_called: Option<Instant>,
    /// Checks in progress (a condition is not checked from inside itself).
    entered: usize,
    reporter: Reporter,
}

impl PollingCondition {
    fn description(&self) -> String {
        self.inner
            .lock()
            .expect("condition lock")
            .description
            .clone()
    }

    /// Runs the condition unless it is not due (or already running) and
    /// `force` is false. Returns whether it holds.
    fn check(&self, nc: &NativeCallContext, force: bool) -> bool {
        let (f, reporter, description, since) = {
            let mut s = self.inner.lock().expect("condition lock");
            let overdue = s
                .last_called
                .is_none_or(|t| t.elapsed().as_secs_f64() > s.seconds_interval);
            if (s.entered > 0 || !overdue) && !force {
                return true;
            }
            s.entered += 1;
            (
                s.condition.clone(),
                s.reporter.clone(),
                s.description.clone(),
                s.last_called.map(|t| t.elapsed().as_secs_f64()),
            )
        };
        let result = f.call_within_context::<Dynamic>(nc, ());
        let (holds, why) = match result {
            Ok(v) => (v.as_bool().unwrap_or(true), String::new()),
            Err(mut e) => (
                false,
                format!(": {}", first_line(&super::thrown::error_text(&mut e))),
            ),
        };
        {
            let mut s = self.inner.lock().expect("condition lock");
            s.entered -= 1;
            s.last_called = Some(Instant::now());
        }
        let since = since.map_or("(not called yet)".to_owned(), |t| {
            format!("time since last: {t:.2}s")
        });
        Flow::of(nc).log(
            &reporter,
            None,
            format!(
                "polling condition {}: {description} ({since}){why}",
                if holds { "succeeded" } else { "failed" }
            ),
        );
        holds
    }
}

/// Registers `polling_condition` and the condition's methods.
pub fn register(engine: &mut Engine, ctx: Arc<ScriptContext>) {
    engine.register_type_with_name::<PollingCondition>("PollingCondition");
    let c = ctx.clone();
    let make = move |f: FnPtr, opts: &Map| -> R<PollingCondition> {
        timeout_of(opts, DEFAULT_TIMEOUT)?;
        let seconds_interval = match opts.get("seconds_interval") {
            Some(v) => secs(v, "seconds_interval")?,
            None => 2.0,
        };
        let description = match opts.get("description") {
            Some(d) => d.to_string(),
            None if f.fn_name().starts_with("anon$") => "a polling condition".to_owned(),
            None => f.fn_name().to_owned(),
        };
        Ok(PollingCondition {
            inner: Arc::new(Mutex::new(State {
                condition: f,
                seconds_interval,
                description,
                last_called: None,
                entered: 0,
                reporter: c.reporter.clone(),
            })),
        })
    };
    let m = make.clone();
    engine.register_fn("polling_condition", move |f: FnPtr| m(f, &Map::new()));
    engine.register_fn("polling_condition", move |f: FnPtr, o: Map| make(f, &o));

    engine.register_fn(
        "during",
        |nc: NativeCallContext, cond: &mut PollingCondition, body: FnPtr| -> R<Dynamic> {
            let cond = cond.clone();
            // Checked before each machine command of this flow while the
            // block runs, with that command's call context.
            let check: DueCheck = Arc::new(move |nc| {
                if cond.check(nc, false) {
                    Ok(())
                } else {
                    Err(err(format!(
                        "Polling condition failed: {}",
                        cond.description()
                    )))
                }
            });
            Flow::of(&nc).during(check, || body.call_within_context::<Dynamic>(&nc, ()))
        },
    );

    fn wait(nc: &NativeCallContext, c: &ScriptContext, cond: &PollingCondition, t: f64) -> R<()> {
        let started = Instant::now();
        let description = cond.description();
        let flow = Flow::of(nc);
        flow.log(&c.reporter, None, format!("waiting for {description}"));
        while started.elapsed().as_secs_f64() < t {
            if cond.check(nc, true) {
                return Ok(());
            }
            flow.log(
                &c.reporter,
                None,
                format!("({description} failure not fatal yet)"),
            );
            sleep_until_cancelled(&c.cancel, 1.0)?;
        }
        if cond.check(nc, true) {
            return Ok(());
        }
        Err(err(format!(
            "polling condition {description:?}: action timed out after {:.2} seconds (timeout={t})",
            started.elapsed().as_secs_f64()
        )))
    }
    let c = ctx.clone();
    engine.register_fn(
        "wait",
        move |nc: NativeCallContext, cond: &mut PollingCondition| {
            wait(&nc, &c, cond, DEFAULT_TIMEOUT)
        },
    );
    let c = ctx;
    engine.register_fn(
        "wait",
        move |nc: NativeCallContext, cond: &mut PollingCondition, o: Dynamic| -> R<()> {
            let t = if o.is_map() {
                timeout_of(&o.cast::<Map>(), DEFAULT_TIMEOUT)?.as_secs_f64()
            } else {
                secs(&o, "timeout")?
            };
            wait(&nc, &c, cond, t)
        },
    );
    engine.register_fn(
        "check",
        |nc: NativeCallContext, cond: &mut PollingCondition| -> bool { cond.check(&nc, true) },
    );
}
