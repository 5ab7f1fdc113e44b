//! A policy author's tools that need no cluster: `holdfast policy new` writes a policy crate
//! anywhere (its own repository), `holdfast policy build` builds one for the pinned target with
//! the pinned flags and checks the module exactly as a node checks it at deploy.
//!
//! The pinned build lives here, once: [`WASM_TARGET`], [`WASM_RUSTFLAGS`] and
//! [`RELEASE_PROFILE`]. A generated crate carries copies in its own `.cargo/config.toml` and
//! `Cargo.toml` (so plain `cargo wasm` works too), and `policy build` sets them again through
//! the environment, which wins over both: a crate whose files drifted still builds pinned.

use std::collections::BTreeSet;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, bail};
use holdfast_server::policy::module::AbiError;
use holdfast_server::policy::{PolicyError, Precheck, PrecheckError};

/// The target every policy module is built for: Wasm 1.0 + mutable-globals, `no_std` + alloc.
pub const WASM_TARGET: &str = "wasm32v1-none";

/// Code generation for the guest: MVP CPU features + mutable-globals only (no SIMD, bulk
/// memory, reference types, sign-extension...), a 64 KiB shadow stack.
pub const WASM_RUSTFLAGS: &str =
    "-C target-cpu=mvp -C target-feature=+mutable-globals -C link-arg=-zstack-size=65536";

/// The release profile of a module: small, symbol-free, aborting on panic (a trap the host
/// turns into the hook's fallback).
pub const RELEASE_PROFILE: [(&str, &str); 6] = [
    ("OPT_LEVEL", "s"),
    ("LTO", "true"),
    ("CODEGEN_UNITS", "1"),
    ("PANIC", "abort"),
    ("STRIP", "symbols"),
    ("DEBUG", "0"),
];

/// Longest policy crate name `policy new` accepts.
pub const POLICY_CRATE_NAME_MAX: usize = 64;

/// Where the SDK comes from in a generated crate.
pub enum SdkSource {
    Path(PathBuf),
    Git { url: String, rev: Option<String> },
}

/// `holdfast policy new NAME`: writes `dir/NAME` and prints what to do next.
pub fn new_policy(name: &str, dir: &Path, sdk: Option<SdkSource>) -> anyhow::Result<ExitCode> {
    check_crate_name(name)?;
    let sdk = match sdk {
        Some(sdk) => sdk,
        None => SdkSource::Path(find_sdk().context(
            "cannot find holdfast-policy-sdk: pass --sdk PATH (the policy-sdk directory of a \
             Holdfast checkout) or --sdk-git URL [--sdk-rev REV], or set HOLDFAST_SDK",
        )?),
    };
    let root = dir.join(name);
    if root.exists() && root.read_dir().map_or(true, |mut d| d.next().is_some()) {
        bail!("{} exists and is not empty", root.display());
    }
    let (sdk_dependency, lockfile) = match &sdk {
        SdkSource::Path(path) => {
            let path = std::fs::canonicalize(path)
                .with_context(|| format!("SDK path {}", path.display()))?;
            if !is_sdk(&path) {
                bail!("{} is not the holdfast-policy-sdk crate", path.display());
            }
            // The SDK's workspace lock file: the new crate starts from the versions the SDK
            // is tested with (cargo drops the entries it does not need), which also lets it
            // build offline from a registry cache that built Holdfast.
            let lockfile = path.parent().map(|p| p.join("Cargo.lock"));
            (
                format!("{{ path = {} }}", toml_string(&path.to_string_lossy())),
                lockfile.filter(|p| p.is_file()),
            )
        }
        SdkSource::Git { url, rev } => (
            match rev {
                Some(rev) => format!(
                    "{{ git = {}, rev = {} }}",
                    toml_string(url),
                    toml_string(rev)
                ),
                None => format!("{{ git = {} }}", toml_string(url)),
            },
            None,
        ),
    };
    let crate_ident = name.replace('-', "_");
    let type_name: String = name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            let first = chars.next().expect("non-empty").to_ascii_uppercase();
            std::iter::once(first).chain(chars).collect::<String>()
        })
        .collect();
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_ident)
            .replace("{{Type}}", &type_name)
            .replace("{{sdk}}", &sdk_dependency)
    };
    let files: [(&str, &str); 6] = [
        (
            "Cargo.toml",
            include_str!("../templates/policy/Cargo.toml.tmpl"),
        ),
        (
            ".cargo/config.toml",
            include_str!("../templates/policy/cargo-config.toml.tmpl"),
        ),
        (
            ".gitignore",
            include_str!("../templates/policy/gitignore.tmpl"),
        ),
        (
            "src/lib.rs",
            include_str!("../templates/policy/lib.rs.tmpl"),
        ),
        (
            "scenarios/basic.scenario",
            include_str!("../templates/policy/basic.scenario.tmpl"),
        ),
        (
            "README.md",
            include_str!("../templates/policy/README.md.tmpl"),
        ),
    ];
    for (file, template) in files {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().expect("a file under root"))
            .with_context(|| format!("creating {}", root.display()))?;
        std::fs::write(&path, fill(template))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(lockfile) = lockfile {
        std::fs::copy(&lockfile, root.join("Cargo.lock"))
            .with_context(|| format!("copying {}", lockfile.display()))?;
    }
    println!("created policy crate {name} in {}", root.display());
    println!("next:");
    println!("  cd {}", root.display());
    println!("  cargo test                # native tests");
    println!("  holdfast policy build     # the wasm module, checked like a deploy");
    println!(
        "  holdfast policy test target/{WASM_TARGET}/release/{crate_ident}.wasm --scenario scenarios/basic.scenario"
    );
    Ok(ExitCode::SUCCESS)
}

fn check_crate_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= POLICY_CRATE_NAME_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "policy name {name:?}: use 1 to {POLICY_CRATE_NAME_MAX} characters a-z, 0-9, - and _, \
             starting with a letter (it becomes the crate's name)"
        );
    }
    Ok(())
}

/// `"..."` with TOML escapes.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The SDK when no `--sdk` was given: `HOLDFAST_SDK`, else a Holdfast checkout containing the
/// current directory.
fn find_sdk() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HOLDFAST_SDK") {
        return Some(PathBuf::from(path));
    }
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .map(|dir| dir.join("policy-sdk"))
        .find(|sdk| is_sdk(sdk))
}

/// Whether `dir` holds the `holdfast-policy-sdk` crate.
fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|manifest| manifest.contains("name = \"holdfast-policy-sdk\""))
}

/// `holdfast policy build [DIR]...`: builds each crate's module and checks it. Exit code 1 if
/// any module fails a check.
pub fn build_policies(dirs: &[PathBuf], quiet: bool) -> anyhow::Result<ExitCode> {
    let dirs = if dirs.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        dirs.to_vec()
    };
    ensure_target()?;
    let precheck = Precheck::default();
    let mut failed = false;
    for dir in &dirs {
        for module in build_crate(dir, quiet)? {
            let bytes =
                std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?;
            match check_module(&precheck, &bytes) {
                Ok(summary) => println!("ok   {}\n     {summary}", module.display()),
                Err(problem) => {
                    failed = true;
                    println!("FAIL {}\n     {problem}", module.display());
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Installs the wasm target with rustup when it is missing.
fn ensure_target() -> anyhow::Result<()> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc (is Rust installed?)")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(WASM_TARGET).is_dir() {
        return Ok(());
    }
    let status = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .status()
        .with_context(|| format!("running `rustup target add {WASM_TARGET}`"))?;
    if !status.success() {
        bail!("`rustup target add {WASM_TARGET}` failed");
    }
    Ok(())
}

/// Builds the crate of `dir` with the pinned target, flags and profile; returns its modules.
fn build_crate(dir: &Path, quiet: bool) -> anyhow::Result<Vec<PathBuf>> {
    let manifest = dir.join("Cargo.toml");
    let manifest = std::fs::canonicalize(&manifest)
        .with_context(|| format!("{} (not a policy crate directory)", manifest.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--target", WASM_TARGET])
        .args(["--message-format", "json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_WASM32V1_NONE_RUSTFLAGS", WASM_RUSTFLAGS)
        .stdout(Stdio::piped());
    if quiet {
        command.arg("--quiet");
    }
    for (key, value) in RELEASE_PROFILE {
        command.env(format!("CARGO_PROFILE_RELEASE_{key}"), value);
    }
    let mut child = command.spawn().context("running cargo")?;
    let stdout = child.stdout.take().expect("piped");
    let mut modules = BTreeSet::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's output")?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let ours = message["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path());
        if message["reason"] == "compiler-artifact" && ours {
            let files = message["filenames"].as_array().into_iter().flatten();
            modules.extend(
                files
                    .filter_map(|f| f.as_str())
                    .filter(|f| f.ends_with(".wasm"))
                    .map(PathBuf::from),
            );
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("cargo build of {} failed (errors above)", dir.display());
    }
    if modules.is_empty() {
        bail!(
            "{} built no wasm module: its Cargo.toml needs [lib] crate-type = [\"cdylib\", \"rlib\"]",
            dir.display()
        );
    }
    Ok(modules.into_iter().collect())
}

/// The deploy checks of a node (`Precheck`): ABI v1 and the host's limits, compilation by the
/// policy engine, then every exported hook on a sample input under half the fuel budget.
fn check_module(precheck: &Precheck, bytes: &[u8]) -> Result<String, String> {
    let module = precheck.check_module(bytes).map_err(|error| {
        let hint = match &error {
            PrecheckError::Module(PolicyError::Abi(abi)) => abi_hint(abi),
            PrecheckError::Module(PolicyError::Compile(_)) | PrecheckError::Engine(_) => {
                "the engine refused a module that passed the ABI checks: report it with the module"
            }
            PrecheckError::Sample(_) => {
                "run the hook natively (cargo test) on a similar input; a trap is a panic or an \
                 out-of-bounds access, running out of fuel is work that grows with something \
                 unbounded"
            }
        };
        format!("{error}\n     what to change: {hint}")
    })?;
    let hooks: Vec<&str> = module.hooks().iter().map(|hook| hook.name()).collect();
    Ok(format!(
        "{} bytes, sha256 {}, hooks {}, meta {} {}",
        bytes.len(),
        holdfast_server::policy::module::hex(&module.sha256()),
        hooks.join(","),
        module.name(),
        module.version()
    ))
}

/// What an author changes when the module breaks ABI v1 this way.
fn abi_hint(error: &AbiError) -> &'static str {
    match error {
        AbiError::TooLarge { .. } => {
            "build with the pinned release profile (opt-level \"s\", lto, strip) and drop big \
             dependencies (formatting machinery, regex, serde_json)"
        }
        AbiError::Invalid(_) => {
            "build for wasm32v1-none with -C target-cpu=mvp -C target-feature=+mutable-globals \
             (holdfast policy build does); use integers instead of floats"
        }
        AbiError::StartFunction => "remove code that runs at instantiation (a start function)",
        AbiError::DisallowedImport { .. } => {
            "use only no_std + alloc: nothing from std, WASI or other host imports \
             (build for wasm32v1-none, not wasm32-wasip1)"
        }
        AbiError::MissingExport(_)
        | AbiError::UnexpectedExport(_)
        | AbiError::BadSignature { .. }
        | AbiError::AbiVersion
        | AbiError::Metadata
        | AbiError::HooksMismatch { .. } => {
            "export the hooks with exactly one export_policy!(Type, [hooks...]) listing every \
             hook you implement, and add no #[no_mangle] functions of your own"
        }
        AbiError::MemoryTooLarge { .. } | AbiError::TableTooLarge { .. } => {
            "shrink static data and the stack (-zstack-size is pinned at 64 KiB)"
        }
    }
}
