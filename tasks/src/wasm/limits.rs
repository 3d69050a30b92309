//! What one run of a module may use: fuel (a deterministic bound on work),
//! linear memory, table elements, call depth and value stack, output size;
//! and the resource limiter that holds a store to them.

use wasmi::ResourceLimiter;
use wasmi_core::LimiterError;

use super::validate::MAX_TABLES;

/// Fuel a task gets unless its job says otherwise: about ten seconds of
/// wasmi on one x86_64 core, a hundred times a planned task's work, so only
/// a runaway (an endless loop) runs out. Fuel is counted the same on every
/// architecture, so a task out of fuel is out of fuel everywhere.
pub const DEFAULT_FUEL: u64 = 10_000_000_000;
/// Linear memory a task may grow to unless its agent has less to give.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 << 20;
/// Elements a table may grow to.
pub const DEFAULT_TABLE_ELEMENTS: u64 = 100_000;
/// Nested calls before a stack overflow trap: deep enough for recursive
/// parsers, shallow enough that unbounded recursion ends in milliseconds.
pub const DEFAULT_MAX_RECURSION_DEPTH: usize = 10_000;
/// Bytes of wasmi's value stack (its locals and operands) before a trap.
pub const DEFAULT_MAX_STACK_BYTES: usize = 16 << 20;
/// Longest output of one item (or one reduce call).
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 16 << 20;

/// Limits of one run (a task's items, or a reduce).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Fuel for the whole run; running out traps.
    pub fuel: u64,
    /// Most bytes the linear memory may hold; growing past it traps.
    pub memory_bytes: u64,
    /// Most elements a table may hold; growing past it traps.
    pub table_elements: u64,
    /// Most nested calls.
    pub max_recursion_depth: usize,
    /// Most bytes of the interpreter's value stack.
    pub max_stack_bytes: usize,
    /// Longest output, in bytes.
    pub max_output_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: DEFAULT_FUEL,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            table_elements: DEFAULT_TABLE_ELEMENTS,
            max_recursion_depth: DEFAULT_MAX_RECURSION_DEPTH,
            max_stack_bytes: DEFAULT_MAX_STACK_BYTES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// Which limit a store hit, remembered so the trap that follows can be
/// reported as what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LimitHit {
    Memory,
    Table,
}

/// The store's resource limiter: refuses (with a trap, not a quiet `-1`
/// from `memory.grow`, so that a guest cannot turn an agent's smaller
/// memory into a different output) any growth past the limits.
#[derive(Debug)]
pub(super) struct Guard {
    memory_bytes: u64,
    table_elements: u64,
    pub(super) hit: Option<LimitHit>,
}

impl Guard {
    pub(super) fn new(limits: &Limits) -> Guard {
        Guard {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            hit: None,
        }
    }
}

impl ResourceLimiter for Guard {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        if desired as u64 > self.memory_bytes {
            self.hit = Some(LimitHit::Memory);
            return Err(LimiterError::ResourceLimiterDeniedAllocation);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        if desired as u64 > self.table_elements {
            self.hit = Some(LimitHit::Table);
            return Err(LimiterError::ResourceLimiterDeniedAllocation);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        MAX_TABLES as usize
    }

    fn memories(&self) -> usize {
        1
    }
}
