//! `image pull|load|ls|inspect|rm|prune`, and pulling what `run --image`
//! lacks. Images are the home's: these verbs open it directly, with or
//! without a daemon.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sandvisor::{Error, Image, Images, PullOptions, PullProgress, Result};

use crate::args::{ImageArgs, ImageCommand};
use crate::open;
use crate::out::{errln, outln};
use crate::show::{human_bytes, print_table, since};

/// `sandvisor image …`.
pub(crate) async fn image(home: Option<PathBuf>, args: ImageArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    let images = runtime.images();
    match args.command {
        ImageCommand::Pull {
            reference,
            insecure,
            quiet,
        } => {
            let image = pull(&images, &reference, insecure, quiet).await?;
            if quiet {
                outln!("{}", image.id)?;
            } else {
                outln!(
                    "pulled {} ({})",
                    sandvisor::image::normalize(&reference)?,
                    image.id
                )?;
            }
        }
        ImageCommand::Load { input, quiet } => {
            let loaded = match input {
                Some(path) => {
                    let file = std::fs::File::open(&path).map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })?;
                    images.load(file).await?
                }
                None => images.load(std::io::stdin()).await?,
            };
            for image in loaded {
                if quiet {
                    outln!("{}", image.id)?;
                } else if image.references.is_empty() {
                    outln!("Loaded image ID: {}", image.id)?;
                } else {
                    for reference in &image.references {
                        outln!("Loaded image: {reference}")?;
                    }
                }
            }
        }
        ImageCommand::Ls { json, quiet } => {
            let list = images.list().await?;
            if json {
                let text = serde_json::to_string_pretty(&list)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                outln!("{text}")?;
            } else if quiet {
                for image in &list {
                    outln!("{}", image.id)?;
                }
            } else {
                let rows: Vec<Vec<String>> = list.iter().flat_map(table_rows).collect();
                print_table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows)?;
            }
        }
        ImageCommand::Inspect { references } => {
            let mut found = Vec::new();
            let mut code = ExitCode::SUCCESS;
            for reference in &references {
                match images.inspect(reference).await {
                    Ok(image) => found.push(image),
                    Err(err) => {
                        crate::report(&err);
                        code = ExitCode::from(1);
                    }
                }
            }
            let text =
                serde_json::to_string_pretty(&found).map_err(|e| Error::Internal(e.to_string()))?;
            outln!("{text}")?;
            return Ok(code);
        }
        ImageCommand::Rm { references } => {
            let mut code = ExitCode::SUCCESS;
            for reference in &references {
                match images.remove(reference).await {
                    Ok(removed) => print_removed(&removed)?,
                    Err(err) => {
                        crate::report(&err);
                        code = ExitCode::from(1);
                    }
                }
            }
            return Ok(code);
        }
        ImageCommand::Prune { all } => {
            let removed = images.prune(all).await?;
            print_removed(&removed)?;
            outln!("Total reclaimed space: {}", human_bytes(removed.freed))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Rows of `image ls`: one per name (one `<none>` row without a name).
fn table_rows(image: &Image) -> Vec<Vec<String>> {
    let row = |repository: &str, tag: &str| {
        vec![
            repository.to_string(),
            tag.to_string(),
            image.short_id().to_string(),
            format!("{} ago", since(image.created_at)),
            human_bytes(image.size),
        ]
    };
    if image.references.is_empty() {
        return vec![row("<none>", "<none>")];
    }
    image
        .references
        .iter()
        .map(|reference| {
            let (repository, tag) = match reference.split_once('@') {
                Some((repository, digest)) => (repository, digest),
                None => match reference.rsplit_once(':') {
                    Some((repository, tag)) if !tag.contains('/') => (repository, tag),
                    _ => (reference.as_str(), "<none>"),
                },
            };
            row(repository, tag)
        })
        .collect()
}

fn print_removed(removed: &sandvisor::image::Removed) -> Result<()> {
    for name in &removed.untagged {
        outln!("Untagged: {name}")?;
    }
    for id in &removed.deleted {
        outln!("Deleted: {id}")?;
    }
    Ok(())
}

/// The image `reference`, pulled first if the home lacks it (as `docker
/// run` does).
pub(crate) async fn ensure(images: &Images, reference: &str) -> Result<Image> {
    match images.inspect(reference).await {
        Err(Error::ImageNotFound(_)) => {
            errln!("sandvisor: image {reference} not found here; pulling it");
            pull(images, reference, false, false).await
        }
        found => found,
    }
}

/// Pulls `reference`, with a progress bar per layer on a terminal.
async fn pull(images: &Images, reference: &str, insecure: bool, quiet: bool) -> Result<Image> {
    let options = PullOptions { insecure };
    if quiet || !std::io::stderr().is_terminal() {
        return images.pull(reference, &options).await;
    }
    let bars = Arc::new(Bars::default());
    let shown = bars.clone();
    let result = images
        .pull_with_progress(reference, &options, move |event| shown.show(event))
        .await;
    bars.finish();
    result
}

/// One progress bar per layer.
#[derive(Default)]
struct Bars {
    all: MultiProgress,
    layers: Mutex<BTreeMap<String, ProgressBar>>,
}

impl Bars {
    fn show(&self, event: PullProgress) {
        let Ok(mut layers) = self.layers.lock() else {
            return;
        };
        match event {
            PullProgress::Resolved { layers: sizes, .. } => {
                let style =
                    ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> ");
                for (digest, size) in sizes {
                    let bar = self.all.add(ProgressBar::new(size));
                    bar.set_style(style.clone());
                    bar.set_prefix(short(&digest));
                    layers.insert(digest, bar);
                }
            }
            PullProgress::LayerExists { digest } => {
                if let Some(bar) = layers.get(&digest) {
                    bar.finish_with_message("already here");
                }
            }
            PullProgress::Downloading { digest, done } => {
                if let Some(bar) = layers.get(&digest) {
                    bar.set_position(done);
                }
            }
            PullProgress::LayerDone { digest } => {
                if let Some(bar) = layers.get(&digest) {
                    bar.finish_with_message("unpacked");
                }
            }
        }
    }

    fn finish(&self) {
        if let Ok(layers) = self.layers.lock() {
            for bar in layers.values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}

fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.chars().take(12).collect()
}
