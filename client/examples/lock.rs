//! Takes a lock on a running cluster, prints its fencing token, holds it for a second, and
//! releases it. Run `./scripts/dev` first, then:
//!     cargo run -p holdfast-client --example lock -- my/lock

use std::time::Duration;

use holdfast_client::{Client, DEV_ENDPOINTS, Health};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "example/lock".to_owned());
    let client = Client::connect(&DEV_ENDPOINTS)?;
    let session = client.open_session(10_000, "example").await?;
    let guard = session.lock(&name).await?;
    println!("holding {name} with fencing token {}", guard.token());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_ne!(
        session.health(),
        Health::Lost,
        "stop using the lock once the session is lost"
    );
    let released_at = guard.release().await?;
    println!("released at revision {released_at}");
    session.close().await?;
    Ok(())
}
