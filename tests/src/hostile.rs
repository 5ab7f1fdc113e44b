//! A corpus of hostile and broken policy modules, built from WAT, for the deploy tests: each
//! must be refused by `Deploy` with INVALID_ARGUMENT (statically or by the deploy pre-check's
//! sample runs), while the cluster keeps serving. [`trap_on_long_input`] instead passes the
//! pre-check and fails only in apply, on requests with long lock names.

/// `(ptr << 32) | len` of the 2-byte AdmitReply{GRANT_OR_QUEUE} at offset 2048.
const GRANT_REPLY: &str = "8796093022210";

/// The parts of a module; `Default` is a valid module whose `admit` grants.
struct Parts {
    imports: &'static str,
    memory: &'static str,
    marker: &'static str,
    alloc: &'static str,
    funcs: String,
    hooks: &'static str,
    abi_section: &'static str,
    meta_section: bool,
}

impl Default for Parts {
    fn default() -> Parts {
        Parts {
            imports: "",
            memory: r#"(memory (export "memory") 2)"#,
            marker: r#"(func (export "holdfast_abi_v1"))"#,
            alloc: r#"(func (export "holdfast_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $len)))
    (local.get $p))"#,
            funcs: admit(&format!("(i64.const {GRANT_REPLY})")),
            hooks: "admit",
            abi_section: r#"(@custom "holdfast:policy-abi-version" "1")"#,
            meta_section: true,
        }
    }
}

fn admit(body: &str) -> String {
    format!(r#"(func (export "holdfast_admit") (param i32 i32) (result i64) {body})"#)
}

fn build(parts: Parts) -> Vec<u8> {
    let meta = if parts.meta_section {
        format!(
            r#"(@custom "holdfast:policy-meta" "abi=1\nname=hostile\nversion=0\nhooks={}\n")"#,
            parts.hooks
        )
    } else {
        String::new()
    };
    let text = format!(
        r#"(module
  {}
  {}
  (global $bump (mut i32) (i32.const 4096))
  (data (i32.const 2048) "\08\01")
  (data (i32.const 2064) "\0a\02\c8\01")
  (data (i32.const 2080) "\ff\ff\ff")
  {}
  {}
  {}
  {}
  {})"#,
        parts.imports,
        parts.memory,
        parts.marker,
        parts.alloc,
        parts.funcs,
        parts.abi_section,
        meta
    );
    wat::parse_str(&text).unwrap_or_else(|error| panic!("bad corpus WAT: {error}\n{text}"))
}

/// Every module of the corpus with a short description. All must be refused at deploy.
pub fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let admit_body = |body: &str| Parts {
        funcs: admit(body),
        ..Parts::default()
    };
    vec![
        ("garbage bytes", b"this is not wasm at all".to_vec()),
        ("empty module bytes", Vec::new()),
        ("truncated wasm header", b"\0asm\x01\0".to_vec()),
        (
            "oversize module",
            vec![0; holdfast_core::limits::POLICY_MODULE_BYTES_MAX + 1],
        ),
        (
            "missing ABI marker export",
            build(Parts {
                marker: "",
                ..Parts::default()
            }),
        ),
        (
            "missing ABI version section",
            build(Parts {
                abi_section: "",
                ..Parts::default()
            }),
        ),
        (
            "missing metadata section",
            build(Parts {
                meta_section: false,
                ..Parts::default()
            }),
        ),
        (
            "metadata lists a hook that is not exported",
            build(Parts {
                hooks: "admit,choose_next",
                ..Parts::default()
            }),
        ),
        (
            "disallowed import (WASI)",
            build(Parts {
                imports: r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
                ..Parts::default()
            }),
        ),
        (
            "start function",
            build(Parts {
                funcs: format!(
                    "{} (func $start) (start $start)",
                    admit(&format!("(i64.const {GRANT_REPLY})"))
                ),
                ..Parts::default()
            }),
        ),
        (
            "float NaN tricks",
            build(admit_body(&format!(
                "(drop (i64.reinterpret_f64 (f64.div (f64.const 0) (f64.const 0)))) (i64.const {GRANT_REPLY})"
            ))),
        ),
        (
            "SIMD instruction",
            build(admit_body(&format!(
                "(drop (i32x4.extract_lane 0 (i32x4.splat (i32.const 1)))) (i64.const {GRANT_REPLY})"
            ))),
        ),
        (
            "shared memory (threads)",
            build(Parts {
                memory: r#"(memory (export "memory") 2 2 shared)"#,
                ..Parts::default()
            }),
        ),
        (
            "declared memory above the limit",
            build(Parts {
                memory: r#"(memory (export "memory") 1000)"#,
                ..Parts::default()
            }),
        ),
        (
            "unknown export",
            build(Parts {
                funcs: format!(
                    r#"{} (func (export "holdfast_secret"))"#,
                    admit(&format!("(i64.const {GRANT_REPLY})"))
                ),
                ..Parts::default()
            }),
        ),
        (
            "hook with the wrong signature",
            build(Parts {
                funcs: r#"(func (export "holdfast_admit") (param i32 i32) (result i32) (i32.const 0))"#.to_string(),
                ..Parts::default()
            }),
        ),
        (
            "infinite loop in admit",
            build(admit_body("(loop $spin (br $spin)) (i64.const 0)")),
        ),
        (
            "memory bomb in admit",
            build(admit_body(
                "(loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) (unreachable)",
            )),
        ),
        (
            "deep recursion in admit",
            build(Parts {
                funcs: format!(
                    "(func $down (param i32) (result i64) (call $down (i32.add (local.get 0) (i32.const 1)))) {}",
                    admit("(call $down (i32.const 0))")
                ),
                ..Parts::default()
            }),
        ),
        (
            "huge reply (10 MiB)",
            build(admit_body("(i64.const 8796103507968)")),
        ),
        (
            "reply outside memory",
            build(admit_body("(i64.const 9223090561878065168)")),
        ),
        (
            "reply that is not protobuf",
            build(admit_body("(i64.const 8933531975683)")),
        ),
        (
            "trap in init",
            build(Parts {
                funcs: format!(
                    r#"(func (export "holdfast_init") (param i32 i32) (result i64) (unreachable)) {}"#,
                    admit(&format!("(i64.const {GRANT_REPLY})"))
                ),
                hooks: "init,admit",
                ..Parts::default()
            }),
        ),
        (
            "choose_next grants a waiter index out of range",
            build(Parts {
                funcs: r#"(func (export "holdfast_choose_next") (param i32 i32) (result i64) (i64.const 8864812498948))"#.to_string(),
                hooks: "choose_next",
                ..Parts::default()
            }),
        ),
        (
            "infinite loop in holdfast_alloc",
            build(Parts {
                alloc: r#"(func (export "holdfast_alloc") (param i32) (result i32) (loop $spin (br $spin)) (i32.const 0))"#,
                ..Parts::default()
            }),
        ),
    ]
}

/// A module that passes every deploy check but traps in `admit` when its input is longer than
/// 400 bytes (a lock name of a few hundred bytes), so it fails only in apply.
pub fn trap_on_long_input() -> Vec<u8> {
    build(Parts {
        funcs: admit(&format!(
            "(if (i32.gt_u (local.get 1) (i32.const 400)) (then (unreachable))) (i64.const {GRANT_REPLY})"
        )),
        ..Parts::default()
    })
}
