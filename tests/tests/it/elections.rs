//! Elections: a lost leader is replaced by the next candidate, observers on different nodes see
//! the same sequence, and a stale leader key cannot proclaim.

use std::time::Duration;

use holdfast_proto::v1 as pb;
use holdfast_tests::cluster::Cluster;
use tonic::Code;

const TTL_MS: u64 = 3_000;

/// What an observer saw: (revision, leader as (session, token, value)).
type Observed = Vec<(u64, Option<(u64, u64, Vec<u8>)>)>;

/// Reads leader changes until the leader is the session `until` (checking revisions increase).
async fn observe_until(stream: &mut tonic::Streaming<pb::ObserveResponse>, until: u64) -> Observed {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("observe stalled")
            .unwrap()
            .expect("observe ended");
        let leader = response.leader.map(|l| {
            let key = l.key.unwrap();
            (key.session_id, key.token, l.value)
        });
        let done = leader
            .as_ref()
            .is_some_and(|(session, _, _)| *session == until);
        seen.push((response.revision, leader));
        if done {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_leader_is_replaced_and_observers_agree() {
    let cluster = Cluster::start(3).await;
    let ids = cluster.ids();
    let mut observers = vec![
        cluster
            .client_of(ids[0])
            .observe("elections/primary")
            .await
            .unwrap(),
        cluster
            .client_of(ids[2])
            .observe("elections/primary")
            .await
            .unwrap(),
    ];
    let client = cluster.client();
    let first = client.open_session(TTL_MS, "first").await.unwrap();
    let leadership = first
        .campaign("elections/primary", b"first", 0)
        .await
        .unwrap()
        .expect("nobody leads yet");
    let mut candidates = Vec::new();
    for name in ["second", "third"] {
        let session = client.open_session(60_000, name).await.unwrap();
        candidates.push(tokio::spawn(async move {
            let elected = session
                .campaign("elections/primary", name.as_bytes(), 30_000)
                .await;
            (session, elected)
        }));
    }
    first.proclaim(&leadership, b"first-v2").await.unwrap();
    assert_eq!(
        client
            .leader("elections/primary")
            .await
            .unwrap()
            .unwrap()
            .value,
        b"first-v2"
    );

    // The leader's session is lost: the next candidate in line is elected.
    first.stop_keepalive();
    let (second, elected) = candidates.remove(0).await.unwrap();
    let second_leadership = elected
        .unwrap()
        .expect("second elected after the first leader's session expired");
    assert!(second_leadership.token > leadership.token);

    // The old leader key is stale now.
    let stale = client.open_session(60_000, "impostor").await.unwrap();
    let mut elections = pb::elections_client::ElectionsClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr(ids[1])))
            .unwrap()
            .connect_lazy(),
    );
    let refused = elections
        .proclaim(pb::ProclaimRequest {
            leader: Some(pb::LeaderKey {
                name: "elections/primary".into(),
                session_id: first.id,
                token: leadership.token,
            }),
            value: b"stale".to_vec(),
        })
        .await
        .expect_err("a stale leader key must not proclaim");
    assert!(
        matches!(refused.code(), Code::NotFound | Code::FailedPrecondition),
        "{refused:?}"
    );
    drop(stale);

    // Resign hands over to the third candidate.
    second.resign(&second_leadership).await.unwrap();
    let (third, elected) = candidates.remove(0).await.unwrap();
    elected
        .unwrap()
        .expect("third elected after the second resigned");

    let mut sequences = Vec::new();
    for observer in &mut observers {
        sequences.push(observe_until(observer, third.id).await);
    }
    // Both observers started before the first campaign; drop the initial "no leader" snapshot
    // (its revision is each node's applied index at subscription) and compare the changes.
    let changes = |seq: &Observed| seq.iter().skip(1).cloned().collect::<Vec<_>>();
    assert_eq!(changes(&sequences[0]), changes(&sequences[1]));
    let leaders: Vec<Option<u64>> = changes(&sequences[0])
        .iter()
        .map(|(_, l)| l.as_ref().map(|(s, _, _)| *s))
        .collect();
    assert_eq!(
        leaders,
        vec![
            Some(first.id),
            Some(first.id),
            Some(second.id),
            Some(third.id)
        ],
        "{:?}",
        sequences[0]
    );
}
