//! Group commit: concurrent writers share durable commits.

use std::sync::Arc;
use std::time::Instant;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_share_commits() {
    let d = tempfile::tempdir().unwrap();
    let s = Arc::new(open(d.path()));
    let writers = 64;
    let per = 20;
    let start = Instant::now();
    let before = s.commit_count();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..per {
                revs.push(rev_of(
                    &put(&*s, &format!("w{w}/{i}"), "value").await.header,
                ));
            }
            revs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let commits = s.commit_count() - before;
    let writes = (writers * per) as u64;
    eprintln!(
        "{writes} puts by {writers} writers: {commits} commits in {:?}",
        start.elapsed()
    );
    assert!(commits < writes, "{commits} commits for {writes} writes");
    // Every put got its own revision.
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len() as u64, writes);
    assert_eq!(s.current_revision(), 1 + writes as i64);
    assert_eq!(get(&*s, rr("w", "x")).await.count, writes as i64);
}
