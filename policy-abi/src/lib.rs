//! Static checks of a policy module against Holdfast policy ABI v1 (`docs/policy-abi.md`
//! §1–§3), shared by the policy host (`server::policy`, at deploy) and the
//! `holdfast-policy-check` tool, so both accept exactly the same modules.
//!
//! [`check`] validates with exactly the allowed feature set (Wasm 1.0 + mutable-globals, and no
//! floats unless allowed); requires no start function; imports at most
//! `holdfast.debug_log: (i32, i32) -> ()`; exports `memory`, `holdfast_abi_v1: () -> ()`,
//! `holdfast_alloc: (i32) -> i32` and known hooks `holdfast_<hook>: (i32, i32) -> i64` only
//! (plus the linker globals `__data_end` / `__heap_base`); the custom sections
//! `holdfast:policy-abi-version` = `1` and `holdfast:policy-meta` with `abi=1` and a `hooks=`
//! list equal to the exported hooks; and the size limits the caller passes in [`Limits`].
//! Nothing is compiled or run here.

use std::collections::BTreeSet;

use wasmparser::{ExternalKind, Parser, Payload, TypeRef, ValType, Validator, WasmFeatures};

/// The hooks of ABI v1: one definition, shared with the SDK that exports them.
pub use holdfast_policy_sdk::Hook;

/// What [`check`] enforces beyond the ABI's fixed rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest module, in bytes.
    pub module_bytes_max: usize,
    /// Largest declared initial memory, in 64 KiB pages.
    pub memory_pages_max: u64,
    /// Largest declared initial table, in elements.
    pub table_elements_max: u64,
    /// Accept float instructions and types (deterministic under NaN canonicalization).
    pub allow_floats: bool,
}

/// Why a module breaks ABI v1. One variant per failure kind; messages are for operators.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AbiError {
    #[error("module is {len} bytes, more than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("module is not valid under the allowed wasm feature set: {0}")]
    Invalid(String),
    #[error("module has a start function")]
    StartFunction,
    #[error(
        "disallowed import {module}.{name} (only holdfast.debug_log: (i32, i32) -> () is allowed)"
    )]
    DisallowedImport { module: String, name: String },
    #[error("missing export {0}")]
    MissingExport(&'static str),
    #[error("unexpected export {0}")]
    UnexpectedExport(String),
    #[error("export {name} must have type {expected}")]
    BadSignature {
        name: String,
        expected: &'static str,
    },
    #[error("module declares {pages} initial memory pages, more than the {max}-page limit")]
    MemoryTooLarge { pages: u64, max: u64 },
    #[error("module declares a table of {elements} elements, more than the {max} limit")]
    TableTooLarge { elements: u64, max: u64 },
    #[error("custom section holdfast:policy-abi-version missing or not `1`")]
    AbiVersion,
    #[error("custom section holdfast:policy-meta missing, not UTF-8 or without abi=1")]
    Metadata,
    #[error("metadata hooks {declared:?} differ from exported hooks {exported:?}")]
    HooksMismatch {
        declared: Vec<String>,
        exported: Vec<String>,
    },
}

/// What [`check`] learned about a module that passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Exported hooks (equal to the metadata's `hooks=`).
    pub hooks: BTreeSet<Hook>,
    /// `name=` of the metadata.
    pub name: String,
    /// `version=` of the metadata.
    pub version: String,
    /// Declared initial memory, in pages.
    pub memory_pages: u64,
    /// Imported functions (0, or 1 for `holdfast.debug_log`).
    pub imported_functions: u32,
}

/// The allowed feature set: Wasm 1.0 (+ mutable globals), optionally without floats.
pub fn features(allow_floats: bool) -> WasmFeatures {
    if allow_floats {
        WasmFeatures::WASM1
    } else {
        WasmFeatures::WASM1.difference(WasmFeatures::FLOATS)
    }
}

/// Checks `bytes` against ABI v1 and `limits`. See the crate docs.
pub fn check(bytes: &[u8], limits: &Limits) -> Result<ModuleInfo, AbiError> {
    if bytes.len() > limits.module_bytes_max {
        return Err(AbiError::TooLarge {
            len: bytes.len(),
            max: limits.module_bytes_max,
        });
    }
    let invalid = |error: wasmparser::BinaryReaderError| AbiError::Invalid(error.to_string());
    let owned_types = Validator::new_with_features(features(limits.allow_floats))
        .validate_all(bytes)
        .map_err(invalid)?;
    let types = owned_types.as_ref();
    let signature = |func_index: u32| -> (Vec<ValType>, Vec<ValType>) {
        let func = types[types.core_function_at(func_index)].unwrap_func();
        (func.params().to_vec(), func.results().to_vec())
    };
    let (i32_, i64_) = (ValType::I32, ValType::I64);
    let bad_signature = |name: &str, expected| AbiError::BadSignature {
        name: name.to_string(),
        expected,
    };

    let mut hooks = BTreeSet::new();
    let mut exports = BTreeSet::new();
    let mut abi_section = None;
    let mut meta_section = None;
    let mut memory_pages = 0;
    let mut imported_functions = 0;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            Payload::StartSection { .. } => return Err(AbiError::StartFunction),
            Payload::ImportSection(reader) => {
                for import in reader {
                    let import = import.map_err(invalid)?;
                    let allowed = match import.ty {
                        TypeRef::Func(type_index) => {
                            let func =
                                types[types.core_type_at_in_module(type_index)].unwrap_func();
                            (import.module, import.name) == ("holdfast", "debug_log")
                                && func.params() == [i32_, i32_]
                                && func.results().is_empty()
                        }
                        _ => false,
                    };
                    if !allowed {
                        return Err(AbiError::DisallowedImport {
                            module: import.module.to_string(),
                            name: import.name.to_string(),
                        });
                    }
                    imported_functions += 1;
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    memory_pages = memory.map_err(invalid)?.initial;
                    if memory_pages > limits.memory_pages_max {
                        return Err(AbiError::MemoryTooLarge {
                            pages: memory_pages,
                            max: limits.memory_pages_max,
                        });
                    }
                }
            }
            Payload::TableSection(reader) => {
                for table in reader {
                    let elements = table.map_err(invalid)?.ty.initial;
                    if elements > limits.table_elements_max {
                        return Err(AbiError::TableTooLarge {
                            elements,
                            max: limits.table_elements_max,
                        });
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(invalid)?;
                    exports.insert(export.name.to_string());
                    match (export.kind, export.name) {
                        (ExternalKind::Memory, "memory") => {}
                        // Linker-provided globals, harmless.
                        (ExternalKind::Global, "__data_end" | "__heap_base") => {}
                        (ExternalKind::Func, "holdfast_abi_v1") => {
                            if signature(export.index) != (vec![], vec![]) {
                                return Err(bad_signature(export.name, "() -> ()"));
                            }
                        }
                        (ExternalKind::Func, "holdfast_alloc") => {
                            if signature(export.index) != (vec![i32_], vec![i32_]) {
                                return Err(bad_signature(export.name, "(i32) -> i32"));
                            }
                        }
                        (ExternalKind::Func, name) => {
                            let hook = name
                                .strip_prefix("holdfast_")
                                .and_then(Hook::from_name)
                                .ok_or_else(|| AbiError::UnexpectedExport(name.to_string()))?;
                            if signature(export.index) != (vec![i32_, i32_], vec![i64_]) {
                                return Err(bad_signature(name, "(i32, i32) -> i64"));
                            }
                            hooks.insert(hook);
                        }
                        (_, name) => return Err(AbiError::UnexpectedExport(name.to_string())),
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

    for required in ["holdfast_abi_v1", "memory", "holdfast_alloc"] {
        if !exports.contains(required) {
            return Err(AbiError::MissingExport(required));
        }
    }
    if abi_section.as_deref() != Some(b"1") {
        return Err(AbiError::AbiVersion);
    }
    let meta = meta_section.ok_or(AbiError::Metadata)?;
    let meta = String::from_utf8(meta).map_err(|_| AbiError::Metadata)?;
    let field = |key: &str| {
        meta.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("")
            .to_string()
    };
    if field("abi") != "1" {
        return Err(AbiError::Metadata);
    }
    let declared: BTreeSet<String> = field("hooks")
        .split(',')
        .filter(|hook| !hook.is_empty())
        .map(str::to_string)
        .collect();
    let exported: BTreeSet<String> = hooks.iter().map(|hook| hook.name().to_string()).collect();
    if declared != exported {
        return Err(AbiError::HooksMismatch {
            declared: declared.into_iter().collect(),
            exported: exported.into_iter().collect(),
        });
    }
    Ok(ModuleInfo {
        hooks,
        name: field("name"),
        version: field("version"),
        memory_pages,
        imported_functions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        module_bytes_max: 1 << 20,
        memory_pages_max: 256,
        table_elements_max: 10_000,
        allow_floats: false,
    };

    #[test]
    fn rejects_garbage_empty_and_oversize_modules() {
        assert!(matches!(
            check(b"not wasm", &LIMITS),
            Err(AbiError::Invalid(_))
        ));
        // A valid but empty module: no exports, no sections.
        let empty = b"\0asm\x01\0\0\0";
        assert_eq!(
            check(empty, &LIMITS),
            Err(AbiError::MissingExport("holdfast_abi_v1"))
        );
        let tiny = Limits {
            module_bytes_max: 4,
            ..LIMITS
        };
        assert_eq!(
            check(empty, &tiny),
            Err(AbiError::TooLarge { len: 8, max: 4 })
        );
    }

    #[test]
    fn hook_names_round_trip() {
        for hook in Hook::ALL {
            assert_eq!(Hook::from_name(hook.name()), Some(hook));
            assert_eq!(hook.export_name(), format!("holdfast_{}", hook.name()));
        }
        assert_eq!(Hook::from_name("abi_v1"), None);
    }
}
