//! Shape checks at the edge, before anything is proposed: sizes, ranges, required fields. Each
//! failure names the field. `apply` checks the same limits again (it trusts only the log).

use std::collections::BTreeMap;

use holdfast_core::limits;
use tonic::Status;

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

pub fn lock_name(field: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.len() > limits::LOCK_NAME_BYTES_MAX {
        return Err(invalid(
            field,
            format!(
                "is {} bytes, at most {} allowed",
                name.len(),
                limits::LOCK_NAME_BYTES_MAX
            ),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

pub fn session_id(id: u64) -> Result<(), Status> {
    if id == 0 {
        return Err(invalid(
            "session_id",
            "must be set (sessions are numbered from 1)",
        ));
    }
    Ok(())
}

pub fn ttl_ms(ttl_ms: u64) -> Result<(), Status> {
    if !(limits::SESSION_TTL_MS_MIN..=limits::SESSION_TTL_MS_MAX).contains(&ttl_ms) {
        return Err(invalid(
            "ttl_ms",
            format!(
                "{ttl_ms} is outside {}..={} ms",
                limits::SESSION_TTL_MS_MIN,
                limits::SESSION_TTL_MS_MAX
            ),
        ));
    }
    Ok(())
}

pub fn principal(principal: &str) -> Result<(), Status> {
    if principal.len() > limits::PRINCIPAL_BYTES_MAX {
        return Err(invalid(
            "principal",
            format!(
                "is {} bytes, at most {} allowed",
                principal.len(),
                limits::PRINCIPAL_BYTES_MAX
            ),
        ));
    }
    Ok(())
}

pub fn labels(labels: &BTreeMap<String, String>) -> Result<(), Status> {
    if labels.len() > limits::LABELS_PER_SESSION_MAX {
        return Err(invalid(
            "labels",
            format!(
                "{} labels, at most {} allowed",
                labels.len(),
                limits::LABELS_PER_SESSION_MAX
            ),
        ));
    }
    for (key, value) in labels {
        if key.is_empty()
            || key.len() > limits::LABEL_BYTES_MAX
            || value.len() > limits::LABEL_BYTES_MAX
        {
            return Err(invalid(
                "labels",
                format!(
                    "label {key:?}: keys must be 1..={0} bytes, values at most {0}",
                    limits::LABEL_BYTES_MAX
                ),
            ));
        }
    }
    Ok(())
}

pub fn wait_timeout_ms(wait_timeout_ms: u64) -> Result<(), Status> {
    if wait_timeout_ms > limits::WAIT_TIMEOUT_MS_MAX {
        return Err(invalid(
            "wait_timeout_ms",
            format!(
                "{wait_timeout_ms} exceeds {} ms",
                limits::WAIT_TIMEOUT_MS_MAX
            ),
        ));
    }
    Ok(())
}

pub fn max_holders(max_holders: u32) -> Result<(), Status> {
    if max_holders > limits::HOLDERS_PER_LOCK_MAX {
        return Err(invalid(
            "max_holders",
            format!("{max_holders} exceeds {}", limits::HOLDERS_PER_LOCK_MAX),
        ));
    }
    Ok(())
}

pub fn token(token: u64) -> Result<(), Status> {
    if token == 0 {
        return Err(invalid(
            "token",
            "must be set (fencing tokens are log indexes, never 0)",
        ));
    }
    Ok(())
}

pub fn list_limit(limit: u32) -> usize {
    match usize::try_from(limit) {
        Ok(0) | Err(_) => limits::LIST_LOCKS_MAX,
        Ok(n) => n.min(limits::LIST_LOCKS_MAX),
    }
}

pub fn prefix(prefix: &str) -> Result<(), Status> {
    if prefix.len() > limits::LOCK_NAME_BYTES_MAX {
        return Err(invalid(
            "prefix",
            format!(
                "is {} bytes, at most {} allowed",
                prefix.len(),
                limits::LOCK_NAME_BYTES_MAX
            ),
        ));
    }
    Ok(())
}
