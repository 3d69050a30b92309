//! The engine and the kernel against small hand-written modules: a good
//! map and reduce, and one hostile module per way a module can misbehave.

use super::*;
use crate::job::parse_job;
use crate::kernel::{KernelError, TaskOutput};
use crate::{JobResult, Kernel, ReducePlan, TaskInput};

/// Memory and a bump allocator, the part of the ABI every module shares.
const ALLOC: &str = r#"
  (memory (export "memory") 16)
  (global $next (mut i32) (i32.const 1024))
  (func $alloc (export "musketeer_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $len)))
    (local.get $p))
"#;

/// `musketeer_map` that answers each item `x` with `[x]`.
const WRAP: &str = r#"
  (func (export "musketeer_map") (param $ptr i32) (param $len i32) (result i64)
    (local $out i32)
    (local.set $out (call $alloc (i32.add (local.get $len) (i32.const 2))))
    (i32.store8 (local.get $out) (i32.const 91))
    (memory.copy (i32.add (local.get $out) (i32.const 1)) (local.get $ptr) (local.get $len))
    (i32.store8 (i32.add (i32.add (local.get $out) (local.get $len)) (i32.const 1)) (i32.const 93))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.extend_i32_u (i32.add (local.get $len) (i32.const 2)))))
"#;

/// `musketeer_map` that answers each item with itself.
const IDENTITY: &str = r#"
  (func (export "musketeer_map") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
"#;

/// `musketeer_reduce` that sums the non-negative integers in its input
/// (every run of digits is a number), in decimal.
const SUM_REDUCE: &str = r#"
  (func (export "musketeer_reduce") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32) (local $c i32) (local $cur i64) (local $total i64)
    (local $end i32) (local $out i32) (local $n i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (local.set $i (local.get $ptr))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
      (local.set $c (i32.load8_u (local.get $i)))
      (if (i32.and (i32.ge_u (local.get $c) (i32.const 48)) (i32.le_u (local.get $c) (i32.const 57)))
        (then (local.set $cur (i64.add (i64.mul (local.get $cur) (i64.const 10))
                                       (i64.extend_i32_u (i32.sub (local.get $c) (i32.const 48))))))
        (else (local.set $total (i64.add (local.get $total) (local.get $cur)))
              (local.set $cur (i64.const 0))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (local.set $total (i64.add (local.get $total) (local.get $cur)))
    (local.set $out (i32.add (call $alloc (i32.const 24)) (i32.const 24)))
    (loop $digit
      (local.set $out (i32.sub (local.get $out) (i32.const 1)))
      (i32.store8 (local.get $out)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $total) (i64.const 10)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (local.set $total (i64.div_u (local.get $total) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $total) (i64.const 0))))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))
"#;

/// A module of the allocator and `body`.
fn module(body: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {ALLOC} {body})")).expect("test modules are valid WAT")
}

/// A module whose `musketeer_map` runs `body` and then answers `0`.
fn mapping(body: &str) -> Vec<u8> {
    module(&format!(
        r#"(data (i32.const 16) "0")
           (func (export "musketeer_map") (param $ptr i32) (param $len i32) (result i64)
             {body}
             (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 1)))"#
    ))
}

fn small() -> Limits {
    Limits {
        fuel: 5_000_000,
        memory_bytes: 4 << 20,
        ..Limits::default()
    }
}

#[test]
fn a_good_map_answers_every_item_in_order() {
    let m = module(WRAP);
    let info = validate(&m).unwrap();
    assert_eq!(info.id, ModuleId::of(&m));
    assert_eq!(info.size, m.len() as u64);
    assert!(!info.has_reduce);
    let items = ["1", "\"two\"", "{\"three\":[3]}", "null"];
    let out = map_items(&m, &items, &small()).unwrap();
    assert_eq!(
        out.outputs,
        ["[1]", "[\"two\"]", "[{\"three\":[3]}]", "[null]"]
    );
    assert!(out.fuel_used > 0);
    // Fuel is counted, not timed: the same run costs the same.
    assert_eq!(map_items(&m, &items, &small()).unwrap(), out);
}

#[test]
fn reduce_calls_the_module_once_or_as_a_tree() {
    let m = module(&format!("{IDENTITY} {SUM_REDUCE}"));
    assert!(validate(&m).unwrap().has_reduce);
    let one = reduce(&m, "[1,2,3,40]", &small()).unwrap();
    assert_eq!(one.output, "46");
    let outputs: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    for fan_in in [2, 3, 64, 1000] {
        let tree = reduce_tree(&m, &outputs, fan_in, &small()).unwrap();
        assert_eq!(tree.output, "4950", "fan-in {fan_in}");
    }
    // One output or none still goes through the module.
    assert_eq!(
        reduce_tree(&m, &["7".into()], 2, &small()).unwrap().output,
        "7"
    );
    assert_eq!(reduce_tree(&m, &[], 2, &small()).unwrap().output, "0");
    // The tree's fuel is one budget.
    let tight = Limits {
        fuel: 2_000,
        ..small()
    };
    let e = reduce_tree(&m, &outputs, 2, &tight).unwrap_err();
    assert!(matches!(e, WasmError::OutOfFuel { fuel: 2_000, .. }), "{e}");
    let no_reduce = module(IDENTITY);
    assert_eq!(
        reduce_tree(&no_reduce, &outputs, 2, &small()),
        Err(WasmError::NoReduce)
    );
}

#[test]
fn an_endless_loop_runs_out_of_fuel() {
    let m = mapping("(loop $forever (br $forever))");
    let e = map_items(&m, &["1", "2"], &small()).unwrap_err();
    assert_eq!(
        e,
        WasmError::OutOfFuel {
            at: Where::Item(0),
            fuel: 5_000_000
        }
    );
    assert!(e.to_string().starts_with("out of fuel in item 0"), "{e}");
}

#[test]
fn memory_growth_stops_at_the_limit() {
    let m =
        mapping("(loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))");
    let e = map_items(&m, &["1"], &small()).unwrap_err();
    assert_eq!(
        e,
        WasmError::MemoryLimit {
            at: Where::Item(0),
            bytes: 4 << 20
        }
    );
    assert_eq!(
        e.to_string(),
        "memory limit of 4194304 bytes reached in item 0"
    );
}

#[test]
fn unbounded_recursion_overflows_the_stack() {
    let m = module(
        r#"(func $down (param i32) (result i64) (call $down (i32.add (local.get 0) (i32.const 1))))
           (func (export "musketeer_map") (param i32 i32) (result i64) (call $down (i32.const 0)))"#,
    );
    let limits = Limits {
        fuel: 1_000_000_000,
        ..small()
    };
    let e = map_items(&m, &["1"], &limits).unwrap_err();
    assert!(
        matches!(
            e,
            WasmError::StackOverflow {
                at: Where::Item(0),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("nested calls"), "{e}");
}

#[test]
fn huge_tables_are_refused_at_upload_and_at_run_time() {
    let big = module(&format!("(table 10000000 funcref) {IDENTITY}"));
    let e = validate(&big).unwrap_err();
    assert_eq!(
        e,
        ModuleError::TooMany {
            what: "table elements",
            got: 10_000_000,
            max: validate::MAX_TABLE_ELEMENTS
        }
    );
    let m = module(
        r#"(table $t 1 funcref) (data (i32.const 16) "0")
           (func (export "musketeer_map") (param i32 i32) (result i64)
             (drop (table.grow $t (ref.null func) (i32.const 5000000)))
             (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 1)))"#,
    );
    validate(&m).unwrap();
    let e = map_items(&m, &["1"], &small()).unwrap_err();
    assert!(
        matches!(
            e,
            WasmError::TableLimit {
                at: Where::Item(0),
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn an_import_is_named() {
    // Imports come first in the text format.
    let m = wat::parse_str(format!(
        r#"(module (import "env" "clock" (func (result i64))) {ALLOC} {IDENTITY})"#
    ))
    .unwrap();
    let e = validate(&m).unwrap_err();
    assert_eq!(
        e,
        ModuleError::Import {
            module: "env".into(),
            name: "clock".into(),
            kind: "the function"
        }
    );
    assert!(e.to_string().contains("\"env\" \"clock\""), "{e}");
    assert!(map_items(&m, &["1"], &small()).is_err());
}

#[test]
fn garbage_and_truncated_binaries_are_refused() {
    assert!(matches!(validate(b""), Err(ModuleError::NotWasm(_))));
    assert!(matches!(
        validate(b"hello, world"),
        Err(ModuleError::NotWasm(_))
    ));
    assert!(matches!(
        validate(b"\x7fELF\x02\x01\x01\0\0\0"),
        Err(ModuleError::NotWasm(_))
    ));
    let good = module(IDENTITY);
    for cut in [4, 7, 9, good.len() / 2, good.len() - 1] {
        let e = validate(&good[..cut]).unwrap_err();
        assert!(
            matches!(e, ModuleError::Truncated(_)),
            "cut at {cut} of {}: {e}",
            good.len()
        );
    }
    let mut component = good.clone();
    component[4..8].copy_from_slice(&[0x0d, 0, 1, 0]);
    let e = validate(&component).unwrap_err();
    assert!(e.to_string().contains("components"), "{e}");
    let e = validate(&vec![0u8; (validate::MAX_MODULE_BYTES + 1) as usize]).unwrap_err();
    assert!(
        matches!(e, ModuleError::TooMany { what: "bytes", .. }),
        "{e}"
    );
}

#[test]
fn a_module_of_100000_functions_is_refused() {
    let funcs = "(func)".repeat(100_000);
    let m = module(&format!("{funcs} {IDENTITY}"));
    let e = validate(&m).unwrap_err();
    assert_eq!(
        e,
        ModuleError::TooMany {
            what: "functions",
            got: 100_002,
            max: validate::MAX_FUNCTIONS
        }
    );
    assert!(matches!(
        map_items(&m, &["1"], &small()),
        Err(WasmError::Module(ModuleError::TooMany { .. }))
    ));
}

#[test]
fn missing_and_mistyped_exports_are_named() {
    let no_map = module("");
    assert_eq!(
        validate(&no_map),
        Err(ModuleError::MissingExport("musketeer_map"))
    );
    let wrong = module(r#"(func (export "musketeer_map") (param i32) (result i32) (local.get 0))"#);
    let e = validate(&wrong).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the module exports musketeer_map as a function (i32) -> (i32); ABI version 1 wants a function (i32, i32) -> (i64)"
    );
    let no_memory = wat::parse_str(format!(
        r#"(module (func (export "musketeer_alloc") (param i32) (result i32) (local.get 0)) {IDENTITY})"#
    ))
    .unwrap();
    assert_eq!(
        validate(&no_memory),
        Err(ModuleError::MissingExport("memory"))
    );
    let bad_reduce = module(&format!(
        r#"{IDENTITY} (func (export "musketeer_reduce") (param i32 i32) (result i32) (i32.const 0))"#
    ));
    assert!(matches!(
        validate(&bad_reduce),
        Err(ModuleError::WrongExport {
            name: "musketeer_reduce",
            ..
        })
    ));
}

#[test]
fn outputs_that_are_not_json_or_outside_memory_fail_their_item() {
    let not_json = module(
        r#"(data (i32.const 16) "not json")
           (func (export "musketeer_map") (param i32 i32) (result i64)
             (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 8)))"#,
    );
    let e = map_items(&not_json, &["1"], &small()).unwrap_err();
    assert!(
        e.to_string().starts_with("output of item 0 is not JSON: "),
        "{e}"
    );
    let outside = module(
        r#"(func (export "musketeer_map") (param i32 i32) (result i64) (i64.const 0xffff000000000010))"#,
    );
    let e = map_items(&outside, &["1"], &small()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "output of item 0 points outside memory: 16 bytes at 4294901760, in a memory of 1048576 bytes"
    );
}

#[test]
fn a_trap_names_its_item_and_reason() {
    // Divides by (first byte - '2'): item "2" divides by zero.
    let m = mapping(
        "(drop (i32.div_u (i32.const 1) (i32.sub (i32.load8_u (local.get $ptr)) (i32.const 50))))",
    );
    let e = map_items(&m, &["0", "1", "2", "3"], &small()).unwrap_err();
    assert_eq!(e.to_string(), "wasm trap in item 2: integer divide by zero");
    let m = mapping("unreachable");
    let e = map_items(&m, &["0"], &small()).unwrap_err();
    assert!(e.to_string().starts_with("wasm trap in item 0: "), "{e}");
    // A start function that traps fails at instantiation.
    let m = module(&format!(
        "(func $boom unreachable) (start $boom) {IDENTITY}"
    ));
    let e = map_items(&m, &["0"], &small()).unwrap_err();
    assert!(
        e.to_string().starts_with("wasm trap in instantiation: "),
        "{e}"
    );
}

#[test]
fn a_bad_alloc_is_reported() {
    let m = wat::parse_str(format!(
        r#"(module (memory (export "memory") 1)
             (func (export "musketeer_alloc") (param i32) (result i32) (i32.const 65530))
             {IDENTITY})"#
    ))
    .unwrap();
    let e = map_items(&m, &["\"a long item\""], &small()).unwrap_err();
    assert!(matches!(e, WasmError::BadAlloc { ptr: 65530, .. }), "{e}");
}

/// The whole kernel: a job body, its plan, its tasks run, each reduce.
#[test]
fn a_wasm_job_plans_runs_and_reduces() {
    let m = module(&format!("{IDENTITY} {SUM_REDUCE}"));
    let id = ModuleId::of(&m);
    let run_job = |body: String| -> (crate::kernel::JobPlan, Vec<TaskOutput>) {
        let (spec, options) = parse_job(body.as_bytes()).unwrap();
        assert_eq!(spec.kind(), Kernel::Wasm);
        assert_eq!(spec.module(), Some(id));
        let plan = spec.plan_with(&options).unwrap();
        let mut outputs = Vec::new();
        for (input, cost) in &plan.tasks {
            assert_eq!(input.kind(), Kernel::Wasm);
            assert_eq!(input.cost(), *cost);
            let encoded = input.encode();
            assert_eq!(Kernel::of_encoded(&encoded), Some(Kernel::Wasm));
            assert_eq!(TaskInput::module_of_encoded(&encoded), Some(id));
            let decoded = TaskInput::decode(&encoded).unwrap();
            let out = decoded.run_with_module(Some(&m), u64::MAX).unwrap();
            assert_eq!(Kernel::of_encoded(&out.encode()), Some(Kernel::Wasm));
            outputs.push(TaskOutput::decode(&out.encode()).unwrap());
        }
        assert_eq!(
            Kernel::of_encoded(&plan.reduce.encode()),
            Some(Kernel::Wasm)
        );
        (plan, outputs)
    };
    let render = |r: JobResult| {
        assert_eq!(Kernel::of_encoded(&r.encode()), Some(Kernel::Wasm));
        String::from_utf8(r.render("json").unwrap().0).unwrap()
    };

    let (plan, outputs) = run_job(format!(
        r#"{{"kernel":"wasm","module":"{id}","items":[1,"a",[2],{{"b":null}},5],"items_per_task":2}}"#
    ));
    assert_eq!(plan.tasks.len(), 3);
    assert_eq!(plan.reduce.module_needed(), None);
    assert_eq!(
        render(plan.reduce.reduce(outputs).unwrap()),
        r#"{"values":[1,"a",[2],{"b":null},5]}"#
    );

    let (plan, outputs) = run_job(format!(
        r#"{{"kernel":"wasm","module":"{id}","range":{{"start":-5,"end":1000}},"reduce":"sum","items_per_task":100,"priority":7}}"#
    ));
    assert_eq!(plan.tasks.len(), 11);
    let expected: i64 = (-5..1000).sum();
    assert_eq!(
        render(plan.reduce.reduce(outputs).unwrap()),
        format!(r#"{{"value":{expected}}}"#)
    );

    let (plan, outputs) = run_job(format!(
        r#"{{"kernel":"wasm","module":"{id}","range":{{"start":0,"end":1000}},"reduce":"module"}}"#
    ));
    assert_eq!(plan.reduce.module_needed(), Some(id));
    let e = plan.reduce.reduce(outputs.clone()).unwrap_err();
    assert!(e.to_string().contains("needs the bytes of module"), "{e}");
    let r = plan
        .reduce
        .reduce_with_module(outputs.clone(), Some(&m), &Limits::default())
        .unwrap();
    assert_eq!(render(r), r#"{"value":499500}"#);
    let tight = Limits {
        fuel: 100,
        ..Limits::default()
    };
    let e = plan
        .reduce
        .reduce_with_module(outputs, Some(&m), &tight)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("musketeer_reduce failed: out of fuel"),
        "{e}"
    );
}

#[test]
fn a_failing_module_fails_the_task_with_its_reason() {
    let m = mapping(
        "(drop (i32.div_u (i32.const 1) (i32.sub (i32.load8_u (local.get $ptr)) (i32.const 50))))",
    );
    let id = ModuleId::of(&m);
    let body = format!(
        r#"{{"kernel":"wasm","module":"{id}","range":{{"start":10,"end":30}},"items_per_task":5}}"#
    );
    let (spec, options) = parse_job(body.as_bytes()).unwrap();
    let plan = spec.plan_with(&options).unwrap();
    // The third task, items 20..25, starts with "20": job item 10 divides by zero.
    let results: Vec<_> = plan
        .tasks
        .iter()
        .map(|(t, _)| t.run_with_module(Some(&m), u64::MAX))
        .collect();
    assert!(results[0].is_ok());
    assert_eq!(
        results[2],
        Err(KernelError::Module(
            "wasm trap in item 10: integer divide by zero".into()
        ))
    );
    // Without the bytes, or with other bytes, nothing runs.
    assert!(plan.tasks[0].0.run().is_err());
    assert!(plan.tasks[0]
        .0
        .run_with_module(Some(b"\0asm"), u64::MAX)
        .is_err());
    // The agent's memory lowers the task's own limit.
    let grow =
        mapping("(loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))");
    let gid = ModuleId::of(&grow);
    let (spec, options) =
        parse_job(format!(r#"{{"kernel":"wasm","module":"{gid}","items":[1]}}"#).as_bytes())
            .unwrap();
    let plan = spec.plan_with(&options).unwrap();
    let e = plan.tasks[0]
        .0
        .run_with_module(Some(&grow), 8 << 20)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "memory limit of 8388608 bytes reached in item 0"
    );
}

#[test]
fn bad_wasm_jobs_say_what_to_change() {
    let id = ModuleId::of(b"m");
    let bad =
        |body: String| parse_job(body.as_bytes()).and_then(|(s, o)| s.plan_with(&o).map(|_| ()));
    let e = bad(format!(r#"{{"kernel":"wasm","module":"{id}"}}"#)).unwrap_err();
    assert!(e.to_string().contains("give `items`"), "{e}");
    let e = bad(format!(
        r#"{{"kernel":"wasm","module":"{id}","items":[],"range":{{"start":0,"end":1}}}}"#
    ))
    .unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");
    let e = bad(format!(
        r#"{{"kernel":"wasm","module":"{id}","range":{{"start":5,"end":1}}}}"#
    ))
    .unwrap_err();
    assert!(e.to_string().contains("before it starts"), "{e}");
    let e = bad(r#"{"kernel":"wasm","module":"sha256:00","items":[1]}"#.into()).unwrap_err();
    assert!(e.to_string().contains("64 lowercase hex digits"), "{e}");
    let e = bad(format!(
        r#"{{"kernel":"wasm","module":"{id}","items":[1],"reduce":"max"}}"#
    ))
    .unwrap_err();
    assert!(e.to_string().contains("max"), "{e}");
    let e = bad(format!(r#"{{"kernel":"wasm","module":"{id}","range":{{"start":0,"end":100000000}},"items_per_task":1}}"#)).unwrap_err();
    assert!(e.to_string().contains("raise `items_per_task`"), "{e}");
}

#[test]
fn measured_costs_size_the_tasks() {
    let id = ModuleId::of(b"m");
    let job = WasmJob {
        module: id,
        items: None,
        range: Some(kernel::ItemRange {
            start: 0,
            end: 100_000,
        }),
        reduce: ReduceKind::Values,
    };
    let unknown = job.plan_sized(None, None).unwrap();
    assert_eq!(
        unknown.tasks.len() as u64,
        100_000u64.div_ceil(kernel::DEFAULT_ITEMS_PER_TASK)
    );
    // Items of a million fuel each: a few per task.
    let heavy = job.plan_sized(None, Some(1_000_000)).unwrap();
    let per_task =
        (crate::kernel::TARGET_TASK_WORK as f64 / (1_000_000.0 * kernel::NS_PER_FUEL)) as u64;
    assert_eq!(heavy.tasks.len() as u64, 100_000u64.div_ceil(per_task));
    // The job's own items_per_task wins.
    assert_eq!(
        job.plan_sized(Some(50_000), Some(1)).unwrap().tasks.len(),
        2
    );
    let ReducePlan::Wasm(r) = heavy.reduce else {
        panic!("a wasm plan")
    };
    assert_eq!(r.items, 100_000);
}

#[test]
fn the_fuel_of_items_is_measured_on_a_sample() {
    // Item n loops n * 1000 times: the middle item of 0..=200 costs about
    // half the last's, and the sample is their mean with the first's.
    let m = mapping(
        r#"(local $n i32) (local $i i32)
           (local.set $n (i32.mul (i32.sub (i32.load8_u (local.get $ptr)) (i32.const 48)) (i32.const 1000)))
           (block $done (loop $spin
             (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
             (local.set $i (i32.add (local.get $i) (i32.const 1)))
             (br $spin)))"#,
    );
    let job = |start: i64, end: i64| WasmJob {
        module: ModuleId::of(&m),
        items: None,
        range: Some(kernel::ItemRange { start, end }),
        reduce: ReduceKind::Values,
    };
    let cheap = job(0, 1).measure_fuel_per_item(&m).unwrap();
    let dear = job(9, 10).measure_fuel_per_item(&m).unwrap();
    assert!(dear > cheap + 9 * 1000, "{cheap} vs {dear}");
    // Items 0, 4 and 8 (start 0, 9 items): the mean of the three (within
    // the fuel of translating the module's functions, which a lone item's
    // sample pays alone and three items share).
    let mixed = job(0, 9).measure_fuel_per_item(&m).unwrap();
    let four = job(4, 5).measure_fuel_per_item(&m).unwrap();
    let eight = job(8, 9).measure_fuel_per_item(&m).unwrap();
    let mean = (cheap + four + eight) / 3;
    assert!(mixed.abs_diff(mean) * 20 < mean, "{mixed} vs {mean}");
    // An endless item counts as its whole share of the sample.
    let endless = mapping("(loop $forever (br $forever))");
    let e = WasmJob {
        module: ModuleId::of(&endless),
        ..job(0, 5)
    };
    assert_eq!(
        e.measure_fuel_per_item(&endless),
        Some(kernel::SAMPLE_FUEL / 3)
    );
    // A module that does not compile measures nothing.
    assert_eq!(job(0, 5).measure_fuel_per_item(b"garbage"), None);
}

#[test]
fn the_sum_of_non_numbers_is_refused() {
    let m = module(WRAP);
    let id = ModuleId::of(&m);
    let (spec, options) = parse_job(
        format!(r#"{{"kernel":"wasm","module":"{id}","items":[1,2],"reduce":"sum"}}"#).as_bytes(),
    )
    .unwrap();
    let plan = spec.plan_with(&options).unwrap();
    let outputs = plan
        .tasks
        .iter()
        .map(|(t, _)| t.run_with_module(Some(&m), u64::MAX).unwrap())
        .collect();
    let e = plan.reduce.reduce(outputs).unwrap_err();
    assert!(
        e.to_string()
            .contains("the output of item 0 is not a number"),
        "{e}"
    );
}
