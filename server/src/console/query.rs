//! The query string of a console API request (`key=value` pairs, percent-decoded, each key
//! once, bounded in size), and the error a request that gets no page gets.

use std::collections::BTreeMap;

use hyper::StatusCode;

/// Longest query string the API reads (a lock name is at most 512 bytes, 3 times that encoded).
pub const CONSOLE_QUERY_BYTES_MAX: usize = 4 * 1024;

/// Why an API request got no page.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
}

pub struct Query(BTreeMap<String, String>);

impl Query {
    pub fn parse(text: &str) -> Result<Query, ApiError> {
        if text.len() > CONSOLE_QUERY_BYTES_MAX {
            return Err(ApiError::bad_request(format!(
                "query string of {} bytes; at most {CONSOLE_QUERY_BYTES_MAX}",
                text.len()
            )));
        }
        let mut pairs = BTreeMap::new();
        for pair in text.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, value) = (decode(key)?, decode(value)?);
            if pairs.insert(key.clone(), value).is_some() {
                return Err(ApiError::bad_request(format!("{key:?} given twice")));
            }
        }
        Ok(Query(pairs))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// `key` as a number, `default` when absent, at most `max`.
    pub fn number(&self, key: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(default),
            Some(text) => text
                .parse::<usize>()
                .map(|number| number.min(max))
                .map_err(|_| ApiError::bad_request(format!("{key}={text:?}: not a number"))),
        }
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; the result
/// must be UTF-8.
fn decode(text: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request(format!("{text:?}: bad percent-encoding"));
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = tail.get(..2).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                bytes.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                rest = &tail[2..];
                continue;
            }
            byte => bytes.push(byte),
        }
        rest = tail;
    }
    String::from_utf8(bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::Query;

    #[test]
    fn decodes_pairs_and_refuses_what_it_cannot_read() {
        let query = Query::parse("prefix=jobs%2Fa+b&limit=5&empty").unwrap();
        assert_eq!(query.get("prefix"), Some("jobs/a b"));
        assert_eq!(query.number("limit", 50, 3).unwrap(), 3);
        assert_eq!(query.number("missing", 50, 100).unwrap(), 50);
        assert_eq!(query.get("empty"), Some(""));
        assert!(Query::parse("a=1&a=2").is_err());
        assert!(Query::parse("a=%zz").is_err());
        assert!(Query::parse("a=%4").is_err());
        assert!(Query::parse("a=%ff").is_err(), "not UTF-8");
        assert!(Query::parse(&"a".repeat(super::CONSOLE_QUERY_BYTES_MAX + 1)).is_err());
        assert!(
            Query::parse("limit=x")
                .unwrap()
                .number("limit", 1, 2)
                .is_err()
        );
    }
}
