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
    let mut parts = 0;
    let mut rest = s;
    loop {
        parts += 1;
        if let Some(q) = rest.strip_prefix('"') {
            let mut end = None;
            let b = q.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        i += 2;
                        continue;
                    }
                    end = Some(i);
                    break;
                }
                i += 1;
            }
            let Some(end) = end else { return false };
            if end == 0 {
                return false;
            }
            rest = &q[end + 1..];
        } else {
            let len = rest
                .char_indices()
                .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '$'))
                .map_or(rest.len(), |(i, _)| i);
            if len == 0 || rest.as_bytes()[0].is_ascii_digit() || rest.starts_with('$') {
                return false;
            }
            rest = &rest[len..];
        }
        match rest.strip_prefix('.') {
            Some(r) if parts < 2 => rest = r,
            Some(_) => return false,
            None => return rest.is_empty(),
        }
    }
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
}
