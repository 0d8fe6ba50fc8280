//! What the binding modules share: the result type, argument parsing
//! (seconds, timeouts, options maps) and the cancellable sleep. A leaf, so
//! the binding modules depend on it and not on each other.

use std::time::{Duration, Instant};

use rhai::{Array, Dynamic, EvalAltResult, Map, Position};

pub(super) type R<T> = Result<T, Box<EvalAltResult>>;

pub(super) fn err(e: impl std::fmt::Display) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(e.to_string().into(), Position::NONE).into()
}

pub(super) fn secs(v: &Dynamic, what: &str) -> R<f64> {
    if let Ok(i) = v.as_int() {
        return Ok(i as f64);
    }
    v.as_float().map_err(|_| {
        err(format!(
            "{what} must be a number of seconds, not {}",
            v.type_name()
        ))
    })
}

/// The `timeout` of an options map (seconds), or the default.
pub(super) fn timeout_of(opts: &Map, default: f64) -> R<Duration> {
    for k in opts.keys() {
        if ![
            "timeout",
            "user",
            "addr",
            "is_datagram",
            "lines",
            "unit",
            "state",
            "check_return",
            "check_output",
            "allow_reboot",
            "seconds_interval",
            "description",
        ]
        .contains(&k.as_str())
        {
            return Err(err(format!("unknown option `{k}`")));
        }
    }
    // `timeout: ()` is Python's `timeout=None`: the default here.
    let t = match opts.get("timeout").filter(|v| !v.is_unit()) {
        Some(v) => secs(v, "timeout")?,
        None => default,
    };
    if !(t > 0.0 && t.is_finite()) {
        return Err(err(format!("timeout must be positive, not {t}")));
    }
    Ok(Duration::from_secs_f64(t))
}

/// The trailing options of a call: a map (`#{ timeout: 30 }`), or, as NixOS
/// takes `timeout` positionally, a number of seconds; `()` (Python's
/// `None`) is no options.
pub(super) fn opts(o: Dynamic) -> R<Map> {
    if o.is_unit() {
        return Ok(Map::new());
    }
    if o.is_int() || o.is_float() {
        let mut m = Map::new();
        m.insert("timeout".into(), o);
        return Ok(m);
    }
    let t = o.type_name();
    o.try_cast::<Map>().ok_or_else(|| {
        err(format!(
            "expected an options map (#{{ timeout: 30 }}) or a timeout in seconds, not {t}"
        ))
    })
}

/// Sleeps on the calling (script) thread, waking early with an error when
/// the run is cancelled; needs no machine or runtime.
pub(super) fn sleep_until_cancelled(cancel: &crate::cancel::Cancel, seconds: f64) -> R<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
    loop {
        if let Err(reason) = cancel.check() {
            return Err(super::thrown::cancelled(reason));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

pub(super) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Python's truth of a value, for what NixOS tests with `if fn(…)`: `()`
/// (None), `false`, zero and empty strings, arrays and maps are false.
pub(super) fn truthy(v: &Dynamic) -> bool {
    if v.is_unit() {
        false
    } else if let Ok(b) = v.as_bool() {
        b
    } else if let Ok(i) = v.as_int() {
        i != 0
    } else if let Ok(x) = v.as_float() {
        x != 0.0
    } else if let Some(s) = v.read_lock::<rhai::ImmutableString>() {
        !s.is_empty()
    } else if let Some(a) = v.read_lock::<Array>() {
        !a.is_empty()
    } else if let Some(m) = v.read_lock::<Map>() {
        !m.is_empty()
    } else {
        true
    }
}
