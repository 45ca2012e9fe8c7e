//! `snapshot create|ls|rm|export|import`. Snapshots are the home's files:
//! these verbs open it directly, with or without a daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use sandvisor::{Error, Result};

use crate::args::{SnapshotArgs, SnapshotCommand};
use crate::open;
use crate::out::outln;
use crate::show::{human_bytes, print_table, since};

/// `sandvisor snapshot …`.
pub(crate) async fn snapshot(home: Option<PathBuf>, args: SnapshotArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    let snapshots = runtime.snapshots();
    match args.command {
        SnapshotCommand::Create { sandbox, snapshot } => {
            let taken = runtime.get(&sandbox).await?.snapshot(&snapshot).await?;
            outln!("{}", taken.manifest.name)?;
        }
        SnapshotCommand::Ls { json } => {
            let list = snapshots.list()?;
            if json {
                let text = serde_json::to_string_pretty(&list)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                outln!("{text}")?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| {
                        vec![
                            s.manifest.name.clone(),
                            s.manifest.sandbox.clone(),
                            s.manifest
                                .image
                                .as_ref()
                                .map(|i| i.reference.clone().unwrap_or_else(|| i.id.clone()))
                                .unwrap_or_else(|| "-".into()),
                            format!("{} ago", since(s.manifest.created_at)),
                            human_bytes(s.bytes),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "SANDBOX", "IMAGE", "CREATED", "SIZE"], &rows)?;
            }
        }
        SnapshotCommand::Rm { snapshots: names } => {
            let mut code = ExitCode::SUCCESS;
            for name in &names {
                match snapshots.remove(name) {
                    Ok(()) => outln!("{name}")?,
                    Err(err) => {
                        crate::report(&err);
                        code = ExitCode::from(1);
                    }
                }
            }
            return Ok(code);
        }
        SnapshotCommand::Export { snapshot, file } => {
            snapshots.export(&snapshot, &file).await?;
        }
        SnapshotCommand::Import { file, name } => {
            let imported = snapshots.import(&file, name.as_deref()).await?;
            outln!("{}", imported.manifest.name)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
