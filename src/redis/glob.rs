//! Redis glob patterns (`SCAN MATCH`), matched here for the keys that come from a command without
//! a MATCH option (`CLUSTER GETKEYSINSLOT`). Pure.
//!
//! The rules are Redis's own (`stringmatchlen` in its `util.c`), so a key is kept exactly when
//! `SCAN MATCH` would have kept it: `*` any run of bytes, `?` one byte, `[abc]`, `[^abc]` and
//! `[a-z]` classes (an unclosed class runs to the end of the pattern), `\` makes the next byte
//! literal. Range ends are compared as signed bytes, as Redis built for x86-64 does.

/// Whether `key` matches the Redis glob `pattern`, as `SCAN MATCH pattern` decides.
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    // SCAN does not match `*` at all: it keeps every key, the empty one too.
    if pattern == b"*" {
        return true;
    }
    // Set once a `*` has tried every rest of the key: an earlier `*` taking more cannot help.
    let mut give_up = false;
    match_from(pattern, key, &mut give_up, 0)
}

fn match_from(p: &[u8], s: &[u8], give_up: &mut bool, nesting: u32) -> bool {
    // As Redis: a bound against abusive patterns.
    if nesting > 1000 {
        return false;
    }
    let (mut i, mut j) = (0, 0);
    while i < p.len() && j < s.len() {
        match p[i] {
            b'*' => {
                while p.get(i + 1) == Some(&b'*') {
                    i += 1;
                }
                if i + 1 == p.len() {
                    return true;
                }
                while j < s.len() {
                    if match_from(&p[i + 1..], &s[j..], give_up, nesting + 1) {
                        return true;
                    }
                    if *give_up {
                        return false;
                    }
                    j += 1;
                }
                *give_up = true;
                return false;
            }
            b'?' => j += 1,
            b'[' => {
                i += 1;
                let negated = p.get(i) == Some(&b'^');
                if negated {
                    i += 1;
                }
                let c = s[j];
                let mut hit = false;
                loop {
                    if p.get(i) == Some(&b'\\') && p.len() - i >= 2 {
                        i += 1;
                        hit |= p[i] == c;
                    } else if p.get(i) == Some(&b']') {
                        break;
                    } else if i >= p.len() {
                        // Unclosed: the class ends with the pattern.
                        i = p.len() - 1;
                        break;
                    } else if p.len() - i >= 3 && p[i + 1] == b'-' {
                        let (a, b) = (p[i] as i8, p[i + 2] as i8);
                        hit |= (a.min(b)..=a.max(b)).contains(&(c as i8));
                        i += 2;
                    } else {
                        hit |= p[i] == c;
                    }
                    i += 1;
                }
                if hit == negated {
                    return false;
                }
                j += 1;
            }
            b => {
                let literal = match b == b'\\' && p.len() - i >= 2 {
                    true => {
                        i += 1;
                        p[i]
                    }
                    false => b,
                };
                if literal != s[j] {
                    return false;
                }
                j += 1;
            }
        }
        i += 1;
        if j == s.len() {
            while p.get(i) == Some(&b'*') {
                i += 1;
            }
            break;
        }
    }
    i == p.len() && j == s.len()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs_match_as_redis_does() {
        let yes = [
            ("checkpoint:*", "checkpoint:c-1"),
            ("checkpoint:*", "checkpoint:"),
            ("*", ""),
            ("*", "anything"),
            ("a*b*c", "axxbyyc"),
            ("h?llo", "hello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("h[b-a]llo", "hallo"),
            ("t1:\\*x", "t1:*x"),
            ("t1:[\\]]", "t1:]"),
            ("a[bc", "ab"),
            ("{tag}*", "{tag}1"),
            ("***a", "ba"),
            ("**", "x"),
            ("a*", "a"),
        ];
        for (p, s) in yes {
            assert!(matches(p.as_bytes(), s.as_bytes()), "{p} ~ {s}");
        }
        let no = [
            ("checkpoint:*", "checkpoin"),
            ("checkpoint:*", "other:c-1"),
            ("h?llo", "hllo"),
            ("h[^e]llo", "hello"),
            ("h[a-b]llo", "hcllo"),
            ("t1:\\*x", "t1:ax"),
            ("a*b*c", "axxbyy"),
            ("", "a"),
            ("a*", ""),
            ("a", ""),
            ("abc", "ab"),
        ];
        for (p, s) in no {
            assert!(!matches(p.as_bytes(), s.as_bytes()), "{p} !~ {s}");
        }
        // Deep patterns end, and do not match, rather than recurse without bound.
        let abusive = "a*".repeat(2000);
        assert!(!matches(abusive.as_bytes(), "a".repeat(3000).as_bytes()));
    }
}
