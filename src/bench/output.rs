//! The human table and the JSON document of a [`BenchReport`].

use std::fmt::Write as _;
use std::path::Path;

use super::{BenchReport, Summary};

/// Figure keys in table order, with their labels.
pub const FIGURES: &[(&str, &str)] = &[
    ("boot_backdoor_ms", "boot: start → backdoor ready"),
    (
        "boot_multi_user_ms",
        "boot: start → multi-user.target (wait_for_unit)",
    ),
    (
        "boot_multi_user_guest_clock_ms",
        "boot: start → multi-user.target (systemd's timestamp)",
    ),
    ("true_round_trip_ms", "command: `true` round trip"),
    (
        "pipeline_round_trip_ms",
        "command: shell pipeline (`echo` into `tr`) round trip",
    ),
    ("output_1mib_ms", "command: 1 MiB output"),
    ("output_64mib_ms", "command: 64 MiB output"),
    (
        "concurrent_50_sleep_1_ms",
        "50 × `sleep 1` at once on one machine",
    ),
    ("shutdown_ms", "shutdown: request → process gone"),
    (
        "snapshot_restore_first_command_ms",
        "snapshot restore → first command",
    ),
    ("whole_test_ms", "whole test (nginx example), wall"),
    ("guest_exec_true_ms", "guest: fork+exec /bin/true"),
    ("guest_bash_c_true_ms", "guest: bash -c true"),
    (
        "guest_bash_c_pipeline_ms",
        "guest: bash -c of that pipeline",
    ),
    (
        "attest_cpu_per_command_ms",
        "attest CPU per `true` round trip",
    ),
    ("attest_cpu_per_1mib_ms", "attest CPU per 1 MiB output"),
];

/// The table's figure rows: [`FIGURES`], with the big data figures of
/// every size measured after the 64 MiB output.
fn rows_of(r: &BenchReport) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for (key, label) in FIGURES {
        rows.push(((*key).to_owned(), (*label).to_owned()));
        if *key == "output_64mib_ms" {
            for &bytes in &r.options.big_data {
                let size = super::big_data::Size(bytes);
                rows.extend(super::big_data::figure_rows(size));
            }
        }
    }
    rows
}

/// A duration in ms, with a unit that keeps it readable.
pub fn human_ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else if v >= 0.1 {
        format!("{v:.2} ms")
    } else {
        format!("{:.1} µs", v * 1000.0)
    }
}

/// A figure's value in its unit, chosen by the key's suffix.
fn value(key: &str, v: f64) -> String {
    if key.ends_with("_mb_s") {
        format!("{v:.0} MB/s")
    } else if key.ends_with("_mib") {
        format!("{v:.0} MiB")
    } else {
        human_ms(v)
    }
}

fn cell(key: &str, s: &Summary) -> String {
    let mut c = value(key, s.median);
    if s.n > 1 {
        let _ = write!(c, " [{}–{}]", value(key, s.min), value(key, s.max));
    }
    if let Some(p) = s.p99 {
        let _ = write!(c, " p99 {}", value(key, p));
    }
    c
}

/// The table, as printed on stdout (plain text, also valid Markdown).
pub fn table(r: &BenchReport) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let _ = writeln!(
        out,
        "attest {} ({} build) bench, {}: {}, {} cores, {} MiB, kernel {}, /dev/kvm: {}, load average {:.1} → {:.1}",
        r.attest_version,
        if r.options.release_build {
            "release"
        } else {
            "debug"
        },
        r.date,
        m.cpu_model,
        m.cores,
        m.memory_mib,
        m.kernel,
        m.kvm,
        m.load_average[0],
        m.load_average[1]
    );
    let mut named = Vec::new();
    for b in &r.backends {
        if let Some(v) = b.version.as_ref().filter(|_| !named.contains(&&b.name)) {
            let _ = writeln!(out, "  {}: {v}", b.name);
            named.push(&b.name);
        }
    }
    let _ = writeln!(out);
    let avail: Vec<_> = r.backends.iter().filter(|b| b.available).collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["figure: median [min–max]".to_owned()];
    header.extend(
        avail
            .iter()
            .map(|b| format!("{} {} (runs: {})", b.name, b.protocol, b.runs)),
    );
    rows.push(header);
    for (key, label) in rows_of(r) {
        let key = key.as_str();
        let mut row = vec![label];
        for b in &avail {
            row.push(match (b.figures.get(key), b.not_applicable.get(key)) {
                (Some(s), _) => cell(key, s),
                (None, Some(why)) => format!("n/a: {why}"),
                (None, None) => "failed (see below)".to_owned(),
            });
        }
        rows.push(row);
    }
    let ratio = |label: &str, num: &str, den: &str, pct: bool| {
        let mut row = vec![label.to_owned()];
        for b in &avail {
            row.push(match (b.figures.get(num), b.figures.get(den)) {
                (Some(a), Some(g)) if g.median > 0.0 => {
                    let r = a.median / g.median;
                    match (pct, 100.0 * r) {
                        (true, p) if p < 10.0 => format!("{p:.1} %"),
                        (true, p) => format!("{p:.0} %"),
                        (false, _) => format!("{r:.1}×"),
                    }
                }
                _ => "-".into(),
            });
        }
        row
    };
    rows.push(ratio(
        "attest CPU per command / guest fork+exec",
        "attest_cpu_per_command_ms",
        "guest_exec_true_ms",
        true,
    ));
    rows.push(ratio(
        "`true` round trip / guest fork+exec",
        "true_round_trip_ms",
        "guest_exec_true_ms",
        false,
    ));
    rows.push(ratio(
        "pipeline round trip / guest bash -c of it",
        "pipeline_round_trip_ms",
        "guest_bash_c_pipeline_ms",
        false,
    ));
    if avail.is_empty() {
        out.push_str("no requested backend can run here\n");
    } else {
        out.push_str(&markdown(&rows));
    }

    for b in &avail {
        if !b.same_machine.is_empty() {
            let _ = writeln!(out);
            out.push_str(&same_machine_table(b));
        }
    }

    if let Some(s) = &r.scaling {
        let _ = writeln!(out);
        let mut rows = vec![vec![
            format!("start_all ({}), nodes", s.backend),
            "all backdoors up: median [min–max]".into(),
            "per node".into(),
        ]];
        for p in &s.points {
            rows.push(vec![
                p.nodes.to_string(),
                cell("start_all_ms", &p.start_all_ms),
                human_ms(p.per_node_ms),
            ]);
        }
        out.push_str(&markdown(&rows));
    }

    let _ = writeln!(out);
    let a = &r.attest;
    let _ = writeln!(
        out,
        "attest itself over the whole bench ({:.1} s wall): peak RSS {:.1} MiB, CPU {:.2} s user + {:.2} s sys (children: {:.2} s user + {:.2} s sys)",
        a.wall_s,
        a.peak_rss_mib,
        a.usage.self_user_s,
        a.usage.self_sys_s,
        a.usage.children_user_s,
        a.usage.children_sys_s
    );
    for b in &r.backends {
        if let Some(why) = &b.reason {
            let _ = writeln!(out, "{}: unavailable: {why}", b.name);
        }
        for e in &b.errors {
            let first = e.lines().next().unwrap_or("");
            let _ = writeln!(out, "{} {}: error: {first}", b.name, b.protocol);
        }
    }
    if let Some(why) = &r.interrupted {
        let _ = writeln!(out, "bench incomplete: {why}");
    }
    out
}

/// Per-command figures of every protocol, taken on one machine one after
/// the other ([`super::BackendReport::same_machine`]).
fn same_machine_table(b: &super::BackendReport) -> String {
    const ROWS: &[&str] = &[
        "true_round_trip_ms",
        "pipeline_round_trip_ms",
        "output_1mib_ms",
        "attest_cpu_per_command_ms",
        "attest_cpu_per_1mib_ms",
    ];
    let mut header = vec![format!(
        "{}: the protocols on one machine (runs: {})",
        b.name, b.runs
    )];
    header.extend(b.same_machine.keys().cloned());
    let mut rows = vec![header];
    for key in ROWS {
        let label = FIGURES
            .iter()
            .find(|(k, _)| k == key)
            .map_or(*key, |(_, l)| *l);
        let mut row = vec![label.to_owned()];
        for figures in b.same_machine.values() {
            row.push(figures.get(*key).map_or("-".into(), |s| cell(key, s)));
        }
        rows.push(row);
    }
    markdown(&rows)
}

/// Renders rows as a Markdown table (first row is the header).
fn markdown(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = |c: usize| {
        rows.iter()
            .filter_map(|r| r.get(c))
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..cols).map(width).collect();
    let line = |r: &Vec<String>| {
        let mut s = String::from("|");
        for (c, w) in widths.iter().enumerate() {
            let v = r.get(c).map(String::as_str).unwrap_or("");
            let pad = w - v.chars().count();
            let _ = write!(s, " {v}{} |", " ".repeat(pad));
        }
        s.push('\n');
        s
    };
    let mut out = String::new();
    if let Some(h) = rows.first() {
        out.push_str(&line(h));
        out.push('|');
        for w in &widths {
            let _ = write!(out, "{}|", "-".repeat(w + 2));
        }
        out.push('\n');
    }
    for r in rows.iter().skip(1) {
        out.push_str(&line(r));
    }
    out
}

/// Writes the report as pretty JSON.
pub fn write_json(r: &BenchReport, path: &Path) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_stay_readable() {
        assert_eq!(human_ms(1234.0), "1.23 s");
        assert_eq!(human_ms(14.23), "14.2 ms");
        assert_eq!(human_ms(0.05), "50.0 µs");
    }

    #[test]
    fn markdown_columns_line_up() {
        let t = markdown(&[
            vec!["a".into(), "bb".into()],
            vec!["ccc".into(), "d".into()],
        ]);
        assert_eq!(t, "| a   | bb |\n|-----|----|\n| ccc | d  |\n");
    }
}
