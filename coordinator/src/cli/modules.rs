//! `modules push|list|rm`: the operator's side of your own kernels.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use musketeer_client::{delete_module, list_modules, push_module, ApiClient, ModuleInfo};

use super::{table, Align};

/// `modules ...`
#[derive(Debug, Subcommand)]
pub enum ModulesCommand {
    /// Upload a WebAssembly module (a `.wasm` file, or - for standard
    /// input); prints its id alone, for `MODULE=$(...)`.
    Push {
        /// The module, built for wasm32-unknown-unknown.
        file: PathBuf,
    },
    /// List stored modules.
    List,
    /// Delete a module (refused while an unfinished job uses it).
    Rm {
        /// The module's id, as `modules push` printed it.
        id: String,
    },
}

/// Runs a `modules` command.
pub async fn modules(c: &ApiClient, cmd: ModulesCommand) -> Result<()> {
    match cmd {
        ModulesCommand::Push { file } => {
            let bytes = if file.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                b
            } else {
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?
            };
            let (info, new) = push_module(c, bytes).await?;
            if !new {
                eprintln!("module {} was stored already", info.id);
            }
            println!("{}", info.id);
        }
        ModulesCommand::List => print!("{}", modules_table(&list_modules(c).await?)),
        ModulesCommand::Rm { id } => {
            delete_module(c, &id).await?;
            eprintln!("module {id} deleted");
        }
    }
    Ok(())
}

/// When a module was uploaded, in UTC, to the second.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`), so the CLI needs no date crate.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `modules list`: one line per module, under a header.
fn modules_table(modules: &[ModuleInfo]) -> String {
    use Align::{Left, Right};
    let rows: Vec<Vec<String>> = modules
        .iter()
        .map(|m| {
            let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
            vec![
                m.id.clone(),
                m.size.to_string(),
                utc(m.created_ms),
                yes(m.has_reduce),
                yes(m.in_use),
            ]
        })
        .collect();
    table(
        &[
            ("ID", Left),
            ("SIZE", Right),
            ("UPLOADED (UTC)", Left),
            ("REDUCE", Left),
            ("IN USE", Left),
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_083_199_000), "2026-11-30 23:59:59");
    }

    #[test]
    fn modules_list_lines_up() {
        let m = |id: &str, size: u64, in_use: bool| ModuleInfo {
            id: id.into(),
            size,
            created_ms: 0,
            has_reduce: !in_use,
            in_use,
        };
        let out = modules_table(&[m("sha256:aa", 7, false), m("sha256:bbbbbbbb", 123456, true)]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        let end = |l: &str, w: &str| l.find(w).unwrap() + w.len();
        assert_eq!(end(lines[0], "SIZE"), end(lines[1], " 7"), "{out}");
        assert_eq!(end(lines[0], "SIZE"), end(lines[2], "123456"), "{out}");
        let start = |l: &str, w: &str| l.find(w).unwrap();
        assert_eq!(start(lines[0], "REDUCE"), start(lines[1], "yes"), "{out}");
        assert_eq!(start(lines[0], "REDUCE"), start(lines[2], "no"), "{out}");
    }
}
