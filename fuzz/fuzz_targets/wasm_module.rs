//! A module as `POST /v1/modules` takes it and an agent runs it: validated
//! ([`wasm::validate`], the upload's check), and when accepted, mapped and
//! reduced under small limits. A hostile module may fail its own tasks; it
//! must never crash the coordinator or the agent, and whatever validation
//! accepts must be runnable (an error, never a panic).
//!
//! Half the inputs are raw bytes; the other half edit a good module byte
//! by byte, so the fuzzer reaches deep into well-formed modules without a
//! seed corpus.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use musketeer_tasks::wasm::{self, Limits, ModuleId};

/// A good module: memory, a bump allocator, a map that wraps each item in
/// `[...]`, a reduce that answers its input, a table and a global.
const GOOD: &str = r#"(module
  (memory (export "memory") 1 4)
  (table 2 funcref)
  (global $next (mut i32) (i32.const 1024))
  (func $alloc (export "musketeer_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $len)))
    (local.get $p))
  (func (export "musketeer_map") (param $ptr i32) (param $len i32) (result i64)
    (local $out i32)
    (local.set $out (call $alloc (i32.add (local.get $len) (i32.const 2))))
    (i32.store8 (local.get $out) (i32.const 91))
    (memory.copy (i32.add (local.get $out) (i32.const 1)) (local.get $ptr) (local.get $len))
    (i32.store8 (i32.add (i32.add (local.get $out) (local.get $len)) (i32.const 1)) (i32.const 93))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.extend_i32_u (i32.add (local.get $len) (i32.const 2)))))
  (func (export "musketeer_reduce") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
  (data (i32.const 16) "seed"))"#;

fn good() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| wat::parse_str(GOOD).expect("the seed module is valid WAT"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let module = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        // Each 3 bytes overwrite one byte of the good module: 2 for where
        // (modulo its length), 1 for the value; a last lone byte cuts it.
        let mut bytes = good().to_vec();
        let mut edits = rest.chunks_exact(3);
        for e in &mut edits {
            let at = u16::from_le_bytes([e[0], e[1]]) as usize % bytes.len();
            bytes[at] = e[2];
        }
        if let [cut, ..] = edits.remainder() {
            bytes.truncate(*cut as usize * bytes.len() / 255);
        }
        bytes
    };
    let unedited = mode & 1 == 1 && rest.is_empty();
    let info = match wasm::validate(&module) {
        Ok(info) => info,
        Err(e) => {
            assert!(!unedited, "the good module is refused: {e}");
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert_eq!(info.id, ModuleId::of(&module));
    assert_eq!(info.size, module.len() as u64);
    let limits = Limits {
        fuel: 200_000,
        memory_bytes: 1 << 20,
        table_elements: 1_000,
        max_recursion_depth: 200,
        max_stack_bytes: 1 << 20,
        max_output_bytes: 1 << 16,
    };
    let mapped = wasm::map_items(&module, &["1", "\"x\"", "[]"], &limits);
    if unedited {
        assert_eq!(mapped.as_ref().unwrap().outputs, ["[1]", "[\"x\"]", "[[]]"]);
    }
    if let Ok(out) = &mapped {
        for o in &out.outputs {
            assert!(wasm::abi::check_json(o).is_ok(), "an output that is not JSON: {o:?}");
        }
    }
    if info.has_reduce {
        let outputs = ["1".to_string(), "2".into(), "3".into()];
        let _ = wasm::reduce_tree(&module, &outputs, 2, &limits);
    }
});
