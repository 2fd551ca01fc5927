//! Builds the XDP program (`screen-ebpf`) for `bpfel-unknown-none` and leaves the object in
//! `OUT_DIR`, where `src/kernel/program.rs` embeds it.
//!
//! The BPF target needs `core` built from source, which the stable toolchain cannot do; the
//! build uses Debian's `rustc-web` (a complete compiler with its source) and `bpf-linker`, both
//! installed by `cargo xtask build`. `SMTP_SCREEN_EBPF_OBJECT` names a ready object instead.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

const BPF_TARGET: &str = "bpfel-unknown-none";

/// Flags of the BPF build. BTF for `bpftool` and the loader; and loads of any alignment: the
/// wire headers are byte arrays, and without the feature LLVM reads every 16- and 32-bit field
/// a byte at a time and shifts the bytes together. The verifier allows misaligned packet and
/// map value access on architectures with efficient unaligned access (x86-64 and arm64 among
/// them) and refuses it elsewhere; stack access must be aligned everywhere, which the compiler
/// keeps (its stack slots are aligned). Loading tells which (`LoadError::Misaligned`).
const BPF_RUSTFLAGS: &[&str] = &[
    "-Cdebuginfo=2",
    "-Clink-arg=--btf",
    "-Clink-arg=--cpu-features=+allows-misaligned-mem-access",
];

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("screen-user has no parent directory")?;
    let out = PathBuf::from(env::var("OUT_DIR")?).join("screen-ebpf.o");

    println!("cargo:rerun-if-env-changed=SMTP_SCREEN_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=SMTP_SCREEN_BPF_CARGO");
    println!("cargo:rerun-if-env-changed=SMTP_SCREEN_BPF_RUSTC");
    if let Some(object) = env::var_os("SMTP_SCREEN_EBPF_OBJECT") {
        println!("cargo:rerun-if-changed={}", Path::new(&object).display());
        std::fs::copy(&object, &out)
            .with_context(|| format!("copying SMTP_SCREEN_EBPF_OBJECT={object:?}"))?;
        return Ok(());
    }
    for path in [
        "screen-ebpf/src",
        "screen-ebpf/Cargo.toml",
        "screen-common/src",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }

    let object = build_ebpf(workspace)?;
    std::fs::copy(&object, &out).with_context(|| format!("copying {}", object.display()))?;
    Ok(())
}

fn build_ebpf(workspace: &Path) -> anyhow::Result<PathBuf> {
    let cargo = env::var("SMTP_SCREEN_BPF_CARGO").unwrap_or_else(|_| "/usr/bin/cargo".into());
    let rustc = env::var("SMTP_SCREEN_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    for tool in [&cargo, &rustc] {
        if !Path::new(tool).exists() {
            bail!(
                "{tool} is missing: the XDP program builds with Debian's rustc-web. \
                 Run `cargo xtask build` once; it installs the eBPF toolchain."
            );
        }
    }
    let target_dir = workspace.join("target").join("ebpf");

    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace.join("screen-ebpf"))
        .args([
            "build",
            "--release",
            "--target",
            BPF_TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer cargo's settings belong to the host build: a clippy wrapper, host flags and the
    // rustup toolchain selection must not leak into the BPF build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") || key.starts_with("RUSTC") || key.starts_with("RUSTUP_") {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env_remove("RUSTFLAGS")
        .env_remove("RUSTDOCFLAGS")
        .env_remove("CARGO")
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", BPF_RUSTFLAGS.join("\x1f"));
    // bpf-linker lives where `cargo install` put it.
    let mut path = env::split_paths(&env::var_os("PATH").unwrap_or_default()).collect::<Vec<_>>();
    if let Some(home) = env::var_os("HOME") {
        path.push(PathBuf::from(home).join(".cargo/bin"));
    }
    if let Some(cargo_home) = env::var_os("CARGO_HOME") {
        path.push(PathBuf::from(cargo_home).join("bin"));
    }
    cmd.env("PATH", env::join_paths(path)?);

    let status = cmd
        .status()
        .with_context(|| format!("running {cargo} to build screen-ebpf"))?;
    if !status.success() {
        bail!(
            "building the XDP program (screen-ebpf) failed with {status}; \
             `cargo xtask build` installs what it needs (rustc-web, rust-web-src, bpf-linker)"
        );
    }
    Ok(target_dir
        .join(BPF_TARGET)
        .join("release")
        .join("screen-ebpf"))
}
