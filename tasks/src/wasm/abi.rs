//! ABI version 1, the contract between a module and whoever runs it (see
//! SPEC.md, "Your own kernels"): the export names and types, and how a
//! guest's `(pointer, length)` answer is read back.

/// The module's linear memory.
pub const MEMORY: &str = "memory";
/// `musketeer_alloc(len: i32) -> i32`: room for an input of `len` bytes.
pub const ALLOC: &str = "musketeer_alloc";
/// `musketeer_map(ptr: i32, len: i32) -> i64`: one item's output.
pub const MAP: &str = "musketeer_map";
/// `musketeer_reduce(ptr: i32, len: i32) -> i64`: one output from a JSON array of outputs.
pub const REDUCE: &str = "musketeer_reduce";
/// [`ALLOC`]'s type, as error messages show it.
pub const ALLOC_SIGNATURE: &str = "a function (i32) -> (i32)";
/// [`MAP`]'s type, as error messages show it.
pub const MAP_SIGNATURE: &str = "a function (i32, i32) -> (i64)";
/// [`REDUCE`]'s type, as error messages show it.
pub const REDUCE_SIGNATURE: &str = "a function (i32, i32) -> (i64)";

/// Why a guest's answer cannot be read as an output.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum OutputError {
    /// The `(pointer, length)` pair reaches past the end of memory.
    #[error("points outside memory: {len} bytes at {ptr}, in a memory of {memory} bytes")]
    OutsideMemory {
        /// Where the output starts.
        ptr: u32,
        /// Its length.
        len: u32,
        /// The memory's size.
        memory: u64,
    },
    /// Longer than an output may be.
    #[error("is {len} bytes long; at most {max} bytes are allowed per output")]
    TooLarge {
        /// Its length.
        len: u32,
        /// The limit.
        max: u64,
    },
    /// Not UTF-8.
    #[error("is not JSON: not UTF-8 ({0})")]
    NotUtf8(String),
    /// UTF-8, but not one JSON value.
    #[error("is not JSON: {0}")]
    NotJson(String),
}

/// Splits a guest's `i64` answer into `(pointer, length)`: the pointer in
/// the high 32 bits, the length in the low 32.
pub fn split_result(result: i64) -> (u32, u32) {
    let bits = result as u64;
    ((bits >> 32) as u32, bits as u32)
}

/// Joins `(pointer, length)` the way a guest returns them.
pub fn join_result(ptr: u32, len: u32) -> i64 {
    ((u64::from(ptr) << 32) | u64::from(len)) as i64
}

/// Reads the output a guest's answer `result` points at in `memory`: at most
/// `max_len` bytes of UTF-8 holding exactly one JSON value. Returns the
/// value's text without the white space around it.
pub fn decode_output(memory: &[u8], result: i64, max_len: u64) -> Result<&str, OutputError> {
    let (ptr, len) = split_result(result);
    let end = u64::from(ptr) + u64::from(len);
    if end > memory.len() as u64 {
        return Err(OutputError::OutsideMemory {
            ptr,
            len,
            memory: memory.len() as u64,
        });
    }
    if u64::from(len) > max_len {
        return Err(OutputError::TooLarge { len, max: max_len });
    }
    let bytes = &memory[ptr as usize..end as usize];
    let text = std::str::from_utf8(bytes).map_err(|e| OutputError::NotUtf8(e.to_string()))?;
    check_json(text).map_err(OutputError::NotJson)?;
    Ok(text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r')))
}

/// Whether `text` is exactly one JSON value (white space around it allowed).
pub fn check_json(text: &str) -> Result<(), String> {
    if text
        .trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
        .is_empty()
    {
        return Err("it is empty".into());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_split_and_join() {
        assert_eq!(split_result(join_result(7, 9)), (7, 9));
        assert_eq!(
            split_result(join_result(u32::MAX, u32::MAX)),
            (u32::MAX, u32::MAX)
        );
        assert_eq!(split_result(-1), (u32::MAX, u32::MAX));
    }

    #[test]
    fn outputs_decode_or_say_why_not() {
        let mut memory = vec![0u8; 64];
        memory[10..20].copy_from_slice(b" {\"a\":1}\n ");
        assert_eq!(
            decode_output(&memory, join_result(10, 10), 100),
            Ok("{\"a\":1}")
        );
        assert_eq!(
            decode_output(&memory, join_result(60, 10), 100),
            Err(OutputError::OutsideMemory {
                ptr: 60,
                len: 10,
                memory: 64
            })
        );
        assert!(matches!(
            decode_output(&memory, join_result(u32::MAX, u32::MAX), 100),
            Err(OutputError::OutsideMemory { .. })
        ));
        assert_eq!(
            decode_output(&memory, join_result(10, 10), 5),
            Err(OutputError::TooLarge { len: 10, max: 5 })
        );
        memory[30..33].copy_from_slice(&[0xff, 0xfe, b'1']);
        let e = decode_output(&memory, join_result(30, 3), 100).unwrap_err();
        assert!(e.to_string().starts_with("is not JSON: not UTF-8"), "{e}");
        memory[40..44].copy_from_slice(b"1 2}");
        let e = decode_output(&memory, join_result(40, 4), 100).unwrap_err();
        assert!(e.to_string().starts_with("is not JSON"), "{e}");
        let e = decode_output(&memory, join_result(40, 0), 100).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }
}
