//! `scripts/setup` decides what to install from the files the build really loads. Each case is a
//! fake root directory holding what one kind of machine has; `scripts/setup --plan ROOT` prints
//! the packages that machine lacks and installs nothing.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

/// Packages `scripts/setup --plan root` says to install, with the Python check answered by
/// `python` (`true`: ensurepip imports; `false`: it does not).
fn plan(root: &Path, python: &str) -> Vec<String> {
    let out = Command::new("bash")
        .arg(holdfast_tests::repo_root().join("scripts/setup"))
        .arg("--plan")
        .arg(root)
        .env("SETUP_PYTHON", python)
        .env_remove("LIBCLANG_PATH")
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "scripts/setup --plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn file(root: &Path, path: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"\x7fELF").unwrap();
}

fn link(root: &Path, target: &str, path: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    symlink(target, path).unwrap();
}

fn multiarch() -> String {
    let out = Command::new("gcc").arg("-print-multiarch").output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        _ => format!("{}-linux-gnu", std::env::consts::ARCH),
    }
}

/// What Debian 12's base image has of LLVM: the C++ interface library, which is not libclang.
fn new_machine(root: &Path) {
    file(root, "usr/lib/llvm-14/lib/libclang-cpp.so.14");
    link(
        root,
        "../llvm-14/lib/libclang-cpp.so.14",
        &format!("usr/lib/{}/libclang-cpp.so.14", multiarch()),
    );
    file(root, "usr/lib/llvm-14/lib/libLLVM-14.so");
}

/// What `apt-get install libclang-dev faketime prometheus chromium chromium-driver` adds.
fn installed(root: &Path) {
    file(root, "usr/bin/promtool");
    file(root, "usr/bin/chromium");
    file(root, "usr/bin/chromedriver");
    file(root, "usr/lib/llvm-14/lib/libclang-14.so.14.0.6");
    link(
        root,
        "libclang-14.so.14.0.6",
        "usr/lib/llvm-14/lib/libclang.so.1",
    );
    link(root, "libclang.so.1", "usr/lib/llvm-14/lib/libclang.so");
    file(root, "usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h");
    file(
        root,
        &format!("usr/lib/{}/faketime/libfaketimeMT.so.1", multiarch()),
    );
}

#[test]
fn a_new_machine_with_only_libclang_cpp_gets_everything_installed() {
    let root = tempfile::tempdir().unwrap();
    new_machine(root.path());
    assert_eq!(
        plan(root.path(), "false"),
        [
            "libclang-dev",
            "faketime",
            "python3-venv",
            "prometheus",
            "chromium",
            "chromium-driver"
        ]
    );
    assert_eq!(
        plan(root.path(), "true"),
        [
            "libclang-dev",
            "faketime",
            "prometheus",
            "chromium",
            "chromium-driver"
        ]
    );
}

#[test]
fn a_machine_after_install_needs_nothing() {
    let root = tempfile::tempdir().unwrap();
    new_machine(root.path());
    installed(root.path());
    assert_eq!(plan(root.path(), "true"), Vec::<String>::new());
}

#[test]
fn libclang_without_clang_headers_is_not_enough() {
    let root = tempfile::tempdir().unwrap();
    installed(root.path());
    std::fs::remove_dir_all(root.path().join("usr/lib/llvm-14/lib/clang")).unwrap();
    assert_eq!(plan(root.path(), "true"), ["libclang-dev"]);
}

/// `installed` without the library file itself: its symlinks dangle.
fn installed_without_library(root: &Path) {
    installed(root);
    std::fs::remove_file(root.join("usr/lib/llvm-14/lib/libclang-14.so.14.0.6")).unwrap();
}

#[test]
fn a_dangling_libclang_symlink_is_no_library() {
    let root = tempfile::tempdir().unwrap();
    installed_without_library(root.path());
    assert_eq!(plan(root.path(), "true"), ["libclang-dev"]);
}

#[test]
fn every_name_clang_sys_loads_is_recognised() {
    for name in [
        "usr/lib/libclang.so",
        "usr/lib/x86_64-linux-gnu/libclang-14.so",
        "usr/local/lib/libclang.so.1",
        "usr/local/llvm16/lib/libclang-16.so.16",
    ] {
        let root = tempfile::tempdir().unwrap();
        installed_without_library(root.path());
        file(root.path(), name);
        assert_eq!(plan(root.path(), "true"), Vec::<String>::new(), "{name}");
    }
}

/// The machine the suite runs on: `scripts/test` ran `scripts/setup` first, so its own checks
/// must now pass (a check that installing cannot satisfy would fail here, not only later).
#[test]
fn this_machine_after_setup_needs_nothing() {
    assert_eq!(plan(Path::new("/"), "python3"), Vec::<String>::new());
}
