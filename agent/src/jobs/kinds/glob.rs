//! File-name globs for cleanup rules and patch excludes: `*`, `?`, `[abc]`, `[a-z]`,
//! `[!x]` (or `[^x]`) and `\` escapes, matched against one name (never a path: `/` is
//! refused in patterns). Like `find -name`, `*` also matches a leading dot.

/// A compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    Any,
    Star,
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
}

impl Glob {
    /// Compiles a pattern; the error says what is wrong with it.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("empty pattern (use '*' to match every name)".into());
        }
        if pattern.contains('/') {
            return Err(format!(
                "pattern {pattern:?} contains '/': patterns match file names, not paths"
            ));
        }
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                }
                '?' => tokens.push(Token::Any),
                '\\' => match chars.next() {
                    Some(e) => tokens.push(Token::Literal(e)),
                    None => return Err(format!("pattern {pattern:?} ends with a lone '\\'")),
                },
                '[' => {
                    let negated = matches!(chars.peek(), Some('!' | '^'));
                    if negated {
                        chars.next();
                    }
                    let mut items = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(c) = chars.next() else {
                            return Err(format!("pattern {pattern:?} has an unclosed '['"));
                        };
                        if c == ']' && !first {
                            break;
                        }
                        first = false;
                        let lo = if c == '\\' {
                            chars.next().unwrap_or('\\')
                        } else {
                            c
                        };
                        if chars.peek() == Some(&'-') {
                            let mut ahead = chars.clone();
                            ahead.next();
                            match ahead.peek() {
                                Some(&hi) if hi != ']' => {
                                    chars.next();
                                    chars.next();
                                    if hi < lo {
                                        return Err(format!(
                                            "pattern {pattern:?} has a backwards range {lo}-{hi}"
                                        ));
                                    }
                                    items.push((lo, hi));
                                    continue;
                                }
                                _ => {}
                            }
                        }
                        items.push((lo, lo));
                    }
                    tokens.push(Token::Class { negated, items });
                }
                c => tokens.push(Token::Literal(c)),
            }
        }
        Ok(Glob { tokens })
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        // Iterative matching with one backtrack point per star: linear in practice and
        // never exponential, whatever the pattern.
        let (mut t, mut n) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            match self.tokens.get(t) {
                Some(Token::Star) => {
                    star = Some((t, n));
                    t += 1;
                    continue;
                }
                Some(tok) if tok.matches_one(name[n]) => {
                    t += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((st, sn)) => {
                    t = st + 1;
                    n = sn + 1;
                    star = Some((st, sn + 1));
                }
                None => return false,
            }
        }
        self.tokens[t..].iter().all(|tok| *tok == Token::Star)
    }
}

impl Token {
    fn matches_one(&self, c: char) -> bool {
        match self {
            Token::Literal(l) => *l == c,
            Token::Any => true,
            Token::Star => false,
            Token::Class { negated, items } => {
                items.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Glob::new(p).unwrap().matches(n)
    }

    #[test]
    fn stars_questions_and_literals() {
        assert!(m("*", "anything"));
        assert!(m("*", ".hidden"));
        assert!(m("*.log", "app.log"));
        assert!(!m("*.log", "app.log.1"));
        assert!(m("app.log.*", "app.log.1"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*b*c*", "xxaxxcxxbxx"));
        assert!(m("core.[0-9]*", "core.1234"));
        assert!(!m("core.[0-9]*", "core.x"));
        assert!(m("[!.]*", "visible"));
        assert!(!m("[!.]*", ".hidden"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(m("[]]", "]"));
        assert!(m("[a-]", "-"));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        assert!(Glob::new("").is_err());
        assert!(Glob::new("a/b").unwrap_err().contains("file names"));
        assert!(Glob::new("[abc").unwrap_err().contains("unclosed"));
        assert!(Glob::new("x\\").is_err());
        assert!(Glob::new("[z-a]").is_err());
    }

    #[test]
    fn many_stars_do_not_explode() {
        let g = Glob::new(&"*a".repeat(30)).unwrap();
        assert!(!g.matches(&"a".repeat(29)));
    }
}
