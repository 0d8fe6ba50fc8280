//! Big data figures (issues 11 and 15): one big command output (wall time,
//! MB/s, attest's peak RSS while it arrives) and `copy_from_host` /
//! `copy_from_machine` of a file of the same size (MB/s, MB = 10^6 bytes).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::machine::{Machine, MachineError};

use super::usage;
use super::BackendReport;

/// A size measured: bytes, a whole number of MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub usize);

impl Size {
    /// The infix of its figure names: `256mib`, `1gib`.
    pub fn name(self) -> String {
        match self.0 % (1 << 30) {
            0 => format!("{}gib", self.0 >> 30),
            _ => format!("{}mib", self.0 >> 20),
        }
    }

    /// As the tables show it: `256 MiB`, `1 GiB`.
    pub fn shown(self) -> String {
        match self.0 % (1 << 30) {
            0 => format!("{} GiB", self.0 >> 30),
            _ => format!("{} MiB", self.0 >> 20),
        }
    }

    /// Sizes above this are measured only for the agent on nspawn (issue
    /// 15's goals; bash or a VM would take minutes).
    pub const EVERYWHERE: usize = 256 << 20;
}

/// Parses `--big-data`: comma-separated sizes with a unit (`256m`, `1g`),
/// or `none`.
pub fn parse_sizes(s: &str) -> Result<Vec<Size>, String> {
    let s = s.trim();
    if s.is_empty() || s == "none" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|p| {
            let p = p.trim();
            let (n, unit) = p.split_at(p.len().saturating_sub(1));
            let shift = match unit {
                "m" | "M" => 20,
                "g" | "G" => 30,
                _ => return Err(format!("{p:?} needs a unit: m (MiB) or g (GiB), e.g. 256m")),
            };
            match n.parse::<usize>() {
                Ok(n) if (1..=(16 << (30 - shift))).contains(&n) => Ok(Size(n << shift)),
                _ => Err(format!("{p:?} is not a size from 1m to 16g")),
            }
        })
        .collect()
}

/// Generous bound on one step (bash under TCG moves a few MB/s).
const STEP: Duration = Duration::from_secs(1800);

/// The samples of one size in one run.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Which size.
    pub size: Size,
    /// Output round trip, ms.
    pub output_ms: f64,
    /// attest's peak RSS while the output arrived, MiB.
    pub output_peak_rss_mib: f64,
    /// The copies, or why they could not be measured (no room for the
    /// file in the guest or on the host): a figure this machine cannot
    /// give, not a failed bench.
    pub copies: Result<Copies, String>,
}

/// The copy times of one size.
#[derive(Debug, Clone, Copy)]
pub struct Copies {
    /// `copy_from_host`, ms.
    pub from_host_ms: f64,
    /// `copy_from_machine`, ms.
    pub from_machine_ms: f64,
}

fn failed(m: &Machine, message: String) -> MachineError {
    MachineError::Internal {
        machine: m.name().to_owned(),
        message,
    }
}

/// The bench's host file of random bytes could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the bench's source file {} (free space in the bench's temporary directory?)", path.display())]
pub struct SourceFileError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// A host file of `size` random bytes in `dir`, made once per bench.
fn source_file(dir: &Path, size: Size) -> Result<PathBuf, SourceFileError> {
    let path = dir.join(format!("big-{}.bin", size.name()));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == size.0 as u64) {
        return Ok(path);
    }
    let made = (|| {
        let mut random = std::fs::File::open("/dev/urandom")?.take(size.0 as u64);
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        std::io::copy(&mut random, &mut out)?;
        std::io::Write::flush(&mut out)
    })();
    made.map_err(|source| SourceFileError {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Where the copies put the file in the guest.
const GUEST_DIR: &str = "/root";

/// Whether `e` (an I/O error in attest, or a guest's error text) is a full
/// file system: ENOSPC, or a quota.
fn no_room(e: &dyn std::fmt::Display) -> bool {
    let text = e.to_string();
    text.contains("No space left on device") || text.contains("Disk quota exceeded")
}

/// The guest's free bytes in [`GUEST_DIR`], when `df` tells.
async fn guest_free(m: &Machine) -> Result<Option<u64>, MachineError> {
    let out = m
        .execute(
            &format!("df --output=avail -B1 -- {GUEST_DIR} | tail -n 1"),
            STEP,
        )
        .await?;
    Ok(out.stdout_text().trim().parse().ok())
}

/// Measures `size` on the running machine `m`; `dir` holds the host files.
pub async fn measure(m: &Machine, dir: &Path, size: Size) -> Result<Sample, MachineError> {
    let n = size.0;

    usage::reset_peak_rss();
    let t = Instant::now();
    let out = m.execute(&format!("head -c {n} /dev/zero"), STEP).await?;
    let output_ms = t.elapsed().as_secs_f64() * 1000.0;
    let output_peak_rss_mib = usage::peak_rss_kib().unwrap_or(0) as f64 / 1024.0;
    if out.status != 0 || out.stdout.len() != n {
        return Err(failed(
            m,
            format!(
                "a {n}-byte output arrived as {} bytes (exit status {})",
                out.stdout.len(),
                out.status
            ),
        ));
    }
    drop(out);
    Ok(Sample {
        size,
        output_ms,
        output_peak_rss_mib,
        copies: copies(m, dir, size).await?,
    })
}

/// Copies a file of `size` into the guest and back; `Ok(Err(why))` when
/// there is no room for it on one side.
async fn copies(
    m: &Machine,
    dir: &Path,
    size: Size,
) -> Result<Result<Copies, String>, MachineError> {
    let n = size.0;
    let shown = size.shown();
    if let Some(free) = guest_free(m).await?.filter(|&f| f < n as u64) {
        return Ok(Err(format!(
            "no room in the guest for a {shown} file ({} MiB free in {GUEST_DIR})",
            free >> 20
        )));
    }
    let source = match source_file(dir, size) {
        Ok(s) => s,
        Err(e) if no_room(&e.source) => {
            return Ok(Err(format!(
                "no room on the host for a {shown} file in {}",
                dir.display()
            )))
        }
        Err(e) => return Err(failed(m, format!("{e}: {}", e.source))),
    };
    let guest = format!("{GUEST_DIR}/attest-bench-{}.bin", size.name());
    let back = dir.join(format!("back-{}.bin", size.name()));
    let t = Instant::now();
    let mut result = m.copy_from_host(&source, &guest).await;
    let from_host_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    if result.is_ok() {
        result = m.copy_from_machine(&guest, &back).await;
    }
    let from_machine_ms = t.elapsed().as_secs_f64() * 1000.0;
    let arrived = std::fs::metadata(&back).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&back);
    m.execute(&format!("rm -f {guest}"), STEP).await?;
    match result {
        Err(e) if no_room(&e) => {
            let side = match e.to_string().contains(&dir.display().to_string()) {
                true => "on the host",
                false => "in the guest",
            };
            return Ok(Err(format!(
                "no room {side} for a {shown} file (the copy ran out of space)"
            )));
        }
        r => r?,
    }
    if arrived != n as u64 {
        return Err(failed(
            m,
            format!("copy_from_machine of {n} bytes wrote {arrived}"),
        ));
    }
    Ok(Ok(Copies {
        from_host_ms,
        from_machine_ms,
    }))
}

fn mb_s(bytes: usize, ms: f64) -> f64 {
    bytes as f64 / 1e6 / (ms / 1000.0)
}

/// The figure names of one size, in [`values`] order.
fn figure_names(size: Size) -> [String; 5] {
    let name = size.name();
    [
        format!("output_{name}_ms"),
        format!("output_{name}_mb_s"),
        format!("output_{name}_peak_rss_mib"),
        format!("copy_from_host_{name}_mb_s"),
        format!("copy_from_machine_{name}_mb_s"),
    ]
}

/// The table rows of one size: figure name and label.
pub fn figure_rows(size: Size) -> Vec<(String, String)> {
    let shown = size.shown();
    let labels = [
        format!("command: {shown} output"),
        format!("command: {shown} output, throughput"),
        format!("command: {shown} output, attest peak RSS"),
        format!("copy_from_host of {shown}"),
        format!("copy_from_machine of {shown}"),
    ];
    figure_names(size).into_iter().zip(labels).collect()
}

/// A sample's figures, in [`figure_names`] order; a copy not measured is
/// `Err(why)`.
fn values(s: &Sample) -> [Result<f64, &str>; 5] {
    let n = s.size.0;
    let copy = |ms: fn(&Copies) -> f64| match &s.copies {
        Ok(c) => Ok(mb_s(n, ms(c))),
        Err(why) => Err(why.as_str()),
    };
    [
        Ok(s.output_ms),
        Ok(mb_s(n, s.output_ms)),
        Ok(s.output_peak_rss_mib),
        copy(|c| c.from_host_ms),
        copy(|c| c.from_machine_ms),
    ]
}

/// The figures of every size in `sizes`, from `samples` (all runs); a
/// figure that was not measured here says why.
pub fn put_figures(b: &mut BackendReport, sizes: &[Size], samples: &[Sample]) {
    for &size in sizes {
        let of: Vec<_> = samples
            .iter()
            .filter(|s| s.size == size)
            .map(values)
            .collect();
        for (i, key) in figure_names(size).into_iter().enumerate() {
            if of.is_empty() {
                if size.0 > Size::EVERYWHERE && !samples.is_empty() {
                    b.not_applicable
                        .insert(key, "measured for the agent on nspawn".into());
                }
                continue;
            }
            let column: Vec<f64> = of.iter().filter_map(|v| v[i].ok()).collect();
            match of.iter().find_map(|v| v[i].err()) {
                Some(why) if column.is_empty() => {
                    b.not_applicable.insert(key, why.to_owned());
                }
                _ => super::stats::put_into(&mut b.figures, &key, &column, false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_name_their_figures() {
        assert_eq!(
            parse_sizes("256m, 1g").unwrap(),
            [Size(256 << 20), Size(1 << 30)]
        );
        assert_eq!(Size(256 << 20).name(), "256mib");
        assert_eq!(Size(1 << 30).name(), "1gib");
        assert_eq!(Size(1536 << 20).name(), "1536mib");
        assert!(parse_sizes("none").unwrap().is_empty());
        for bad in ["256", "0m", "17g", "xg", "1k"] {
            assert!(parse_sizes(bad).is_err(), "{bad}");
        }
    }

    /// A copy without room is `n/a: <why>` for the copy figures only; the
    /// output figures and the other sizes are still there.
    #[test]
    fn copies_without_room_are_not_applicable_not_a_failure() {
        let sample = |size, copies| Sample {
            size,
            output_ms: 100.0,
            output_peak_rss_mib: 10.0,
            copies,
        };
        let (small, big) = (Size(16 << 20), Size(256 << 20));
        let why = "no room in the guest for a 256 MiB file (200 MiB free in /root)";
        let samples = [
            sample(
                small,
                Ok(Copies {
                    from_host_ms: 100.0,
                    from_machine_ms: 50.0,
                }),
            ),
            sample(big, Err(why.to_owned())),
        ];
        let mut b = BackendReport::default();
        put_figures(&mut b, &[small, big], &samples);
        for key in [
            "copy_from_host_256mib_mb_s",
            "copy_from_machine_256mib_mb_s",
        ] {
            assert_eq!(b.not_applicable.get(key).map(String::as_str), Some(why));
            assert!(!b.figures.contains_key(key), "{key}");
        }
        for key in ["output_256mib_ms", "copy_from_host_16mib_mb_s"] {
            assert!(b.figures.contains_key(key), "{key}: {b:?}");
        }
        assert!(no_room(
            &"writing /root/x: No space left on device (os error 28)"
        ));
        assert!(no_room(&std::io::Error::from_raw_os_error(28)));
        assert!(!no_room(&"Permission denied"));
    }
}
