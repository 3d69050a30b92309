//! Checks a module against ABI version 1 and the limits before anyone runs
//! it: the coordinator at upload (a 422 that names the problem) and the
//! agent before each task (the bytes are hashed, but the rules may be newer).
//!
//! Two passes. First a scan of the section headers, which costs nothing and
//! refuses oversized modules (100,000 functions, a million globals) before
//! the interpreter spends time on them. Then wasmi parses and validates the
//! whole module, and its view of the imports and exports is checked against
//! the ABI.

use wasmi::{ExternType, ValType};

use super::abi;
use super::engine;
use super::ModuleId;

/// Largest module accepted, as SPEC.md's `POST /v1/modules` states.
pub const MAX_MODULE_BYTES: u64 = 16 << 20;
/// Most functions: a Rust kernel with serde is a few hundred; ten thousand
/// leaves room for big dependencies and bounds compilation time.
pub const MAX_FUNCTIONS: u64 = 10_000;
/// Most entries in the type section.
pub const MAX_TYPES: u64 = 10_000;
/// Most globals.
pub const MAX_GLOBALS: u64 = 1_000;
/// Most tables (Rust modules have one, for indirect calls).
pub const MAX_TABLES: u64 = 4;
/// Most elements a table may start with (growth is bounded at run time by
/// [`super::Limits::table_elements`]).
pub const MAX_TABLE_ELEMENTS: u64 = 100_000;
/// Most linear memories: the ABI's one, exported as `memory`.
pub const MAX_MEMORIES: u64 = 1;
/// Most 64 KiB pages the memory may start with: 256 MiB (growth is bounded
/// at run time by [`super::Limits::memory_bytes`]).
pub const MAX_INITIAL_PAGES: u64 = 4_096;
/// Most exports.
pub const MAX_EXPORTS: u64 = 1_000;
/// Most data segments.
pub const MAX_DATA_SEGMENTS: u64 = 10_000;
/// Most element segments.
pub const MAX_ELEMENT_SEGMENTS: u64 = 10_000;

/// What validation learnt about a good module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Its content address.
    pub id: ModuleId,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it exports `musketeer_reduce` (needed by `"reduce":"module"`).
    pub has_reduce: bool,
}

/// Why a module is refused; each message names the problem, for the 422.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModuleError {
    /// Not a WebAssembly binary at all.
    #[error("not a WebAssembly module: {0}")]
    NotWasm(String),
    /// A WebAssembly binary, cut short.
    #[error("truncated WebAssembly module: {0}")]
    Truncated(String),
    /// Parses, but breaks WebAssembly's own rules (or uses a feature the
    /// interpreter does not offer).
    #[error("invalid WebAssembly module: {0}")]
    Invalid(String),
    /// Imports something: a kernel may use nothing but its own memory.
    #[error("the module imports {kind} \"{module}\" \"{name}\": a kernel may import nothing (no files, clock or randomness), so that its outputs depend on its inputs alone")]
    Import {
        /// The import's module name.
        module: String,
        /// The import's field name.
        name: String,
        /// Function, memory, table or global.
        kind: &'static str,
    },
    /// A required export is missing.
    #[error("the module does not export {0}, which ABI version 1 requires")]
    MissingExport(&'static str),
    /// An export the ABI names has the wrong type.
    #[error("the module exports {name} as {found}; ABI version 1 wants {wanted}")]
    WrongExport {
        /// The export.
        name: &'static str,
        /// What it is.
        found: String,
        /// What it must be.
        wanted: &'static str,
    },
    /// Larger than a limit.
    #[error("the module has {got} {what}; at most {max} are allowed")]
    TooMany {
        /// What is counted ("bytes", "functions", ...).
        what: &'static str,
        /// How many it has.
        got: u64,
        /// The limit.
        max: u64,
    },
}

/// Validates `bytes` as an ABI version 1 module within the limits.
pub fn validate(bytes: &[u8]) -> Result<ModuleInfo, ModuleError> {
    scan_sections(bytes)?;
    let engine = engine::validating_engine();
    let module = wasmi::Module::new(&engine, bytes).map_err(|e| classify_parse_error(bytes, &e))?;
    let has_reduce = check_abi(&module)?;
    Ok(ModuleInfo {
        id: ModuleId::of(bytes),
        size: bytes.len() as u64,
        has_reduce,
    })
}

/// Checks imports and exports of a parsed module against the ABI; whether
/// it has `musketeer_reduce`.
pub(super) fn check_abi(module: &wasmi::Module) -> Result<bool, ModuleError> {
    if let Some(import) = module.imports().next() {
        let kind = match import.ty() {
            ExternType::Func(_) => "the function",
            ExternType::Memory(_) => "the memory",
            ExternType::Table(_) => "the table",
            ExternType::Global(_) => "the global",
        };
        return Err(ModuleError::Import {
            module: import.module().chars().take(100).collect(),
            name: import.name().chars().take(100).collect(),
            kind,
        });
    }
    let mut memory = None;
    let mut alloc = None;
    let mut map = None;
    let mut reduce = None;
    for export in module.exports() {
        match export.name() {
            abi::MEMORY => memory = Some(export.ty().clone()),
            abi::ALLOC => alloc = Some(export.ty().clone()),
            abi::MAP => map = Some(export.ty().clone()),
            abi::REDUCE => reduce = Some(export.ty().clone()),
            _ => {}
        }
    }
    match memory {
        None => return Err(ModuleError::MissingExport(abi::MEMORY)),
        Some(ExternType::Memory(m)) => {
            if m.is_64() {
                return Err(ModuleError::WrongExport {
                    name: abi::MEMORY,
                    found: "a 64-bit memory".into(),
                    wanted: "a 32-bit memory",
                });
            }
        }
        Some(other) => {
            return Err(ModuleError::WrongExport {
                name: abi::MEMORY,
                found: describe(&other),
                wanted: "a memory",
            })
        }
    }
    check_func(
        abi::ALLOC,
        alloc,
        &[ValType::I32],
        &[ValType::I32],
        abi::ALLOC_SIGNATURE,
    )?;
    check_func(
        abi::MAP,
        map,
        &[ValType::I32, ValType::I32],
        &[ValType::I64],
        abi::MAP_SIGNATURE,
    )?;
    let has_reduce = reduce.is_some();
    if reduce.is_some() {
        check_func(
            abi::REDUCE,
            reduce,
            &[ValType::I32, ValType::I32],
            &[ValType::I64],
            abi::REDUCE_SIGNATURE,
        )?;
    }
    Ok(has_reduce)
}

/// The bytes the exported memory starts with (0 if there is none).
pub(super) fn initial_memory_bytes(module: &wasmi::Module) -> u64 {
    module
        .exports()
        .find_map(|e| match (e.name(), e.ty()) {
            (abi::MEMORY, ExternType::Memory(m)) => Some(m.minimum()),
            _ => None,
        })
        .map_or(0, |pages| pages.saturating_mul(PAGE_BYTES))
}

/// The size of a WebAssembly page.
pub const PAGE_BYTES: u64 = 65_536;

fn check_func(
    name: &'static str,
    found: Option<ExternType>,
    params: &[ValType],
    results: &[ValType],
    wanted: &'static str,
) -> Result<(), ModuleError> {
    match found {
        None => Err(ModuleError::MissingExport(name)),
        Some(ExternType::Func(f)) if f.params() == params && f.results() == results => Ok(()),
        Some(other) => Err(ModuleError::WrongExport {
            name,
            found: describe(&other),
            wanted,
        }),
    }
}

/// An export's type as a person reads it: `a function (i32) -> (i32, i32)`.
fn describe(ty: &ExternType) -> String {
    let list = |types: &[ValType]| {
        types
            .iter()
            .map(|t| format!("{t:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match ty {
        ExternType::Func(f) => format!(
            "a function ({}) -> ({})",
            list(f.params()),
            list(f.results())
        ),
        ExternType::Memory(_) => "a memory".into(),
        ExternType::Table(_) => "a table".into(),
        ExternType::Global(_) => "a global".into(),
    }
}

/// Sorts wasmi's parse error into not-wasm, truncated or invalid.
pub(super) fn classify_parse_error(bytes: &[u8], e: &wasmi::Error) -> ModuleError {
    let message = e.to_string();
    if !bytes.starts_with(&WASM_MAGIC) {
        ModuleError::NotWasm("it does not start with \\0asm".into())
    } else if message.contains("unexpected end") || message.contains("eof") {
        ModuleError::Truncated(message)
    } else {
        ModuleError::Invalid(message)
    }
}

/// The first four bytes of every WebAssembly binary.
const WASM_MAGIC: [u8; 4] = *b"\0asm";
/// The binary format version of a core module (a component has another).
const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];

/// Section ids of the binary format whose entry counts are limited.
const SECTION_TYPE: u8 = 1;
const SECTION_IMPORT: u8 = 2;
const SECTION_FUNCTION: u8 = 3;
const SECTION_TABLE: u8 = 4;
const SECTION_MEMORY: u8 = 5;
const SECTION_GLOBAL: u8 = 6;
const SECTION_EXPORT: u8 = 7;
const SECTION_ELEMENT: u8 = 9;
const SECTION_CODE: u8 = 10;
const SECTION_DATA: u8 = 11;

/// Reads the header and every section's id, size and (for the counted
/// sections) entry count, refusing what is over a limit. Cheap: it never
/// looks inside a section beyond its first number.
pub fn scan_sections(bytes: &[u8]) -> Result<(), ModuleError> {
    let size = bytes.len() as u64;
    if size > MAX_MODULE_BYTES {
        return Err(ModuleError::TooMany {
            what: "bytes",
            got: size,
            max: MAX_MODULE_BYTES,
        });
    }
    if bytes.len() < 8 {
        return if WASM_MAGIC.starts_with(bytes) || bytes.starts_with(&WASM_MAGIC) {
            if bytes.is_empty() {
                Err(ModuleError::NotWasm("the body is empty".into()))
            } else {
                Err(ModuleError::Truncated(format!(
                    "{} bytes, shorter than the 8-byte header",
                    bytes.len()
                )))
            }
        } else {
            Err(ModuleError::NotWasm("it does not start with \\0asm".into()))
        };
    }
    if bytes[..4] != WASM_MAGIC {
        return Err(ModuleError::NotWasm("it does not start with \\0asm".into()));
    }
    if bytes[4..8] != CORE_VERSION {
        return Err(ModuleError::NotWasm(format!(
            "binary format version {:02x?} is not a core module's (1); components are not supported",
            &bytes[4..8]
        )));
    }
    let mut functions = 0u64;
    let mut rest = &bytes[8..];
    while let Some((&id, after)) = rest.split_first() {
        let (len, after) = read_leb_u32(after)
            .ok_or_else(|| ModuleError::Truncated(format!("section {id} has no complete size")))?;
        let len = len as usize;
        if len > after.len() {
            return Err(ModuleError::Truncated(format!(
                "section {id} says {len} bytes, {} are left",
                after.len()
            )));
        }
        let (body, next) = after.split_at(len);
        let limit = match id {
            SECTION_TYPE => Some(("types", MAX_TYPES)),
            SECTION_IMPORT => Some(("imports", u64::MAX)),
            SECTION_FUNCTION | SECTION_CODE => Some(("functions", MAX_FUNCTIONS)),
            SECTION_TABLE => Some(("tables", MAX_TABLES)),
            SECTION_MEMORY => Some(("memories", MAX_MEMORIES)),
            SECTION_GLOBAL => Some(("globals", MAX_GLOBALS)),
            SECTION_EXPORT => Some(("exports", MAX_EXPORTS)),
            SECTION_ELEMENT => Some(("element segments", MAX_ELEMENT_SEGMENTS)),
            SECTION_DATA => Some(("data segments", MAX_DATA_SEGMENTS)),
            _ => None,
        };
        if let Some((what, max)) = limit {
            let (count, entries) = read_leb_u32(body).ok_or_else(|| {
                ModuleError::Truncated(format!("the {what} section has no complete count"))
            })?;
            let count = u64::from(count);
            if id == SECTION_FUNCTION {
                functions = count;
            }
            if count > max {
                return Err(ModuleError::TooMany {
                    what,
                    got: count,
                    max,
                });
            }
            if id == SECTION_TABLE || id == SECTION_MEMORY {
                check_initial_sizes(id, count, entries)?;
            }
        }
        rest = next;
    }
    if functions > MAX_FUNCTIONS {
        return Err(ModuleError::TooMany {
            what: "functions",
            got: functions,
            max: MAX_FUNCTIONS,
        });
    }
    Ok(())
}

/// Checks the initial sizes of the tables and memories the section declares.
/// Anything malformed here is left to the full validation that follows.
fn check_initial_sizes(id: u8, count: u64, mut entries: &[u8]) -> Result<(), ModuleError> {
    for _ in 0..count {
        if id == SECTION_TABLE {
            // A table: its element type (one byte for funcref/externref;
            // anything longer is left to the full validation), then limits.
            let Some((&ty, after)) = entries.split_first() else {
                return Ok(());
            };
            if ty == 0x40 || !(0x6f..=0x70).contains(&ty) {
                return Ok(()); // table with an initialiser or a typed reference
            }
            entries = after;
        }
        let Some((initial, after)) = read_limits(entries) else {
            return Ok(());
        };
        let (what, max) = if id == SECTION_TABLE {
            ("table elements", MAX_TABLE_ELEMENTS)
        } else {
            ("initial memory pages", MAX_INITIAL_PAGES)
        };
        if initial > max {
            return Err(ModuleError::TooMany {
                what,
                got: initial,
                max,
            });
        }
        entries = after;
    }
    Ok(())
}

/// Reads a `limits` encoding: a flags byte, the minimum, and the maximum if
/// flag bit 0 says there is one. Returns the minimum.
fn read_limits(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (&flags, rest) = bytes.split_first()?;
    let (min, rest) = read_leb_u64(rest)?;
    let rest = if flags & 1 == 1 {
        read_leb_u64(rest)?.1
    } else {
        rest
    };
    // Bit 3 (custom page sizes) adds a page-size exponent.
    let rest = if flags & 8 == 8 {
        read_leb_u64(rest)?.1
    } else {
        rest
    };
    Some((min, rest))
}

/// An unsigned LEB128 number of at most 32 bits.
fn read_leb_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (v, rest) = read_leb_u64(bytes)?;
    Some((u32::try_from(v).ok()?, rest))
}

/// An unsigned LEB128 number of at most 64 bits (10 bytes).
fn read_leb_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(b & 0x7f);
        if i == 9 && bits > 1 {
            return None;
        }
        value |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}
