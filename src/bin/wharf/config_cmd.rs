//! `wharf config`: each model's effective config (after auto-complete and defaults) as
//! Triton's text format, wharf's YAML or Triton's JSON; written out, it converts a
//! repository from one format to the other. Every problem is listed, and any makes the
//! exit status 1, so CI can check a repository before it is deployed.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, ValueEnum};
use wharf::{config::LoadConfig, repository::effective};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Pbtxt,
    Yaml,
    Json,
}

#[derive(Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    load: LoadConfig,
    /// How to write each config
    #[arg(long, value_enum, default_value = "pbtxt")]
    format: Format,
    /// Write each model's config to DIR/<model>/config.<format> instead of printing it
    #[arg(long, value_name = "DIR")]
    write_to: Option<PathBuf>,
    /// Models to read [default: every folder of the repository]
    models: Vec<String>,
}

pub fn run(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let root = &args.load.model_repository;
    let models = effective::read_repository(&args.load, &args.models)
        .with_context(|| format!("reading model repository {}", root.display()))?;
    let mut failed = models.is_empty();
    if models.is_empty() {
        eprintln!("no models in {}", root.display());
    }
    for (name, read) in models {
        let effective = match read {
            Ok(effective) => effective,
            Err(reason) => {
                eprintln!("{name}: {reason}");
                failed = true;
                continue;
            }
        };
        for warning in &effective.config.warnings {
            eprintln!("{name}: warning: {warning}");
        }
        let (text, extension) = match args.format {
            Format::Pbtxt => (effective.to_pbtxt(), "pbtxt"),
            Format::Yaml => (effective.to_yaml(), "yaml"),
            Format::Json => (
                serde_json::to_string_pretty(&effective.to_json())? + "\n",
                "json",
            ),
        };
        match &args.write_to {
            Some(dir) => {
                let folder = dir.join(&name);
                std::fs::create_dir_all(&folder)
                    .with_context(|| format!("creating {}", folder.display()))?;
                let path = folder.join(format!("config.{extension}"));
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            None if args.format == Format::Json => print!("{text}"),
            None => println!("# {name}\n{text}"),
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
