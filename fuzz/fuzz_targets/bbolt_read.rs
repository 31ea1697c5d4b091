//! Fuzzes the bbolt reader (snapshot files come from outside: `coffer snapshot restore` and,
//! later, `snapshot inspect` read them): open, list the buckets and walk every entry of each.
//! Any panic or hang is a bug; errors are expected.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = coffer_bbolt::Reader::open(Cursor::new(data)) else {
        return;
    };
    let Ok(buckets) = reader.buckets() else {
        return;
    };
    for name in buckets {
        let mut entries = 0usize;
        let _ = reader.for_each(&name, &mut |_k, _v| {
            entries += 1;
            Ok(())
        });
    }
});
