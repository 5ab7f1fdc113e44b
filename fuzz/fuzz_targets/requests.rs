//! Every client request decoded from arbitrary bytes and put through the edge's validation
//! (`server/src/api/validate.rs`, included as is): no panic, and whatever passes validation
//! and becomes a command applies without breaking an invariant.

#![no_main]

use holdfast_core::{AcquireRequest, BuiltinFifo, Command, Entry, Mode, State, apply};
use holdfast_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[allow(dead_code)]
#[path = "../../server/src/api/validate.rs"]
mod validate;

fn state_with_session() -> State {
    let mut state = State::default();
    let open = Entry {
        log_index: 1,
        now_ms: 1,
        command: Command::OpenSession {
            ttl_ms: 10_000,
            principal: "p".into(),
            labels: Default::default(),
        },
    };
    apply(&mut state, &open, &mut BuiltinFifo);
    state
}

fn applies(command: Command) {
    let mut state = state_with_session();
    let entry = Entry {
        log_index: 2,
        now_ms: 2,
        command,
    };
    apply(&mut state, &entry, &mut BuiltinFifo);
    assert!(state.check_invariants().is_ok());
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 8 {
        0 => {
            if let Ok(r) = pb::AcquireRequest::decode(body) {
                let valid = validate::session_id(r.session_id).is_ok()
                    && validate::lock_name("name", &r.name).is_ok()
                    && validate::wait_timeout_ms(r.wait_timeout_ms).is_ok()
                    && validate::max_holders(r.max_holders).is_ok();
                if valid {
                    applies(Command::Acquire(AcquireRequest {
                        session_id: r.session_id,
                        request_id: r.request_id,
                        name: r.name,
                        mode: if r.mode == pb::LockMode::Shared as i32 {
                            Mode::Shared
                        } else {
                            Mode::Exclusive
                        },
                        max_holders: r.max_holders,
                        wait_timeout_ms: r.wait_timeout_ms,
                        priority: r.priority,
                        value: Vec::new(),
                    }));
                }
            }
        }
        1 => {
            if let Ok(r) = pb::ReleaseRequest::decode(body)
                && validate::session_id(r.session_id).is_ok()
                && validate::lock_name("name", &r.name).is_ok()
                && validate::token(r.token).is_ok()
            {
                applies(Command::Release {
                    session_id: r.session_id,
                    request_id: r.request_id,
                    name: r.name,
                    token: r.token,
                });
            }
        }
        2 => {
            if let Ok(r) = pb::OpenSessionRequest::decode(body) {
                let labels = r.labels.into_iter().collect();
                if validate::ttl_ms(r.ttl_ms).is_ok()
                    && validate::principal(&r.principal).is_ok()
                    && validate::labels(&labels).is_ok()
                {
                    applies(Command::OpenSession {
                        ttl_ms: r.ttl_ms,
                        principal: r.principal,
                        labels,
                    });
                }
            }
        }
        3 => {
            if let Ok(r) = pb::ListRequest::decode(body) {
                let _ = validate::prefix(&r.prefix);
                let _ = validate::list_limit(r.limit);
            }
        }
        4 => {
            if let Ok(r) = pb::DeployPolicyRequest::decode(body) {
                applies(Command::DeployPolicy {
                    name: r.name,
                    wasm: r.wasm,
                });
            }
        }
        5 => {
            if let Ok(r) = pb::BindPolicyRequest::decode(body)
                && validate::prefix(&r.prefix).is_ok()
            {
                applies(Command::BindPolicy {
                    prefix: r.prefix,
                    policy: r.policy,
                    version: r.version,
                    config: r.config,
                    mode: holdfast_core::BindMode::Enforce,
                });
            }
        }
        6 => {
            let _ = pb::WatchRequest::decode(body);
            let _ = pb::CampaignRequest::decode(body);
            let _ = pb::KeepAliveRequest::decode(body);
        }
        _ => {
            let _ = pb::DescribeRequest::decode(body).map(|r| validate::lock_name("name", &r.name));
            let _ = pb::CheckTokenRequest::decode(body);
        }
    }
});
