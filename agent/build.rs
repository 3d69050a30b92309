//! Records the target triple the agent is built for: releases are published
//! and looked up per target.
fn main() {
    let target = std::env::var("TARGET").expect("cargo sets TARGET for build scripts");
    println!("cargo:rustc-env=MUSKETEER_TARGET={target}");
}
