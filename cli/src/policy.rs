//! `holdfast policy ...`: deploy, bind, unbind, list and describe policies of a cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use holdfast_proto::v1 as pb;
use serde_json::json;

use crate::commands::{Connection, Output};
use crate::policy_author::SdkSource;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Deploy FILE.wasm as the next version of policy NAME.
    Deploy {
        file: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Bind POLICY[@VERSION] ("builtin" = the native FIFO) to locks under PREFIX ("" = all).
    Bind {
        prefix: String,
        /// NAME or NAME@VERSION (default: the newest version).
        policy: String,
        /// File whose bytes are the binding's config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Evaluate beside the enforcing policy and count disagreements; decide nothing.
        #[arg(long)]
        shadow: bool,
    },
    /// Remove the binding of PREFIX.
    Unbind {
        prefix: String,
        #[arg(long)]
        shadow: bool,
    },
    /// Deployed versions and bindings with their fault and disagreement counters.
    List,
    /// Which bindings decide for lock NAME.
    Describe { name: String },
    /// Write a new policy crate NAME in DIR (default: here), outside any repository: Cargo.toml
    /// on the SDK, the pinned target and flags in .cargo/config.toml, a commented starter policy
    /// with native tests, and a scenario.
    New {
        name: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The SDK as a path: the policy-sdk directory of a Holdfast checkout (default:
        /// $HOLDFAST_SDK, else the checkout around the current directory).
        #[arg(long, conflicts_with = "sdk_git")]
        sdk: Option<PathBuf>,
        /// The SDK as a git dependency: the repository URL (pin it with --sdk-rev).
        #[arg(long)]
        sdk_git: Option<String>,
        #[arg(long, requires = "sdk_git")]
        sdk_rev: Option<String>,
    },
    /// Build the policy crate in each DIR (default: here) for wasm32v1-none with the pinned
    /// flags and run a node's deploy checks on the module: prints its path, size, sha256 and
    /// hooks, or each problem with what to change. Exit code 1 if a module fails.
    Build {
        dirs: Vec<PathBuf>,
        /// Only cargo's errors, not its progress.
        #[arg(long)]
        quiet: bool,
    },
    /// Replay a recorded history (`holdfast record`) with FILE.wasm bound, enforcing, at PREFIX,
    /// beside the policies that really decided it: every grant, denial, lease and lock-delay
    /// that differs, and wait-time percentiles per top-level prefix before and after.
    Replay {
        file: PathBuf,
        #[arg(long)]
        history: PathBuf,
        /// File whose bytes are the candidate binding's config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the candidate is bound ("" = every lock).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Run a scenario against FILE.wasm locally (no cluster): print every decision and check
    /// the scenario's `expect` words. Syntax: `holdfast policy test --help` and
    /// `examples/scenarios/`.
    #[command(after_help = SCENARIO_HELP)]
    Test {
        file: PathBuf,
        #[arg(long)]
        scenario: PathBuf,
    },
}

const SCENARIO_HELP: &str = "Scenario lines (# starts a comment):
  config KEY = VALUE               binding config line (all config lines come first)
  open NAME [k=v ...]              open a session NAME (principal NAME) with labels
  acquire NAME LOCK [shared] [wait=MS] [prio=N]   try-lock unless wait= is given
  release NAME LOCK
  close NAME
  advance MS                       let cluster time pass
  ... expect WORD                  the outcome must start with WORD
                                   (acquired, queued, denied, would-block, released, ...)
Exit code 0 when every expectation holds, 1 otherwise.";

/// `NAME` or `NAME@VERSION`.
fn policy_ref(text: &str) -> anyhow::Result<(String, u64)> {
    match text.rsplit_once('@') {
        None => Ok((text.to_owned(), 0)),
        Some((name, version)) => {
            let version = version
                .parse()
                .with_context(|| format!("version in {text:?} is not a number"))?;
            Ok((name.to_owned(), version))
        }
    }
}

fn mode(shadow: bool) -> pb::BindMode {
    if shadow {
        pb::BindMode::Shadow
    } else {
        pb::BindMode::Enforce
    }
}

fn mode_name(mode: i32) -> &'static str {
    match pb::BindMode::try_from(mode) {
        Ok(pb::BindMode::Shadow) => "shadow",
        _ => "enforce",
    }
}

fn binding_json(binding: &pb::BindingInfo) -> serde_json::Value {
    let faults: serde_json::Map<String, serde_json::Value> = binding
        .faults
        .iter()
        .map(|f| (f.hook.clone(), json!(f.count)))
        .collect();
    json!({
        "prefix": binding.prefix, "mode": mode_name(binding.mode), "policy": binding.policy,
        "version": binding.version, "config": String::from_utf8_lossy(&binding.config),
        "bound_at": binding.bound_at, "faults": faults,
        "disagreements": binding.disagreements, "compared": binding.compared,
    })
}

fn binding_text(binding: &pb::BindingInfo) -> String {
    let faults: Vec<String> = binding
        .faults
        .iter()
        .map(|f| format!("{}={}", f.hook, f.count))
        .collect();
    let mut text = format!(
        "{:<24} {:<8} {}@{} (bound at {})",
        format!("{:?}", binding.prefix),
        mode_name(binding.mode),
        binding.policy,
        binding.version,
        binding.bound_at
    );
    if !faults.is_empty() {
        text.push_str(&format!(" faults {}", faults.join(",")));
    }
    if binding.compared > 0 {
        text.push_str(&format!(
            " disagreements {}/{}",
            binding.disagreements, binding.compared
        ));
    }
    text
}

pub async fn run(connection: &Connection, command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Test { file, scenario } => {
            return crate::policy_test::run(&file, &scenario);
        }
        PolicyCommand::New {
            name,
            dir,
            sdk,
            sdk_git,
            sdk_rev,
        } => {
            let sdk = match (sdk, sdk_git) {
                (Some(path), _) => Some(SdkSource::Path(path)),
                (None, Some(url)) => Some(SdkSource::Git { url, rev: sdk_rev }),
                (None, None) => None,
            };
            return crate::policy_author::new_policy(&name, &dir, sdk);
        }
        PolicyCommand::Build { dirs, quiet } => {
            return crate::policy_author::build_policies(&dirs, quiet);
        }
        PolicyCommand::Replay {
            file,
            history,
            config,
            prefix,
        } => {
            return crate::policy_replay::run(&file, &history, config.as_deref(), &prefix);
        }
        _ => {}
    }
    let client = connection.client()?;
    match command {
        PolicyCommand::Deploy { file, name } => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let response = client.deploy_policy(&name, &wasm).await?;
            match connection.output {
                Output::Json => println!(
                    "{}",
                    json!({ "name": response.name, "version": response.version,
                            "sha256": response.sha256, "created": response.created })
                ),
                Output::Text if response.created => println!(
                    "deployed {}@{} (sha256 {})",
                    response.name, response.version, response.sha256
                ),
                Output::Text => println!(
                    "{}@{} already has these bytes (sha256 {})",
                    response.name, response.version, response.sha256
                ),
            }
        }
        PolicyCommand::Bind {
            prefix,
            policy,
            config,
            shadow,
        } => {
            let (policy, version) = policy_ref(&policy)?;
            let config = crate::commands::read_config(config.as_deref())?;
            let response = client
                .bind_policy(pb::BindPolicyRequest {
                    prefix,
                    policy,
                    version,
                    config,
                    mode: mode(shadow) as i32,
                })
                .await?;
            let revision = response.header.map_or(0, |h| h.revision);
            match connection.output {
                Output::Json => println!(
                    "{}",
                    json!({ "prefix": response.prefix, "policy": response.policy,
                            "version": response.version, "mode": mode_name(response.mode),
                            "revision": revision })
                ),
                Output::Text => println!(
                    "bound {}@{} to {:?} ({}), deciding from revision {}",
                    response.policy,
                    response.version,
                    response.prefix,
                    mode_name(response.mode),
                    revision + 1
                ),
            }
        }
        PolicyCommand::Unbind { prefix, shadow } => {
            client.unbind_policy(&prefix, mode(shadow)).await?;
            if connection.output == Output::Text {
                println!("unbound {prefix:?} ({})", mode_name(mode(shadow) as i32));
            }
        }
        PolicyCommand::List => {
            let response = client.list_policies().await?;
            match connection.output {
                Output::Json => println!(
                    "{}",
                    json!({
                        "policies": response.policies.iter().map(|p| json!({
                            "name": p.name, "version": p.version, "sha256": p.sha256,
                            "bytes": p.module_bytes, "deployed_at": p.deployed_at,
                            "meta_name": p.meta_name, "meta_version": p.meta_version,
                            "hooks": p.hooks,
                        })).collect::<Vec<_>>(),
                        "bindings": response.bindings.iter().map(binding_json).collect::<Vec<_>>(),
                        "policy_fault_count": response.policy_fault_count,
                    })
                ),
                Output::Text => {
                    println!("policies:");
                    if response.policies.is_empty() {
                        println!("  (none deployed)");
                    }
                    for p in &response.policies {
                        println!(
                            "  {}@{}  {} bytes  sha256 {}  deployed at {}  hooks {}  ({} {})",
                            p.name,
                            p.version,
                            p.module_bytes,
                            &p.sha256[..16.min(p.sha256.len())],
                            p.deployed_at,
                            p.hooks.join(","),
                            p.meta_name,
                            p.meta_version
                        );
                    }
                    println!("bindings (longest prefix wins; unbound locks use builtin FIFO):");
                    if response.bindings.is_empty() {
                        println!("  (none)");
                    }
                    for binding in &response.bindings {
                        println!("  {}", binding_text(binding));
                    }
                    println!("policy faults (all time): {}", response.policy_fault_count);
                }
            }
        }
        PolicyCommand::Describe { name } => {
            let response = client.describe_policy(&name).await?;
            match connection.output {
                Output::Json => println!(
                    "{}",
                    json!({
                        "lock": name,
                        "enforce": response.enforce.as_ref().map(binding_json),
                        "shadow": response.shadow.as_ref().map(binding_json),
                    })
                ),
                Output::Text => {
                    match &response.enforce {
                        Some(binding) => println!("{name}: enforced by {}", binding_text(binding)),
                        None => println!("{name}: no binding, the builtin FIFO decides"),
                    }
                    if let Some(binding) = &response.shadow {
                        println!("{name}: shadowed by {}", binding_text(binding));
                    }
                }
            }
        }
        PolicyCommand::Test { .. }
        | PolicyCommand::New { .. }
        | PolicyCommand::Build { .. }
        | PolicyCommand::Replay { .. } => {
            unreachable!("handled above")
        }
    }
    Ok(ExitCode::SUCCESS)
}
