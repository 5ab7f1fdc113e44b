//! Who may call what: bearer tokens from a token file, mapped to a principal and roles.
//!
//! Without a token file (the default, and `holdfast dev`) every caller is anonymous, may use
//! every client and read call, and chooses its session's principal; admin calls then need the
//! node's `--allow-admin`. With a token file every call but health and reflection needs
//! `authorization: Bearer <token>`: an unknown or missing token is UNAUTHENTICATED, a call the
//! token's roles do not cover is PERMISSION_DENIED naming the role it needs. The
//! authenticated principal is what the receiving node stamps into OpenSession (a request that
//! names another principal is refused), and a session is usable only by its own principal or
//! an admin. Peers authenticate with a token holding the `peer` role (every node reads the
//! same token file and sends the first such token on its own peer calls).
//!
//! Roles: `read` (Describe, List, CheckToken, Leader, Observe, Watch, policy List/Describe,
//! cluster Status/Members) ⊂ `client` (sessions, Acquire/Release, Campaign/Proclaim/Resign)
//! ⊂ `admin` (policy Deploy/Bind/Unbind, Revoke, membership, leader transfer); `peer` is
//! separate.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::codegen::http;

/// Shortest token accepted in a token file (a guessable token is no authentication).
pub const AUTH_TOKEN_BYTES_MIN: usize = 16;
/// Most tokens in one token file.
pub const AUTH_TOKENS_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Client,
    Admin,
    Peer,
}

impl Role {
    /// Whether holding `self` allows a call that needs `needed`.
    fn covers(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Peer, needed) => needed == Role::Peer,
            (_, Role::Peer) => false,
            (held, needed) => held >= needed,
        }
    }
}

/// What a gRPC method needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Health checks and reflection: anyone.
    Open,
    Role(Role),
}

/// The role a method (gRPC path `/package.Service/Method`) needs. One table for the whole API
/// (service names from the generated code, so a renamed package cannot slip past it).
pub fn need(path: &str) -> Need {
    use holdfast_proto::internal::peer_server::SERVICE_NAME as PEER;
    use holdfast_proto::v1::cluster_server::SERVICE_NAME as CLUSTER;
    use holdfast_proto::v1::elections_server::SERVICE_NAME as ELECTIONS;
    use holdfast_proto::v1::locks_server::SERVICE_NAME as LOCKS;
    use holdfast_proto::v1::policies_server::SERVICE_NAME as POLICIES;
    use holdfast_proto::v1::sessions_server::SERVICE_NAME as SESSIONS;
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match (service, method) {
        ("grpc.health.v1.Health", _)
        | ("grpc.reflection.v1.ServerReflection", _)
        | ("grpc.reflection.v1alpha.ServerReflection", _) => Need::Open,
        (PEER, _) => Need::Role(Role::Peer),
        (POLICIES, "Deploy" | "Bind" | "Unbind")
        | (LOCKS, "Revoke")
        | (
            CLUSTER,
            "AddLearner" | "Promote" | "Remove" | "TransferLeader" | "Snapshot" | "ReadLog",
        ) => Need::Role(Role::Admin),
        (SESSIONS, _)
        | (LOCKS, "Acquire" | "Release")
        | (ELECTIONS, "Campaign" | "Proclaim" | "Resign") => Need::Role(Role::Client),
        _ => Need::Role(Role::Read),
    }
}

/// The authenticated caller, put in the request's extensions by [`AuthLayer`] when
/// authentication is on (absent = anonymous: authentication is off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub principal: String,
    pub roles: Vec<Role>,
}

impl Identity {
    pub fn has(&self, role: Role) -> bool {
        self.roles.iter().any(|held| held.covers(role))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
    #[serde(default)]
    certificate: Vec<CertificateEntry>,
}

/// A client certificate (verified against the cluster CA, TLS on) whose common name is `name`
/// authenticates as principal `name` with `roles`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateEntry {
    name: String,
    roles: Vec<Role>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    principal: String,
    roles: Vec<Role>,
}

/// The node's authentication: `None` tokens = off.
#[derive(Default)]
pub struct Auth {
    /// sha256(token) → identity (looked up by hash, so lookups do not compare secrets).
    tokens: Option<BTreeMap<[u8; 32], Identity>>,
    /// The token this node sends on its own peer calls.
    peer_token: Option<String>,
    /// Client certificate common name → identity.
    certificates: BTreeMap<String, Identity>,
}

impl Auth {
    pub fn off() -> Auth {
        Auth::default()
    }

    /// Reads a token file (TOML: `[[token]]` tables with `token`, `principal`, `roles`).
    pub fn from_file(path: &Path) -> anyhow::Result<Auth> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading token file {}", path.display()))?;
        Auth::from_toml(&text).with_context(|| format!("token file {}", path.display()))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Auth> {
        let file: TokenFile = toml::from_str(text)?;
        anyhow::ensure!(
            file.token.len() <= AUTH_TOKENS_MAX,
            "{} tokens (AUTH_TOKENS_MAX is {AUTH_TOKENS_MAX})",
            file.token.len()
        );
        let mut tokens = BTreeMap::new();
        let mut peer_token = None;
        for (i, entry) in file.token.into_iter().enumerate() {
            anyhow::ensure!(
                entry.token.len() >= AUTH_TOKEN_BYTES_MIN,
                "token #{} is shorter than AUTH_TOKEN_BYTES_MIN ({AUTH_TOKEN_BYTES_MIN} bytes)",
                i + 1
            );
            anyhow::ensure!(!entry.roles.is_empty(), "token #{} has no roles", i + 1);
            anyhow::ensure!(
                !entry.principal.is_empty()
                    && entry.principal.len() <= holdfast_core::limits::PRINCIPAL_BYTES_MAX,
                "token #{}: the principal must be 1 to {} bytes",
                i + 1,
                holdfast_core::limits::PRINCIPAL_BYTES_MAX
            );
            if entry.roles.contains(&Role::Peer) && peer_token.is_none() {
                peer_token = Some(entry.token.clone());
            }
            let identity = Identity {
                principal: entry.principal,
                roles: entry.roles,
            };
            let digest: [u8; 32] = Sha256::digest(entry.token.as_bytes()).into();
            anyhow::ensure!(
                tokens.insert(digest, identity).is_none(),
                "token #{} appears twice",
                i + 1
            );
        }
        let mut certificates = BTreeMap::new();
        for entry in file.certificate {
            anyhow::ensure!(
                !entry.roles.is_empty(),
                "certificate {:?} has no roles",
                entry.name
            );
            let identity = Identity {
                principal: entry.name.clone(),
                roles: entry.roles,
            };
            anyhow::ensure!(
                certificates.insert(entry.name.clone(), identity).is_none(),
                "certificate {:?} appears twice",
                entry.name
            );
        }
        Ok(Auth {
            tokens: Some(tokens),
            peer_token,
            certificates,
        })
    }

    pub fn enabled(&self) -> bool {
        self.tokens.is_some()
    }

    pub fn peer_token(&self) -> Option<&str> {
        self.peer_token.as_deref()
    }

    /// Authenticates and authorizes a call to `path` with these headers (and `certificate`,
    /// the common name of the client certificate the caller presented over TLS, asked only
    /// when there is no token: parsing it costs more than the rest of the check): the caller's
    /// identity (None when authentication is off or the method is open to anyone) or the
    /// refusal. A bearer token wins over a certificate.
    pub fn check(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        certificate: impl FnOnce() -> Option<String>,
    ) -> Result<Option<Identity>, Status> {
        let Need::Role(needed) = need(path) else {
            return Ok(None);
        };
        self.check_role(path, needed, headers, certificate)
    }

    /// [`Auth::check`] of a call that needs role `needed` (`what` names it in refusals): the
    /// console's pages need `read`.
    pub fn check_role(
        &self,
        what: &str,
        needed: Role,
        headers: &http::HeaderMap,
        certificate: impl FnOnce() -> Option<String>,
    ) -> Result<Option<Identity>, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let identity = match (token, token.is_none().then(certificate).flatten()) {
            (Some(token), _) => {
                let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
                tokens
                    .get(&digest)
                    .ok_or_else(|| Status::unauthenticated("unknown token"))?
            }
            (None, Some(name)) => self.certificates.get(&name).ok_or_else(|| {
                Status::unauthenticated(format!(
                    "client certificate {name:?} is not in this node's token file"
                ))
            })?,
            (None, None) => {
                return Err(Status::unauthenticated(
                    "this node requires a token (metadata `authorization: Bearer <token>`) or \
                     a client certificate listed in its token file",
                ));
            }
        };
        if !identity.has(needed) {
            return Err(Status::permission_denied(format!(
                "{what} needs the {needed:?} role; principal {:?} has {:?}",
                identity.principal, identity.roles
            )));
        }
        Ok(Some(identity.clone()))
    }
}

/// The node's current [`Auth`], replaced whole when the token file is reloaded (SIGHUP).
pub type SharedAuth = Arc<std::sync::RwLock<Arc<Auth>>>;

/// Reads the token file again and, if it is valid, makes it the node's authentication from the
/// next call on (calls in flight finish under the old one). A file that does not parse, or
/// that lacks a peer token, leaves the current one in place. The token this node *sends* to
/// its peers stays the one it started with: to rotate the peer token, list the new one beside
/// the old one, reload everywhere, restart nodes one by one, then drop the old one.
pub fn reload(shared: &SharedAuth, path: &Path) -> anyhow::Result<usize> {
    let fresh = Auth::from_file(path)?;
    anyhow::ensure!(
        fresh.peer_token().is_some(),
        "the token file has no token with the peer role: nodes could not talk to each other"
    );
    let count = fresh.tokens.as_ref().map_or(0, BTreeMap::len) + fresh.certificates.len();
    *shared.write().expect("auth lock") = Arc::new(fresh);
    Ok(count)
}

/// Wraps the server's services with [`AuthService`].
#[derive(Clone)]
pub struct AuthLayer {
    pub auth: SharedAuth,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

/// Checks every call with [`Auth::check`]: refuses it with its status, or passes it on with the
/// caller's [`Identity`] in its extensions.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: SharedAuth,
}

impl<S, B, RB> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let extensions = request.extensions();
        let auth = Arc::clone(&self.auth.read().expect("auth lock"));
        let checked = auth.check(request.uri().path(), request.headers(), || {
            crate::tls::peer_common_name(extensions)
        });
        match checked {
            Ok(identity) => {
                if let Some(identity) = identity {
                    request.extensions_mut().insert(identity);
                }
                Box::pin(self.inner.call(request))
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

/// For handlers: whether the caller may use session `owner`'s session (its own, or an admin).
pub fn may_use_session(identity: Option<&Identity>, owner: &str) -> bool {
    identity.is_none_or(|identity| identity.principal == owner || identity.has(Role::Admin))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[token]]
        token = "admin-token-0123456789"
        principal = "ops"
        roles = ["admin"]

        [[token]]
        token = "client-token-0123456789"
        principal = "billing"
        roles = ["client"]

        [[token]]
        token = "reader-token-0123456789"
        principal = "dashboard"
        roles = ["read"]

        [[token]]
        token = "peer-token-0123456789ab"
        principal = "cluster"
        roles = ["peer"]

        [[certificate]]
        name = "batch-job"
        roles = ["client"]
    "#;

    fn headers(token: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn roles_cover_what_they_should() {
        let auth = Auth::from_toml(FILE).unwrap();
        let acquire = "/holdfast.v1.Locks/Acquire";
        let deploy = "/holdfast.v1.Policies/Deploy";
        let describe = "/holdfast.v1.Locks/Describe";
        let append = "/holdfast.internal.v1.Peer/AppendEntries";
        let code = |path: &str, token: &str| {
            auth.check(path, &headers(token), || None)
                .err()
                .map(|status| status.code())
        };
        use tonic::Code::PermissionDenied as Denied;
        assert_eq!(code(deploy, "admin-token-0123456789"), None);
        assert_eq!(code(acquire, "admin-token-0123456789"), None);
        assert_eq!(code(append, "admin-token-0123456789"), Some(Denied));
        assert_eq!(code(acquire, "client-token-0123456789"), None);
        assert_eq!(code(deploy, "client-token-0123456789"), Some(Denied));
        assert_eq!(code(describe, "reader-token-0123456789"), None);
        assert_eq!(code(acquire, "reader-token-0123456789"), Some(Denied));
        assert_eq!(code(append, "peer-token-0123456789ab"), None);
        assert_eq!(code(describe, "peer-token-0123456789ab"), Some(Denied));
        assert_eq!(auth.peer_token(), Some("peer-token-0123456789ab"));
        let identity = auth
            .check(acquire, &headers("client-token-0123456789"), || None)
            .unwrap()
            .unwrap();
        assert_eq!(identity.principal, "billing");
    }

    #[test]
    fn missing_and_unknown_tokens_are_unauthenticated_health_is_open() {
        let auth = Auth::from_toml(FILE).unwrap();
        let none = http::HeaderMap::new();
        let status = auth
            .check("/holdfast.v1.Locks/Describe", &none, || None)
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let status = auth
            .check(
                "/holdfast.v1.Locks/Describe",
                &headers("no-such-token-0123456"),
                || None,
            )
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(
            auth.check("/grpc.health.v1.Health/Check", &none, || None)
                .unwrap()
                .is_none()
        );
        let off = Auth::off().check("/holdfast.v1.Policies/Deploy", &none, || None);
        assert!(off.unwrap().is_none());
    }

    #[test]
    fn a_listed_client_certificate_authenticates_a_token_wins_over_it() {
        let auth = Auth::from_toml(FILE).unwrap();
        let none = http::HeaderMap::new();
        let acquire = "/holdfast.v1.Locks/Acquire";
        let identity = auth
            .check(acquire, &none, || Some("batch-job".into()))
            .unwrap()
            .unwrap();
        assert_eq!(identity.principal, "batch-job");
        let status = auth
            .check(acquire, &none, || Some("someone-else".into()))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let with_token = headers("reader-token-0123456789");
        let status = auth
            .check(acquire, &with_token, || Some("batch-job".into()))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn bad_token_files_are_refused() {
        let short = "[[token]]\ntoken = \"short\"\nprincipal = \"a\"\nroles = [\"read\"]\n";
        assert!(Auth::from_toml(short).is_err());
        let no_roles =
            "[[token]]\ntoken = \"long-enough-token-123\"\nprincipal = \"a\"\nroles = []\n";
        assert!(Auth::from_toml(no_roles).is_err());
        let twice =
            "[[token]]\ntoken = \"long-enough-token-123\"\nprincipal = \"a\"\nroles = [\"read\"]\n";
        assert!(Auth::from_toml(&format!("{twice}{twice}")).is_err());
        let bad_role =
            "[[token]]\ntoken = \"long-enough-token-123\"\nprincipal = \"a\"\nroles = [\"root\"]\n";
        assert!(Auth::from_toml(bad_role).is_err());
    }
}
