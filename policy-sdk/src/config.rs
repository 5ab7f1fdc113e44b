//! A tiny, deterministic `key = value` config format for binding configs.
//!
//! ```text
//! # comment lines start with '#'; blank lines are ignored
//! max_holds = 10
//! tenant.acme.prefixes = acme/, shared/
//! lease_ms.batch/ = 30000
//! ```
//!
//! - The config is UTF-8 text, one entry per line (`\n`, optional `\r`).
//! - An entry is `key = value`, split at the first `=`; key and value are trimmed of ASCII
//!   whitespace. Keys are non-empty and contain no whitespace; values may be empty.
//! - Keys may repeat; [`Config::get`] returns the last value, [`Config::entries`] all of them in
//!   order. Lists are comma-separated values ([`Config::list`]).
//! - Numbers are plain unsigned decimal (`30000`), with optional `_` separators; no units.
//! - Anything else is an error with a line number, so `init` can reject it at bind time.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// A parsed config: borrowed `(key, value)` entries in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config<'a> {
    entries: Vec<(&'a str, &'a str)>,
}

/// Why a config did not parse or a value was invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line number, 0 when not tied to a line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error not tied to a line.
    pub fn new(message: impl Into<String>) -> ConfigError {
        ConfigError {
            line: 0,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "config: {}", self.message)
        } else {
            write!(f, "config line {}: {}", self.line, self.message)
        }
    }
}

impl From<ConfigError> for String {
    fn from(error: ConfigError) -> String {
        format!("{error}")
    }
}

impl<'a> Config<'a> {
    /// Parses config bytes (empty bytes = empty config).
    pub fn parse(bytes: &'a [u8]) -> Result<Config<'a>, ConfigError> {
        let text = core::str::from_utf8(bytes).map_err(|error| ConfigError {
            line: 0,
            message: format!("not UTF-8 (at byte {})", error.valid_up_to()),
        })?;
        let mut entries = Vec::new();
        for (number, line) in text.split('\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(ConfigError {
                    line: number + 1,
                    message: format!("expected `key = value`, got `{line}`"),
                });
            };
            let (key, value) = (key.trim_ascii(), value.trim_ascii());
            if key.is_empty() || key.contains(|c: char| c.is_ascii_whitespace()) {
                return Err(ConfigError {
                    line: number + 1,
                    message: format!("invalid key `{key}`"),
                });
            }
            entries.push((key, value));
        }
        Ok(Config { entries })
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[(&'a str, &'a str)] {
        &self.entries
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    /// `key` as an unsigned integer, `default` when absent.
    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, ConfigError> {
        self.get(key).map_or(Ok(default), |value| {
            parse_u64(value).map_err(|message| ConfigError::new(format!("{key}: {message}")))
        })
    }

    /// `key` as `true`/`false`, `default` when absent.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(ConfigError::new(format!(
                "{key}: expected true or false, got `{other}`"
            ))),
        }
    }

    /// `key` as a comma-separated list (items trimmed, empty items dropped); empty when absent.
    pub fn list(&self, key: &str) -> Vec<&'a str> {
        self.get(key).map_or_else(Vec::new, split_list)
    }
}

/// Splits a comma-separated list, trimming items and dropping empty ones.
pub fn split_list(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim_ascii)
        .filter(|item| !item.is_empty())
        .collect()
}

/// Parses an unsigned decimal integer, allowing `_` separators.
pub fn parse_u64(value: &str) -> Result<u64, String> {
    let mut result: u64 = 0;
    let mut digits = 0;
    for c in value.chars() {
        if c == '_' {
            continue;
        }
        let digit = c
            .to_digit(10)
            .ok_or_else(|| format!("expected an unsigned integer, got `{value}`"))?;
        result = result
            .checked_mul(10)
            .and_then(|r| r.checked_add(u64::from(digit)))
            .ok_or_else(|| format!("`{value}` is too large"))?;
        digits += 1;
    }
    if digits == 0 {
        return Err(format!("expected an unsigned integer, got `{value}`"));
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_comments_and_repeats() {
        let text =
            b"# header\n\nmax_holds = 10\r\nlease_ms.batch/ = 30_000\nmax_holds=12\nempty =\n";
        let config = Config::parse(text).unwrap();
        assert_eq!(config.entries().len(), 4);
        assert_eq!(config.get("max_holds"), Some("12"));
        assert_eq!(config.u64_or("lease_ms.batch/", 0), Ok(30_000));
        assert_eq!(config.u64_or("absent", 7), Ok(7));
        assert_eq!(config.get("empty"), Some(""));
    }

    #[test]
    fn rejects_malformed_lines_with_line_number() {
        let error = Config::parse(b"a = 1\nno equals sign\n").unwrap_err();
        assert_eq!(error.line, 2);
        let error = Config::parse(b"two words = 1").unwrap_err();
        assert_eq!(error.line, 1);
        assert!(Config::parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn numbers_bools_and_lists() {
        let config =
            Config::parse(b"n = 12x\nbig = 99999999999999999999\nb = yes\nl = a/, ,b/,\n").unwrap();
        assert!(config.u64_or("n", 0).is_err());
        assert!(config.u64_or("big", 0).is_err());
        assert!(config.bool_or("b", false).is_err());
        assert_eq!(config.list("l"), ["a/", "b/"]);
        assert!(config.list("absent").is_empty());
        assert_eq!(
            parse_u64("_"),
            Err("expected an unsigned integer, got `_`".into())
        );
    }
}
