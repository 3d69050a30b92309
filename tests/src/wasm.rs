//! WebAssembly modules for the tests: the example kernels of
//! `examples/kernels` (built once per test run, for wasm32-unknown-unknown),
//! hand-written WAT modules, and uploading them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::Coordinator;

/// The example kernels' workspace.
fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kernels")
}

/// Builds the example kernels (once per process; cargo makes a repeat a
/// no-op) and returns the folder of their `.wasm` files. scripts/test
/// builds them first; this makes `cargo test --test wasm` work alone.
fn built_kernels() -> Result<&'static Path> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let dir = kernels_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-unknown-unknown",
                "--manifest-path",
            ])
            .arg(dir.join("Cargo.toml"))
            // The outer cargo's settings are for the host build, not this one.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building examples/kernels failed (is the target installed? \
                 `rustup target add wasm32-unknown-unknown`):\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(dir.join("target/wasm32-unknown-unknown/release"))
    });
    match built {
        Ok(p) => Ok(p.as_path()),
        Err(e) => bail!("{e}"),
    }
}

/// The bytes of example kernel `name` (`pi`, `primes`, `mandelbrot`, `nqueens`).
pub fn kernel(name: &str) -> Result<Vec<u8>> {
    let path = built_kernels()?.join(format!("{name}.wasm"));
    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// A module from WebAssembly text.
pub fn wat(source: &str) -> Vec<u8> {
    wat::parse_str(source).unwrap_or_else(|e| panic!("the test's WAT does not parse: {e}"))
}

/// The exports every hand-written module shares: its memory and a bump
/// allocator that grows the memory when it must.
pub const ALLOC_WAT: &str = r#"
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))
  (func (export "musketeer_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $len)))
    (if (i32.gt_u (global.get $next) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (drop (memory.grow
          (i32.add (i32.const 1)
            (i32.div_u
              (i32.sub (global.get $next) (i32.mul (memory.size) (i32.const 65536)))
              (i32.const 65536)))))))
    (local.get $p))
"#;

/// A module with [`ALLOC_WAT`] and `body` (its `musketeer_map` and more).
pub fn module_with(body: &str) -> Vec<u8> {
    wat(&format!("(module {ALLOC_WAT} {body})"))
}

/// The echo module: each item's output is the item itself.
pub fn echo() -> Vec<u8> {
    module_with(ECHO_MAP)
}

/// `musketeer_map` returning its input: valid JSON in, the same out.
pub const ECHO_MAP: &str = r#"
  (func (export "musketeer_map") (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))
"#;

/// Uploads a module with the client; returns its id.
pub async fn push(c: &Coordinator, bytes: Vec<u8>) -> Result<String> {
    let (info, _) = musketeer_client::push_module(&c.client(), bytes).await?;
    Ok(info.id)
}

/// Uploads a module by hand; returns the status and the JSON answer, for
/// tests of refusals.
pub async fn upload(c: &Coordinator, bytes: Vec<u8>, content_type: &str) -> Result<(u16, Value)> {
    let client = c.client();
    let resp = client
        .request(reqwest::Method::POST, "/v1/modules")
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(bytes)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await?;
    let v = serde_json::from_slice(&body)
        .with_context(|| format!("{status} with a body that is not JSON: {body:?}"))?;
    Ok((status, v))
}
