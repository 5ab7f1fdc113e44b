//! Authentication and roles (`--token-file`): unknown and missing tokens, roles gating client
//! and admin calls, the authenticated principal stamped into sessions (a forged one refused),
//! sessions usable only by their principal or an admin, and peer calls from another cluster or
//! a stranger refused — each refused before anything is proposed.

use holdfast_client::{Client, LockMode};
use holdfast_proto::internal::{Payload, peer_client::PeerClient};
use holdfast_proto::v1 as pb;
use holdfast_tests::cluster::{Cluster, ClusterOptions};
use tonic::Code;

const ADMIN: &str = "admin-token-0123456789";
const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789ab";
const READER: &str = "reader-token-012345678";
const PEER: &str = "peer-token-0123456789ab";
const TTL_MS: u64 = 10_000;

fn token_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tokens.toml");
    let entry = |token: &str, principal: &str, role: &str| {
        format!(
            "[[token]]\ntoken = \"{token}\"\nprincipal = \"{principal}\"\nroles = [\"{role}\"]\n\n"
        )
    };
    let text = [
        entry(ADMIN, "ops", "admin"),
        entry(ALICE, "alice", "client"),
        entry(BOB, "bob", "client"),
        entry(READER, "dashboard", "read"),
        entry(PEER, "cluster", "peer"),
    ]
    .concat();
    std::fs::write(&path, text).unwrap();
    path
}

async fn start(dir: &std::path::Path) -> Cluster {
    let path = token_file(dir);
    Cluster::start_opts(ClusterOptions {
        size: 3,
        extra_args: vec![format!("--token-file={}", path.display())],
        token: Some(ADMIN.to_owned()),
        http: true,
        ..ClusterOptions::default()
    })
    .await
}

fn as_(cluster: &Cluster, token: Option<&str>) -> Client {
    let endpoints: Vec<String> = cluster
        .ids()
        .iter()
        .map(|id| cluster.addr(*id).to_owned())
        .collect();
    let client = Client::connect(&endpoints).unwrap();
    match token {
        Some(token) => client.with_token(token).unwrap(),
        None => client,
    }
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => panic!("expected a refusal, the call succeeded"),
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_and_roles_gate_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path()).await;

    // No token, an unknown token: UNAUTHENTICATED, even for reads.
    assert_eq!(
        code(as_(&cluster, None).describe("a").await),
        Code::Unauthenticated
    );
    let stranger = as_(&cluster, Some("not-a-token-0123456789"));
    assert_eq!(code(stranger.describe("a").await), Code::Unauthenticated);
    assert_eq!(
        code(stranger.open_session(TTL_MS, "").await),
        Code::Unauthenticated
    );

    // A reader reads, and may not open sessions.
    let reader = as_(&cluster, Some(READER));
    reader.describe("a").await.expect("a reader may describe");
    assert_eq!(
        code(reader.open_session(TTL_MS, "").await),
        Code::PermissionDenied
    );

    // A client gets its authenticated principal; it cannot name another one.
    let alice = as_(&cluster, Some(ALICE));
    assert_eq!(
        code(alice.open_session(TTL_MS, "bob").await),
        Code::PermissionDenied
    );
    let session = alice
        .open_session(TTL_MS, "")
        .await
        .expect("alice's session");
    let hold = session
        .acquire("team/a", LockMode::Exclusive, 0)
        .await
        .expect("acquire")
        .expect("free lock");
    // ... and may not use admin calls (the nodes run without --allow-admin).
    let unbind = alice.unbind_policy("team/", pb::BindMode::Enforce).await;
    assert_eq!(code(unbind), Code::PermissionDenied);
    // A backup copies everyone's state: admin only.
    assert_eq!(code(alice.snapshot().await), Code::PermissionDenied);
    assert_eq!(code(reader.snapshot().await), Code::PermissionDenied);

    // Bob may not use Alice's session: neither acquire in it nor release her hold.
    let bob = as_(&cluster, Some(BOB));
    let mut raw = pb::locks_client::LocksClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr(1)))
            .unwrap()
            .connect_lazy(),
    );
    let mut forged = tonic::Request::new(pb::ReleaseRequest {
        session_id: session.id,
        request_id: 1_000,
        name: "team/a".into(),
        token: hold.token,
    });
    forged
        .metadata_mut()
        .insert("authorization", format!("Bearer {BOB}").parse().unwrap());
    assert_eq!(code(raw.release(forged).await), Code::PermissionDenied);
    let bob_session = bob.open_session(TTL_MS, "").await.expect("bob's session");
    assert_ne!(bob_session.id, session.id);

    // Only an admin may revoke a hold; it ends with reason REVOKED. Admin calls need no
    // --allow-admin when authentication is on.
    assert_eq!(
        code(alice.revoke("team/a", hold.token).await),
        Code::PermissionDenied
    );
    let admin = as_(&cluster, Some(ADMIN));
    let revoked_at = admin
        .revoke("team/a", hold.token)
        .await
        .expect("an admin revokes another session's hold");
    assert_eq!(
        code(admin.revoke("team/a", hold.token).await),
        Code::FailedPrecondition,
        "a hold is revoked once"
    );
    if let Err(status) = admin.unbind_policy("team/", pb::BindMode::Enforce).await {
        assert!(
            !matches!(
                status.code(),
                Code::PermissionDenied | Code::Unauthenticated
            ),
            "{status:?}"
        );
    }
    admin.members().await.expect("members");
    admin.snapshot().await.expect("an admin takes a backup");

    // Nothing the refused calls asked for was proposed: exactly two sessions were opened, with
    // the authenticated principals.
    let mut watch = admin.watch("", 1).await.expect("watch");
    let mut opened = Vec::new();
    let mut revoked = None;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while revoked.is_none() && tokio::time::Instant::now() < deadline {
        let next = tokio::time::timeout(std::time::Duration::from_secs(2), watch.message()).await;
        let Ok(Ok(Some(change))) = next else { break };
        for event in change.events {
            if event.kind == pb::EventKind::SessionOpened as i32 {
                opened.push((event.session_id, event.principal));
            } else if event.kind == pb::EventKind::Released as i32 {
                revoked = Some((change.revision, event.token, event.reason));
            }
        }
    }
    assert_eq!(
        opened,
        vec![
            (session.id, "alice".to_owned()),
            (bob_session.id, "bob".to_owned())
        ]
    );
    assert_eq!(
        revoked,
        Some((revoked_at, hold.token, pb::EventReason::Revoked as i32)),
        "the only release is the admin's revoke"
    );

    // The console's data needs the read role too; its page (no data) and /metrics do not.
    let http = cluster.http_addr(1);
    let page = "/console/api/cluster";
    let get = |token| crate::console::http(http, "GET", page, token);
    let (status, body) = get(None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("requires a token"), "{body}");
    assert_eq!(get(Some("not-a-token-0123456789")).await.0, 401);
    let (status, body) = get(Some(READER)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["members"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "peers answer the console's status calls with the peer token: {body}"
    );
    assert_eq!(
        get(Some(PEER)).await.0,
        403,
        "the peer role is not a reader"
    );
    assert_eq!(
        crate::console::http(http, "GET", "/console", None).await.0,
        200
    );
    assert_eq!(
        crate::console::http(http, "GET", "/metrics", None).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_calls_need_the_peer_token_the_cluster_id_and_membership() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr(1)))
        .unwrap()
        .connect_lazy();
    let call = |token: Option<&str>, cluster_id: &str, from: &str| {
        let mut peer = PeerClient::new(channel.clone());
        let mut request = tonic::Request::new(Payload {
            data: vec![1, 2, 3],
        });
        let metadata = request.metadata_mut();
        if let Some(token) = token {
            metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        metadata.insert("holdfast-cluster-id", cluster_id.parse().unwrap());
        metadata.insert("holdfast-peer-from", from.parse().unwrap());
        async move { peer.append_entries(request).await }
    };
    assert_eq!(
        code(call(None, "holdfast", "2").await),
        Code::Unauthenticated
    );
    // A client token is not a peer token.
    assert_eq!(
        code(call(Some(ADMIN), "holdfast", "2").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(call(Some(PEER), "other", "2").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(call(Some(PEER), "holdfast", "99").await),
        Code::PermissionDenied
    );
    // Everything right: the (garbage) payload itself is what fails.
    assert_eq!(
        code(call(Some(PEER), "holdfast", "2").await),
        Code::InvalidArgument
    );
    // And the cluster itself works: its nodes authenticate to each other.
    cluster.wait_converged(&cluster.ids()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_tokens_peer_calls_still_need_the_cluster_id() {
    let cluster = Cluster::start(3).await;
    let mut peer = PeerClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr(1)))
            .unwrap()
            .connect_lazy(),
    );
    let mut request = tonic::Request::new(Payload { data: vec![] });
    request
        .metadata_mut()
        .insert("holdfast-cluster-id", "another-cluster".parse().unwrap());
    request
        .metadata_mut()
        .insert("holdfast-peer-from", "2".parse().unwrap());
    assert_eq!(code(peer.vote(request).await), Code::PermissionDenied);
    // Anonymous clients keep working when authentication is off; admin calls need
    // --allow-admin then.
    let client = cluster.client();
    client.describe("x").await.expect("describe");
    let session = client.open_session(TTL_MS, "anyone").await.unwrap();
    let hold = session
        .acquire("x", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        code(client.revoke("x", hold.token).await),
        Code::PermissionDenied
    );
}

/// SIGHUP reloads the token file: a new token works and a removed one is refused from then on;
/// a broken file leaves the previous tokens in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_the_token_file() {
    const CAROL: &str = "carol-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path()).await;
    let path = dir.path().join("tokens.toml");
    let carol = as_(&cluster, Some(CAROL));
    assert_eq!(code(carol.describe("a").await), Code::Unauthenticated);

    // Carol in, Alice out.
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(ALICE, CAROL).replace("\"alice\"", "\"carol\"");
    std::fs::write(&path, text).unwrap();
    let hang_up = || {
        for id in cluster.ids() {
            cluster.signal(id, "HUP");
        }
    };
    hang_up();
    for id in cluster.ids() {
        let single = |token: &str| {
            Client::connect(&[cluster.addr(id)])
                .unwrap()
                .with_token(token)
                .unwrap()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while single(CAROL).status(0).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "node {id} did not reload its token file"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(
            code(single(ALICE).status(0).await),
            Code::Unauthenticated,
            "node {id} still takes a removed token"
        );
    }
    let session = carol
        .open_session(TTL_MS, "")
        .await
        .expect("carol's session");

    // A broken file changes nothing (and the nodes keep running).
    std::fs::write(&path, "[[token]]\ntoken = \"short\"\n").unwrap();
    hang_up();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    carol
        .describe("a")
        .await
        .expect("carol's token still works");
    assert_eq!(
        code(as_(&cluster, Some(ALICE)).describe("a").await),
        Code::Unauthenticated
    );
    session.close().await.unwrap();
}
