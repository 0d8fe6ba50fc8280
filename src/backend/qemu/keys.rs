//! Key names to QMP `send-key` key values. Combinations are joined by `-`
//! (`ctrl-alt-delete`, `alt-f2`, `shift-a`); every part is a QEMU qcode (or an
//! alias such as `enter`, `space`, `del`) or a raw scancode like `0x0C`.
//! Characters for `send_chars` map as the NixOS driver's `CHAR_TO_KEY`.

use serde_json::{json, Value};

/// QEMU's QKeyCode names (qapi/ui.json).
const QCODES: &[&str] = &[
    "unmapped",
    "shift",
    "shift_r",
    "alt",
    "alt_r",
    "ctrl",
    "ctrl_r",
    "menu",
    "esc",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "0",
    "minus",
    "equal",
    "backspace",
    "tab",
    "q",
    "w",
    "e",
    "r",
    "t",
    "y",
    "u",
    "i",
    "o",
    "p",
    "bracket_left",
    "bracket_right",
    "ret",
    "a",
    "s",
    "d",
    "f",
    "g",
    "h",
    "j",
    "k",
    "l",
    "semicolon",
    "apostrophe",
    "grave_accent",
    "backslash",
    "z",
    "x",
    "c",
    "v",
    "b",
    "n",
    "m",
    "comma",
    "dot",
    "slash",
    "asterisk",
    "spc",
    "caps_lock",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "f6",
    "f7",
    "f8",
    "f9",
    "f10",
    "num_lock",
    "scroll_lock",
    "kp_divide",
    "kp_multiply",
    "kp_subtract",
    "kp_add",
    "kp_enter",
    "kp_decimal",
    "sysrq",
    "kp_0",
    "kp_1",
    "kp_2",
    "kp_3",
    "kp_4",
    "kp_5",
    "kp_6",
    "kp_7",
    "kp_8",
    "kp_9",
    "less",
    "f11",
    "f12",
    "print",
    "home",
    "pgup",
    "pgdn",
    "end",
    "left",
    "up",
    "down",
    "right",
    "insert",
    "delete",
    "stop",
    "again",
    "props",
    "undo",
    "front",
    "copy",
    "open",
    "paste",
    "find",
    "cut",
    "lf",
    "help",
    "meta_l",
    "meta_r",
    "compose",
    "pause",
    "ro",
    "hiragana",
    "henkan",
    "yen",
    "muhenkan",
    "katakanahiragana",
    "kp_comma",
    "kp_equals",
    "power",
    "sleep",
    "wake",
    "audionext",
    "audioprev",
    "audiostop",
    "audioplay",
    "audiomute",
    "volumeup",
    "volumedown",
    "mediaselect",
    "mail",
    "calculator",
    "computer",
    "ac_home",
    "ac_back",
    "ac_forward",
    "ac_refresh",
    "ac_bookmarks",
    "lang1",
    "lang2",
];

fn alias(name: &str) -> &str {
    match name {
        "enter" | "return" => "ret",
        "space" => "spc",
        "del" => "delete",
        "escape" => "esc",
        "control" => "ctrl",
        "super" | "win" | "meta" => "meta_l",
        "pageup" => "pgup",
        "pagedown" => "pgdn",
        "altgr" => "alt_r",
        other => other,
    }
}

/// Why a key cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// `0x…` that is not hexadecimal.
    #[error("`{part}` is not a hexadecimal scancode")]
    BadScancode {
        /// The part of the combination.
        part: String,
    },
    /// Neither a qcode nor an alias of one.
    #[error(
        "unknown key `{part}`: use QEMU qcodes such as ret, spc, esc, ctrl, alt, shift, f1, a, 1, delete"
    )]
    Unknown {
        /// The part of the combination.
        part: String,
    },
    /// An empty combination.
    #[error("no key given")]
    Empty,
    /// A character no US-layout key combination types.
    #[error("cannot type {0:?} with a US keyboard")]
    Untypeable(char),
}

/// One part of a combination as a QMP `KeyValue`.
fn key_value(part: &str) -> Result<Value, KeyError> {
    if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
        let n = u32::from_str_radix(hex, 16).map_err(|_| KeyError::BadScancode {
            part: part.to_owned(),
        })?;
        return Ok(json!({ "type": "number", "data": n }));
    }
    let lower = part.to_ascii_lowercase();
    let name = alias(&lower);
    if QCODES.contains(&name) {
        Ok(json!({ "type": "qcode", "data": name }))
    } else {
        Err(KeyError::Unknown {
            part: part.to_owned(),
        })
    }
}

/// The `keys` argument of `send-key` for a combination like `ctrl-alt-delete`.
pub fn combination(keys: &str) -> Result<Vec<Value>, KeyError> {
    let keys = keys.trim();
    if keys.is_empty() {
        return Err(KeyError::Empty);
    }
    // A lone "-" would split into nothing; it is the minus key.
    if keys == "-" {
        return Ok(vec![json!({ "type": "qcode", "data": "minus" })]);
    }
    keys.split('-').map(key_value).collect()
}

/// The key combination that types `c` (US layout), as the NixOS driver does.
pub fn for_char(c: char) -> Result<String, KeyError> {
    let k = match c {
        'a'..='z' | '0'..='9' => c.to_string(),
        'A'..='Z' => format!("shift-{}", c.to_ascii_lowercase()),
        ' ' => "spc".into(),
        '\n' => "ret".into(),
        '\t' => "tab".into(),
        '-' => "minus".into(),
        '_' => "shift-minus".into(),
        '=' => "equal".into(),
        '+' => "shift-equal".into(),
        '[' => "bracket_left".into(),
        '{' => "shift-bracket_left".into(),
        ']' => "bracket_right".into(),
        '}' => "shift-bracket_right".into(),
        ';' => "semicolon".into(),
        ':' => "shift-semicolon".into(),
        '\'' => "apostrophe".into(),
        '"' => "shift-apostrophe".into(),
        '`' => "grave_accent".into(),
        '~' => "shift-grave_accent".into(),
        '\\' => "backslash".into(),
        '|' => "shift-backslash".into(),
        ',' => "comma".into(),
        '<' => "shift-comma".into(),
        '.' => "dot".into(),
        '>' => "shift-dot".into(),
        '/' => "slash".into(),
        '?' => "shift-slash".into(),
        '!' => "shift-1".into(),
        '@' => "shift-2".into(),
        '#' => "shift-3".into(),
        '$' => "shift-4".into(),
        '%' => "shift-5".into(),
        '^' => "shift-6".into(),
        '&' => "shift-7".into(),
        '*' => "shift-8".into(),
        '(' => "shift-9".into(),
        ')' => "shift-0".into(),
        other => return Err(KeyError::Untypeable(other)),
    };
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(keys: &str) -> Vec<String> {
        combination(keys)
            .unwrap()
            .into_iter()
            .map(|v| v["data"].to_string().trim_matches('"').to_owned())
            .collect()
    }

    #[test]
    fn combinations_become_qcodes() {
        assert_eq!(codes("ctrl-alt-delete"), ["ctrl", "alt", "delete"]);
        assert_eq!(codes("alt-f2"), ["alt", "f2"]);
        assert_eq!(codes("ret"), ["ret"]);
        assert_eq!(codes("spc"), ["spc"]);
        assert_eq!(codes("Enter"), ["ret"]);
        assert_eq!(codes("shift-0x0C"), ["shift", "12"]);
        assert_eq!(codes("-"), ["minus"]);
        assert_eq!(combination("ctrl-alt-del").unwrap()[2]["type"], "qcode");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = combination("ctrl-bogus").unwrap_err();
        assert_eq!(
            e,
            KeyError::Unknown {
                part: "bogus".into()
            }
        );
        assert!(e.to_string().contains("`bogus`"), "{e}");
        assert_eq!(combination(""), Err(KeyError::Empty));
    }

    #[test]
    fn every_printable_ascii_char_is_typeable() {
        for c in (0x20u8..0x7f).map(char::from).chain(['\n', '\t']) {
            let k = for_char(c).unwrap();
            combination(&k).unwrap_or_else(|e| panic!("{c:?} -> {k}: {e}"));
        }
        assert_eq!(for_char('A').unwrap(), "shift-a");
        assert_eq!(for_char('é'), Err(KeyError::Untypeable('é')));
    }
}
