//! Screen text by OCR, as the NixOS driver does it: the screenshot itself and
//! two ImageMagick-preprocessed variants (enhanced, and enhanced + negated)
//! are each read by the `tesseract` CLI (`--psm 11`); the result is every
//! variant's text, one after another, so a regex can match any of them.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::process::require_binary;

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
fn imagemagick() -> Result<(PathBuf, bool), String> {
    if let Ok(m) = require_binary("magick", "imagemagick") {
        return Ok((m, true));
    }
    require_binary("convert", "imagemagick").map(|c| (c, false))
}

/// Checks OCR can run: enabled in the config and tesseract installed.
pub fn check_available(enabled: bool) -> Result<(), String> {
    if !enabled {
        return Err(
            "OCR is not enabled for this machine: set `enable_ocr: true` in its qemu settings"
                .into(),
        );
    }
    require_binary("tesseract", "tesseract-ocr")?;
    imagemagick()?;
    Ok(())
}

async fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>, String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// OCRs a PNG screenshot, as NixOS's `perform_ocr_variants_on_screenshot`:
/// the screenshot itself, then (with `processed`) its two preprocessed
/// variants (enhanced, enhanced + negated); one text per image, the raw
/// reading first.
pub async fn screen_text_variants(png: &Path, processed: bool) -> Result<Vec<String>, String> {
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
        assert!(e.contains("enable_ocr"), "{e}");
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
