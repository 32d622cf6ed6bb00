//! Sans-IO: what a dump selects, as pg_dump and pg_restore options, and the row filters of
//! tenant exports (`--where 'TABLE:CONDITION'`).

use crate::error::{Error, Result};

/// The part of a database a dump takes. Each field maps to the pg_dump option of the same
/// name; the options are recorded in the dump manifest so `list` can say what a dump holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub schema_only: bool,
    pub data_only: bool,
    pub tables: Vec<String>,
    pub exclude_tables: Vec<String>,
    pub schemas: Vec<String>,
}

impl Selection {
    /// pg_dump's selection options, in a stable order.
    pub fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.schema_only {
            out.push("--schema-only".to_owned());
        }
        if self.data_only {
            out.push("--data-only".to_owned());
        }
        out.extend(self.schemas.iter().map(|s| format!("--schema={s}")));
        out.extend(self.tables.iter().map(|t| format!("--table={t}")));
        out.extend(
            self.exclude_tables
                .iter()
                .map(|t| format!("--exclude-table={t}")),
        );
        out
    }

    pub fn check(&self, filters: &[RowFilterSpec]) -> Result<()> {
        if self.schema_only && self.data_only {
            return Err(Error::InvalidInput(
                "--schema-only and --data-only exclude each other: pick one, or neither for the whole database".into(),
            ));
        }
        if self.schema_only && !filters.is_empty() {
            return Err(Error::InvalidInput(
                "--where filters rows, but --schema-only takes no rows: drop one of them".into(),
            ));
        }
        for name in self
            .tables
            .iter()
            .chain(&self.exclude_tables)
            .chain(&self.schemas)
        {
            if name.is_empty() || name.starts_with('-') {
                return Err(Error::InvalidInput(format!(
                    "{name:?} is not a table or schema name"
                )));
            }
        }
        Ok(())
    }
}

/// One `--where 'TABLE:CONDITION'`: the table's rows are exported with
/// `COPY (SELECT * FROM TABLE WHERE CONDITION) TO STDOUT` in the dump's snapshot, and
/// pg_dump leaves that table's data out (`--exclude-table-data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowFilterSpec {
    pub table: String,
    pub condition: String,
}

impl RowFilterSpec {
    /// Parses `TABLE:CONDITION`. The table is `name` or `schema.name`, optionally
    /// double-quoted per part; the condition is SQL, taken as given.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::InvalidInput(format!(
                "--where {text:?}: {why}; expected TABLE:CONDITION, e.g. 'public.orders:tenant_id = 42'"
            ))
        };
        let (table, condition) =
            split_table(text).ok_or_else(|| bad("no ':' after the table name"))?;
        let table = table.trim();
        let condition = condition.trim();
        if table.is_empty() {
            return Err(bad("the table name is empty"));
        }
        if condition.is_empty() {
            return Err(bad("the condition is empty"));
        }
        if !is_table_name(table) {
            return Err(bad(
                "the table must be NAME or SCHEMA.NAME (identifiers, optionally double-quoted)",
            ));
        }
        Ok(Self {
            table: table.to_owned(),
            condition: condition.to_owned(),
        })
    }

    /// The query whose output is the stream of this filter's rows.
    pub fn copy_out_sql(&self) -> String {
        format!(
            "COPY (SELECT * FROM {} WHERE {}) TO STDOUT",
            self.table, self.condition
        )
    }

    /// The statement that loads the rows back.
    pub fn copy_in_sql(table: &str) -> String {
        format!("COPY {table} FROM STDIN")
    }
}

/// Splits at the first ':' outside double quotes.
fn split_table(text: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => return Some((&text[..i], &text[i + 1..])),
            _ => {}
        }
    }
    None
}

/// `ident` or `ident.ident`, where an identifier is `[A-Za-z_][A-Za-z0-9_$]*` or a
/// double-quoted string with `""` for a quote. Refusing anything else keeps the name from
/// carrying SQL of its own into the `COPY` statement and pg_dump's pattern.
fn is_table_name(s: &str) -> bool {
    parse_qualified(s).is_some()
}

/// A table name as SQL reads it: the schema (if given) and the name, unquoted identifiers
/// folded to lower case, quoted ones taken as written (`""` being one quote). `None` for
/// anything but `ident` or `ident.ident`.
fn parse_qualified(s: &str) -> Option<(Option<String>, String)> {
    let mut parts: Vec<String> = Vec::new();
    let mut rest = s;
    loop {
        if let Some(q) = rest.strip_prefix('"') {
            let b = q.as_bytes();
            let mut ident = String::new();
            let mut i = 0;
            let mut end = None;
            while i < b.len() {
                if b[i] == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        ident.push('"');
                        i += 2;
                        continue;
                    }
                    end = Some(i);
                    break;
                }
                let c = q[i..].chars().next()?;
                ident.push(c);
                i += c.len_utf8();
            }
            let end = end?;
            if end == 0 {
                return None;
            }
            parts.push(ident);
            rest = &q[end + 1..];
        } else {
            let len = rest
                .char_indices()
                .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '$'))
                .map_or(rest.len(), |(i, _)| i);
            if len == 0 || rest.as_bytes()[0].is_ascii_digit() || rest.starts_with('$') {
                return None;
            }
            parts.push(rest[..len].to_ascii_lowercase());
            rest = &rest[len..];
        }
        match rest.strip_prefix('.') {
            Some(r) if parts.len() < 2 => rest = r,
            Some(_) => return None,
            None if !rest.is_empty() => return None,
            None => break,
        }
    }
    let name = parts.pop()?;
    Some((parts.pop(), name))
}

/// pg_restore's options for `dump-restore --table` (repeatable). pg_restore's own `--table`
/// compares the bare name with each table's name exactly (no schema, no pattern, no case
/// folding) and `--schema` restricts to a schema, so `schema.table` becomes `--schema=schema
/// --table=table`, with identifiers as SQL reads them. pg_restore combines the two
/// conditions for all tables at once, so every qualified table must be in the same schema:
/// tables of several schemas would restore every name in every schema, which is refused.
pub fn restore_table_args(tables: &[String]) -> Result<Vec<String>> {
    let mut schema: Option<String> = None;
    let mut names = Vec::new();
    let mut bare = false;
    for t in tables {
        let (s, name) = parse_qualified(t).ok_or_else(|| {
            Error::InvalidInput(format!(
                "--table {t:?}: expected TABLE or SCHEMA.TABLE (identifiers, optionally double-quoted; no patterns)"
            ))
        })?;
        match s {
            None => bare = true,
            Some(s) => match &schema {
                Some(prev) if *prev != s => {
                    return Err(Error::InvalidInput(format!(
                        "--table {t:?}: pg_restore selects tables by name within the --schema given, so tables of two schemas ({prev} and {s}) cannot be restored in one run: run dump-restore once per schema"
                    )))
                }
                _ => schema = Some(s),
            },
        }
        names.push(name);
    }
    if bare && schema.is_some() {
        return Err(Error::InvalidInput(
            "--table: give all tables with their schema (SCHEMA.TABLE) or none: pg_restore applies one --schema to all of them".into(),
        ));
    }
    let mut args: Vec<String> = schema
        .into_iter()
        .map(|s| format!("--schema={s}"))
        .collect();
    args.extend(names.into_iter().map(|n| format!("--table={n}")));
    Ok(args)
}

/// Whether the row filter on `filter_table` (as given to `dump --where`) is one of the
/// tables `dump-restore --table` asked for.
pub fn table_selected(filter_table: &str, tables: &[String]) -> bool {
    let Some((fs, fname)) = parse_qualified(filter_table) else {
        return false;
    };
    tables
        .iter()
        .filter_map(|t| parse_qualified(t))
        .any(|(s, name)| name == fname && (s.is_none() || fs.is_none() || s == fs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_becomes_pg_dump_options() {
        let s = Selection {
            schema_only: true,
            tables: vec!["public.orders".into()],
            exclude_tables: vec!["audit_*".into()],
            schemas: vec!["app".into()],
            ..Selection::default()
        };
        assert_eq!(
            s.args(),
            [
                "--schema-only",
                "--schema=app",
                "--table=public.orders",
                "--exclude-table=audit_*"
            ]
        );
        assert!(s.check(&[]).is_ok());
        let f = RowFilterSpec::parse("orders:tenant_id = 1").expect("parses");
        assert!(s.check(&[f]).is_err(), "schema-only with a row filter");
        let both = Selection {
            schema_only: true,
            data_only: true,
            ..Selection::default()
        };
        assert!(both.check(&[]).is_err());
        let dash = Selection {
            tables: vec!["--file=/etc/passwd".into()],
            ..Selection::default()
        };
        assert!(dash.check(&[]).is_err(), "an option smuggled in as a name");
    }

    #[test]
    fn row_filters_parse() {
        let f = RowFilterSpec::parse("public.orders: tenant_id = 42 AND note <> 'a:b'")
            .expect("parses");
        assert_eq!(f.table, "public.orders");
        assert_eq!(f.condition, "tenant_id = 42 AND note <> 'a:b'");
        assert_eq!(
            f.copy_out_sql(),
            "COPY (SELECT * FROM public.orders WHERE tenant_id = 42 AND note <> 'a:b') TO STDOUT"
        );
        let q = RowFilterSpec::parse(r#""My:Schema"."Orders""":x > 1"#).expect("quoted");
        assert_eq!(q.table, r#""My:Schema"."Orders""""#);
        for bad in [
            "orders",
            ":x = 1",
            "orders:",
            "orders; DROP TABLE x:1=1",
            "a.b.c:x=1",
            "1abc:x=1",
            "\"\":x=1",
        ] {
            assert!(RowFilterSpec::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn restore_tables_become_schema_and_name() {
        let args =
            |t: &[&str]| restore_table_args(&t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(args(&["orders"]).expect("bare"), ["--table=orders"]);
        assert_eq!(
            args(&["public.Orders", "public.customers"]).expect("one schema"),
            ["--schema=public", "--table=orders", "--table=customers"]
        );
        assert_eq!(
            args(&[r#""My Schema"."Big""Orders""#]).expect("quoted"),
            ["--schema=My Schema", r#"--table=Big"Orders"#]
        );
        let e = args(&["a.x", "b.y"]).expect_err("two schemas");
        assert!(e.to_string().contains("once per schema"), "{e}");
        assert!(args(&["a.x", "y"]).is_err(), "qualified and bare mixed");
        assert!(args(&["orders*"]).is_err(), "a pattern");
        assert!(args(&["--file=x"]).is_err());
        assert!(args(&["a.b.c"]).is_err());

        let t = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(table_selected("public.orders", &t(&["orders"])));
        assert!(table_selected("public.orders", &t(&["PUBLIC.Orders"])));
        assert!(table_selected("orders", &t(&["public.orders"])));
        assert!(!table_selected("public.orders", &t(&["app.orders"])));
        assert!(!table_selected("public.orders", &t(&["customers"])));
    }
}
