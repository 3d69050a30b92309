//! The static builds in `dist/` (made by `packaging/build`), and the
//! prerequisites of the tests that use them: a test skips when one is
//! missing, unless its `MUSKETEER_REQUIRE_*` variable is 1 (as
//! `scripts/test` sets it), and then fails.

use std::path::PathBuf;
use std::process::Command;

/// Fail instead of skipping when qemu or the cross builds are missing.
pub const REQUIRE_CROSS: &str = "MUSKETEER_REQUIRE_CROSS";
/// Fail instead of skipping when Docker or the x86_64 static builds are missing.
pub const REQUIRE_DOCKER: &str = "MUSKETEER_REQUIRE_DOCKER";

/// The static x86_64 agent and coordinator's target.
pub const X86_64: &str = "x86_64-unknown-linux-musl";
/// The ARM server agent's target.
pub const AARCH64: &str = "aarch64-unknown-linux-musl";
/// The Raspberry Pi agent's target.
pub const ARMV7: &str = "armv7-unknown-linux-gnueabihf";

/// The workspace's root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// `dist/`, or `MUSKETEER_DIST_DIR`.
pub fn dist_dir() -> PathBuf {
    std::env::var_os("MUSKETEER_DIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("dist"))
}

/// `dist/<target>/<name>`, if it was built.
pub fn dist_bin(target: &str, name: &str) -> Result<PathBuf, String> {
    let path = dist_dir().join(target).join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: run packaging/build",
            path.display()
        ))
    }
}

/// A file under `packaging/`.
pub fn packaging_file(name: &str) -> PathBuf {
    workspace_root().join("packaging").join(name)
}

/// Whether `command` is on the PATH.
pub fn have_command(command: &str) -> Result<(), String> {
    match Command::new(command).arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{command} is not installed ({e})")),
    }
}

/// `Some(value)` when the prerequisite is met; `None` (the test skips, and
/// says why) when it is not and `require` is unset; a panic when `require`
/// is 1.
pub fn prerequisite<T>(require: &str, met: Result<T, String>) -> Option<T> {
    match met {
        Ok(v) => Some(v),
        Err(why) if std::env::var(require).as_deref() == Ok("1") => {
            panic!("{why} (required because {require}=1)")
        }
        Err(why) => {
            eprintln!("skipping: {why} (set {require}=1 to make this a failure)");
            None
        }
    }
}

/// What `file` says of a binary.
pub fn file_type(path: &std::path::Path) -> String {
    let out = Command::new("file")
        .arg("-b")
        .arg(path)
        .output()
        .expect("`file` runs (apt-get install file)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
