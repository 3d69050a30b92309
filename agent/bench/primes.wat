;; `musketeer bench`'s interpreted kernel, twin of bench::primes_native:
;; item k (a JSON integer) -> how many primes lie in [1000k, 1000k + 1000),
;; by trial division. build.rs turns this into primes.wasm.
(module
  (memory (export "memory") 1)
  ;; One input buffer at 1024 (items are short integers), outputs at 2048.
  (func (export "musketeer_alloc") (param $len i32) (result i32)
    (if (i32.gt_u (local.get $len) (i32.const 1024)) (then unreachable))
    (i32.const 1024))
  (func (export "musketeer_map") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32) (local $k i32) (local $n i32) (local $hi i32) (local $d i32)
    (local $count i32) (local $prime i32) (local $out i32) (local $digits i32)
    (block $parsed (loop $parse
      (br_if $parsed (i32.ge_u (local.get $i) (local.get $len)))
      (local.set $k (i32.add (i32.mul (local.get $k) (i32.const 10))
        (i32.sub (i32.load8_u (i32.add (local.get $ptr) (local.get $i))) (i32.const 48))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $parse)))
    (local.set $n (i32.mul (local.get $k) (i32.const 1000)))
    (local.set $hi (i32.add (local.get $n) (i32.const 1000)))
    (block $end (loop $each
      (br_if $end (i32.ge_u (local.get $n) (local.get $hi)))
      (if (i32.ge_u (local.get $n) (i32.const 2)) (then
        (local.set $prime (i32.const 1))
        (local.set $d (i32.const 2))
        (block $stop (loop $try
          (br_if $stop (i32.gt_u (i32.mul (local.get $d) (local.get $d)) (local.get $n)))
          (if (i32.eqz (i32.rem_u (local.get $n) (local.get $d)))
            (then (local.set $prime (i32.const 0)) (br $stop)))
          (local.set $d (i32.add (local.get $d) (i32.const 1)))
          (br $try)))
        (local.set $count (i32.add (local.get $count) (local.get $prime)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $each)))
    (local.set $out (i32.const 2064))
    (loop $digit
      (local.set $out (i32.sub (local.get $out) (i32.const 1)))
      (i32.store8 (local.get $out) (i32.add (i32.const 48) (i32.rem_u (local.get $count) (i32.const 10))))
      (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
      (local.set $count (i32.div_u (local.get $count) (i32.const 10)))
      (br_if $digit (i32.ne (local.get $count) (i32.const 0))))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.extend_i32_u (local.get $digits)))))
