//! Records the target triple the agent is built for (releases are published
//! and looked up per target), and assembles the WebAssembly module that
//! `musketeer bench` interprets beside its native twin.
fn main() {
    let target = std::env::var("TARGET").expect("cargo sets TARGET for build scripts");
    println!("cargo:rustc-env=MUSKETEER_TARGET={target}");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=bench/primes.wat");
    let wasm = wat::parse_file("bench/primes.wat").expect("bench/primes.wat is valid WAT");
    std::fs::write(out.join("primes.wasm"), wasm).expect("OUT_DIR is writable");
}
