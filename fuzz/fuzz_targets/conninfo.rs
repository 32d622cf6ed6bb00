//! The libpq connection-string parser (`pgkeep_engine::conninfo::parse`: `keyword=value`
//! pairs with quoting, and `postgresql://` URIs), which reads the `pg` setting of the
//! config file, `--pg` and `PGKEEP_PG`; and the `.pgpass` reader
//! (`conninfo::password_from_pgpass`). This is the config decoder pgkeep wrote itself: the
//! TOML of the config file is read by the `toml` crate into a serde struct in the CLI binary.
//!
//! Checks: no panic; a parsed string, rendered back as `keyword='value'` pairs (libpq's
//! quoting: `\` and `'` escaped), parses to the same keywords and values; `.pgpass` lookups
//! on the input as file content never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_engine::conninfo::{parse, password_from_pgpass};

fn render(params: &pgkeep_engine::conninfo::Params) -> String {
    let mut s = String::new();
    for (k, v) in params.iter() {
        s.push_str(k);
        s.push_str("='");
        for c in v.chars() {
            if c == '\\' || c == '\'' {
                s.push('\\');
            }
            s.push(c);
        }
        s.push_str("' ");
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = parse(text) {
        let again = parse(&render(&p)).expect("a rendered connection string parses");
        assert_eq!(again, p, "connection string round trip");
    }
    for (host, port, db, user) in [
        ("localhost", 5432, "postgres", "postgres"),
        ("db.example", 6543, "replication", "backup"),
    ] {
        let _ = password_from_pgpass(text, host, port, db, user);
    }
});
