//! The one table of kernels: each kernel's name (as the API spells it) and
//! its wire tag (the variant index postcard writes first for each of
//! [`TaskInput`], [`TaskOutput`], [`ReducePlan`] and [`JobResult`]).
//!
//! Job parsing, the agent's executor, both stores and the stores' Lua
//! scripts read kernel names and tags from here, so a new kernel is a new
//! row in [`Kernel::ALL`], its module, and the arms of the enums in
//! [`crate::kernel`], [`crate::job`] and [`crate::result`] (which dispatch
//! plan, run, reduce and cost to it); nothing outside `tasks/` changes.
//!
//! [`TaskInput`]: crate::TaskInput
//! [`TaskOutput`]: crate::TaskOutput
//! [`ReducePlan`]: crate::ReducePlan
//! [`JobResult`]: crate::JobResult

use crate::job::JobSpec;
use crate::kernel::{ReducePlan, TaskInput, TaskOutput};
use crate::result::JobResult;

/// A kernel Musketeer runs.
///
/// The discriminants are the wire tags: the variants of [`TaskInput`],
/// [`TaskOutput`], [`ReducePlan`] and [`JobResult`] are declared in this
/// order, and `tags_match_the_encodings` keeps them in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kernel {
    /// Exact Fibonacci numbers.
    Fibonacci = 0,
    /// Exact n!.
    Factorial = 1,
    /// Dense f64 matrix product.
    Matmul = 2,
    /// Word frequencies.
    Wordcount = 3,
    /// An uploaded WebAssembly module mapped over items.
    Wasm = 4,
}

impl Kernel {
    /// Every kernel, in tag order.
    pub const ALL: [Kernel; 5] = [
        Kernel::Fibonacci,
        Kernel::Factorial,
        Kernel::Matmul,
        Kernel::Wordcount,
        Kernel::Wasm,
    ];

    /// The name the API, the stores and the metrics use.
    pub const fn name(self) -> &'static str {
        match self {
            Kernel::Fibonacci => "fibonacci",
            Kernel::Factorial => "factorial",
            Kernel::Matmul => "matmul",
            Kernel::Wordcount => "wordcount",
            Kernel::Wasm => "wasm",
        }
    }

    /// The variant index postcard writes first (one byte: there are fewer
    /// than 128 kernels, so the varint is one byte long).
    pub const fn tag(self) -> u8 {
        self as u8
    }

    /// The kernel named `name`, as a job body spells it.
    pub fn from_name(name: &str) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kernel whose wire tag is `tag`.
    pub fn from_tag(tag: u8) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| k.tag() == tag)
    }

    /// The kernel of an encoded task input, output, reduce plan or result,
    /// read from its first byte without decoding the rest (which may be
    /// megabytes of text or matrix).
    pub fn of_encoded(bytes: &[u8]) -> Option<Kernel> {
        Kernel::from_tag(*bytes.first()?)
    }

    /// Every kernel name, for error messages: `fibonacci, factorial, ...`.
    pub fn names() -> String {
        Kernel::ALL.map(Kernel::name).join(", ")
    }

    /// The result formats this kernel's results offer, for error messages.
    pub const fn result_formats(self) -> &'static str {
        match self {
            Kernel::Fibonacci | Kernel::Factorial | Kernel::Wasm => "json",
            Kernel::Matmul => "json or npy",
            Kernel::Wordcount => "json or tsv",
        }
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TaskInput {
    /// The kernel that runs this input.
    pub fn kind(&self) -> Kernel {
        match self {
            TaskInput::Fibonacci(_) => Kernel::Fibonacci,
            TaskInput::Factorial(_) => Kernel::Factorial,
            TaskInput::Matmul(_) => Kernel::Matmul,
            TaskInput::Wordcount(_) => Kernel::Wordcount,
            TaskInput::Wasm(_) => Kernel::Wasm,
        }
    }
}

impl TaskOutput {
    /// The kernel that produced this output.
    pub fn kind(&self) -> Kernel {
        match self {
            TaskOutput::Fibonacci(_) => Kernel::Fibonacci,
            TaskOutput::Factorial(_) => Kernel::Factorial,
            TaskOutput::Matmul(_) => Kernel::Matmul,
            TaskOutput::Wordcount(_) => Kernel::Wordcount,
            TaskOutput::Wasm(_) => Kernel::Wasm,
        }
    }
}

impl ReducePlan {
    /// The kernel whose outputs this plan reduces.
    pub fn kind(&self) -> Kernel {
        match self {
            ReducePlan::Fibonacci(_) => Kernel::Fibonacci,
            ReducePlan::Factorial(_) => Kernel::Factorial,
            ReducePlan::Matmul(_) => Kernel::Matmul,
            ReducePlan::Wordcount(_) => Kernel::Wordcount,
            ReducePlan::Wasm(_) => Kernel::Wasm,
        }
    }
}

impl JobSpec {
    /// The kernel this job runs.
    pub fn kind(&self) -> Kernel {
        match self {
            JobSpec::Fibonacci(_) => Kernel::Fibonacci,
            JobSpec::Factorial(_) => Kernel::Factorial,
            JobSpec::Matmul(_) => Kernel::Matmul,
            JobSpec::Wordcount(_) => Kernel::Wordcount,
            JobSpec::Wasm(_) => Kernel::Wasm,
        }
    }
}

impl JobResult {
    /// The kernel whose job this is the result of.
    pub fn kind(&self) -> Kernel {
        match self {
            JobResult::Fibonacci(_) => Kernel::Fibonacci,
            JobResult::Factorial(_) => Kernel::Factorial,
            JobResult::Matmul(_) => Kernel::Matmul,
            JobResult::Wordcount(_) => Kernel::Wordcount,
            JobResult::Wasm(_) => Kernel::Wasm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples;

    #[test]
    fn names_and_tags_round_trip() {
        for k in Kernel::ALL {
            assert_eq!(Kernel::from_name(k.name()), Some(k));
            assert_eq!(Kernel::from_tag(k.tag()), Some(k));
        }
        assert_eq!(Kernel::from_name("sort"), None);
        assert_eq!(Kernel::from_tag(Kernel::ALL.len() as u8), None);
        assert_eq!(Kernel::of_encoded(&[]), None);
        assert_eq!(
            Kernel::names(),
            "fibonacci, factorial, matmul, wordcount, wasm"
        );
    }

    /// The tags are postcard's variant indices of every kernel enum: a
    /// sample job of each kernel, planned, run, reduced and encoded, starts
    /// with its kernel's tag at every step.
    #[test]
    fn tags_match_the_encodings() {
        let mut seen = Vec::new();
        for (name, body) in samples::sample_jobs() {
            let (spec, options) = crate::job::parse_job(body.to_string().as_bytes()).unwrap();
            let kernel = spec.kind();
            assert_eq!(kernel.name(), name);
            let plan = spec.plan_with(&options).unwrap();
            assert_eq!(plan.reduce.kind(), kernel);
            assert_eq!(Kernel::of_encoded(&plan.reduce.encode()), Some(kernel));
            let mut outputs = Vec::new();
            for (input, _) in &plan.tasks {
                assert_eq!(input.kind(), kernel);
                assert_eq!(Kernel::of_encoded(&input.encode()), Some(kernel));
                let output = input.run().unwrap();
                assert_eq!(output.kind(), kernel);
                assert_eq!(Kernel::of_encoded(&output.encode()), Some(kernel));
                outputs.push(output);
            }
            let result = plan.reduce.reduce(outputs).unwrap();
            assert_eq!(result.kind(), kernel);
            assert_eq!(Kernel::of_encoded(&result.encode()), Some(kernel));
            seen.push(kernel);
        }
        // A wasm job needs a module, which no sample carries: the wasm
        // tests check its tags with a module of their own.
        seen.push(Kernel::Wasm);
        assert_eq!(
            seen,
            Kernel::ALL,
            "samples::sample_jobs has one job per built-in kernel"
        );
    }
}
