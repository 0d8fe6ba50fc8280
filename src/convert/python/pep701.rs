//! Python 3.12 (PEP 701) lets an f-string's `{…}` reuse the string's own
//! quote (`f'{d.get('k')}'`), which NixOS test scripts do and the parser
//! (Python 3.11 grammar) rejects. Such a quote inside the braces becomes the
//! other one; code valid before 3.12 never has one there, so nothing else
//! changes. Used only when the script does not parse as it is.

/// The script with same-quote f-string replacement fields rewritten, or
/// `None` when there is none.
pub fn requote(src: &str) -> Option<String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut changed = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                out.push(chars[i]);
                i += 1;
            }
            continue;
        }
        if c != '"' && c != '\'' {
            out.push(c);
            i += 1;
            continue;
        }
        // The prefix letters just before the quote (already copied).
        let prefix: String = out
            .chars()
            .rev()
            .take_while(|p| p.is_ascii_alphabetic())
            .collect::<String>()
            .to_ascii_lowercase();
        let fstring = prefix.len() <= 2 && prefix.contains('f');
        let raw = prefix.len() <= 2 && prefix.contains('r');
        let triple = chars.get(i + 1) == Some(&c) && chars.get(i + 2) == Some(&c);
        let quote_len = if triple { 3 } else { 1 };
        for _ in 0..quote_len {
            out.push(c);
        }
        i += quote_len;
        let other = if c == '"' { '\'' } else { '"' };
        let mut depth = 0usize;
        while i < chars.len() {
            let ch = chars[i];
            if depth == 0 {
                if ch == '\\' && !raw {
                    out.push(ch);
                    if let Some(n) = chars.get(i + 1) {
                        out.push(*n);
                    }
                    i += 2;
                    continue;
                }
                let closes = ch == c
                    && (!triple || (chars.get(i + 1) == Some(&c) && chars.get(i + 2) == Some(&c)));
                if closes {
                    for _ in 0..quote_len {
                        out.push(c);
                    }
                    i += quote_len;
                    break;
                }
                if ch == '\n' && !triple {
                    break;
                }
                if fstring && ch == '{' {
                    if chars.get(i + 1) == Some(&'{') {
                        out.push_str("{{");
                        i += 2;
                        continue;
                    }
                    depth = 1;
                }
                out.push(ch);
                i += 1;
                continue;
            }
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                q if q == c && !triple => {
                    out.push(other);
                    changed = true;
                    i += 1;
                    continue;
                }
                _ => {}
            }
            out.push(ch);
            i += 1;
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::requote;

    #[test]
    fn rewrites_only_same_quotes_inside_fields() {
        assert_eq!(
            requote("raise Exception(f'value: {d.get('k')} ok')\n").as_deref(),
            Some("raise Exception(f'value: {d.get(\"k\")} ok')\n")
        );
        assert_eq!(
            requote("x = f\"{a[\"k\"]}\" + 'f{b}' # it's f'{c'\n").as_deref(),
            Some("x = f\"{a['k']}\" + 'f{b}' # it's f'{c'\n")
        );
        assert_eq!(requote("x = f'{{a}}' + f\"{b['k']}\"\n"), None);
        assert_eq!(requote("s = '''f'{x}' '''\ny = r'\\'\n"), None);
    }
}
