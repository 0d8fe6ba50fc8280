//! The rest of the NixOS driver's API, under its names: QEMU's monitor and
//! QMP events, OCR variants, `switch_root`, the machine's directories,
//! `nested`, the NixOS form of `retry`, `serial_stdout_on`/`_off` and
//! `create_machine` (which attest refuses with the reason).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Array, Dynamic, Engine, FnPtr, Map, NativeCallContext};

use super::bindings::{backend, in_section, op, screen_texts};
use super::common::{err, first_line, opts, secs, sleep_until_cancelled, timeout_of, truthy, R};
use super::ScriptContext;
use crate::backend::BackendOp;
use crate::machine::{Machine, DEFAULT_TIMEOUT};

/// NixOS `wait_for_qmp_event`'s default: ten minutes.
const QMP_EVENT_TIMEOUT: f64 = 600.0;

/// Registers the functions.
pub fn register(engine: &mut Engine, ctx: Arc<ScriptContext>) {
    register_machine(engine, &ctx);
    register_globals(engine, ctx);
}

fn register_machine(engine: &mut Engine, ctx: &Arc<ScriptContext>) {
    engine.register_fn(
        "send_monitor_command",
        |nc: NativeCallContext, m: &mut Machine, c: &str| {
            backend(&nc, m, BackendOp::MonitorCommand(c.into()))
        },
    );
    fn qmp_event(nc: &NativeCallContext, m: &Machine, filter: &FnPtr, timeout: f64) -> R<Map> {
        let deadline = Instant::now() + Duration::from_secs_f64(timeout);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(err(format!(
                    "machine {}: wait_for_qmp_event: no matching event within {timeout} seconds",
                    m.name()
                )));
            }
            let json = backend(nc, m, BackendOp::QmpEvent(left))?;
            let event: Dynamic = serde_json::from_str(&json)
                .map_err(|e| err(format!("wait_for_qmp_event: bad event {json}: {e}")))?;
            let event = event
                .try_cast::<Map>()
                .ok_or_else(|| err(format!("wait_for_qmp_event: not an event: {json}")))?;
            let wanted = filter.call_within_context::<Dynamic>(nc, (event.clone(),))?;
            if wanted.as_bool().unwrap_or(false) {
                return Ok(event);
            }
        }
    }
    engine.register_fn(
        "wait_for_qmp_event",
        |nc: NativeCallContext, m: &mut Machine, f: FnPtr| qmp_event(&nc, m, &f, QMP_EVENT_TIMEOUT),
    );
    engine.register_fn(
        "wait_for_qmp_event",
        |nc: NativeCallContext, m: &mut Machine, f: FnPtr, t: Dynamic| {
            let t = if t.is_map() {
                timeout_of(&t.cast::<Map>(), QMP_EVENT_TIMEOUT)?.as_secs_f64()
            } else {
                secs(&t, "timeout")?
            };
            qmp_event(&nc, m, &f, t)
        },
    );
    // NixOS: the raw screenshot's reading and its preprocessed variants'.
    engine.register_fn(
        "get_screen_text_variants",
        |nc: NativeCallContext, m: &mut Machine| -> R<Array> {
            Ok(screen_texts(&nc, m, true)?
                .into_iter()
                .map(Dynamic::from)
                .collect())
        },
    );
    fn switch_root(nc: &NativeCallContext, m: &Machine, opts: &Map) -> R<()> {
        let t = timeout_of(opts, DEFAULT_TIMEOUT)?;
        let mm = m.clone();
        op(nc, m, "switching root".into(), async move {
            mm.switch_root(t).await
        })
    }
    engine.register_fn("switch_root", |nc: NativeCallContext, m: &mut Machine| {
        switch_root(&nc, m, &Map::new())
    });
    engine.register_fn(
        "switch_root",
        |nc: NativeCallContext, m: &mut Machine, o: Dynamic| switch_root(&nc, m, &opts(o)?),
    );

    engine.register_get("state_dir", |m: &mut Machine| {
        m.state_dir().display().to_string()
    });
    let out = ctx.out_dir().display().to_string();
    engine.register_get("out_dir", move |_: &mut Machine| out.clone());
    engine.register_get("shared_dir", |m: &mut Machine| -> R<String> {
        Err(err(format!(
            "machine {}: shared_dir: attest shares no directory with its machines \
             (NixOS mounts one at /tmp/shared); use copy_from_host and copy_from_machine",
            m.name()
        )))
    });
    engine.register_fn(
        "nested",
        |nc: NativeCallContext, m: &mut Machine, msg: &str, f: FnPtr| -> R<Dynamic> {
            in_section(m.reporter(), msg, Some(m.name()), false, &nc, &f)
        },
    );
}

fn register_globals(engine: &mut Engine, ctx: Arc<ScriptContext>) {
    let c = ctx.clone();
    engine.register_fn(
        "nested",
        move |nc: NativeCallContext, msg: &str, f: FnPtr| -> R<Dynamic> {
            in_section(&c.reporter, msg, None, false, &nc, &f)
        },
    );

    // NixOS `retry(fn, timeout_seconds=900)`: `fn(last_try)` is called once
    // a second until it returns something true (Python's truth: a function
    // that ends without returning, `()`, is false); the last call gets `true`.
    fn retry(nc: &NativeCallContext, c: &ScriptContext, f: &FnPtr, timeout: f64) -> R<()> {
        let started = Instant::now();
        let call =
            |last: bool| -> R<bool> { Ok(truthy(&f.call_within_context::<Dynamic>(nc, (last,))?)) };
        while started.elapsed().as_secs_f64() < timeout {
            if call(false)? {
                return Ok(());
            }
            sleep_until_cancelled(&c.cancel, 1.0)?;
        }
        if call(true)? {
            return Ok(());
        }
        Err(err(format!(
            "retry: action timed out after {:.2} seconds (timeout={timeout})",
            started.elapsed().as_secs_f64()
        )))
    }
    let c = ctx.clone();
    engine.register_fn("retry", move |nc: NativeCallContext, f: FnPtr| {
        retry(&nc, &c, &f, DEFAULT_TIMEOUT)
    });
    let c = ctx.clone();
    engine.register_fn(
        "retry",
        move |nc: NativeCallContext, f: FnPtr, t: Dynamic| -> R<()> {
            let t = secs(&t, "timeout")?;
            retry(&nc, &c, &f, t)
        },
    );

    let c = ctx.clone();
    engine.register_fn("serial_stdout_on", move || {
        c.reporter.set_show_console(true)
    });
    let c = ctx;
    engine.register_fn("serial_stdout_off", move || {
        c.reporter.set_show_console(false)
    });
    engine.register_fn("create_machine", |start_command: Dynamic| -> R<()> {
        Err(err(format!(
            "create_machine({}): attest's machines come from the test config \
             (their network, state and teardown are set up before the script runs); \
             add a node there instead",
            first_line(&start_command.to_string())
        )))
    });
    engine.register_fn(
        "create_machine",
        |start_command: Dynamic, _opts: Map| -> R<()> {
            Err(err(format!(
                "create_machine({}): attest's machines come from the test config; add a node there instead",
                first_line(&start_command.to_string())
            )))
        },
    );
}
