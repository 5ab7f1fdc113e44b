//! `holdfast-policy-check FILE.wasm...`: checks built policy modules against Holdfast policy ABI
//! v1 (docs/policy-abi.md) with the same static checks as the host's deploy-time validation
//! (crate `holdfast-policy-abi`), with the host's size limits:
//!
//! - validates with exactly the allowed wasm feature set: Wasm 1.0 + mutable-globals (no SIMD,
//!   threads, reference types, bulk memory, sign-extension, multi-value, ...) and, unless
//!   `--allow-floats`, no floating-point instructions or types;
//! - no start function; imports: at most `holdfast.debug_log: (i32, i32) -> ()`;
//! - exports `memory`, `holdfast_abi_v1: () -> ()`, `holdfast_alloc: (i32) -> i32`, and hook
//!   exports `holdfast_<hook>: (i32, i32) -> i64` for known hooks only;
//! - custom sections `holdfast:policy-abi-version` = `1` and `holdfast:policy-meta` whose
//!   `hooks=` list equals the exported hooks.
//!
//! - smoke-runs the module in an interpreter (wasmi, not the production host): `holdfast_init`
//!   with an empty config must answer `ok`, and with the config `x` (not `key = value`) must
//!   answer an error — exercising `holdfast_alloc`, input decoding, reply encoding and packing.
//!
//! Prints one summary line per module; exits non-zero if any module fails.

use std::process::ExitCode;

use holdfast_policy_abi::{Hook, Limits};

/// The host's limits (docs/policy-abi.md §7; `server::policy::engine`): a module passing here
/// is not rejected at deploy for its size.
const HOST_LIMITS: Limits = Limits {
    module_bytes_max: 1 << 20,
    memory_pages_max: 256,
    table_elements_max: 10_000,
    allow_floats: false,
};

fn main() -> ExitCode {
    let mut allow_floats = false;
    let mut files = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--allow-floats" => allow_floats = true,
            _ => files.push(arg),
        }
    }
    if files.is_empty() {
        eprintln!("usage: holdfast-policy-check [--allow-floats] FILE.wasm...");
        return ExitCode::from(2);
    }
    let mut failed = false;
    for file in &files {
        match std::fs::read(file)
            .map_err(|error| error.to_string())
            .and_then(|bytes| check(&bytes, allow_floats))
        {
            Ok(summary) => println!("ok   {file}: {summary}"),
            Err(error) => {
                failed = true;
                println!("FAIL {file}: {error}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Checks one module (the shared static checks, then an init smoke run); returns a one-line
/// summary.
fn check(bytes: &[u8], allow_floats: bool) -> Result<String, String> {
    let info = holdfast_policy_abi::check(
        bytes,
        &Limits {
            allow_floats,
            ..HOST_LIMITS
        },
    )
    .map_err(|error| error.to_string())?;
    if info.hooks.contains(&Hook::Init) {
        smoke_init(bytes)?;
    }
    Ok(format!(
        "{} {} ({} bytes, {} initial pages, {} import(s), hooks: {})",
        info.name,
        info.version,
        bytes.len(),
        info.memory_pages,
        info.imported_functions,
        info.hooks
            .iter()
            .map(|hook| hook.name())
            .collect::<Vec<_>>()
            .join(",")
    ))
}

/// Calls `holdfast_init` twice on fresh instances: empty config (expects `InitReply{ok: true}`,
/// bytes `08 01`) and config `x` (expects `ok` absent and an `error`, field 2).
fn smoke_init(bytes: &[u8]) -> Result<(), String> {
    let ok = call_hook(bytes, "holdfast_init", &[])?;
    if ok != [0x08, 0x01] {
        return Err(format!(
            "init(empty config) replied {ok:02x?}, expected InitReply{{ok: true}}"
        ));
    }
    // InitRequest{config: "x"}: field 1, length-delimited, 1 byte.
    let rejected = call_hook(bytes, "holdfast_init", &[0x0a, 0x01, b'x'])?;
    if rejected.first() != Some(&0x12) {
        return Err(format!(
            "init(\"x\") replied {rejected:02x?}, expected an error"
        ));
    }
    Ok(())
}

/// Runs one hook on a fresh instance following the ABI's calling convention; returns the reply.
fn call_hook(bytes: &[u8], export: &str, input: &[u8]) -> Result<Vec<u8>, String> {
    use wasmi::{Engine, Linker, Module, Store};
    let engine = Engine::default();
    let module = Module::new(&engine, bytes).map_err(|error| error.to_string())?;
    let mut store = Store::new(&engine, ());
    let linker = Linker::<()>::new(&engine);
    let instance = linker
        .instantiate_and_start(&mut store, &module)
        .map_err(|error| format!("instantiate: {error}"))?;
    let memory = instance
        .get_memory(&store, "memory")
        .ok_or("no memory export")?;
    let alloc = instance
        .get_typed_func::<i32, i32>(&store, "holdfast_alloc")
        .map_err(|error| error.to_string())?;
    let hook = instance
        .get_typed_func::<(i32, i32), i64>(&store, export)
        .map_err(|error| error.to_string())?;
    let len = i32::try_from(input.len()).map_err(|_| "input too large")?;
    let ptr = alloc
        .call(&mut store, len)
        .map_err(|error| format!("holdfast_alloc trapped: {error}"))?;
    memory
        .write(&mut store, ptr as u32 as usize, input)
        .map_err(|error| format!("input out of bounds: {error}"))?;
    let packed = hook
        .call(&mut store, (ptr, len))
        .map_err(|error| format!("{export} trapped: {error}"))? as u64;
    let (out_ptr, out_len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
    let mut reply = vec![0; out_len];
    memory
        .read(&store, out_ptr, &mut reply)
        .map_err(|error| format!("reply out of bounds: {error}"))?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_and_empty_modules() {
        assert!(check(b"not wasm", false).is_err());
        // A valid but empty module: no exports, no sections.
        let empty = b"\0asm\x01\0\0\0";
        let error = check(empty, false).unwrap_err();
        assert!(error.contains("missing export"), "{error}");
    }
}
