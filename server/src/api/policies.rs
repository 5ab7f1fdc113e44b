//! holdfast.v1.Policies: deploy policy modules, bind them to prefixes, list and describe.
//! Deploy/Bind/Unbind are admin operations, refused unless the node allows them
//! (`--allow-admin`, on in `holdfast dev`).

use std::sync::Arc;

use holdfast_core::{BindMode, BindingView, Command, Outcome, PolicyView, limits};
use holdfast_proto::v1::{self as pb, policies_server::Policies};
use tonic::{Request, Response, Status};

use super::common::{read_state, write_command};
use super::validate;
use super::watch::bind_mode_to_pb;
use crate::node::Node;
use crate::policy::Precheck;
use crate::policy::module::hex;

pub struct PoliciesApi {
    pub node: Arc<Node>,
    /// Whether this node accepts Deploy/Bind/Unbind.
    pub allow_admin: bool,
    pub precheck: Arc<Precheck>,
}

impl PoliciesApi {
    /// Admin calls: with authentication on, the auth layer has already checked the caller's
    /// admin role (an `Identity` is present); without it the node must allow them.
    fn admin<T>(&self, what: &str, request: &tonic::Request<T>) -> Result<(), Status> {
        if self.allow_admin || super::common::identity(request).is_some() {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{what} is a policy administration call and this node does not allow them \
             (start it with --allow-admin)"
        )))
    }
}

fn bind_mode_from_pb(mode: i32) -> Result<BindMode, Status> {
    match pb::BindMode::try_from(mode) {
        Ok(pb::BindMode::Unspecified | pb::BindMode::Enforce) => Ok(BindMode::Enforce),
        Ok(pb::BindMode::Shadow) => Ok(BindMode::Shadow),
        Err(_) => Err(Status::invalid_argument(format!(
            "mode: unknown bind mode {mode}"
        ))),
    }
}

fn policy_to_pb(policy: &PolicyView) -> pb::PolicyInfo {
    pb::PolicyInfo {
        name: policy.name.clone(),
        version: policy.version,
        sha256: hex(&policy.sha256),
        module_bytes: policy.module_bytes as u64,
        deployed_at: policy.deployed_at,
        meta_name: policy.meta_name.clone(),
        meta_version: policy.meta_version.clone(),
        hooks: policy.hooks.clone(),
    }
}

fn binding_to_pb(binding: &BindingView) -> pb::BindingInfo {
    pb::BindingInfo {
        prefix: binding.prefix.clone(),
        mode: bind_mode_to_pb(binding.mode) as i32,
        policy: binding.policy.clone(),
        version: binding.version,
        config: binding.config.clone(),
        bound_at: binding.bound_at,
        faults: binding
            .faults
            .iter()
            .map(|(hook, count)| pb::HookFaults {
                hook: hook.clone(),
                count: *count,
            })
            .collect(),
        disagreements: binding.disagreements,
        compared: binding.compared,
    }
}

#[tonic::async_trait]
impl Policies for PoliciesApi {
    async fn deploy(
        &self,
        request: Request<pb::DeployPolicyRequest>,
    ) -> Result<Response<pb::DeployPolicyResponse>, Status> {
        self.admin("Deploy", &request)?;
        let request = request.into_inner();
        if request.wasm.len() > limits::POLICY_MODULE_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "wasm: {} bytes, more than policy_module_bytes_max ({})",
                request.wasm.len(),
                limits::POLICY_MODULE_BYTES_MAX
            )));
        }
        // Checks before proposing (compile + sample hook runs), off the async runtime.
        let precheck = Arc::clone(&self.precheck);
        let wasm = Arc::new(request.wasm);
        {
            let wasm = Arc::clone(&wasm);
            crate::blocking::offload(move || precheck.check(&wasm))
                .await
                .map_err(|error| Status::internal(format!("deploy pre-check: {error}")))?
                .map_err(|message| Status::invalid_argument(format!("wasm: {message}")))?;
        }
        let wasm = Arc::try_unwrap(wasm).unwrap_or_else(|shared| (*shared).clone());
        let command = Command::DeployPolicy {
            name: request.name,
            wasm,
        };
        let ((name, version, sha256, created), header) = write_command(
            &self.node,
            "DeployPolicy",
            command,
            |outcome| match outcome {
                Outcome::PolicyDeployed {
                    name,
                    version,
                    sha256,
                    created,
                } => Some((name.clone(), *version, *sha256, *created)),
                _ => None,
            },
        )
        .await?;
        Ok(Response::new(pb::DeployPolicyResponse {
            header,
            name,
            version,
            sha256: hex(&sha256),
            created,
        }))
    }

    async fn bind(
        &self,
        request: Request<pb::BindPolicyRequest>,
    ) -> Result<Response<pb::BindPolicyResponse>, Status> {
        self.admin("Bind", &request)?;
        let request = request.into_inner();
        validate::prefix(&request.prefix)?;
        if request.config.len() > limits::POLICY_CONFIG_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "config: {} bytes, more than policy_config_bytes_max ({})",
                request.config.len(),
                limits::POLICY_CONFIG_BYTES_MAX
            )));
        }
        let command = Command::BindPolicy {
            prefix: request.prefix,
            policy: request.policy,
            version: request.version,
            config: request.config,
            mode: bind_mode_from_pb(request.mode)?,
        };
        let ((prefix, policy, version, mode), header) =
            write_command(&self.node, "BindPolicy", command, |outcome| match outcome {
                Outcome::PolicyBound {
                    prefix,
                    policy,
                    version,
                    mode,
                } => Some((prefix.clone(), policy.clone(), *version, *mode)),
                _ => None,
            })
            .await?;
        Ok(Response::new(pb::BindPolicyResponse {
            header,
            prefix,
            policy,
            version,
            mode: bind_mode_to_pb(mode) as i32,
        }))
    }

    async fn unbind(
        &self,
        request: Request<pb::UnbindPolicyRequest>,
    ) -> Result<Response<pb::UnbindPolicyResponse>, Status> {
        self.admin("Unbind", &request)?;
        let request = request.into_inner();
        validate::prefix(&request.prefix)?;
        let command = Command::Unbind {
            prefix: request.prefix,
            mode: bind_mode_from_pb(request.mode)?,
        };
        let ((), header) = write_command(&self.node, "Unbind", command, |outcome| {
            matches!(outcome, Outcome::PolicyUnbound { .. }).then_some(())
        })
        .await?;
        Ok(Response::new(pb::UnbindPolicyResponse { header }))
    }

    async fn list(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let request = request.into_inner();
        let ((policies, bindings, policy_fault_count), header) =
            read_state(&self.node, request.serializable, |state| {
                (
                    state.policies().iter().map(policy_to_pb).collect(),
                    state.bindings().iter().map(binding_to_pb).collect(),
                    state.policy_fault_count(),
                )
            })
            .await?;
        Ok(Response::new(pb::ListPoliciesResponse {
            header,
            policies,
            bindings,
            policy_fault_count,
        }))
    }

    async fn describe(
        &self,
        request: Request<pb::DescribePolicyRequest>,
    ) -> Result<Response<pb::DescribePolicyResponse>, Status> {
        let request = request.into_inner();
        validate::lock_name("lock", &request.lock)?;
        let ((enforce, shadow), header) = read_state(&self.node, request.serializable, |state| {
            let (enforce, shadow) = state.bindings_for(&request.lock);
            (
                enforce.as_ref().map(binding_to_pb),
                shadow.as_ref().map(binding_to_pb),
            )
        })
        .await?;
        Ok(Response::new(pb::DescribePolicyResponse {
            header,
            enforce,
            shadow,
        }))
    }
}
