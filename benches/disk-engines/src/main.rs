//! Disk engines compared for sluice's disk tier: N records of SIZE bytes
//! written, then read back at random; the store reopened (start-up).
use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let size: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4096);
    let body = vec![7u8; size];
    let reads = 20_000.min(n);
    // plain files: temp file + rename, as the disk tier does (no fsync)
    {
        let dir = tempfile::tempdir_in(".").unwrap();
        let t = Instant::now();
        for i in 0..n {
            let sub = dir.path().join(format!("{:02x}", i % 256));
            if i < 256 {
                std::fs::create_dir_all(&sub).unwrap();
            }
            let tmp = dir.path().join("tmp");
            std::fs::write(&tmp, &body).unwrap();
            std::fs::rename(&tmp, sub.join(format!("{i:016x}"))).unwrap();
        }
        let w = t.elapsed();
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..reads {
            let i = rng.usize(0..n);
            let b = std::fs::read(
                dir.path()
                    .join(format!("{:02x}", i % 256))
                    .join(format!("{i:016x}")),
            )
            .unwrap();
            assert_eq!(b.len(), size);
        }
        let r = t.elapsed();
        let t = Instant::now();
        let mut count = 0;
        for d in std::fs::read_dir(dir.path()).unwrap() {
            let d = d.unwrap();
            if d.file_type().unwrap().is_dir() {
                for f in std::fs::read_dir(d.path()).unwrap() {
                    let _ = f.unwrap().metadata().unwrap().len();
                    count += 1;
                }
            }
        }
        println!(
            "files  : write {:>8.1} rec/s  read {:>6.1} us/rec  reopen(list {count}) {:?}",
            n as f64 / w.as_secs_f64(),
            r.as_secs_f64() * 1e6 / reads as f64,
            t.elapsed()
        );
    }
    // redb: one file, one write transaction per record (a store is one record)
    {
        let dir = tempfile::tempdir_in(".").unwrap();
        let path = dir.path().join("db.redb");
        const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("r");
        let db = redb::Database::create(&path).unwrap();
        let t = Instant::now();
        for i in 0..n {
            let mut tx = db.begin_write().unwrap();
            tx.set_durability(redb::Durability::None);
            {
                let mut tb = tx.open_table(T).unwrap();
                tb.insert(i as u64, body.as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        // make the last one durable, as a clean shutdown would
        let mut tx = db.begin_write().unwrap();
        tx.set_durability(redb::Durability::Immediate);
        tx.commit().unwrap();
        let w = t.elapsed();
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..reads {
            let i = rng.usize(0..n) as u64;
            let tx = db.begin_read().unwrap();
            let tb = tx.open_table(T).unwrap();
            assert_eq!(tb.get(i).unwrap().unwrap().value().len(), size);
        }
        let r = t.elapsed();
        drop(db);
        let t = Instant::now();
        let db = redb::Database::create(&path).unwrap();
        let open = t.elapsed();
        drop(db);
        println!(
            "redb   : write {:>8.1} rec/s  read {:>6.1} us/rec  reopen {:?}",
            n as f64 / w.as_secs_f64(),
            r.as_secs_f64() * 1e6 / reads as f64,
            open
        );
    }
    // cacache: content-addressed store + index
    {
        let dir = tempfile::tempdir_in(".").unwrap();
        let t = Instant::now();
        for i in 0..n {
            let mut b = body.clone();
            b[..8].copy_from_slice(&(i as u64).to_le_bytes()); // distinct content
            cacache::write_sync(dir.path(), format!("k{i}"), &b).unwrap();
        }
        let w = t.elapsed();
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..reads {
            let i = rng.usize(0..n);
            assert_eq!(
                cacache::read_sync(dir.path(), format!("k{i}"))
                    .unwrap()
                    .len(),
                size
            );
        }
        let r = t.elapsed();
        let t = Instant::now();
        let listed = cacache::index::ls(dir.path()).count();
        println!(
            "cacache: write {:>8.1} rec/s  read {:>6.1} us/rec  reopen(list {listed}) {:?}",
            n as f64 / w.as_secs_f64(),
            r.as_secs_f64() * 1e6 / reads as f64,
            t.elapsed()
        );
    }
}
