//! Screen text by OCR, as the NixOS driver does it: the screenshot itself and
//! two ImageMagick-preprocessed variants (enhanced, and enhanced + negated)
//! are each read by the `tesseract` CLI (`--psm 11`); the result is every
//! variant's text, one after another, so a regex can match any of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::process::Command;

use crate::errors::MissingBinary;
use crate::process::require_binary;

/// Why the screen could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OcrError {
    /// The machine's config does not enable OCR.
    #[error("OCR is not enabled for this machine: set `enable_ocr: true` in its qemu settings")]
    Disabled,
    /// `tesseract` or ImageMagick is missing.
    #[error(transparent)]
    Missing(#[from] MissingBinary),
    /// A tool could not be started.
    #[error("cannot run {tool}: {source}")]
    Run {
        /// `tesseract` or `ImageMagick`.
        tool: &'static str,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A tool failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        /// `tesseract` or `ImageMagick`.
        tool: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        stderr: String,
    },
}

/// The ImageMagick arguments of the NixOS driver's `_preprocess_screenshot`.
fn preprocess_args(negate: bool) -> Vec<&'static str> {
    let mut a = vec![
        "-filter",
        "Catrom",
        "-density",
        "72",
        "-resample",
        "300",
        "-contrast",
        "-normalize",
        "-despeckle",
        "-type",
        "grayscale",
        "-sharpen",
        "1",
        "-posterize",
        "3",
    ];
    if negate {
        a.push("-negate");
    }
    a.extend(["-gamma", "100", "-blur", "1x65535"]);
    a
}

/// `magick` (ImageMagick 7) or `convert` (6).
fn imagemagick() -> Result<(PathBuf, bool), MissingBinary> {
    if let Ok(m) = require_binary("magick", "imagemagick") {
        return Ok((m, true));
    }
    require_binary("convert", "imagemagick").map(|c| (c, false))
}

/// Checks OCR can run: enabled in the config and tesseract installed.
pub fn check_available(enabled: bool) -> Result<(), OcrError> {
    if !enabled {
        return Err(OcrError::Disabled);
    }
    require_binary("tesseract", "tesseract-ocr")?;
    imagemagick()?;
    Ok(())
}

async fn run(cmd: &mut Command, tool: &'static str) -> Result<Vec<u8>, OcrError> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| OcrError::Run {
            tool,
            source: Arc::new(e),
        })?;
    if !out.status.success() {
        return Err(OcrError::Failed {
            tool,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

/// OCRs a PNG screenshot, as NixOS's `perform_ocr_variants_on_screenshot`:
/// the screenshot itself, then (with `processed`) its two preprocessed
/// variants (enhanced, enhanced + negated); one text per image, the raw
/// reading first.
pub async fn screen_text_variants(png: &Path, processed: bool) -> Result<Vec<String>, OcrError> {
    let tesseract = require_binary("tesseract", "tesseract-ocr")?;
    let mut images = vec![png.to_owned()];
    if processed {
        let (im, seven) = imagemagick()?;
        for negate in [false, true] {
            let out = png.with_extension(if negate {
                "negative.png"
            } else {
                "processed.png"
            });
            let mut cmd = Command::new(&im);
            if seven {
                cmd.arg("convert");
            }
            cmd.args(preprocess_args(negate)).arg(png).arg(&out);
            run(&mut cmd, "ImageMagick").await?;
            images.push(out);
        }
    }
    let mut texts = Vec::new();
    for image in &images {
        let out = run(
            Command::new(&tesseract).arg(image).arg("-").args([
                "-c",
                "debug_file=/dev/null",
                "--psm",
                "11",
            ]),
            "tesseract",
        )
        .await?;
        texts.push(String::from_utf8_lossy(&out).into_owned());
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_ocr_says_how_to_enable_it() {
        let e = check_available(false).unwrap_err();
        assert!(matches!(e, OcrError::Disabled));
        assert!(e.to_string().contains("enable_ocr"), "{e}");
    }

    #[test]
    fn preprocessing_matches_the_nixos_driver() {
        let a = preprocess_args(true).join(" ");
        assert!(
            a.contains("-posterize 3 -negate -gamma 100 -blur 1x65535"),
            "{a}"
        );
        assert!(!preprocess_args(false).contains(&"-negate"));
    }
}
