//! Recovery settings for a restored data directory: a marked block appended to
//! `postgresql.auto.conf` (the backup's own settings above it are kept) and `recovery.signal`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::restore::plan::RecoveryTarget;
use crate::timestamp::format_timestamp_us;

const BEGIN: &str = "# --- pgkeep restore: recovery settings (begin) ---";
const END: &str = "# --- pgkeep restore: recovery settings (end) ---";

/// What recovery does when it reaches the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetAction {
    #[default]
    Pause,
    Promote,
    Shutdown,
}

impl TargetAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Promote => "promote",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The recovery settings.
#[derive(Debug, Clone)]
pub struct RecoverySettings {
    /// The whole restore_command (the caller builds it: `pgkeep ... wal-fetch %f %p`).
    pub restore_command: String,
    pub target: RecoveryTarget,
    /// `recovery_target_inclusive = off` (`--target-exclusive`).
    pub exclusive: bool,
    /// `latest`, `current` or a number.
    pub timeline: String,
    pub action: TargetAction,
    /// A line describing the restore, for whoever reads the file later.
    pub comment: String,
}

/// A time as `recovery_target_time` takes it: a numeric zone, because the setting is
/// checked before `timezone_abbreviations` is loaded and refuses abbreviations, even `Z`.
fn conf_timestamp(us: i64) -> String {
    let iso = format_timestamp_us(us); // 2026-11-21T08:33:20.123456Z
    format!("{}+00", iso.trim_end_matches('Z').replacen('T', " ", 1))
}

/// A string as a postgresql.conf value, in single quotes. PostgreSQL's configuration parser
/// reads backslash escapes inside quoted values (`\b`, `\n`, octal `\012`, `\\`), so a
/// backslash is doubled as well as a single quote (as `ALTER SYSTEM` writes them): a restore
/// point named `a\b` would otherwise be read back as `a`, a backspace, and never be reached.
/// A value may not span lines, so line breaks are written as `\n` and `\r`.
pub fn quote_conf(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

impl RecoverySettings {
    /// The block written to `postgresql.auto.conf`.
    pub fn block(&self) -> String {
        let mut lines = vec![
            BEGIN.to_owned(),
            format!("# {}", self.comment.replace('\n', " ")),
            format!("restore_command = {}", quote_conf(&self.restore_command)),
        ];
        match &self.target {
            RecoveryTarget::End => {}
            RecoveryTarget::Immediate => lines.push("recovery_target = 'immediate'".into()),
            RecoveryTarget::Time(t) => lines.push(format!(
                "recovery_target_time = {}",
                quote_conf(&conf_timestamp(*t))
            )),
            RecoveryTarget::Lsn(l) => lines.push(format!(
                "recovery_target_lsn = {}",
                quote_conf(&l.to_string())
            )),
            RecoveryTarget::Xid(x) => lines.push(format!(
                "recovery_target_xid = {}",
                quote_conf(&x.to_string())
            )),
            RecoveryTarget::Name(n) => {
                lines.push(format!("recovery_target_name = {}", quote_conf(n)))
            }
        }
        if !matches!(self.target, RecoveryTarget::End | RecoveryTarget::Immediate) {
            lines.push(format!(
                "recovery_target_inclusive = {}",
                if self.exclusive { "off" } else { "on" }
            ));
        }
        if self.target != RecoveryTarget::End {
            lines.push(format!(
                "recovery_target_action = {}",
                quote_conf(self.action.as_str())
            ));
        }
        lines.push(format!(
            "recovery_target_timeline = {}",
            quote_conf(&self.timeline)
        ));
        lines.push(END.to_owned());
        lines.join("\n") + "\n"
    }

    /// Appends the block to `postgresql.auto.conf` (replacing an earlier pgkeep block, as a
    /// delta restore finds) and creates `recovery.signal`.
    pub fn write(&self, pgdata: &Path) -> Result<()> {
        let conf = pgdata.join("postgresql.auto.conf");
        let existing = match std::fs::read_to_string(&conf) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(format!("reading {}", conf.display()), e)),
        };
        let mut kept = strip_block(&existing);
        if !kept.is_empty() && !kept.ends_with('\n') {
            kept.push('\n');
        }
        kept.push_str(&self.block());
        write_private(&conf, &kept)?;
        write_private(&pgdata.join("recovery.signal"), "")?;
        // A standby.signal from the backup would win over recovery.signal.
        let standby = pgdata.join("standby.signal");
        if standby.exists() {
            std::fs::remove_file(&standby)
                .map_err(|e| Error::io(format!("removing {}", standby.display()), e))?;
        }
        crate::restore::materialize::sync_dir(pgdata)
    }
}

/// The text without an earlier pgkeep block.
fn strip_block(text: &str) -> String {
    match (text.find(BEGIN), text.find(END)) {
        (Some(a), Some(b)) if b > a => {
            let after = &text[b + END.len()..];
            format!(
                "{}{}",
                &text[..a],
                after.strip_prefix('\n').unwrap_or(after)
            )
        }
        _ => text.to_owned(),
    }
}

/// Writes a file only its owner can read, and fsyncs it.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_replaces_an_earlier_one_and_keeps_the_rest() {
        let s = RecoverySettings {
            restore_command: "pgkeep --config '/etc/p k.toml' wal-fetch %f %p".into(),
            target: RecoveryTarget::Name("before 'drop'".into()),
            exclusive: false,
            timeline: "latest".into(),
            action: TargetAction::Promote,
            comment: "backup X".into(),
        };
        let block = s.block();
        let timed = RecoverySettings {
            target: RecoveryTarget::Time(1_795_250_000_000_001),
            ..s.clone()
        };
        assert!(timed
            .block()
            .contains("recovery_target_time = '2026-11-21 08:33:20.000001+00'"));
        assert!(
            block.contains("restore_command = 'pgkeep --config ''/etc/p k.toml'' wal-fetch %f %p'")
        );
        assert!(block.contains("recovery_target_name = 'before ''drop'''"));
        assert!(block.contains("recovery_target_action = 'promote'"));
        let odd = RecoverySettings {
            target: RecoveryTarget::Name("a\\b\nc".into()),
            ..s.clone()
        };
        assert!(odd.block().contains(r"recovery_target_name = 'a\\b\nc'"));
        let text = format!("work_mem = '8MB'\n{block}shared_buffers = '1GB'\n");
        assert_eq!(
            strip_block(&text),
            "work_mem = '8MB'\nshared_buffers = '1GB'\n"
        );
    }
}
