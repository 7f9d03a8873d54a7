//! [`Reader`]: reads variables and collects every problem, so all are reported at once.

use std::fmt;
use std::str::FromStr;

use secrecy::SecretString;

/// Reads variables and collects problems, so that all are reported at once.
pub(crate) struct Reader<'a> {
    pub(super) lookup: &'a dyn Fn(&str) -> Option<String>,
    pub(crate) problems: Vec<String>,
}

impl Reader<'_> {
    /// A set, non-blank variable.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    pub(crate) fn parse<T: FromStr>(&mut self, name: &str, default: T) -> T
    where
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => default,
            Some(raw) => match raw.parse() {
                Ok(v) => v,
                Err(e) => {
                    self.problems
                        .push(format!("{name}: cannot parse `{raw}`: {e}"));
                    default
                }
            },
        }
    }

    pub(crate) fn bool(&mut self, name: &str, default: bool) -> bool {
        match self.get(name).map(|v| v.to_ascii_lowercase()) {
            None => default,
            Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => true,
            Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => false,
            Some(v) => {
                self.problems
                    .push(format!("{name}: `{v}` is not a boolean (true/false)"));
                default
            }
        }
    }

    pub(crate) fn secret(&self, name: &str) -> Option<SecretString> {
        self.get(name).map(SecretString::from)
    }

    pub(crate) fn missing(&mut self, name: &str, why: &str) {
        self.problems.push(format!("{name}: missing ({why})"));
    }
}
