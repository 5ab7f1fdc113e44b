//! `holdfast-policy-check FILE.wasm...`: checks built policy modules against Holdfast policy ABI
//! v1 (docs/policy-abi.md) the way the host's deploy-time validation should:
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

use std::collections::BTreeSet;
use std::process::ExitCode;

use wasmparser::{ExternalKind, Parser, Payload, TypeRef, ValType, Validator, WasmFeatures};

const HOOKS: [&str; 6] = [
    "init",
    "admit",
    "choose_next",
    "lease_for",
    "on_session_expire",
    "elect",
];

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

/// The allowed feature set: Wasm 1.0 (+ mutable globals), optionally without floats.
fn features(allow_floats: bool) -> WasmFeatures {
    if allow_floats {
        WasmFeatures::WASM1
    } else {
        WasmFeatures::WASM1.difference(WasmFeatures::FLOATS)
    }
}

/// Checks one module; returns a one-line summary.
fn check(bytes: &[u8], allow_floats: bool) -> Result<String, String> {
    let owned_types = Validator::new_with_features(features(allow_floats))
        .validate_all(bytes)
        .map_err(|error| format!("invalid under the allowed feature set: {error}"))?;
    let types = owned_types.as_ref();
    let signature = |func_index: u32| -> (Vec<ValType>, Vec<ValType>) {
        let func = types[types.core_function_at(func_index)].unwrap_func();
        (func.params().to_vec(), func.results().to_vec())
    };
    let (i32_, i64_) = (ValType::I32, ValType::I64);

    let mut hooks = BTreeSet::new();
    let mut exports = BTreeSet::new();
    let mut abi_section = None;
    let mut meta_section = None;
    let mut memory_pages = None;
    let mut imported_functions = 0;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|error| error.to_string())? {
            Payload::StartSection { .. } => return Err("has a start function".into()),
            Payload::ImportSection(reader) => {
                for import in reader {
                    let import = import.map_err(|error| error.to_string())?;
                    let TypeRef::Func(type_index) = import.ty else {
                        return Err(format!(
                            "imports non-function {}.{}",
                            import.module, import.name
                        ));
                    };
                    let func = types[types.core_type_at_in_module(type_index)].unwrap_func();
                    if (import.module, import.name) != ("holdfast", "debug_log")
                        || func.params() != [i32_, i32_]
                        || !func.results().is_empty()
                    {
                        return Err(format!(
                            "disallowed import {}.{}: {func}",
                            import.module, import.name
                        ));
                    }
                    imported_functions += 1;
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    memory_pages = Some(memory.map_err(|error| error.to_string())?.initial);
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(|error| error.to_string())?;
                    exports.insert(export.name.to_string());
                    match (export.kind, export.name) {
                        (ExternalKind::Memory, "memory") => {}
                        // Linker-provided globals, harmless.
                        (ExternalKind::Global, "__data_end" | "__heap_base") => {}
                        (ExternalKind::Func, "holdfast_abi_v1") => {
                            if signature(export.index) != (vec![], vec![]) {
                                return Err("holdfast_abi_v1 must be () -> ()".into());
                            }
                        }
                        (ExternalKind::Func, "holdfast_alloc") => {
                            if signature(export.index) != (vec![i32_], vec![i32_]) {
                                return Err("holdfast_alloc must be (i32) -> i32".into());
                            }
                        }
                        (ExternalKind::Func, name) => {
                            let hook = name
                                .strip_prefix("holdfast_")
                                .filter(|hook| HOOKS.contains(hook))
                                .ok_or_else(|| format!("unexpected export {name}"))?;
                            if signature(export.index) != (vec![i32_, i32_], vec![i64_]) {
                                return Err(format!("{name} must be (i32, i32) -> i64"));
                            }
                            hooks.insert(hook.to_string());
                        }
                        (kind, name) => {
                            return Err(format!("unexpected export {name} ({kind:?})"));
                        }
                    }
                }
            }
            Payload::CustomSection(reader) => match reader.name() {
                "holdfast:policy-abi-version" => abi_section = Some(reader.data().to_vec()),
                "holdfast:policy-meta" => meta_section = Some(reader.data().to_vec()),
                _ => {}
            },
            _ => {}
        }
    }

    for required in ["memory", "holdfast_abi_v1", "holdfast_alloc"] {
        if !exports.contains(required) {
            return Err(format!("missing export {required}"));
        }
    }
    if abi_section.as_deref() != Some(b"1") {
        return Err("custom section holdfast:policy-abi-version missing or not `1`".into());
    }
    let meta = meta_section.ok_or("custom section holdfast:policy-meta missing")?;
    let meta = String::from_utf8(meta).map_err(|_| "holdfast:policy-meta is not UTF-8")?;
    let field = |key: &str| {
        meta.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("")
    };
    if field("abi") != "1" {
        return Err(format!("metadata abi is `{}`, expected 1", field("abi")));
    }
    let meta_hooks: BTreeSet<String> = field("hooks")
        .split(',')
        .filter(|hook| !hook.is_empty())
        .map(str::to_string)
        .collect();
    if meta_hooks != hooks {
        return Err(format!(
            "metadata hooks {meta_hooks:?} differ from exported hooks {hooks:?}"
        ));
    }
    if hooks.contains("init") {
        smoke_init(bytes)?;
    }
    Ok(format!(
        "{} {} ({} bytes, {} initial pages, {} import(s), hooks: {})",
        field("name"),
        field("version"),
        bytes.len(),
        memory_pages.unwrap_or(0),
        imported_functions,
        hooks.into_iter().collect::<Vec<_>>().join(",")
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
