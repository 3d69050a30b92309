//! What a guest answers, as the agent and the coordinator read it: the
//! `(pointer, length)` of `musketeer_map` into the guest's memory
//! ([`wasm::decode_output`]), and outputs summed for `"reduce":"sum"`
//! ([`wasm::sum::exact_sum`]). A guest controls all of it.
//!
//! Input: 8 bytes of the guest's i64 answer, 4 of the output limit, then
//! the guest's memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use musketeer_tasks::wasm::{self, abi};

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let result = i64::from_le_bytes(data[..8].try_into().unwrap());
    let max = u64::from(u32::from_le_bytes(data[8..12].try_into().unwrap()));
    let memory = &data[12..];
    let (ptr, len) = abi::split_result(result);
    assert_eq!(abi::join_result(ptr, len), result);
    match wasm::decode_output(memory, result, max) {
        Ok(text) => {
            // Inside the memory, within the limit, one JSON value, trimmed.
            let start = ptr as usize;
            let window = &memory[start..start + len as usize];
            assert!(u64::from(len) <= max);
            assert!(text.len() <= window.len());
            assert!(std::str::from_utf8(window).unwrap().contains(text));
            assert!(abi::check_json(text).is_ok());
            assert_eq!(text.trim(), text);
            if let Ok(sum) = wasm::sum::exact_sum([text, text]) {
                // A sum is a JSON number that sums to itself.
                assert!(abi::check_json(&sum).is_ok(), "{sum:?}");
                assert_eq!(wasm::sum::exact_sum([sum.as_str()]).unwrap(), sum);
            }
        }
        Err(abi::OutputError::OutsideMemory { .. }) => {
            assert!(u64::from(ptr) + u64::from(len) > memory.len() as u64);
        }
        Err(_) => {}
    }
    if let Ok(text) = std::str::from_utf8(memory) {
        let _ = wasm::sum::exact_sum(text.split(','));
    }
});
