//! Write a Musketeer kernel as a plain Rust function.
//!
//! A kernel is a function from a deserialisable input to a serialisable
//! output; [`map!`] exports it as WebAssembly ABI version 1 (see the
//! coordinator's README, "Your own kernels"), and [`reduce!`] exports an
//! optional `musketeer_reduce` that folds a list of outputs into one:
//!
//! ```ignore
//! #[derive(serde::Deserialize)]
//! struct Block { start: u64, end: u64 }
//!
//! fn count_primes(b: Block) -> u64 {
//!     (b.start..b.end).filter(|&n| is_prime(n)).count() as u64
//! }
//! musketeer_guest::map!(count_primes);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-unknown-unknown` with `--release`.
//! An input that does not decode as the function's argument, and a panic,
//! trap: the agent then fails that task with the item's index.
//!
//! `no_std`: the crate needs only `alloc`. A `no_std` kernel brings its own
//! global allocator; one with std (the default) uses std's.
#![cfg_attr(not(test), no_std)]
#![deny(rust_2018_idioms)]

extern crate alloc;

use alloc::vec::Vec;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[doc(hidden)]
pub use serde_json as __serde_json;

/// The ABI version this crate exports.
pub const ABI_VERSION: u32 = 1;

/// Decodes one JSON input, applies `f`, encodes the output.
///
/// `None` if the input is not JSON of `In`'s shape (the export traps then).
pub fn apply<In, Out, F>(input: &[u8], f: F) -> Option<Vec<u8>>
where
    In: DeserializeOwned,
    Out: Serialize,
    F: FnOnce(In) -> Out,
{
    let value: In = serde_json::from_slice(input).ok()?;
    serde_json::to_vec(&f(value)).ok()
}

/// Decodes a JSON array of outputs, folds them with `f`, encodes the result.
pub fn apply_reduce<Out, F>(input: &[u8], f: F) -> Option<Vec<u8>>
where
    Out: Serialize + DeserializeOwned,
    F: FnOnce(Vec<Out>) -> Out,
{
    apply(input, f)
}

/// Packs an output's place in memory as the ABI returns it: the pointer in
/// the high 32 bits, the length in the low 32.
pub fn pack(ptr: u32, len: u32) -> i64 {
    (((ptr as u64) << 32) | len as u64) as i64
}

/// The glue the macros expand to: memory handling that only makes sense
/// inside a WebAssembly instance.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __abi {
    use alloc::alloc::{alloc, dealloc, Layout};
    use alloc::vec::Vec;
    use core::cell::UnsafeCell;

    #[cfg(target_feature = "atomics")]
    compile_error!(
        "musketeer-guest assumes a single-threaded module: build without the atomics feature"
    );

    /// The last output handed to the host, freed when the next call starts
    /// (the host has read it by then: it reads an output before it calls
    /// anything else).
    struct LastOutput(UnsafeCell<Option<Vec<u8>>>);

    // SAFETY: a wasm32 module built without the `atomics` target feature
    // (checked above) has one thread, and the host calls one export at a
    // time, so the cell is never reached from two places at once.
    unsafe impl Sync for LastOutput {}

    static LAST: LastOutput = LastOutput(UnsafeCell::new(None));

    /// `musketeer_alloc(len)`: room for an input of `len` bytes.
    pub fn alloc_input(len: i32) -> i32 {
        if len <= 0 {
            // Never dereferenced: a zero-length slice needs only a
            // non-null, aligned pointer.
            return 1;
        }
        let Ok(layout) = Layout::from_size_align(len as usize, 1) else {
            core::arch::wasm32::unreachable()
        };
        // SAFETY: the layout's size is non-zero (checked above).
        let ptr = unsafe { alloc(layout) };
        if ptr.is_null() {
            core::arch::wasm32::unreachable()
        }
        ptr as i32
    }

    /// Runs `f` on the input at (`ptr`, `len`), which the host wrote into
    /// memory from [`alloc_input`]; frees it, keeps the output and returns
    /// where it is.
    pub fn call(ptr: i32, len: i32, f: impl FnOnce(&[u8]) -> Option<Vec<u8>>) -> i64 {
        // SAFETY: single-threaded and not re-entered (see `LastOutput`);
        // the previous output was read by the host before this call.
        unsafe { *LAST.0.get() = None };
        let len = len.max(0) as usize;
        let out = {
            let input: &[u8] = if len == 0 {
                &[]
            } else {
                // SAFETY: by the ABI, (ptr, len) is the block the host got
                // from `musketeer_alloc(len)` and filled with the input:
                // allocated, initialised, and not aliased while `f` runs.
                unsafe { core::slice::from_raw_parts(ptr as usize as *const u8, len) }
            };
            f(input)
        };
        if len > 0 {
            // SAFETY: the same block, allocated by `alloc_input` with this
            // size and alignment 1, no longer borrowed (`input` is gone).
            unsafe {
                dealloc(
                    ptr as usize as *mut u8,
                    Layout::from_size_align_unchecked(len, 1),
                )
            };
        }
        let Some(out) = out else {
            core::arch::wasm32::unreachable()
        };
        let packed = super::pack(out.as_ptr() as usize as u32, out.len() as u32);
        // SAFETY: as above; the output stays alive until the next call.
        unsafe { *LAST.0.get() = Some(out) };
        packed
    }
}

/// Exports `f: fn(In) -> Out` as the module's `musketeer_map`, with the
/// `musketeer_alloc` the host writes inputs through. `In` is
/// `serde::Deserialize`, `Out` is `serde::Serialize`; use it once per module.
#[macro_export]
macro_rules! map {
    ($f:path) => {
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn musketeer_alloc(len: i32) -> i32 {
            $crate::__abi::alloc_input(len)
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn musketeer_map(ptr: i32, len: i32) -> i64 {
            $crate::__abi::call(ptr, len, |input| $crate::apply(input, $f))
        }
    };
}

/// Exports `f: fn(Vec<Out>) -> Out` as the module's `musketeer_reduce`, for
/// jobs with `"reduce":"module"`. It must be associative: the coordinator
/// reduces in a tree, a slice of outputs at a time, in input order.
#[macro_export]
macro_rules! reduce {
    ($f:path) => {
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn musketeer_reduce(ptr: i32, len: i32) -> i64 {
            $crate::__abi::call(ptr, len, |input| $crate::apply_reduce(input, $f))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;

    #[derive(serde::Deserialize)]
    struct Block {
        start: u64,
        end: u64,
    }

    fn evens(b: Block) -> u64 {
        (b.start..b.end).filter(|n| n % 2 == 0).count() as u64
    }

    #[test]
    fn a_function_runs_on_json_and_answers_json() {
        assert_eq!(
            apply(br#"{"start":0,"end":10}"#, evens).as_deref(),
            Some(&b"5"[..])
        );
        assert_eq!(apply(b"[1]", evens), None, "not a Block");
        assert_eq!(apply(b"{", evens), None, "not JSON");
        let sum = |v: Vec<u64>| v.into_iter().sum::<u64>();
        assert_eq!(apply_reduce(b"[1,2,3]", sum).as_deref(), Some(&b"6"[..]));
        let names = |v: Vec<String>| vec![v.concat()];
        assert_eq!(
            apply(br#"["a","b"]"#, names).as_deref(),
            Some(&br#"["ab"]"#[..])
        );
    }

    #[test]
    fn outputs_are_packed_pointer_high_length_low() {
        assert_eq!(pack(0x10, 3), 0x0000_0010_0000_0003);
        assert_eq!(pack(u32::MAX, u32::MAX) as u64, u64::MAX);
    }
}
