//! TLS (`holdfast certs`, `--tls-cert/--tls-key/--tls-ca`): a cluster whose nodes talk TLS to
//! each other and to clients; plaintext, a foreign CA and an expired client certificate are
//! refused; peer calls need the calling node's own certificate; a client certificate listed in
//! the token file authenticates as its common name.

use std::time::Duration;

use holdfast_client::{Client, ClientTls, LockMode};
use holdfast_proto::internal::{Payload, peer_client::PeerClient};
use holdfast_proto::v1 as pb;
use holdfast_tests::cluster::{Cluster, ClusterOptions, holdfast_bin};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// How long a call that should be refused may take.
const REFUSAL_TIMEOUT_MS: u64 = 5_000;

fn read(cluster: &Cluster, name: &str) -> Vec<u8> {
    std::fs::read(cluster.certs_dir().join(name)).unwrap()
}

/// A raw TLS channel to node 1 with `ca` and, optionally, client certificate `client`.
fn channel(cluster: &Cluster, ca: Vec<u8>, client: Option<&str>) -> tonic::transport::Channel {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(name) = client {
        tls = tls.identity(Identity::from_pem(
            read(cluster, &format!("client-{name}.pem")),
            read(cluster, &format!("client-{name}.key")),
        ));
    }
    Endpoint::from_shared(format!("https://{}", cluster.addr(1)))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_millis(REFUSAL_TIMEOUT_MS))
        .connect_timeout(Duration::from_millis(REFUSAL_TIMEOUT_MS))
        .connect_lazy()
}

async fn describe(
    channel: tonic::transport::Channel,
) -> Result<pb::DescribeResponse, tonic::Status> {
    let request = pb::DescribeRequest {
        name: "x".into(),
        serializable: true,
    };
    Ok(pb::locks_client::LocksClient::new(channel)
        .describe(request)
        .await?
        .into_inner())
}

async fn peer_call(channel: tonic::transport::Channel, from: &str) -> Code {
    let mut request = tonic::Request::new(Payload { data: vec![] });
    request
        .metadata_mut()
        .insert("holdfast-cluster-id", "holdfast".parse().unwrap());
    request
        .metadata_mut()
        .insert("holdfast-peer-from", from.parse().unwrap());
    match PeerClient::new(channel).vote(request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_cluster_serves_over_tls_and_refuses_strangers() {
    let cluster = Cluster::start_opts(ClusterOptions {
        size: 3,
        tls: true,
        ..ClusterOptions::default()
    })
    .await;
    // The nodes elected a leader and replicate over TLS; clients lock over mutual TLS.
    let client = cluster.client();
    let session = client
        .open_session(10_000, "tls")
        .await
        .expect("session over TLS");
    let guard = session.try_lock("tls/a").await.unwrap().expect("free");
    guard.release().await.unwrap();
    cluster.wait_converged(&cluster.ids()).await;

    // Server-only TLS (no client certificate) is allowed for client calls.
    let ca = read(&cluster, "ca.pem");
    describe(channel(&cluster, ca.clone(), None))
        .await
        .expect("a client without a certificate");

    // Plaintext is refused.
    let plain = Endpoint::from_shared(format!("http://{}", cluster.addr(1)))
        .unwrap()
        .timeout(Duration::from_millis(REFUSAL_TIMEOUT_MS))
        .connect_lazy();
    assert!(
        describe(plain).await.is_err(),
        "a plaintext call was answered"
    );

    // A client that trusts another CA does not trust the nodes.
    let other = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(holdfast_bin())
        .args(["certs", "--node=1=127.0.0.1"])
        .arg(format!("--out={}", other.path().display()))
        .output()
        .unwrap();
    assert!(status.status.success());
    let foreign_ca = std::fs::read(other.path().join("ca.pem")).unwrap();
    assert!(
        describe(channel(&cluster, foreign_ca, None)).await.is_err(),
        "a client with a foreign CA connected"
    );

    // An expired client certificate is refused (the handshake fails).
    assert!(
        describe(channel(&cluster, ca.clone(), Some("stale")))
            .await
            .is_err(),
        "an expired client certificate was accepted"
    );

    // Peer calls need the calling node's own certificate.
    assert_eq!(
        peer_call(channel(&cluster, ca.clone(), None), "2").await,
        Code::PermissionDenied
    );
    assert_eq!(
        peer_call(channel(&cluster, ca.clone(), Some("alice")), "2").await,
        Code::PermissionDenied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listed_client_certificate_authenticates_as_its_common_name() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        "[[token]]\ntoken = \"peer-token-0123456789ab\"\nprincipal = \"cluster\"\nroles = [\"peer\"]\n\n\
         [[certificate]]\nname = \"harness\"\nroles = [\"admin\"]\n\n\
         [[certificate]]\nname = \"alice\"\nroles = [\"client\"]\n",
    )
    .unwrap();
    let cluster = Cluster::start_opts(ClusterOptions {
        size: 3,
        tls: true,
        extra_args: vec![format!("--token-file={}", tokens.display())],
        http: true,
        ..ClusterOptions::default()
    })
    .await;
    let endpoints: Vec<String> = cluster
        .ids()
        .iter()
        .map(|id| cluster.addr(*id).to_owned())
        .collect();
    let as_alice = ClientTls {
        ca_pem: read(&cluster, "ca.pem"),
        identity: Some((
            read(&cluster, "client-alice.pem"),
            read(&cluster, "client-alice.key"),
        )),
    };
    let alice = Client::connect_with(&endpoints, Some(&as_alice)).unwrap();
    let session = alice
        .open_session(10_000, "")
        .await
        .expect("alice by certificate");
    let hold = session
        .acquire("cert/a", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .unwrap();
    // Her certificate names her: she cannot claim another principal, nor revoke (admin).
    let forged = alice.open_session(10_000, "harness").await;
    assert_eq!(forged.err().map(|s| s.code()), Some(Code::PermissionDenied));
    let revoke = alice.revoke("cert/a", hold.token).await;
    assert_eq!(revoke.err().map(|s| s.code()), Some(Code::PermissionDenied));
    // Without a certificate (and without a token) nothing but health checks.
    let anonymous = ClientTls {
        ca_pem: read(&cluster, "ca.pem"),
        identity: None,
    };
    let stranger = Client::connect_with(&endpoints, Some(&anonymous)).unwrap();
    let refused = stranger.describe("cert/a").await;
    assert_eq!(refused.err().map(|s| s.code()), Some(Code::Unauthenticated));
    // The harness's certificate is an admin's.
    cluster
        .client()
        .revoke("cert/a", hold.token)
        .await
        .expect("admin revoke");

    // The console speaks HTTPS on a TLS node, and a listed client certificate reads it
    // (Debian's curl, an independent TLS client): alice's is a client's, which covers read.
    let console = format!("https://{}/console/api/cluster", cluster.http_addr(1));
    let certs = cluster.certs_dir();
    let curl = |args: &[&str]| {
        let output = std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg("--cacert")
            .arg(certs.join("ca.pem"))
            .args(args)
            .output()
            .expect("curl (in the base image)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let alice_cert = certs.join("client-alice.pem");
    let alice_key = certs.join("client-alice.key");
    assert_eq!(
        curl(&[
            "--cert",
            alice_cert.to_str().unwrap(),
            "--key",
            alice_key.to_str().unwrap(),
            &console,
        ]),
        "200",
        "alice's certificate reads the console"
    );
    assert_eq!(curl(&[&console]), "401", "no certificate, no token");
    let plain = console.replacen("https", "http", 1);
    assert_ne!(curl(&[&plain]), "200", "plain HTTP to a TLS listener");
}
