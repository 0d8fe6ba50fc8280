//! Screenshots: QMP `screendump` writes PPM (P6); attest stores PNG. The PNG
//! encoder is tiny on purpose (stored deflate blocks, no compression crate):
//! screenshots are read by people and by tesseract, not shipped.

/// A decoded P6 image.
#[derive(Debug)]
pub struct Rgb {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub pixels: Vec<u8>,
}

/// Parses a binary PPM (`P6`, maxval 255).
pub fn parse_ppm(data: &[u8]) -> Result<Rgb, String> {
    let mut pos = 0;
    let mut fields = Vec::new();
    while fields.len() < 4 {
        while pos < data.len() && data[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if pos < data.len() && data[pos] == b'#' {
            while pos < data.len() && data[pos] != b'\n' {
                pos += 1;
            }
            continue;
        }
        let start = pos;
        while pos < data.len() && !data[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if start == pos {
            return Err("truncated PPM header".into());
        }
        fields.push(String::from_utf8_lossy(&data[start..pos]).into_owned());
    }
    pos += 1; // the single whitespace byte after maxval
    if fields[0] != "P6" {
        return Err(format!("not a binary PPM (magic {:?})", fields[0]));
    }
    let num = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("bad PPM number {s:?}"))
    };
    let (width, height, max) = (num(&fields[1])?, num(&fields[2])?, num(&fields[3])?);
    if max != 255 {
        return Err(format!("PPM maxval {max} is not supported"));
    }
    let len = width as usize * height as usize * 3;
    let pixels = data
        .get(pos..pos + len)
        .ok_or("PPM pixel data is truncated")?
        .to_vec();
    Ok(Rgb {
        width,
        height,
        pixels,
    })
}

fn crc32(data: &[&[u8]]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = !0u32;
    for part in data {
        for &b in *part {
            crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    out.extend_from_slice(&crc32(&[kind, body]).to_be_bytes());
}

/// Encodes an RGB image as PNG (8-bit truecolour, stored zlib blocks).
pub fn encode_png(img: &Rgb) -> Vec<u8> {
    let row = img.width as usize * 3;
    let mut raw = Vec::with_capacity((row + 1) * img.height as usize);
    for r in img.pixels.chunks(row.max(1)).take(img.height as usize) {
        raw.push(0); // filter: none
        raw.extend_from_slice(r);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if raw.is_empty() {
        vec![&[]]
    } else {
        raw.chunks(65535).collect()
    };
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = b.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());

    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&img.width.to_be_bytes());
    ihdr.extend_from_slice(&img.height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppm_to_png() {
        let mut ppm = b"P6\n# c\n2 2\n255\n".to_vec();
        ppm.extend_from_slice(&[255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9]);
        let img = parse_ppm(&ppm).unwrap();
        assert_eq!((img.width, img.height), (2, 2));
        let png = encode_png(&img);
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(png.ends_with(&[0xAE, 0x42, 0x60, 0x82]), "IEND CRC");
        assert!(parse_ppm(b"P3\n1 1\n255\n").is_err());
        assert!(parse_ppm(b"P6\n2 2\n255\n\x00").is_err());
    }

    #[test]
    fn crc_matches_the_png_spec_value() {
        assert_eq!(crc32(&[b"IEND"]), 0xAE42_6082);
    }

    #[test]
    fn png_is_readable_by_imagemagick_when_present() {
        let Ok(identify) = crate::process::require_binary("identify", "imagemagick") else {
            return;
        };
        let img = Rgb {
            width: 300,
            height: 300,
            pixels: (0..300 * 300 * 3).map(|i| (i % 251) as u8).collect(),
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        std::fs::write(&p, encode_png(&img)).unwrap();
        let out = std::process::Command::new(identify)
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("300x300"));
    }
}
