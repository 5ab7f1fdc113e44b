//! The glue behind [`export_policy!`](crate::export_policy): input allocation, reply packing,
//! the guest allocator, the metadata section and the debug-log import. See
//! `docs/policy-abi.md` for the contract.
//!
//! This is the only module of the SDK that uses `unsafe` (raw wasm memory and the allocator).
#![allow(unsafe_code)]

use alloc::vec::Vec;

use crate::{Hook, Policy};

/// Packs a reply location as the hook exports return it: `(ptr << 32) | len`.
pub const fn pack(ptr: u32, len: u32) -> i64 {
    (((ptr as u64) << 32) | len as u64) as i64
}

/// Unpacks a hook's return value into `(ptr, len)`.
pub const fn unpack(packed: i64) -> (u32, u32) {
    let packed = packed as u64;
    ((packed >> 32) as u32, packed as u32)
}

/// Allocates `len` bytes for the host to write an input into; returns the offset in linear
/// memory. Never freed: the host discards the instance after the log entry.
pub fn alloc(len: i32) -> i32 {
    let len = usize::try_from(len).unwrap_or(0);
    let buffer: &'static mut [u8] = Vec::leak(alloc::vec![0u8; len]);
    buffer.as_mut_ptr() as usize as i32
}

/// Runs `hook` of a fresh `P` on the input at `ptr..ptr+len` and returns the packed location
/// of the encoded reply. Traps (via panic) when the input does not decode; the host then
/// applies the hook's fallback.
pub fn call<P: Policy + Default>(hook: Hook, ptr: i32, len: i32) -> i64 {
    let len = usize::try_from(len).unwrap_or(0);
    let input: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: the host wrote `len` bytes at `ptr`, a buffer it got from `holdfast_alloc`
        // (or, by the ABI contract, any other range of this instance's linear memory) and does
        // not touch memory again until the call returns. On wasm32 every `i32` offset below
        // the memory size is a valid address; a range past the end traps in the host's copy.
        unsafe { core::slice::from_raw_parts(ptr as u32 as usize as *const u8, len) }
    };
    let reply = match crate::dispatch::<P>(hook, input) {
        Ok(reply) => reply,
        Err(_) => panic!("undecodable input"),
    };
    let reply: &'static mut [u8] = Vec::leak(reply);
    pack(reply.as_ptr() as usize as u32, reply.len() as u32)
}

/// Length of the metadata section built by [`meta`].
pub const fn meta_len(name: &str, version: &str, hooks: &[&str]) -> usize {
    let mut len = META_PREFIX.len()
        + "name=".len()
        + name.len()
        + "\nversion=".len()
        + version.len()
        + "\nsdk=".len()
        + crate::SDK_VERSION.len()
        + "\nhooks=".len()
        + "\n".len();
    let mut i = 0;
    while i < hooks.len() {
        len += hooks[i].len();
        if i > 0 {
            len += 1;
        }
        i += 1;
    }
    len
}

const META_PREFIX: &str = "abi=1\n";

/// The metadata custom section `holdfast:policy-meta`: UTF-8 `key=value` lines
/// `abi=1`, `name=`, `version=`, `sdk=`, `hooks=` (comma-separated hook names).
pub const fn meta<const N: usize>(name: &str, version: &str, hooks: &[&str]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut at = 0;
    at = put(&mut out, at, META_PREFIX);
    at = put(&mut out, at, "name=");
    at = put(&mut out, at, name);
    at = put(&mut out, at, "\nversion=");
    at = put(&mut out, at, version);
    at = put(&mut out, at, "\nsdk=");
    at = put(&mut out, at, crate::SDK_VERSION);
    at = put(&mut out, at, "\nhooks=");
    let mut i = 0;
    while i < hooks.len() {
        if i > 0 {
            at = put(&mut out, at, ",");
        }
        at = put(&mut out, at, hooks[i]);
        i += 1;
    }
    at = put(&mut out, at, "\n");
    assert!(at == N, "metadata length mismatch");
    out
}

const fn put<const N: usize>(out: &mut [u8; N], at: usize, text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        out[at + i] = bytes[i];
        i += 1;
    }
    at + bytes.len()
}

/// Sends a debug line to the host (truncated to
/// [`limits::DEBUG_LINE_BYTES_MAX`](crate::limits::DEBUG_LINE_BYTES_MAX) on a char boundary).
/// A no-op outside wasm.
pub fn debug_log(line: &str) {
    let mut end = line.len().min(crate::limits::DEBUG_LINE_BYTES_MAX);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let line = &line[..end];
    #[cfg(target_arch = "wasm32")]
    {
        #[link(wasm_import_module = "holdfast")]
        unsafe extern "C" {
            fn debug_log(ptr: i32, len: i32);
        }
        // SAFETY: the import only reads `len` bytes at `ptr` of this instance's memory, which
        // `line` keeps alive for the duration of the call.
        unsafe { debug_log(line.as_ptr() as usize as i32, line.len() as i32) }
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = line;
}

/// The guest allocator `export_policy!` installs: a bump allocator, first over a static arena
/// (`ARENA_BYTES`, zero-initialized data inside the module's initial memory), then over pages
/// obtained with `memory.grow`. Never frees (an instance lives for one log entry); running out
/// of memory (the host's cap) traps.
///
/// The arena is there for speed: a `memory.grow` makes the host change page protections
/// (`mprotect`, with a TLB shootdown on every core running the server), and the next instance
/// in the same slot changes them back. Typical hook calls fit in the arena and never grow.
pub struct BumpAllocator;

#[cfg(target_arch = "wasm32")]
mod bump {
    use core::alloc::{GlobalAlloc, Layout};
    use core::sync::atomic::{AtomicUsize, Ordering};

    const PAGE: usize = 65_536;
    /// Bytes served from the static arena before `memory.grow` is used.
    const ARENA_BYTES: usize = 256 * 1024;

    /// The arena: `.bss`, so it costs nothing until touched (copy-on-write zero pages).
    static mut ARENA: [u8; ARENA_BYTES] = [0; ARENA_BYTES];

    /// Next free byte and end of the pages grown so far (0, 0 before the first allocation).
    /// Wasm policies are single-threaded; atomics are plain loads and stores here.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static END: AtomicUsize = AtomicUsize::new(0);

    // SAFETY: `alloc` returns either null or a block of at least `layout.size()` bytes aligned
    // to `layout.align()`, inside pages obtained from `memory.grow` (so disjoint from the
    // stack, static data and every earlier block); `dealloc` never reuses memory.
    unsafe impl GlobalAlloc for super::BumpAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let align = layout.align().max(1);
            if END.load(Ordering::Relaxed) == 0 {
                let base = (&raw mut ARENA) as *mut u8 as usize;
                NEXT.store(base, Ordering::Relaxed);
                END.store(base + ARENA_BYTES, Ordering::Relaxed);
            }
            let mut start = (NEXT.load(Ordering::Relaxed) + align - 1) & !(align - 1);
            let mut end = END.load(Ordering::Relaxed);
            let Some(mut needed_end) = start.checked_add(layout.size()) else {
                return core::ptr::null_mut();
            };
            if needed_end > end {
                let pages = (layout.size() + align).div_ceil(PAGE).max(16);
                let previous = core::arch::wasm32::memory_grow(0, pages);
                if previous == usize::MAX {
                    return core::ptr::null_mut();
                }
                let base = previous * PAGE;
                if base != end {
                    // Not contiguous with the current region: start over in the new pages.
                    start = (base + align - 1) & !(align - 1);
                    needed_end = start + layout.size();
                }
                end = base + pages * PAGE;
                END.store(end, Ordering::Relaxed);
            }
            NEXT.store(needed_end, Ordering::Relaxed);
            start as *mut u8
        }

        unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips() {
        assert_eq!(unpack(pack(0x0001_0000, 42)), (0x0001_0000, 42));
        assert_eq!(unpack(pack(u32::MAX, u32::MAX)), (u32::MAX, u32::MAX));
        assert_eq!(pack(1, 2), (1i64 << 32) | 2);
    }

    #[test]
    fn meta_section_layout() {
        const HOOKS: &[&str] = &["admit", "lease_for"];
        const LEN: usize = meta_len("p", "1.2.3", HOOKS);
        let bytes = meta::<LEN>("p", "1.2.3", HOOKS);
        let text = core::str::from_utf8(&bytes).unwrap();
        let expected = alloc::format!(
            "abi=1\nname=p\nversion=1.2.3\nsdk={}\nhooks=admit,lease_for\n",
            crate::SDK_VERSION
        );
        assert_eq!(text, expected);
        let config = crate::Config::parse(&bytes).unwrap();
        assert_eq!(config.list("hooks"), ["admit", "lease_for"]);
    }
}
