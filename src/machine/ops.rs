//! The high-level operations, with the NixOS Python driver's names and
//! semantics (`succeed`, `wait_for_unit`, …), built on [`Machine::execute`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Machine, MachineError, WaitFailure};
use crate::agent::wire::{Retry, Watch};
use crate::guest::CommandOutput;
use crate::shell;

/// Pauses between polls of the `wait_*` family: short at first (a container
/// reaches its targets within a second), growing to the longest, where the
/// NixOS driver polls once a second throughout.
const POLL_FIRST: Duration = Duration::from_millis(25);
const POLL_LONGEST: Duration = Duration::from_millis(500);

/// The longest pause of a wait for a path, which the agent also wakes
/// through inotify (see [`Watch`]): the watch says when to look; this
/// only covers what it cannot see (a file appearing through a mount).
const WATCHED_LONGEST: Duration = Duration::from_secs(2);

/// The directory entry whose changes may answer a wait for `path`: the
/// entry itself in its directory, when `path` is an absolute path the
/// shell takes literally (no glob, `~`, `$`, quote or space to expand).
fn path_watch(path: &str) -> Vec<Watch> {
    let literal = !path.contains(|c: char| "*?[]{}~$`'\"\\ \t\n;&|<>()!#".contains(c));
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((dir, name)) if literal && path.starts_with('/') && !name.is_empty() => {
            vec![Watch::Entry {
                dir: if dir.is_empty() {
                    "/".into()
                } else {
                    dir.into()
                },
                name: name.into(),
            }]
        }
        _ => Vec::new(),
    }
}

/// What may answer a wait for a system `unit` (named as systemctl
/// completes it: `nginx` is `nginx.service`): the manager's signals about
/// it, and where the agent cannot hear those, the directory entries that
/// stand in for them. The manager links
/// `/run/systemd/units/invocation:<unit>` as a unit with processes or a
/// mount starts; a target gets no link, but the units ordered after it
/// start once it is reached (`systemd-update-utmp-runlevel` after
/// `multi-user.target`), so any entry there wakes a target's wait.
fn unit_watch(unit: &str) -> Vec<Watch> {
    const TYPES: [&str; 11] = [
        "service",
        "socket",
        "target",
        "device",
        "mount",
        "automount",
        "swap",
        "timer",
        "path",
        "slice",
        "scope",
    ];
    let suffix = unit.rsplit_once('.').map(|(_, s)| s);
    let full = match suffix {
        Some(s) if TYPES.contains(&s) => unit.to_owned(),
        _ => format!("{unit}.service"),
    };
    let entry = match suffix {
        Some("target") => String::new(),
        _ => format!("invocation:{full}"),
    };
    vec![
        Watch::Unit {
            when_active: match suffix {
                Some("target") => UNIT_ACTIVE_OUTPUT.into(),
                _ => String::new(),
            },
            name: full,
        },
        Watch::Entry {
            dir: "/run/systemd/units".into(),
            name: entry,
        },
    ]
}

/// When a probe's try ends a wait: its status equals `status` (`equal`) or
/// differs from it.
#[derive(Clone, Copy)]
struct Until {
    status: i32,
    equal: bool,
}

/// A `wait_for_unit` probe's status while the unit is neither active nor
/// failed nor inactive without jobs (an unusual status: systemctl's own
/// failures end the wait at once, as in NixOS).
const UNIT_PENDING: i32 = 75;

/// What the `wait_for_unit` probe prints for an active unit (`$s $j`; its
/// first word is what is read). The agent answers it itself for a target
/// the manager reports active ([`Watch::Unit`]): a target has no process,
/// so its `active` is not the instant a service that fails at once spends
/// there; for other units the probe judges.
const UNIT_ACTIVE_OUTPUT: &str = "active 0\n";

/// `script` run by `user`'s login shell with its manager's runtime dir, as
/// the NixOS driver runs user commands (`su -l`, so PAM registers a session
/// and logind starts `user@UID.service`).
fn as_user(user: &str, script: &str) -> String {
    format!(
        "su -l {} --shell /bin/sh -c {}",
        shell::quote(user),
        shell::quote(&format!(
            "export XDG_RUNTIME_DIR=/run/user/$(id -u); {script}"
        ))
    )
}

/// `systemctl …` for the system or a user's manager.
fn systemctl_command(args: &str, user: Option<&str>) -> String {
    match user {
        Some(u) => as_user(u, &format!("systemctl --user {args}")),
        None => format!("systemctl {args}"),
    }
}

/// What a command returns when the caller did not wait for its status
/// (`check_return = false`: -1) or its output (`check_output = false`: -2),
/// as in the NixOS driver.
fn unchecked(status: i32, stdout: Vec<u8>) -> CommandOutput {
    CommandOutput {
        status,
        stdout,
        stderr: Vec::new(),
    }
}

/// Appends a command's stdout to the joined output; the first is moved.
fn append_output(output: &mut String, out: CommandOutput) {
    if output.is_empty() {
        *output = out.into_stdout_text();
    } else {
        output.push_str(&out.stdout_text());
    }
}

impl Machine {
    fn timeout_error(&self, what: &str, seconds: f64, diagnostics: String) -> MachineError {
        MachineError::Timeout {
            machine: self.name().to_owned(),
            what: what.to_owned(),
            seconds,
            diagnostics,
        }
    }

    /// NixOS `execute(command, check_return, check_output, timeout)`.
    /// Without `check_output` the command is sent and not waited for (status
    /// -2); without `check_return` a machine going down during the command
    /// (`reboot`, `poweroff`, kexec) is not an error (status -1).
    pub async fn execute_unchecked(
        &self,
        command: &str,
        check_return: bool,
        check_output: bool,
        timeout: Duration,
    ) -> Result<CommandOutput, MachineError> {
        if !check_output {
            self.send_detached(command, timeout).await?;
            return Ok(unchecked(-2, Vec::new()));
        }
        match self.execute(command, timeout).await {
            Ok(out) if !check_return => Ok(unchecked(-1, out.stdout)),
            Err(MachineError::Died { .. } | MachineError::Guest { .. }) if !check_return => {
                Ok(unchecked(-1, Vec::new()))
            }
            r => r,
        }
    }

    /// Runs commands in order; each must exit 0. Returns their joined stdout.
    pub async fn succeed(
        &self,
        commands: &[String],
        timeout: Duration,
    ) -> Result<String, MachineError> {
        let mut output = String::new();
        for c in commands {
            let out = self.execute(c, timeout).await?;
            if out.status != 0 {
                return Err(self.command_failed("succeed", c, "failed", &out, timeout));
            }
            // Moved, not copied: an output can be as big as the guest's RAM.
            append_output(&mut output, out);
        }
        Ok(output)
    }

    /// Runs commands in order; each must exit non-zero. Returns their joined stdout.
    pub async fn fail(
        &self,
        commands: &[String],
        timeout: Duration,
    ) -> Result<String, MachineError> {
        let mut output = String::new();
        for c in commands {
            let out = self.execute(c, timeout).await?;
            if out.status == 0 {
                return Err(self.command_failed(
                    "fail",
                    c,
                    "unexpectedly succeeded",
                    &out,
                    timeout,
                ));
            }
            append_output(&mut output, out);
        }
        Ok(output)
    }

    fn command_failed(
        &self,
        call: &'static str,
        command: &str,
        expectation: &'static str,
        out: &CommandOutput,
        timeout: Duration,
    ) -> MachineError {
        let expectation = if out.status == 124 && call == "succeed" {
            "timed out"
        } else {
            expectation
        };
        let mut stderr = out.stderr_text();
        if out.status == 124 {
            stderr.push_str(&format!(
                "(the command ran longer than its timeout of {} seconds)",
                timeout.as_secs_f64()
            ));
        }
        MachineError::CommandFailed {
            machine: self.name().to_owned(),
            call,
            command: command.to_owned(),
            expectation,
            status: out.status,
            stdout: out.stdout_text(),
            stderr,
        }
    }

    /// Polls `check` until it returns `Some`, or fails with diagnostics at the timeout.
    async fn poll<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> Result<T, MachineError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, MachineError>>,
    {
        let deadline = Instant::now() + timeout;
        let mut pause = POLL_FIRST;
        let mut tries = 0;
        loop {
            let checked = Instant::now();
            match check().await {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => tries += 1,
                // It died between two tries: the wait is what it died
                // during, as when it dies during a try.
                Err(MachineError::NotRunning {
                    cause: Some(exit), ..
                }) if tries > 0 => return Err(self.died(&exit, &format!("running `{what}`"))),
                Err(MachineError::Died { exit, .. }) => {
                    return Err(self.died(&exit, &format!("running `{what}`")))
                }
                Err(e) => return Err(e),
            }
            // Never poll faster than a check costs: under TCG a check is
            // guest forks competing with the boot it waits for.
            let pause_now = pause.max(checked.elapsed());
            if Instant::now() >= deadline {
                let diag = self.diagnostics().await;
                return Err(self.timeout_error(what, timeout.as_secs_f64(), diag));
            }
            tokio::time::sleep(pause_now.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            pause = (pause * 2).min(POLL_LONGEST);
        }
    }

    /// Runs `probe` until its status meets `until`, as one request the agent
    /// answers in the guest or, with the bash protocol, polled from here
    /// (pauses as [`Machine::poll`]'s). The agent tries again early when an
    /// entry of `watch` changes, and its pauses grow longer then. The output
    /// of the try that met it; at the timeout the timeout error, with the
    /// last try's output in `last`.
    #[allow(clippy::too_many_arguments)]
    async fn retry_probe(
        &self,
        what: &str,
        probe: &str,
        per_try: Duration,
        until: Until,
        timeout: Duration,
        watch: &[Watch],
        last: &std::sync::Mutex<Option<CommandOutput>>,
    ) -> Result<CommandOutput, MachineError> {
        // A unit's `invocation:` link appears as it starts, not as it
        // becomes active or fails: unit waits keep short pauses.
        let watches_a_path = watch
            .iter()
            .any(|w| matches!(w, Watch::Entry { dir, .. } if !dir.starts_with("/run/systemd/")));
        let longest = match watches_a_path {
            true => WATCHED_LONGEST,
            false => POLL_LONGEST,
        };
        let retry = Retry {
            status: until.status,
            equal: until.equal,
            within_ms: timeout.as_millis().min(u64::MAX as u128) as u64,
            first_pause_ms: POLL_FIRST.as_millis() as u64,
            max_pause_ms: longest.as_millis() as u64,
        };
        let in_guest = self
            .with_agent(what, |client| async move {
                client.execute_until(probe, per_try, retry, watch).await
            })
            .await?;
        if let Some(out) = in_guest {
            if retry.met_by(out.status) {
                return Ok(out);
            }
            *last.lock().expect("last output lock") = Some(out);
            let diag = self.diagnostics().await;
            return Err(self.timeout_error(what, timeout.as_secs_f64(), diag));
        }
        self.poll(what, timeout, || async {
            let out = self.execute(probe, per_try).await?;
            if retry.met_by(out.status) {
                Ok(Some(out))
            } else {
                *last.lock().expect("last output lock") = Some(out);
                Ok(None)
            }
        })
        .await
    }

    /// Waits until `probe` exits 0 (each try within 10 s).
    async fn wait_for_success(
        &self,
        what: &str,
        probe: &str,
        timeout: Duration,
        watch: &[Watch],
    ) -> Result<(), MachineError> {
        let until = Until {
            status: 0,
            equal: true,
        };
        let last = std::sync::Mutex::new(None);
        self.retry_probe(
            what,
            probe,
            Duration::from_secs(10),
            until,
            timeout,
            watch,
            &last,
        )
        .await
        .map(drop)
    }

    /// Failed units and the last 30 journal lines, for failed waits.
    pub async fn diagnostics(&self) -> String {
        let cmd =
            "echo '--- failed units:'; systemctl --no-pager --failed --plain --no-legend 2>&1; \
                   echo '--- last 30 journal lines:'; journalctl --no-pager -n 30 -q 2>&1";
        match self.execute(cmd, Duration::from_secs(20)).await {
            Ok(out) => out.stdout_text(),
            Err(e) => format!("(could not collect diagnostics: {e})"),
        }
    }

    /// Retries `command` until it exits 0; returns its stdout.
    pub async fn wait_until_succeeds(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<String, MachineError> {
        self.wait_until(command, true, timeout).await
    }

    /// Retries `command` until it exits non-zero; returns its stdout.
    pub async fn wait_until_fails(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<String, MachineError> {
        self.wait_until(command, false, timeout).await
    }

    async fn wait_until(
        &self,
        command: &str,
        succeeds: bool,
        timeout: Duration,
    ) -> Result<String, MachineError> {
        let call = if succeeds {
            "wait_until_succeeds"
        } else {
            "wait_until_fails"
        };
        let what = format!("{call} `{command}`");
        let last = std::sync::Mutex::new(None);
        let until = Until {
            status: 0,
            equal: succeeds,
        };
        let r = self
            .retry_probe(&what, command, timeout, until, timeout, &[], &last)
            .await
            .map(|out| out.stdout_text());
        self.with_last_output(r, last.into_inner().unwrap_or(None))
    }

    fn with_last_output(
        &self,
        r: Result<String, MachineError>,
        last: Option<CommandOutput>,
    ) -> Result<String, MachineError> {
        match (r, last) {
            (
                Err(MachineError::Timeout {
                    machine,
                    what,
                    seconds,
                    diagnostics,
                }),
                Some(out),
            ) => Err(MachineError::Timeout {
                machine,
                what,
                seconds,
                diagnostics: format!(
                    "--- last attempt: exit status {}\nstdout: {}\nstderr: {}\n{diagnostics}",
                    out.status,
                    out.stdout_text().trim_end(),
                    out.stderr_text().trim_end()
                ),
            }),
            (r, _) => r,
        }
    }

    /// `systemctl ARGS` (for a user's manager with `user`).
    pub async fn systemctl(
        &self,
        args: &str,
        user: Option<&str>,
    ) -> Result<CommandOutput, MachineError> {
        self.execute(&systemctl_command(args, user), Duration::from_secs(900))
            .await
    }

    /// `systemctl ARGS` (a `show`), which must exit 0, as NixOS requires.
    async fn systemctl_show(
        &self,
        args: &str,
        user: Option<&str>,
        what: String,
    ) -> Result<CommandOutput, MachineError> {
        let out = self.systemctl(args, user).await?;
        if out.status != 0 {
            return Err(MachineError::WaitFailed {
                machine: self.name().to_owned(),
                what,
                reason: WaitFailure::SystemctlShow {
                    status: out.status,
                    stderr: out.stderr_text().trim().to_owned(),
                },
                diagnostics: String::new(),
            });
        }
        Ok(out)
    }

    /// All properties of a unit (`systemctl show`).
    pub async fn get_unit_info(
        &self,
        unit: &str,
        user: Option<&str>,
    ) -> Result<BTreeMap<String, String>, MachineError> {
        let args = format!("--no-pager show {}", shell::quote(unit));
        let out = self
            .systemctl_show(&args, user, format!("get_unit_info {unit}"))
            .await?;
        Ok(out
            .stdout_text()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// One property of a unit. As NixOS: a failed `systemctl show` fails
    /// the call, and so does a property systemd does not know (it prints
    /// nothing for one, where `--value` would read as "").
    pub async fn get_unit_property(
        &self,
        unit: &str,
        property: &str,
        user: Option<&str>,
    ) -> Result<String, MachineError> {
        let args = format!(
            "--no-pager show {} --property={}",
            shell::quote(unit),
            shell::quote(property)
        );
        let out = self
            .systemctl_show(&args, user, format!("get_unit_property {unit} {property}"))
            .await?;
        let text = out.stdout_text();
        let line = text.strip_suffix('\n').unwrap_or(&text);
        match line.split_once('=') {
            Some((key, value)) if key == property && !value.contains('\n') => Ok(value.to_owned()),
            _ => Err(MachineError::UnexpectedOutput {
                machine: self.name().to_owned(),
                command: systemctl_command(&args, user),
                stdout: text.clone(),
                expected: "one line `PROPERTY=value` (is the property name right?)",
            }),
        }
    }

    /// Waits until a unit is active; fails at once when it failed or is
    /// inactive with no job pending.
    pub async fn wait_for_unit(
        &self,
        unit: &str,
        user: Option<&str>,
        timeout: Duration,
    ) -> Result<(), MachineError> {
        let what = match user {
            Some(u) => format!("wait_for_unit {unit} (user {u})"),
            None => format!("wait_for_unit {unit}"),
        };
        let u = shell::quote(unit);
        let sc = if user.is_some() {
            "systemctl --user"
        } else {
            "systemctl"
        };
        // POSIX sh: a user's probe runs in `su`'s /bin/sh (dash on Debian).
        // One round trip, as NixOS decides: the state and, for an inactive
        // unit, whether jobs are pending. The unit's own job answers that
        // in the same systemctl call (a unit waiting to start has one);
        // only without one are all jobs listed. As NixOS, an inactive
        // unit with no jobs is read once more: its job may have finished
        // between the two questions (the unit is active now).
        let script = format!(
            "o=$({sc} --no-pager show {u} --property=ActiveState --property=Job); \
             s=${{o#*ActiveState=}}; s=${{s%%[!a-z-]*}}; j=${{o#*Job=}}; j=${{j%%[!0-9]*}}; \
             if [ \"$s\" = inactive ] && [ -z \"$j\" ]; then \
             j=$({sc} --no-pager list-jobs --full --no-legend | wc -l); \
             if [ \"$j\" = 0 ]; then \
             s=$({sc} --no-pager show {u} --property=ActiveState --value); fi; fi; \
             echo \"$s ${{j:-0}}\"; \
             case \"$s ${{j:-0}}\" in active\\ *|failed\\ *|'inactive 0') ;; *) exit {UNIT_PENDING};; esac"
        );
        let probe = match user {
            Some(name) => as_user(name, &script),
            None => script,
        };
        let pending = Until {
            status: UNIT_PENDING,
            equal: false,
        };
        // Only the system manager exports its units' state files.
        let watch: Vec<Watch> = match user {
            Some(_) => Vec::new(),
            None => unit_watch(unit),
        };
        let last = std::sync::Mutex::new(None);
        let out = self
            .retry_probe(
                &what,
                &probe,
                Duration::from_secs(60),
                pending,
                timeout,
                &watch,
                &last,
            )
            .await?;
        if out.status != 0 {
            // As NixOS: a manager that cannot be asked fails the wait at
            // once (PAM refusing `su`, no user bus, …).
            return Err(self
                .wait_failed(
                    &what,
                    WaitFailure::SystemdUnreachable {
                        user: user.map(str::to_owned),
                        status: out.status,
                        stderr: out.stderr_text().trim().to_owned(),
                    },
                )
                .await);
        }
        let text = out.stdout_text();
        let mut words = text.split_whitespace();
        let state = words.next().unwrap_or("").to_owned();
        let jobs: u32 = words.next().and_then(|j| j.parse().ok()).unwrap_or(1);
        let unit = unit.to_owned();
        let reason = match state.as_str() {
            "active" => return Ok(()),
            "failed" => WaitFailure::UnitFailed { unit },
            "inactive" if jobs == 0 => WaitFailure::UnitInactive { unit },
            _ => WaitFailure::UnitInState { unit, state },
        };
        Err(self.wait_failed(&what, reason).await)
    }

    async fn wait_failed(&self, what: &str, reason: WaitFailure) -> MachineError {
        MachineError::WaitFailed {
            machine: self.name().to_owned(),
            what: what.to_owned(),
            reason,
            diagnostics: self.diagnostics().await,
        }
    }

    /// Fails unless the unit is in `state`.
    pub async fn require_unit_state(
        &self,
        unit: &str,
        state: &str,
        user: Option<&str>,
    ) -> Result<(), MachineError> {
        let actual = self.get_unit_property(unit, "ActiveState", user).await?;
        if actual == state {
            Ok(())
        } else {
            Err(MachineError::WaitFailed {
                machine: self.name().to_owned(),
                what: format!("require_unit_state {unit}"),
                reason: WaitFailure::UnitNotInState {
                    unit: unit.to_owned(),
                    expected: state.to_owned(),
                    actual,
                },
                diagnostics: String::new(),
            })
        }
    }

    /// Waits for a TCP port to accept connections (or, with `open = false`, to stop).
    pub async fn wait_for_port(
        &self,
        port: u16,
        addr: &str,
        open: bool,
        timeout: Duration,
    ) -> Result<(), MachineError> {
        let what = format!(
            "wait_for_{}_port {addr}:{port}",
            if open { "open" } else { "closed" }
        );
        // bash's /dev/tcp needs no netcat in the guest.
        let probe = format!(
            "timeout 2 bash -c {}",
            shell::quote(&format!("</dev/tcp/{addr}/{port}"))
        );
        let until = Until {
            status: 0,
            equal: open,
        };
        let last = std::sync::Mutex::new(None);
        self.retry_probe(
            &what,
            &probe,
            Duration::from_secs(10),
            until,
            timeout,
            &[],
            &last,
        )
        .await
        .map(drop)
    }

    /// Waits for a unix socket that accepts connections.
    pub async fn wait_for_open_unix_socket(
        &self,
        path: &str,
        datagram: bool,
        timeout: Duration,
    ) -> Result<(), MachineError> {
        let what = format!("wait_for_open_unix_socket {path}");
        let kind = if datagram {
            "UNIX-SENDTO"
        } else {
            "UNIX-CONNECT"
        };
        let p = shell::quote(path);
        let probe = format!(
            "test -S {p} && if command -v socat >/dev/null; then socat -u OPEN:/dev/null {kind}:{p}; \
             elif command -v nc >/dev/null; then nc -z{} -U {p}; fi",
            if datagram { "u" } else { "" }
        );
        self.wait_for_success(&what, &probe, timeout, &path_watch(path))
            .await
    }

    /// Waits for a file to exist.
    pub async fn wait_for_file(&self, path: &str, timeout: Duration) -> Result<(), MachineError> {
        let what = format!("wait_for_file {path}");
        // Unquoted, as NixOS runs it: globs and `~user` expand.
        let probe = format!("test -e {path}");
        self.wait_for_success(&what, &probe, timeout, &path_watch(path))
            .await
    }

    /// Waits for console output matching `regex`, from where the last such
    /// wait stopped (so the same line is not matched twice).
    pub async fn wait_for_console_text(
        &self,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String, MachineError> {
        let re = regex::Regex::new(pattern).map_err(|error| MachineError::BadRegex {
            machine: self.name().to_owned(),
            call: "wait_for_console_text",
            error,
        })?;
        let mut changed = self.console().subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            let from = *self.inner.console_cursor.lock().expect("cursor lock");
            let text = self.console().text_since(from);
            if let Some(m) = re.find(&text) {
                *self.inner.console_cursor.lock().expect("cursor lock") = from + m.end();
                return Ok(m.as_str().to_owned());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timeout_error(
                    &format!("wait_for_console_text {pattern:?}"),
                    timeout.as_secs_f64(),
                    self.console().last_lines(20).join("\n"),
                ));
            }
            tokio::select! {
                _ = changed.changed() => {}
                () = tokio::time::sleep(left) => {}
                () = self.cancel_token().cancelled() => return Err(self.cancelled()),
            }
        }
    }

    /// The last `lines` journal lines, optionally of one unit.
    pub async fn journal(&self, unit: Option<&str>, lines: u32) -> Result<String, MachineError> {
        let unit = unit
            .map(|u| format!("-u {}", shell::quote(u)))
            .unwrap_or_default();
        let cmd = format!("journalctl --no-pager -q {unit} -n {lines}");
        self.succeed(&[cmd], Duration::from_secs(60)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_watch_the_entries_that_can_answer_them() {
        let w = |dir: &str, name: &str| Watch::Entry {
            dir: dir.into(),
            name: name.into(),
        };
        let units = "/run/systemd/units";
        let unit = |u: &str, entry: &str| {
            let when_active = match u.ends_with(".target") {
                true => UNIT_ACTIVE_OUTPUT.into(),
                false => String::new(),
            };
            vec![
                Watch::Unit {
                    name: u.into(),
                    when_active,
                },
                w(units, entry),
            ]
        };
        assert_eq!(
            unit_watch("nginx"),
            unit("nginx.service", "invocation:nginx.service")
        );
        assert_eq!(unit_watch("a.mount"), unit("a.mount", "invocation:a.mount"));
        assert_eq!(
            unit_watch("multi-user.target"),
            unit("multi-user.target", "")
        );
        assert_eq!(path_watch("/run/x/flag"), vec![w("/run/x", "flag")]);
        assert_eq!(path_watch("/flag/"), vec![w("/", "flag")]);
        for shell_expands in ["/tmp/*.pid", "~/x", "/run/$X", "rel/path", "/", "/a b"] {
            assert_eq!(path_watch(shell_expands), vec![], "{shell_expands}");
        }
    }
}
