//! A [`MachineError`] travels through the script as itself: a binding throws
//! it as the value of a Rhai runtime error, `catch (e)` receives it (`${e}`,
//! `e.to_string()` and `e.contains(..)` read its message), a rethrow keeps it,
//! and the driver reads the variant of the error that ended the script instead
//! of parsing its text. A cancellation travels the same way: as the
//! [`CancelReason`] a machine's `Cancelled` error, a cancelled `sleep` or the
//! engine's termination carries.

use rhai::{Dynamic, Engine, EvalAltResult, Position};

use crate::cancel::CancelReason;
use crate::machine::MachineError;
use crate::report::FailureCause;

/// `e` as the error a binding returns.
pub fn thrown(e: MachineError) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(Dynamic::from(e), Position::NONE).into()
}

/// What a script reads of a cancellation that no machine call reported.
const CANCELLED: &str = "cancelled: the test is being torn down";

/// The error a binding returns when the run is cancelled outside any
/// machine call (`sleep`, `retry`'s delay).
pub fn cancelled(reason: CancelReason) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(Dynamic::from(reason), Position::NONE).into()
}

/// Why the run was cancelled, when a cancellation ended the evaluation: a
/// machine's `Cancelled` error, a cancelled `sleep`, or the engine stopping
/// the script at its next step.
pub fn cancel_reason(e: &EvalAltResult) -> Option<CancelReason> {
    match e {
        EvalAltResult::ErrorRuntime(d, _) => match d.read_lock::<MachineError>() {
            Some(m) => match &*m {
                MachineError::Cancelled { reason, .. } => reason.clone(),
                _ => None,
            },
            None => d.read_lock::<CancelReason>().map(|r| r.clone()),
        },
        EvalAltResult::ErrorTerminated(d, _) => d.read_lock::<CancelReason>().map(|r| r.clone()),
        EvalAltResult::ErrorInFunctionCall(_, _, cause, _)
        | EvalAltResult::ErrorInModule(_, cause, _) => cancel_reason(cause),
        _ => None,
    }
}

/// The machine error a script evaluation ended with, looked up through the
/// layers of function and closure calls.
pub fn machine_error(e: &EvalAltResult) -> Option<MachineError> {
    match e {
        EvalAltResult::ErrorRuntime(d, _) => d.read_lock::<MachineError>().map(|m| m.clone()),
        EvalAltResult::ErrorInFunctionCall(_, _, cause, _)
        | EvalAltResult::ErrorInModule(_, cause, _) => machine_error(cause),
        _ => None,
    }
}

/// Calls `f` with `e` as it reads had the binding thrown the machine error's
/// message (`EvalAltResult` is not `Clone`: the message is swapped in and the
/// error swapped back afterwards).
pub fn with_text<T>(e: &mut EvalAltResult, f: impl FnOnce(&EvalAltResult) -> T) -> T {
    let saved = thrown_value(e).and_then(|d| {
        let text = match d.read_lock::<MachineError>() {
            Some(m) => m.to_string(),
            None if d.is::<CancelReason>() => CANCELLED.to_owned(),
            None => return None,
        };
        Some(std::mem::replace(d, text.into()))
    });
    let out = f(e);
    if let (Some(original), Some(d)) = (saved, thrown_value(e)) {
        *d = original;
    }
    out
}

/// `e`'s text, a machine error read as its message.
pub fn error_text(e: &mut EvalAltResult) -> String {
    with_text(e, ToString::to_string)
}

/// The value thrown, below the layers of function and closure calls.
fn thrown_value(e: &mut EvalAltResult) -> Option<&mut Dynamic> {
    match e {
        EvalAltResult::ErrorRuntime(d, _) => Some(d),
        EvalAltResult::ErrorInFunctionCall(_, _, cause, _)
        | EvalAltResult::ErrorInModule(_, cause, _) => thrown_value(cause),
        _ => None,
    }
}

/// What kind of failure ended the script: the variant of the machine error
/// it threw; a script torn down mid-statement was cancelled; anything else
/// is the script's own error.
pub fn failure_cause(e: &EvalAltResult) -> FailureCause {
    if let Some(m) = machine_error(e) {
        return m.cause();
    }
    if cancel_reason(e).is_some() {
        return FailureCause::Cancelled;
    }
    let mut inner = e;
    while let EvalAltResult::ErrorInFunctionCall(_, _, cause, _) = inner {
        inner = cause;
    }
    match inner {
        EvalAltResult::ErrorTerminated(..) => FailureCause::Cancelled,
        _ => FailureCause::Script,
    }
}

/// Lets scripts read a caught machine error as text, as they read one
/// thrown as a string.
pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<MachineError>("MachineError");
    engine.register_fn("to_string", |e: &mut MachineError| e.to_string());
    engine.register_fn("to_debug", |e: &mut MachineError| e.to_string());
    engine.register_fn("contains", |e: &mut MachineError, s: &str| {
        e.to_string().contains(s)
    });
    engine.register_fn("+", |s: &str, e: MachineError| format!("{s}{e}"));
    engine.register_fn("+", |e: MachineError, s: &str| format!("{e}{s}"));
    engine.register_type_with_name::<CancelReason>("Cancelled");
    engine.register_fn("to_string", |_: &mut CancelReason| CANCELLED.to_owned());
    engine.register_fn("to_debug", |_: &mut CancelReason| CANCELLED.to_owned());
    engine.register_fn("contains", |_: &mut CancelReason, s: &str| {
        CANCELLED.contains(s)
    });
    engine.register_fn("+", |s: &str, _: CancelReason| format!("{s}{CANCELLED}"));
    engine.register_fn("+", |_: CancelReason, s: &str| format!("{CANCELLED}{s}"));
}
