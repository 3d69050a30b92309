//! Runs modules with wasmi: a fresh instance per run, fuel-metered, its
//! memory and tables under a resource limiter, its call depth and value
//! stack bounded. wasmi interprets, so a module runs the same on every
//! architecture and gives the same bytes everywhere.

use std::fmt;

use wasmi::{CompilationMode, Config, Engine, Instance, Linker, Memory, Module, Store, TypedFunc};

use super::abi::{self, OutputError};
use super::limits::{Guard, LimitHit, Limits};
use super::validate::{self, ModuleError};

/// Where in a run something went wrong, as messages name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    /// Instantiation (the module's start function, or its initial memory).
    Start,
    /// Mapping the item with this index (in the job's items, from 0).
    Item(u64),
    /// The reduce call with this number (from 0, in tree order).
    Reduce(u64),
}

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Where::Start => f.write_str("instantiation"),
            Where::Item(i) => write!(f, "item {i}"),
            Where::Reduce(i) => write!(f, "reduce call {i}"),
        }
    }
}

/// Why a run of a module failed; the message is the task's (or job's) error.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum WasmError {
    /// The module itself is refused.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// The guest trapped.
    #[error("wasm trap in {at}: {reason}")]
    Trap {
        /// Where.
        at: Where,
        /// The trap, as wasmi names it (`integer divide by zero`).
        reason: String,
    },
    /// The run's fuel ran out.
    #[error("out of fuel in {at}: the {fuel} units of fuel of this run are spent (an endless loop, or too much work per task: use a smaller items_per_task)")]
    OutOfFuel {
        /// Where.
        at: Where,
        /// The fuel the run had.
        fuel: u64,
    },
    /// The guest tried to grow its memory past the limit.
    #[error("memory limit of {bytes} bytes reached in {at}")]
    MemoryLimit {
        /// Where.
        at: Where,
        /// The limit.
        bytes: u64,
    },
    /// The guest tried to grow a table past the limit.
    #[error("table limit of {elements} elements reached in {at}")]
    TableLimit {
        /// Where.
        at: Where,
        /// The limit.
        elements: u64,
    },
    /// Unbounded (or too deep) recursion.
    #[error("stack overflow in {at}: more than {depth} nested calls or {bytes} bytes of stack")]
    StackOverflow {
        /// Where.
        at: Where,
        /// The call depth limit.
        depth: usize,
        /// The value stack limit.
        bytes: usize,
    },
    /// `musketeer_alloc` gave room the input does not fit in.
    #[error("musketeer_alloc returned {ptr} for the {len} bytes of the input of {at}, outside the memory of {memory} bytes")]
    BadAlloc {
        /// Where.
        at: Where,
        /// What it returned.
        ptr: u32,
        /// The input's length.
        len: usize,
        /// The memory's size.
        memory: u64,
    },
    /// An input longer than the ABI's i32 length can say.
    #[error("the input of {at} is {len} bytes; at most 2 GiB can be passed")]
    InputTooLarge {
        /// Where.
        at: Where,
        /// Its length.
        len: usize,
    },
    /// The output cannot be read.
    #[error("output of {at} {error}")]
    Output {
        /// Where.
        at: Where,
        /// What is wrong with it.
        error: OutputError,
    },
    /// Asked to reduce with a module that has no `musketeer_reduce`.
    #[error("the module does not export musketeer_reduce: upload one that does, or use \"reduce\":\"values\" or \"sum\"")]
    NoReduce,
    /// Anything else wasmi refused (never expected after validation).
    #[error("the module could not run: {0}")]
    Engine(String),
}

/// A run's outputs and the fuel it burnt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapOutcome {
    /// One JSON text per item, in order.
    pub outputs: Vec<String>,
    /// Fuel consumed, instantiation included; the same on every agent.
    pub fuel_used: u64,
}

/// A reduce's output and the fuel it burnt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReduceOutcome {
    /// The output, JSON text.
    pub output: String,
    /// Fuel consumed by every call of the reduce.
    pub fuel_used: u64,
}

/// The configuration every run shares, with the run's stack limits.
fn config(limits: &Limits, mode: CompilationMode) -> Config {
    let mut config = Config::default();
    config
        .consume_fuel(true)
        .compilation_mode(mode)
        .set_max_recursion_depth(limits.max_recursion_depth.max(1))
        .set_max_stack_height(limits.max_stack_bytes.max(1 << 16));
    config
}

/// An engine that validates and translates everything up front, for upload.
pub(super) fn validating_engine() -> Engine {
    Engine::new(&config(&Limits::default(), CompilationMode::Eager))
}

/// A module compiled once for one task's (or one reduce's) runs.
pub struct Compiled {
    engine: Engine,
    module: Module,
    limits: Limits,
    has_reduce: bool,
    /// The bytes the exported memory starts with.
    initial_memory: u64,
}

/// What a run's store holds.
struct State {
    guard: Guard,
}

/// One live instance and its exports.
struct Live {
    store: Store<State>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
}

impl Compiled {
    /// Checks and compiles `bytes` for runs within `limits`. Function
    /// bodies are validated now and translated when first called.
    pub fn new(bytes: &[u8], limits: &Limits) -> Result<Compiled, WasmError> {
        validate::scan_sections(bytes)?;
        let engine = Engine::new(&config(limits, CompilationMode::LazyTranslation));
        let module =
            Module::new(&engine, bytes).map_err(|e| validate::classify_parse_error(bytes, &e))?;
        let has_reduce = validate::check_abi(&module)?;
        let initial_memory = validate::initial_memory_bytes(&module);
        Ok(Compiled {
            engine,
            module,
            limits: *limits,
            has_reduce,
            initial_memory,
        })
    }

    /// Whether the module exports `musketeer_reduce`.
    pub fn has_reduce(&self) -> bool {
        self.has_reduce
    }

    /// A fresh instance with `fuel` to spend.
    fn instantiate(&self, fuel: u64) -> Result<(Live, Instance), WasmError> {
        if self.initial_memory > self.limits.memory_bytes {
            return Err(WasmError::MemoryLimit {
                at: Where::Start,
                bytes: self.limits.memory_bytes,
            });
        }
        let mut store = Store::new(
            &self.engine,
            State {
                guard: Guard::new(&self.limits),
            },
        );
        store.limiter(|s| &mut s.guard);
        store
            .set_fuel(fuel)
            .map_err(|e| WasmError::Engine(e.to_string()))?;
        let linker = Linker::<State>::new(&self.engine);
        let instance = linker
            .instantiate_and_start(&mut store, &self.module)
            .map_err(|e| self.classify(&store, e, Where::Start, fuel))?;
        self.check_limits(&store, Where::Start)?;
        let memory = instance
            .get_memory(&store, abi::MEMORY)
            .ok_or(ModuleError::MissingExport(abi::MEMORY))?;
        let alloc = instance
            .get_typed_func::<i32, i32>(&store, abi::ALLOC)
            .map_err(|e| WasmError::Engine(e.to_string()))?;
        Ok((
            Live {
                store,
                memory,
                alloc,
            },
            instance,
        ))
    }

    /// Runs `musketeer_map` over `items` in order in one fresh instance;
    /// the first item is the job's item number `first` (for messages).
    pub fn map(&self, items: &[impl AsRef<str>], first: u64) -> Result<MapOutcome, WasmError> {
        let fuel = self.limits.fuel;
        let (mut live, instance) = self.instantiate(fuel)?;
        let map = instance
            .get_typed_func::<(i32, i32), i64>(&live.store, abi::MAP)
            .map_err(|e| WasmError::Engine(e.to_string()))?;
        let mut outputs = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let at = Where::Item(first + i as u64);
            let output = self.call(&mut live, &map, item.as_ref(), at, fuel)?;
            outputs.push(output);
        }
        let fuel_used = fuel - live.store.get_fuel().unwrap_or(0);
        Ok(MapOutcome { outputs, fuel_used })
    }

    /// One `musketeer_reduce` call over a JSON array, in a fresh instance
    /// with `fuel` to spend; the output and the fuel left.
    fn reduce_once(&self, array: &str, fuel: u64, at: Where) -> Result<(String, u64), WasmError> {
        if !self.has_reduce {
            return Err(WasmError::NoReduce);
        }
        let (mut live, instance) = self.instantiate(fuel)?;
        let reduce = instance
            .get_typed_func::<(i32, i32), i64>(&live.store, abi::REDUCE)
            .map_err(|e| WasmError::Engine(e.to_string()))?;
        let output = self.call(&mut live, &reduce, array, at, fuel)?;
        Ok((output, live.store.get_fuel().unwrap_or(0)))
    }

    /// Passes `input` to `func` as the ABI says and reads back its output.
    fn call(
        &self,
        live: &mut Live,
        func: &TypedFunc<(i32, i32), i64>,
        input: &str,
        at: Where,
        fuel: u64,
    ) -> Result<String, WasmError> {
        let len = input.len();
        let len_i32 = i32::try_from(len).map_err(|_| WasmError::InputTooLarge { at, len })?;
        let ptr = live
            .alloc
            .call(&mut live.store, len_i32)
            .map_err(|e| self.classify(&live.store, e, at, fuel))?;
        self.check_limits(&live.store, at)?;
        let ptr_u32 = ptr as u32;
        if live
            .memory
            .write(&mut live.store, ptr_u32 as usize, input.as_bytes())
            .is_err()
        {
            return Err(WasmError::BadAlloc {
                at,
                ptr: ptr_u32,
                len,
                memory: live.memory.data(&live.store).len() as u64,
            });
        }
        let result = func
            .call(&mut live.store, (ptr, len_i32))
            .map_err(|e| self.classify(&live.store, e, at, fuel))?;
        self.check_limits(&live.store, at)?;
        let memory = live.memory.data(&live.store);
        abi::decode_output(memory, result, self.limits.max_output_bytes)
            .map(str::to_owned)
            .map_err(|error| WasmError::Output { at, error })
    }

    /// Fails a call that hit a limit even if the guest carried on (a
    /// refused `memory.grow` must not become a different output on an
    /// agent with less memory).
    fn check_limits(&self, store: &Store<State>, at: Where) -> Result<(), WasmError> {
        match store.data().guard.hit {
            Some(LimitHit::Memory) => Err(WasmError::MemoryLimit {
                at,
                bytes: self.limits.memory_bytes,
            }),
            Some(LimitHit::Table) => Err(WasmError::TableLimit {
                at,
                elements: self.limits.table_elements,
            }),
            None => Ok(()),
        }
    }

    /// Names a wasmi error: a trap and its reason, or the limit it hit.
    fn classify(&self, store: &Store<State>, e: wasmi::Error, at: Where, fuel: u64) -> WasmError {
        match store.data().guard.hit {
            Some(LimitHit::Memory) => {
                return WasmError::MemoryLimit {
                    at,
                    bytes: self.limits.memory_bytes,
                }
            }
            Some(LimitHit::Table) => {
                return WasmError::TableLimit {
                    at,
                    elements: self.limits.table_elements,
                }
            }
            None => {}
        }
        match e.as_trap_code() {
            Some(wasmi::TrapCode::OutOfFuel) => WasmError::OutOfFuel { at, fuel },
            Some(wasmi::TrapCode::StackOverflow) => WasmError::StackOverflow {
                at,
                depth: self.limits.max_recursion_depth,
                bytes: self.limits.max_stack_bytes,
            },
            Some(code) => WasmError::Trap {
                at,
                reason: code.trap_message().to_string(),
            },
            None => WasmError::Trap {
                at,
                reason: e.to_string(),
            },
        }
    }
}

/// Maps each item (a JSON text) with `musketeer_map`, in order, in one
/// fresh instance of `module`, within `limits`.
pub fn map_items(
    module: &[u8],
    items: &[impl AsRef<str>],
    limits: &Limits,
) -> Result<MapOutcome, WasmError> {
    Compiled::new(module, limits)?.map(items, 0)
}

/// Calls `musketeer_reduce` once on `outputs_json_array` (a JSON array of
/// outputs), in a fresh instance, within `limits`.
pub fn reduce(
    module: &[u8],
    outputs_json_array: &str,
    limits: &Limits,
) -> Result<ReduceOutcome, WasmError> {
    let compiled = Compiled::new(module, limits)?;
    let (output, left) = compiled.reduce_once(outputs_json_array, limits.fuel, Where::Reduce(0))?;
    Ok(ReduceOutcome {
        output,
        fuel_used: limits.fuel - left,
    })
}

/// Fan-in of the coordinator's reduce tree: outputs reduced per call.
pub const DEFAULT_FAN_IN: usize = 64;

/// Reduces `outputs` to one with `musketeer_reduce` as a tree: groups of
/// `fan_in` outputs (in order) become one each, level by level, until one
/// is left. `reduce` is associative, so the tree gives what one call over
/// all outputs would, with every call's input bounded. Even a single output
/// (or none) goes through one call, so the result is always the module's.
/// `limits.fuel` is the budget of the whole tree; each call is a fresh
/// instance under the memory limits.
pub fn reduce_tree(
    module: &[u8],
    outputs: &[String],
    fan_in: usize,
    limits: &Limits,
) -> Result<ReduceOutcome, WasmError> {
    let compiled = Compiled::new(module, limits)?;
    if !compiled.has_reduce {
        return Err(WasmError::NoReduce);
    }
    let fan_in = fan_in.max(2);
    let mut fuel = limits.fuel;
    let mut call = 0u64;
    let mut level: Vec<String> = Vec::new();
    let mut first = true;
    loop {
        let input: &[String] = if first { outputs } else { &level };
        let groups: Vec<&[String]> = if input.is_empty() {
            vec![input]
        } else {
            input.chunks(fan_in).collect()
        };
        let mut next = Vec::with_capacity(groups.len());
        for group in groups {
            let (output, left) = compiled
                .reduce_once(&json_array(group), fuel, Where::Reduce(call))
                .map_err(|e| match e {
                    // The budget is the tree's, not the call's.
                    WasmError::OutOfFuel { at, .. } => WasmError::OutOfFuel {
                        at,
                        fuel: limits.fuel,
                    },
                    other => other,
                })?;
            fuel = left;
            call += 1;
            next.push(output);
        }
        level = next;
        first = false;
        if level.len() == 1 {
            break;
        }
    }
    Ok(ReduceOutcome {
        output: level.pop().expect("one output is left"),
        fuel_used: limits.fuel - fuel,
    })
}

/// `[a,b,c]` from JSON texts.
pub fn json_array(values: &[impl AsRef<str>]) -> String {
    let mut s =
        String::with_capacity(values.iter().map(|v| v.as_ref().len() + 1).sum::<usize>() + 2);
    s.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(v.as_ref());
    }
    s.push(']');
    s
}
