//! SQL identifiers from config (schema, table and column names): validated once and only
//! then quoted into statements. Values always travel as bound parameters; an identifier
//! cannot be a parameter, so this is the one place where text reaches SQL, and it only
//! lets through names made of letters, digits and `_`.

use std::fmt;

/// A validated identifier; `Display` gives it backtick-quoted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Ident(String);

/// A name that is not a plain identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {name:?} is not a plain SQL identifier (letters, digits and '_', not starting with a digit, at most 64)")]
pub struct IdentError {
    pub what: &'static str,
    pub name: String,
}

impl Ident {
    pub fn new(what: &'static str, name: &str) -> Result<Ident, IdentError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && !name.as_bytes()[0].is_ascii_digit()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok { Ok(Ident(name.to_string())) } else { Err(IdentError { what, name: name.to_string() }) }
    }

    /// The bare name, for parameters (information_schema lookups) and reports.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_and_are_quoted() {
        assert_eq!(Ident::new("table", "audit_log").unwrap().to_string(), "`audit_log`");
        assert_eq!(Ident::new("table", "T2").unwrap().name(), "T2");
    }

    #[test]
    fn anything_that_could_change_a_statement_is_refused() {
        for bad in ["", "a b", "x;DROP TABLE users", "a`b", "1abc", "sess-ions", "naïve", "a.b", &"x".repeat(65)] {
            let err = Ident::new("table", bad).unwrap_err();
            assert!(err.to_string().contains("table"), "{err}");
        }
    }
}
