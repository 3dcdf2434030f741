//! Redis's glob dialect (`stringmatchlen`), used for `PSUBSCRIBE` delivery in embedded mode and
//! for `PUBSUB CHANNELS <pattern>`: `*`, `?`, `[abc]`, `[^a-z]`, and `\` to escape.
//!
//! Implemented with single-star backtracking, so a hostile pattern like `a*a*a*a*b` costs
//! O(pattern × subject) rather than exponential time.

/// Whether `subject` matches `pattern`, byte for byte as Redis decides it.
pub fn matches(pattern: &[u8], subject: &[u8]) -> bool {
    let (mut p, mut s) = (0, 0);
    // Where to resume after the most recent `*`: (pattern index after it, subject index).
    let mut star: Option<(usize, usize)> = None;
    while s < subject.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    star = Some((p, s));
                    continue;
                }
                _ => {
                    if let Some(next) = match_one(pattern, p, subject[s]) {
                        p = next;
                        s += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, ss)) => {
                p = sp;
                s = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one subject byte against the token at `p`; returns the index after the token.
fn match_one(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == c).then_some(p + 2),
        b'[' => {
            let mut i = p + 1;
            let negate = pattern.get(i) == Some(&b'^');
            if negate {
                i += 1;
            }
            let mut hit = false;
            loop {
                match pattern.get(i) {
                    // An unterminated class ends the pattern, as in Redis.
                    None => break,
                    Some(b']') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < pattern.len() => {
                        hit |= pattern[i + 1] == c;
                        i += 2;
                    }
                    Some(&lo) if pattern.get(i + 1) == Some(&b'-') && i + 2 < pattern.len() => {
                        let hi = pattern[i + 2];
                        let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                        hit |= (lo..=hi).contains(&c);
                        i += 3;
                    }
                    Some(&other) => {
                        hit |= other == c;
                        i += 1;
                    }
                }
            }
            (hit != negate).then_some(i)
        }
        literal => (literal == c).then_some(p + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn redis_glob_semantics() {
        let yes: [(&[u8], &[u8]); 10] = [
            (b"*", b""),
            (b"*", b"anything"),
            (b"socket.io#/#*", b"socket.io#/#room#"),
            (b"h?llo", b"hello"),
            (b"h[ae]llo", b"hallo"),
            (b"h[^e]llo", b"hallo"),
            (b"h[a-b]llo", b"hbllo"),
            (b"h[b-a]llo", b"hallo"),
            (b"a\\*b", b"a*b"),
            (b"a*b*c", b"aXXbYYc"),
        ];
        for (p, s) in yes {
            assert!(
                matches(p, s),
                "{:?} should match {:?}",
                String::from_utf8_lossy(p),
                String::from_utf8_lossy(s)
            );
        }
        let no: [(&[u8], &[u8]); 6] = [
            (b"h?llo", b"hllo"),
            (b"h[^e]llo", b"hello"),
            (b"a\\*b", b"aXb"),
            (b"a*b", b"a"),
            (b"abc", b"abcd"),
            (b"socketio#*", b"socket.io#x"),
        ];
        for (p, s) in no {
            assert!(
                !matches(p, s),
                "{:?} should not match {:?}",
                String::from_utf8_lossy(p),
                String::from_utf8_lossy(s)
            );
        }
    }

    #[test]
    fn hostile_patterns_finish_quickly() {
        let subject = vec![b'a'; 2000];
        assert!(!matches(b"a*a*a*a*a*a*a*a*a*a*b", &subject));
    }
}
