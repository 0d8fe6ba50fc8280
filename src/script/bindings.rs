//! The script API: machine methods (also callable as functions,
//! `succeed(server, "…")`) and globals. Bindings only parse arguments and
//! call [`Machine`]; each call is a log section with its duration.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{
    Array, Dynamic, Engine, EvalAltResult, FnPtr, ImmutableString, Map, NativeCallContext, Position,
};

use super::common::{err, first_line, opts, secs, sleep_until_cancelled, timeout_of, R};
use super::flow::Flow;
use super::thrown::{error_text, thrown};
use super::ScriptContext;
use crate::backend::BackendOp;
use crate::machine::{Machine, MachineError, DEFAULT_TIMEOUT};

/// The most commands one `succeed(…)`/`fail(…)` call takes as arguments
/// (an array takes any number).
pub const MAX_COMMANDS: usize = 16;

/// Runs a machine operation from the script thread as a log section, after
/// the polling conditions that are due (as NixOS checks them before each
/// command).
pub(super) fn op<T: Send + 'static>(
    nc: &NativeCallContext,
    m: &Machine,
    label: String,
    fut: impl Future<Output = Result<T, MachineError>> + Send + 'static,
) -> R<T> {
    let flow = Flow::of(nc);
    flow.check_due(nc)?;
    flow.in_section(m.reporter(), &label, Some(m.name()), false, || {
        m.block_on(crate::report::within(flow.section(), fut))
    })
    .map_err(thrown)
}

fn opt_bool(opts: &Map, key: &str, default: bool) -> R<bool> {
    match opts.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .map_err(|t| err(format!("option `{key}` must be true or false, not {t}"))),
    }
}

/// A port or tty number given as a number or a string (`"8080"`), as NixOS
/// scripts pass either.
fn number_arg<T: TryFrom<i64>>(v: &Dynamic, what: &str) -> R<T> {
    let n = match v.as_int() {
        Ok(n) => Some(n),
        Err(_) => v
            .clone()
            .into_string()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok()),
    };
    n.and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| err(format!("{what} must be a number, not {v}")))
}

/// An optional user as NixOS takes it positionally: a name, or `()`
/// (Python's `None`, as in `wait_for_unit("x", None, 30)`).
fn user_arg(v: &Dynamic) -> R<Option<String>> {
    if v.is_unit() {
        return Ok(None);
    }
    v.clone()
        .into_string()
        .map(Some)
        .map_err(|t| err(format!("user must be a string or () for none, not {t}")))
}

fn opt_str(opts: &Map, key: &str) -> Option<String> {
    opts.get(key).and_then(|v| v.clone().into_string().ok())
}

fn output_map(out: &crate::guest::CommandOutput) -> Map {
    let mut m = Map::new();
    m.insert("status".into(), Dynamic::from_int(out.status as i64));
    m.insert("stdout".into(), out.stdout_text().into());
    // NixOS `execute` returns `(status, output)`; `output` is its stdout.
    m.insert("output".into(), out.stdout_text().into());
    m.insert("stderr".into(), out.stderr_text().into());
    m
}

fn strings(a: &Array) -> R<Vec<String>> {
    a.iter()
        .map(|v| {
            v.clone()
                .into_string()
                .map_err(|t| err(format!("expected a string, got {t}")))
        })
        .collect()
}

/// Registers every function of the script API.
pub fn register(engine: &mut Engine, ctx: Arc<ScriptContext>) {
    engine.register_type_with_name::<Machine>("Machine");
    engine.register_get("name", |m: &mut Machine| m.name().to_owned());
    engine.register_fn("to_string", |m: &mut Machine| {
        format!("Machine({})", m.name())
    });
    engine.register_fn("to_debug", |m: &mut Machine| {
        format!("Machine({})", m.name())
    });

    register_lifecycle(engine);
    register_commands(engine);
    register_waits(engine);
    register_systemd(engine);
    register_files(engine, ctx.clone());
    register_backend_ops(engine);
    register_globals(engine, ctx.clone());
    super::helpers::register(engine);
}

fn register_lifecycle(engine: &mut Engine) {
    engine.register_fn("start", |nc: NativeCallContext, m: &mut Machine| {
        let mm = m.clone();
        op(&nc, m, "starting".into(), async move { mm.start().await })
    });
    // NixOS `start(allow_reboot=False)`: without it, a reboot (`reboot()`
    // or from inside) ends the machine, as QEMU's -no-reboot does there.
    engine.register_fn(
        "start",
        |nc: NativeCallContext, m: &mut Machine, o: Dynamic| {
            let o = match o.as_bool() {
                Ok(b) => Map::from_iter([("allow_reboot".into(), b.into())]),
                Err(_) => opts(o)?,
            };
            timeout_of(&o, DEFAULT_TIMEOUT)?;
            let allow_reboot = opt_bool(&o, "allow_reboot", false)?;
            let mm = m.clone();
            op(&nc, m, "starting".into(), async move {
                mm.start_with(allow_reboot).await
            })
        },
    );
    engine.register_fn("shutdown", |nc: NativeCallContext, m: &mut Machine| {
        let mm = m.clone();
        op(&nc, m, "shutting down".into(), async move {
            mm.shutdown(Duration::from_secs(300)).await
        })
    });
    engine.register_fn("crash", |nc: NativeCallContext, m: &mut Machine| {
        let mm = m.clone();
        op(&nc, m, "crashing".into(), async move { mm.crash().await })
    });
    engine.register_fn("reboot", |nc: NativeCallContext, m: &mut Machine| {
        let mm = m.clone();
        op(&nc, m, "rebooting".into(), async move {
            mm.backend_op(BackendOp::Reboot).await.map(drop)
        })
    });
    engine.register_fn(
        "wait_for_shutdown",
        |nc: NativeCallContext, m: &mut Machine| {
            let mm = m.clone();
            op(
                &nc,
                m,
                "waiting for the machine to shut down".into(),
                async move {
                    mm.wait_for_shutdown(Duration::from_secs_f64(DEFAULT_TIMEOUT))
                        .await
                },
            )
        },
    );
    engine.register_fn("is_up", |m: &mut Machine| {
        m.state() == crate::machine::MachineState::Up
    });
}

fn register_commands(engine: &mut Engine) {
    fn execute(nc: &NativeCallContext, m: &Machine, cmd: String, opts: &Map) -> R<Map> {
        let t = timeout_of(opts, DEFAULT_TIMEOUT)?;
        let check_return = opt_bool(opts, "check_return", true)?;
        let check_output = opt_bool(opts, "check_output", true)?;
        let mm = m.clone();
        let out = op(nc, m, format!("executing `{cmd}`"), async move {
            mm.execute_unchecked(&cmd, check_return, check_output, t)
                .await
        })?;
        Ok(output_map(&out))
    }
    engine.register_fn(
        "execute",
        |nc: NativeCallContext, m: &mut Machine, c: &str| execute(&nc, m, c.into(), &Map::new()),
    );
    engine.register_fn(
        "execute",
        |nc: NativeCallContext, m: &mut Machine, c: &str, o: Dynamic| {
            execute(&nc, m, c.into(), &opts(o)?)
        },
    );
    // NixOS `execute(command, check_return=True, check_output=True, timeout=900)`.
    fn checks(check_return: bool, check_output: bool, timeout: Dynamic) -> R<Map> {
        let mut o = opts(timeout)?;
        o.insert("check_return".into(), check_return.into());
        o.insert("check_output".into(), check_output.into());
        Ok(o)
    }
    engine.register_fn(
        "execute",
        |nc: NativeCallContext, m: &mut Machine, c: &str, r: bool| {
            execute(&nc, m, c.into(), &checks(r, true, Dynamic::UNIT)?)
        },
    );
    engine.register_fn(
        "execute",
        |nc: NativeCallContext, m: &mut Machine, c: &str, r: bool, o: bool| {
            execute(&nc, m, c.into(), &checks(r, o, Dynamic::UNIT)?)
        },
    );
    engine.register_fn(
        "execute",
        |nc: NativeCallContext, m: &mut Machine, c: &str, r: bool, o: bool, t: Dynamic| {
            execute(&nc, m, c.into(), &checks(r, o, t)?)
        },
    );

    fn succeed(
        nc: &NativeCallContext,
        m: &Machine,
        cmds: Vec<String>,
        opts: &Map,
        expect_success: bool,
    ) -> R<String> {
        let t = timeout_of(opts, DEFAULT_TIMEOUT)?;
        let mm = m.clone();
        let verb = if expect_success {
            "must succeed"
        } else {
            "must fail"
        };
        op(nc, m, format!("{verb}: {}", cmds.join("; ")), async move {
            if expect_success {
                mm.succeed(&cmds, t).await
            } else {
                mm.fail(&cmds, t).await
            }
        })
    }
    // Any number of commands, as NixOS `succeed(*commands, timeout=None)`,
    // with or without a trailing options map.
    for (name, ok) in [("succeed", true), ("fail", false)] {
        for n in 1..=MAX_COMMANDS {
            for with_opts in [false, true] {
                let mut types = vec![TypeId::of::<Machine>()];
                types.extend(std::iter::repeat_n(TypeId::of::<ImmutableString>(), n));
                if with_opts {
                    types.push(TypeId::of::<Map>());
                }
                engine.register_raw_fn(name, types, move |nc, args| {
                    let m = args[0].clone_cast::<Machine>();
                    let cmds: Vec<String> = args[1..=n]
                        .iter()
                        .map(|a| a.clone_cast::<ImmutableString>().to_string())
                        .collect();
                    let opts = if with_opts {
                        args[n + 1].clone_cast::<Map>()
                    } else {
                        Map::new()
                    };
                    succeed(&nc, &m, cmds, &opts, ok)
                });
            }
        }
        engine.register_fn(
            name,
            move |nc: NativeCallContext, m: &mut Machine, a: Array| {
                succeed(&nc, m, strings(&a)?, &Map::new(), ok)
            },
        );
        engine.register_fn(
            name,
            move |nc: NativeCallContext, m: &mut Machine, a: Array, o: Map| {
                succeed(&nc, m, strings(&a)?, &o, ok)
            },
        );
    }

    fn wait_until(
        nc: &NativeCallContext,
        m: &Machine,
        cmd: String,
        opts: &Map,
        succeeds: bool,
    ) -> R<String> {
        let t = timeout_of(opts, DEFAULT_TIMEOUT)?;
        let mm = m.clone();
        let label = format!(
            "waiting for `{cmd}` to {}",
            if succeeds { "succeed" } else { "fail" }
        );
        op(nc, m, label, async move {
            if succeeds {
                mm.wait_until_succeeds(&cmd, t).await
            } else {
                mm.wait_until_fails(&cmd, t).await
            }
        })
    }
    for (name, s) in [("wait_until_succeeds", true), ("wait_until_fails", false)] {
        engine.register_fn(
            name,
            move |nc: NativeCallContext, m: &mut Machine, c: &str| {
                wait_until(&nc, m, c.into(), &Map::new(), s)
            },
        );
        engine.register_fn(
            name,
            move |nc: NativeCallContext, m: &mut Machine, c: &str, o: Dynamic| {
                wait_until(&nc, m, c.into(), &opts(o)?, s)
            },
        );
    }

    engine.register_fn(
        "sleep",
        |nc: NativeCallContext, m: &mut Machine, s: Dynamic| {
            let d = secs(&s, "sleep")?;
            Flow::of(&nc).log(
                m.reporter(),
                Some(m.name()),
                format!("sleeping {d} seconds"),
            );
            sleep_cancellable(m, d)
        },
    );
    engine.register_fn(
        "log",
        |nc: NativeCallContext, m: &mut Machine, msg: &str| {
            Flow::of(&nc).log(m.reporter(), Some(m.name()), msg)
        },
    );
}

fn sleep_cancellable(m: &Machine, seconds: f64) -> R<()> {
    let cancel = m.cancel().clone();
    let name = m.name().to_owned();
    m.block_on(async move {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))) => Ok(()),
            reason = cancel.cancelled() => Err(MachineError::Cancelled { machine: name, reason: Some(reason) }),
        }
    })
    .map_err(thrown)
}

fn register_waits(engine: &mut Engine) {
    fn port(nc: &NativeCallContext, m: &Machine, port: Dynamic, opts: &Map, open: bool) -> R<()> {
        let t = timeout_of(opts, DEFAULT_TIMEOUT)?;
        let port: u16 = number_arg(&port, "port")?;
        let addr = opt_str(opts, "addr").unwrap_or_else(|| "localhost".into());
        let mm = m.clone();
        let label = format!(
            "waiting for TCP port {port} on {addr} to be {}",
            if open { "open" } else { "closed" }
        );
        op(nc, m, label, async move {
            mm.wait_for_port(port, &addr, open, t).await
        })
    }
    for (name, open) in [
        ("wait_for_open_port", true),
        ("wait_for_closed_port", false),
    ] {
        engine.register_fn(
            name,
            move |nc: NativeCallContext, m: &mut Machine, p: Dynamic| {
                port(&nc, m, p, &Map::new(), open)
            },
        );
        engine.register_fn(
            name,
            move |nc: NativeCallContext, m: &mut Machine, p: Dynamic, o: Dynamic| {
                port(&nc, m, p, &opts(o)?, open)
            },
        );
        engine.register_fn(
            name,
            move |nc: NativeCallContext, m: &mut Machine, p: Dynamic, addr: &str| {
                let mut o = Map::new();
                o.insert("addr".into(), addr.into());
                port(&nc, m, p, &o, open)
            },
        );
        engine.register_fn(
            name,
            move |nc: NativeCallContext, m: &mut Machine, p: Dynamic, addr: &str, o: Dynamic| {
                let mut o = opts(o)?;
                o.insert("addr".into(), addr.into());
                port(&nc, m, p, &o, open)
            },
        );
    }

    fn unix_socket(nc: &NativeCallContext, m: &Machine, path: String, opts: &Map) -> R<()> {
        let t = timeout_of(opts, DEFAULT_TIMEOUT)?;
        let dgram = opts
            .get("is_datagram")
            .and_then(|v| v.as_bool().ok())
            .unwrap_or(false);
        let mm = m.clone();
        op(
            nc,
            m,
            format!("waiting for unix socket {path}"),
            async move { mm.wait_for_open_unix_socket(&path, dgram, t).await },
        )
    }
    engine.register_fn(
        "wait_for_open_unix_socket",
        |nc: NativeCallContext, m: &mut Machine, p: &str| {
            unix_socket(&nc, m, p.into(), &Map::new())
        },
    );
    engine.register_fn(
        "wait_for_open_unix_socket",
        |nc: NativeCallContext, m: &mut Machine, p: &str, o: Dynamic| {
            unix_socket(&nc, m, p.into(), &opts(o)?)
        },
    );
    // NixOS `wait_for_open_unix_socket(addr, is_datagram=False, timeout=900)`.
    engine.register_fn(
        "wait_for_open_unix_socket",
        |nc: NativeCallContext, m: &mut Machine, p: &str, dgram: bool| {
            let o = Map::from_iter([("is_datagram".into(), dgram.into())]);
            unix_socket(&nc, m, p.into(), &o)
        },
    );
    engine.register_fn(
        "wait_for_open_unix_socket",
        |nc: NativeCallContext, m: &mut Machine, p: &str, dgram: bool, t: Dynamic| {
            let mut o = opts(t)?;
            o.insert("is_datagram".into(), dgram.into());
            unix_socket(&nc, m, p.into(), &o)
        },
    );

    fn file(nc: &NativeCallContext, m: &Machine, path: String, opts: &Map) -> R<()> {
        let t = timeout_of(opts, DEFAULT_TIMEOUT)?;
        let mm = m.clone();
        op(nc, m, format!("waiting for file {path}"), async move {
            mm.wait_for_file(&path, t).await
        })
    }
    engine.register_fn(
        "wait_for_file",
        |nc: NativeCallContext, m: &mut Machine, p: &str| file(&nc, m, p.into(), &Map::new()),
    );
    engine.register_fn(
        "wait_for_file",
        |nc: NativeCallContext, m: &mut Machine, p: &str, o: Dynamic| {
            file(&nc, m, p.into(), &opts(o)?)
        },
    );

    fn console(nc: &NativeCallContext, m: &Machine, re: String, opts: &Map) -> R<String> {
        let t = timeout_of(opts, DEFAULT_TIMEOUT)?;
        let mm = m.clone();
        op(
            nc,
            m,
            format!("waiting for {re:?} on the console"),
            async move { mm.wait_for_console_text(&re, t).await },
        )
    }
    engine.register_fn(
        "wait_for_console_text",
        |nc: NativeCallContext, m: &mut Machine, r: &str| console(&nc, m, r.into(), &Map::new()),
    );
    engine.register_fn(
        "wait_for_console_text",
        |nc: NativeCallContext, m: &mut Machine, r: &str, o: Dynamic| {
            console(&nc, m, r.into(), &opts(o)?)
        },
    );
    engine.register_fn("get_console_log", |m: &mut Machine| m.console().text());
}

fn register_systemd(engine: &mut Engine) {
    fn unit(nc: &NativeCallContext, m: &Machine, unit: String, opts: &Map) -> R<()> {
        let t = timeout_of(opts, DEFAULT_TIMEOUT)?;
        let user = opt_str(opts, "user");
        let mm = m.clone();
        op(nc, m, format!("waiting for unit {unit}"), async move {
            mm.wait_for_unit(&unit, user.as_deref(), t).await
        })
    }
    engine.register_fn(
        "wait_for_unit",
        |nc: NativeCallContext, m: &mut Machine, u: &str| unit(&nc, m, u.into(), &Map::new()),
    );
    engine.register_fn(
        "wait_for_unit",
        |nc: NativeCallContext, m: &mut Machine, u: &str, o: Dynamic| {
            unit(&nc, m, u.into(), &opts(o)?)
        },
    );
    engine.register_fn(
        "wait_for_unit",
        |nc: NativeCallContext, m: &mut Machine, u: &str, user: &str| {
            let mut o = Map::new();
            o.insert("user".into(), user.into());
            unit(&nc, m, u.into(), &o)
        },
    );
    engine.register_fn(
        "wait_for_unit",
        |nc: NativeCallContext, m: &mut Machine, u: &str, user: Dynamic, o: Dynamic| {
            let mut o = opts(o)?;
            if let Some(user) = user_arg(&user)? {
                o.insert("user".into(), user.into());
            }
            unit(&nc, m, u.into(), &o)
        },
    );

    fn systemctl(
        nc: &NativeCallContext,
        m: &Machine,
        args: String,
        user: Option<String>,
    ) -> R<Map> {
        let mm = m.clone();
        let out = op(nc, m, format!("systemctl {args}"), async move {
            mm.systemctl(&args, user.as_deref()).await
        })?;
        Ok(output_map(&out))
    }
    engine.register_fn(
        "systemctl",
        |nc: NativeCallContext, m: &mut Machine, a: &str| systemctl(&nc, m, a.into(), None),
    );
    engine.register_fn(
        "systemctl",
        |nc: NativeCallContext, m: &mut Machine, a: &str, u: Dynamic| {
            systemctl(&nc, m, a.into(), user_arg(&u)?)
        },
    );
    for (name, verb) in [("start_job", "start"), ("stop_job", "stop")] {
        engine.register_fn(
            name,
            move |nc: NativeCallContext, m: &mut Machine, unit: &str| {
                systemctl(
                    &nc,
                    m,
                    format!("{verb} {}", crate::shell::quote(unit)),
                    None,
                )
            },
        );
        engine.register_fn(
            name,
            move |nc: NativeCallContext, m: &mut Machine, unit: &str, u: Dynamic| {
                systemctl(
                    &nc,
                    m,
                    format!("{verb} {}", crate::shell::quote(unit)),
                    user_arg(&u)?,
                )
            },
        );
    }

    fn info(nc: &NativeCallContext, m: &Machine, unit: String, user: Option<String>) -> R<Map> {
        let mm = m.clone();
        let props: BTreeMap<String, String> =
            op(nc, m, format!("getting info of unit {unit}"), async move {
                mm.get_unit_info(&unit, user.as_deref()).await
            })?;
        Ok(props
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect())
    }
    engine.register_fn(
        "get_unit_info",
        |nc: NativeCallContext, m: &mut Machine, u: &str| info(&nc, m, u.into(), None),
    );
    engine.register_fn(
        "get_unit_info",
        |nc: NativeCallContext, m: &mut Machine, u: &str, user: Dynamic| {
            info(&nc, m, u.into(), user_arg(&user)?)
        },
    );

    fn property(
        nc: &NativeCallContext,
        m: &Machine,
        unit: String,
        prop: String,
        user: Option<String>,
    ) -> R<String> {
        let mm = m.clone();
        op(
            nc,
            m,
            format!("getting {prop} of unit {unit}"),
            async move { mm.get_unit_property(&unit, &prop, user.as_deref()).await },
        )
    }
    engine.register_fn(
        "get_unit_property",
        |nc: NativeCallContext, m: &mut Machine, u: &str, p: &str| {
            property(&nc, m, u.into(), p.into(), None)
        },
    );
    engine.register_fn(
        "get_unit_property",
        |nc: NativeCallContext, m: &mut Machine, u: &str, p: &str, user: Dynamic| {
            property(&nc, m, u.into(), p.into(), user_arg(&user)?)
        },
    );

    fn require(
        nc: &NativeCallContext,
        m: &Machine,
        unit: String,
        state: String,
        user: Option<String>,
    ) -> R<()> {
        let mm = m.clone();
        op(
            nc,
            m,
            format!("checking that unit {unit} is {state}"),
            async move { mm.require_unit_state(&unit, &state, user.as_deref()).await },
        )
    }
    engine.register_fn(
        "require_unit_state",
        |nc: NativeCallContext, m: &mut Machine, u: &str| {
            require(&nc, m, u.into(), "active".into(), None)
        },
    );
    engine.register_fn(
        "require_unit_state",
        |nc: NativeCallContext, m: &mut Machine, u: &str, s: &str| {
            require(&nc, m, u.into(), s.into(), None)
        },
    );
    engine.register_fn(
        "require_unit_state",
        |nc: NativeCallContext, m: &mut Machine, u: &str, s: &str, user: Dynamic| {
            require(&nc, m, u.into(), s.into(), user_arg(&user)?)
        },
    );

    fn journal(nc: &NativeCallContext, m: &Machine, unit: Option<String>, lines: i64) -> R<String> {
        let mm = m.clone();
        let lines = u32::try_from(lines).map_err(|_| err("lines must be positive"))?;
        op(nc, m, "reading the journal".into(), async move {
            mm.journal(unit.as_deref(), lines).await
        })
    }
    engine.register_fn("journal", |nc: NativeCallContext, m: &mut Machine| {
        journal(&nc, m, None, 30)
    });
    engine.register_fn(
        "journal",
        |nc: NativeCallContext, m: &mut Machine, u: &str| journal(&nc, m, Some(u.into()), 30),
    );
    engine.register_fn(
        "journal",
        |nc: NativeCallContext, m: &mut Machine, u: &str, n: i64| {
            journal(&nc, m, Some(u.into()), n)
        },
    );
    engine.register_fn(
        "journal",
        |nc: NativeCallContext, m: &mut Machine, o: Map| {
            let lines = o.get("lines").and_then(|v| v.as_int().ok()).unwrap_or(30);
            journal(&nc, m, opt_str(&o, "unit"), lines)
        },
    );
}

fn register_files(engine: &mut Engine, ctx: Arc<ScriptContext>) {
    let base = ctx.base_dir.clone();
    for name in ["copy_from_host", "copy_from_host_via_shell"] {
        let base = base.clone();
        engine.register_fn(
            name,
            move |nc: NativeCallContext, m: &mut Machine, src: &str, dst: &str| {
                let mm = m.clone();
                let src = base.join(src);
                let dst = dst.to_owned();
                op(
                    &nc,
                    m,
                    format!("copying {} to {dst}", src.display()),
                    async move { mm.copy_from_host(&src, &dst).await },
                )
            },
        );
    }
    let out_dir = std::env::var_os("out")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| ctx.base_dir.clone());
    let shots_dir = out_dir.clone();
    engine.register_fn(
        "guest_screenshot",
        move |nc: NativeCallContext, m: &mut Machine, dst: &str| {
            let mm = m.clone();
            let dst = shots_dir.join(dst);
            op(
                &nc,
                m,
                format!("taking a screenshot inside the guest to {}", dst.display()),
                async move { mm.guest_screenshot(&dst).await },
            )
        },
    );
    // NixOS: copy_from_vm(source, target_dir = "") puts the file at
    // $out/target_dir/<basename of source>.
    fn copy_from_vm(
        nc: &NativeCallContext,
        m: &Machine,
        out_dir: &std::path::Path,
        src: &str,
        dir: &str,
    ) -> R<()> {
        let mm = m.clone();
        let dst = crate::machine::copy_from_vm_target(out_dir, src, dir);
        let src = src.to_owned();
        op(
            nc,
            m,
            format!("copying {src} to {}", dst.display()),
            async move { mm.copy_from_machine(&src, &dst).await },
        )
    }
    for name in ["copy_from_machine", "copy_from_vm"] {
        let out = out_dir.clone();
        engine.register_fn(
            name,
            move |nc: NativeCallContext, m: &mut Machine, src: &str| {
                copy_from_vm(&nc, m, &out, src, "")
            },
        );
        let out = out_dir.clone();
        engine.register_fn(
            name,
            move |nc: NativeCallContext, m: &mut Machine, src: &str, dir: &str| {
                copy_from_vm(&nc, m, &out, src, dir)
            },
        );
    }
}

/// Runs a backend operation as a log section named after it.
pub(super) fn backend(nc: &NativeCallContext, m: &Machine, o: BackendOp) -> R<String> {
    let mm = m.clone();
    op(nc, m, o.name().replace('_', " "), async move {
        mm.backend_op(o).await
    })
}

/// The screen's text by OCR: the raw reading, then (with `variants`) the
/// preprocessed variants' (NixOS `get_screen_text_variants`).
pub(super) fn screen_texts(nc: &NativeCallContext, m: &Machine, variants: bool) -> R<Vec<String>> {
    let json = backend(nc, m, BackendOp::ScreenText { variants })?;
    let texts: Vec<String> = serde_json::from_str(&json)
        .map_err(|e| err(format!("{}: bad OCR result {json}: {e}", m.name())))?;
    if texts.is_empty() {
        return Err(err(format!("{}: OCR returned no reading", m.name())));
    }
    Ok(texts)
}

fn register_backend_ops(engine: &mut Engine) {
    engine.register_fn(
        "screenshot",
        |nc: NativeCallContext, m: &mut Machine, p: &str| {
            backend(&nc, m, BackendOp::Screenshot(p.into())).map(drop)
        },
    );
    // NixOS `send_key(key, delay=0.01, log=True)`, `send_chars(chars,
    // delay=0.01)`: the delay (seconds, or `()` for none) follows each key.
    fn send_key(
        nc: &NativeCallContext,
        m: &Machine,
        key: &str,
        delay: &Dynamic,
        log: bool,
    ) -> R<()> {
        let delay = delay_of(delay)?;
        let mm = m.clone();
        let o = BackendOp::SendKey(key.into());
        let send = async move { mm.backend_op(o).await };
        if log {
            op(nc, m, format!("sending key {key:?}"), send)?;
        } else {
            m.block_on(send).map_err(thrown)?;
        }
        sleep_cancellable(m, delay)
    }
    fn delay_of(d: &Dynamic) -> R<f64> {
        if d.is_unit() {
            Ok(0.0)
        } else {
            secs(d, "delay")
        }
    }
    engine.register_fn(
        "send_key",
        |nc: NativeCallContext, m: &mut Machine, k: &str| {
            send_key(&nc, m, k, &Dynamic::from_float(0.01), true)
        },
    );
    engine.register_fn(
        "send_key",
        |nc: NativeCallContext, m: &mut Machine, k: &str, d: Dynamic| send_key(&nc, m, k, &d, true),
    );
    engine.register_fn(
        "send_key",
        // NixOS `log: bool | None`: None (`()`) does not log.
        |nc: NativeCallContext, m: &mut Machine, k: &str, d: Dynamic, log: Dynamic| {
            send_key(&nc, m, k, &d, super::common::truthy(&log))
        },
    );
    engine.register_fn(
        "send_chars",
        |nc: NativeCallContext, m: &mut Machine, s: &str| {
            backend(&nc, m, BackendOp::SendChars(s.into())).map(drop)
        },
    );
    engine.register_fn(
        "send_chars",
        |nc: NativeCallContext, m: &mut Machine, s: &str, d: Dynamic| -> R<()> {
            let delay = delay_of(&d)?;
            Flow::of(&nc).log(m.reporter(), Some(m.name()), format!("sending keys {s:?}"));
            for c in s.chars() {
                let mm = m.clone();
                let o = BackendOp::SendChars(c.to_string());
                m.block_on(async move { mm.backend_op(o).await })
                    .map_err(thrown)?;
                sleep_cancellable(m, delay)?;
            }
            Ok(())
        },
    );
    engine.register_fn(
        "send_console",
        |nc: NativeCallContext, m: &mut Machine, s: &str| {
            backend(&nc, m, BackendOp::SendConsole(s.into())).map(drop)
        },
    );
    engine.register_fn("block", |nc: NativeCallContext, m: &mut Machine| {
        backend(&nc, m, BackendOp::Block).map(drop)
    });
    engine.register_fn("unblock", |nc: NativeCallContext, m: &mut Machine| {
        backend(&nc, m, BackendOp::Unblock).map(drop)
    });
    // NixOS `forward_port(host_port=8080, guest_port=80)`.
    fn forward_port(nc: &NativeCallContext, m: &Machine, host: &Dynamic, guest: &Dynamic) -> R<()> {
        let host: u16 = number_arg(host, "host port")?;
        let guest: u16 = number_arg(guest, "guest port")?;
        backend(nc, m, BackendOp::ForwardPort { host, guest }).map(drop)
    }
    engine.register_fn("forward_port", |nc: NativeCallContext, m: &mut Machine| {
        forward_port(&nc, m, &Dynamic::from_int(8080), &Dynamic::from_int(80))
    });
    engine.register_fn(
        "forward_port",
        |nc: NativeCallContext, m: &mut Machine, host: Dynamic| {
            forward_port(&nc, m, &host, &Dynamic::from_int(80))
        },
    );
    engine.register_fn(
        "forward_port",
        |nc: NativeCallContext, m: &mut Machine, host: Dynamic, guest: Dynamic| {
            forward_port(&nc, m, &host, &guest)
        },
    );
    engine.register_fn(
        "snapshot_create",
        |nc: NativeCallContext, m: &mut Machine, d: &str| {
            backend(&nc, m, BackendOp::SnapshotCreate(d.into())).map(drop)
        },
    );
    engine.register_fn(
        "snapshot_restore",
        |nc: NativeCallContext, m: &mut Machine, d: &str| {
            backend(&nc, m, BackendOp::SnapshotRestore(d.into())).map(drop)
        },
    );
    // NixOS: the raw screenshot's reading.
    engine.register_fn(
        "get_screen_text",
        |nc: NativeCallContext, m: &mut Machine| -> R<String> {
            Ok(screen_texts(&nc, m, false)?.swap_remove(0))
        },
    );
    fn wait_for_text(nc: &NativeCallContext, m: &Machine, re: &str, opts: &Map) -> R<()> {
        m.require("wait_for_text").map_err(thrown)?;
        let t = timeout_of(opts, DEFAULT_TIMEOUT)?;
        let re =
            regex::Regex::new(re).map_err(|e| err(format!("wait_for_text: bad regex: {e}")))?;
        let deadline = Instant::now() + t;
        loop {
            // NixOS: any of the variants may match.
            let texts = screen_texts(nc, m, true)?;
            if texts.iter().any(|t| re.is_match(t)) {
                return Ok(());
            }
            let text = texts.join("\n---\n");
            if Instant::now() >= deadline {
                return Err(err(format!(
                    "{}: wait_for_text {:?}: timed out after {} seconds; last screen text:\n{text}",
                    m.name(),
                    re.as_str(),
                    t.as_secs_f64()
                )));
            }
            sleep_cancellable(m, 1.0)?;
        }
    }
    engine.register_fn(
        "wait_for_text",
        |nc: NativeCallContext, m: &mut Machine, r: &str| wait_for_text(&nc, m, r, &Map::new()),
    );
    engine.register_fn(
        "wait_for_text",
        |nc: NativeCallContext, m: &mut Machine, r: &str, o: Dynamic| {
            wait_for_text(&nc, m, r, &opts(o)?)
        },
    );

    // Virtual terminals and X are read through the guest, as the NixOS driver does.
    fn tty_text(nc: &NativeCallContext, m: &Machine, tty: &Dynamic, method: &str) -> R<String> {
        m.require(method).map_err(thrown)?;
        let tty: u32 = number_arg(tty, "tty")?;
        let mm = m.clone();
        // As NixOS: `execute`, not `succeed`: the text read, whatever the
        // status (a tty without a size still gives its unfolded text).
        let out = op(nc, m, format!("reading tty{tty}"), async move {
            mm.execute(
                &format!("fold -w$(stty -F /dev/tty{tty} size | awk '{{print $2}}') /dev/vcs{tty}"),
                Duration::from_secs_f64(DEFAULT_TIMEOUT),
            )
            .await
        })?;
        Ok(out.stdout_text())
    }
    engine.register_fn(
        "get_tty_text",
        |nc: NativeCallContext, m: &mut Machine, tty: Dynamic| {
            tty_text(&nc, m, &tty, "get_tty_text")
        },
    );
    engine.register_fn(
        "dump_tty_contents",
        |nc: NativeCallContext, m: &mut Machine, tty: Dynamic| {
            m.require("dump_tty_contents").map_err(thrown)?;
            let tty: u32 = number_arg(&tty, "tty")?;
            let mm = m.clone();
            op(
                &nc,
                m,
                format!("dumping tty{tty} to the journal"),
                async move {
                    mm.execute(
                        &format!("fold -w 80 /dev/vcs{tty} | systemd-cat"),
                        Duration::from_secs_f64(DEFAULT_TIMEOUT),
                    )
                    .await
                    .map(drop)
                },
            )
        },
    );
    fn tty_matches(
        nc: &NativeCallContext,
        m: &Machine,
        tty: Dynamic,
        re: &str,
        opts: &Map,
    ) -> R<()> {
        let t = timeout_of(opts, DEFAULT_TIMEOUT)?;
        let re = regex::Regex::new(re).map_err(|e| err(format!("bad regex: {e}")))?;
        let deadline = Instant::now() + t;
        loop {
            let text = tty_text(nc, m, &tty, "wait_until_tty_matches")?;
            if re.is_match(&text) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(err(format!(
                    "{}: wait_until_tty_matches tty{tty} {:?}: timed out; tty text:\n{text}",
                    m.name(),
                    re.as_str()
                )));
            }
            sleep_cancellable(m, 1.0)?;
        }
    }
    engine.register_fn(
        "wait_until_tty_matches",
        |nc: NativeCallContext, m: &mut Machine, tty: Dynamic, r: &str| {
            tty_matches(&nc, m, tty, r, &Map::new())
        },
    );
    engine.register_fn(
        "wait_until_tty_matches",
        |nc: NativeCallContext, m: &mut Machine, tty: Dynamic, r: &str, o: Dynamic| {
            tty_matches(&nc, m, tty, r, &opts(o)?)
        },
    );
    fn wait_for_x(nc: &NativeCallContext, m: &Machine, opts: &Map) -> R<()> {
        let t = timeout_of(opts, DEFAULT_TIMEOUT)?;
        let mm = m.clone();
        op(nc, m, "waiting for the X11 server".into(), async move {
            mm.wait_until_succeeds(
                "journalctl -b SYSLOG_IDENTIFIER=systemd | grep -q 'Reached target Current graphical'; \
                 [ -e /tmp/.X11-unix/X0 ]",
                t,
            )
            .await
            .map(drop)
        })
    }
    engine.register_fn("wait_for_x", |nc: NativeCallContext, m: &mut Machine| {
        wait_for_x(&nc, m, &Map::new())
    });
    engine.register_fn(
        "wait_for_x",
        |nc: NativeCallContext, m: &mut Machine, o: Dynamic| wait_for_x(&nc, m, &opts(o)?),
    );
    // The NixOS command, plus DISPLAY=:0 (the backdoor shell has no DISPLAY).
    const WINDOW_NAMES: &str = "DISPLAY=${DISPLAY:-:0} xwininfo -root -tree | sed 's/.*0x[0-9a-f]* \"\\([^\"]*\\)\".*/\\1/; t; d'";
    fn window_names(nc: &NativeCallContext, m: &Machine) -> R<Array> {
        let mm = m.clone();
        let out = op(nc, m, "listing the X11 windows".into(), async move {
            mm.succeed(
                &[WINDOW_NAMES.to_owned()],
                Duration::from_secs_f64(DEFAULT_TIMEOUT),
            )
            .await
        })?;
        Ok(out.lines().map(|l| Dynamic::from(l.to_owned())).collect())
    }
    engine.register_fn(
        "get_window_names",
        |nc: NativeCallContext, m: &mut Machine| window_names(&nc, m),
    );
    fn wait_for_window(nc: &NativeCallContext, m: &Machine, re: &str, opts: &Map) -> R<()> {
        let t = timeout_of(opts, DEFAULT_TIMEOUT)?;
        let cmd = format!("{WINDOW_NAMES} | grep -E {}", crate::shell::quote(re));
        let mm = m.clone();
        op(
            nc,
            m,
            format!("waiting for a window matching {re:?}"),
            async move { mm.wait_until_succeeds(&cmd, t).await.map(drop) },
        )
    }
    engine.register_fn(
        "wait_for_window",
        |nc: NativeCallContext, m: &mut Machine, re: &str| wait_for_window(&nc, m, re, &Map::new()),
    );
    engine.register_fn(
        "wait_for_window",
        |nc: NativeCallContext, m: &mut Machine, re: &str, o: Dynamic| {
            wait_for_window(&nc, m, re, &opts(o)?)
        },
    );
}

fn register_globals(engine: &mut Engine, ctx: Arc<ScriptContext>) {
    let c = ctx.clone();
    engine.register_fn("start_all", move |nc: NativeCallContext| -> R<()> {
        let machines = c.machines.clone();
        Flow::of(&nc)
            .in_section(&c.reporter, "starting all machines", None, false, || {
                let Some(first) = machines.first().cloned() else {
                    return Ok(());
                };
                first.block_on(async move {
                    let mut set = tokio::task::JoinSet::new();
                    for m in machines {
                        set.spawn(async move { m.start().await });
                    }
                    let mut first_err = None;
                    while let Some(r) = set.join_next().await {
                        if let Ok(Err(e)) = r {
                            first_err.get_or_insert(e);
                        }
                    }
                    first_err.map_or(Ok(()), Err)
                })
            })
            .map_err(thrown)
    });
    let c = ctx.clone();
    engine.register_fn("join_all", move |nc: NativeCallContext| -> R<()> {
        for m in &c.machines {
            let mm = m.clone();
            op(
                &nc,
                m,
                "waiting for the machine to shut down".into(),
                async move {
                    mm.wait_for_shutdown(Duration::from_secs_f64(DEFAULT_TIMEOUT))
                        .await
                },
            )?;
        }
        Ok(())
    });
    let c = ctx.clone();
    engine.register_fn("log", move |nc: NativeCallContext, msg: &str| {
        Flow::of(&nc).log(&c.reporter, None, msg)
    });
    let c = ctx.clone();
    // Rhai's core package has a blocking `sleep(INT)`/`sleep(FLOAT)`; these
    // exact-type registrations replace it with one that logs and wakes up
    // when the run is cancelled.
    let c2 = ctx.clone();
    engine.register_fn("sleep", move |nc: NativeCallContext, s: i64| -> R<()> {
        Flow::of(&nc).log(&c2.reporter, None, format!("sleeping {s} seconds"));
        sleep_until_cancelled(&c2.cancel, s as f64)
    });
    engine.register_fn("sleep", move |nc: NativeCallContext, s: f64| -> R<()> {
        Flow::of(&nc).log(&c.reporter, None, format!("sleeping {s} seconds"));
        sleep_until_cancelled(&c.cancel, s)
    });

    let c = ctx.clone();
    engine.register_fn(
        "subtest",
        move |nc: NativeCallContext, name: &str, f: FnPtr| -> R<Dynamic> {
            in_section(&c.reporter, name, None, true, &nc, &f)
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "retry",
        move |nc: NativeCallContext, opts: Map, f: FnPtr| -> R<Dynamic> {
            let attempts = opts
                .get("attempts")
                .and_then(|v| v.as_int().ok())
                .unwrap_or(3)
                .max(1);
            let delay = match opts.get("delay") {
                Some(v) => secs(v, "delay")?,
                None => 1.0,
            };
            let mut last = None;
            for attempt in 1..=attempts {
                match f.call_within_context::<Dynamic>(&nc, ()) {
                    Ok(v) => return Ok(v),
                    Err(mut e) => {
                        if c.cancel.is_cancelled() {
                            return Err(e);
                        }
                        Flow::of(&nc).log(
                            &c.reporter,
                            None,
                            format!(
                                "attempt {attempt}/{attempts} failed: {}",
                                first_line(&error_text(&mut e))
                            ),
                        );
                        last = Some(e);
                        if attempt < attempts {
                            sleep_until_cancelled(&c.cancel, delay)?;
                        }
                    }
                }
            }
            Err(last.unwrap_or_else(|| err("retry: no attempt was made")))
        },
    );
    let c = ctx;
    engine.register_fn(
        "wait_all",
        move |nc: NativeCallContext, machines: Array, f: FnPtr| -> R<Array> {
            let machines: Vec<Machine> = machines
                .into_iter()
                .map(|d| {
                    d.try_cast::<Machine>()
                        .ok_or_else(|| err("wait_all takes an array of machines"))
                })
                .collect::<R<_>>()?;
            let ast = c
                .ast
                .get()
                .cloned()
                .ok_or_else(|| err("wait_all is only available while a test runs"))?;
            let engine = nc.engine();
            // Each machine's closure runs on its own thread, so waits really
            // overlap, as a flow of its own: what it reports nests in the
            // section wait_all runs in.
            let parent = Flow::of(&nc).section();
            let results: Vec<R<Dynamic>> = std::thread::scope(|s| {
                let handles: Vec<_> = machines
                    .iter()
                    .map(|m| {
                        let (f, ast, m) = (f.clone(), ast.clone(), m.clone());
                        s.spawn(move || {
                            let mut global = engine.new_global_runtime_state();
                            global.tag = Flow::nested_in(parent).tag();
                            global.lib.push(ast.shared_lib().clone());
                            let nc = NativeCallContext::new_with_all_fields(
                                engine,
                                f.fn_name(),
                                None,
                                &global,
                                Position::NONE,
                            );
                            f.call_within_context::<Dynamic>(&nc, (m,))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(err("wait_all: a closure panicked")))
                    })
                    .collect()
            });
            let mut out = Array::new();
            let mut failures = Vec::new();
            for (m, r) in machines.iter().zip(results) {
                match r {
                    Ok(v) => out.push(v),
                    // A cancellation ends the whole call as itself, so the
                    // driver still reads why the run was cancelled.
                    Err(e) if super::thrown::cancel_reason(&e).is_some() => return Err(e),
                    Err(mut e) => failures.push(format!("{}: {}", m.name(), error_text(&mut e))),
                }
            }
            if failures.is_empty() {
                Ok(out)
            } else {
                Err(err(format!("wait_all: {}", failures.join("\n"))))
            }
        },
    );

    engine.register_fn("assert_contains", |haystack: &str, needle: &str| -> R<()> {
        if haystack.contains(needle) {
            Ok(())
        } else {
            Err(err(format!(
                "assert_contains: {needle:?} not found in:\n{haystack}"
            )))
        }
    });
    engine.register_fn("assert_matches", |text: &str, re: &str| -> R<()> {
        let r =
            regex::Regex::new(re).map_err(|e| err(format!("assert_matches: bad regex: {e}")))?;
        if r.is_match(text) {
            Ok(())
        } else {
            Err(err(format!(
                "assert_matches: /{re}/ does not match:\n{text}"
            )))
        }
    });
    engine.register_fn("assert_eq", |a: Dynamic, b: Dynamic| -> R<()> {
        if super::helpers::same_value(&a, &b) {
            Ok(())
        } else {
            Err(err(format!(
                "assert_eq: left != right\n  left:  {a:?}\n  right: {b:?}"
            )))
        }
    });
}

/// Calls a script function inside a log section (a JUnit case when
/// `subtest`).
pub(super) fn in_section(
    reporter: &crate::report::Reporter,
    name: &str,
    machine: Option<&str>,
    subtest: bool,
    nc: &NativeCallContext,
    f: &FnPtr,
) -> R<Dynamic> {
    Flow::of(nc)
        .in_section(reporter, name, machine, subtest, || {
            f.call_within_context::<Dynamic>(nc, ())
                .map_err(|mut e| SubtestError(error_text(&mut e), e))
        })
        .map_err(|e| e.1)
}

/// An error that displays as its message, for sections.
struct SubtestError(String, Box<EvalAltResult>);

impl std::fmt::Display for SubtestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
