//! `twinhub model`: upload ONNX models with their manifest, package them
//! as one checksummed bundle for air-gapped edge boxes (seed 000's
//! package_model_for_edge), list them, activate a version.

use crate::admin::{call_and_print, tenant_q, with_api};
use crate::ServerFlags;
use anyhow::{bail, Context};
use clap::Subcommand;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ModelCmd {
    /// Upload a model: an ONNX file and its manifest, or a bundle.
    Upload {
        /// model.onnx, or a bundle made by `twinhub model package`.
        file: PathBuf,
        /// The manifest JSON (not needed for a bundle).
        manifest: Option<PathBuf>,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Write one versioned bundle (manifest, model, SHA-256) to carry to
    /// an edge box; upload checks the checksum.
    Package {
        model: PathBuf,
        manifest: PathBuf,
        /// Output file (default: <name>-<version>.thm.json).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// List models with their versions.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Make a version the active one (also a rollback).
    Activate {
        name: String,
        version: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Route a share of keys (twin ids) to a candidate version, or end
    /// the A/B test with --stop.
    Ab {
        name: String,
        /// The candidate version (not needed with --stop).
        candidate: Option<String>,
        /// Share of keys for the candidate, 0 < share < 1.
        #[arg(long, default_value_t = 0.1)]
        share: f64,
        #[arg(long)]
        stop: bool,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Export a version from a server as a bundle (to carry to another box).
    Export {
        name: String,
        version: String,
        /// Output file (default: <name>-<version>.thm.json).
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Delete a version that is neither active nor the A/B candidate.
    Rm {
        name: String,
        version: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
}

fn read(p: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("{}", p.display()))
}

pub async fn run(file: Option<&PathBuf>, cmd: ModelCmd) -> anyhow::Result<()> {
    match cmd {
        ModelCmd::Package {
            model,
            manifest,
            out,
        } => {
            let onnx = read(&model)?;
            let m: Value =
                serde_json::from_slice(&read(&manifest)?).context("the manifest is not JSON")?;
            // Check locally what the server will check, so a bad bundle is
            // caught before it travels.
            let parsed = twinhub_ml::Manifest::parse(m.to_string().as_bytes())?;
            let compiled = twinhub_ml::Model::load(&onnx)?;
            twinhub_ml::Predictor::new(compiled, parsed.clone())?;
            let out = out.unwrap_or_else(|| {
                PathBuf::from(format!("{}-{}.thm.json", parsed.name, parsed.version))
            });
            let b = twinhub_server::ml::bundle::make(&onnx, &m);
            std::fs::write(&out, serde_json::to_vec(&b)?)?;
            println!(
                "{}",
                json!({"bundle": out.display().to_string(), "name": parsed.name, "version": parsed.version, "sha256": b["sha256"]})
            );
            Ok(())
        }
        ModelCmd::Upload {
            file: path,
            manifest,
            tenant,
            flags,
        } => {
            let bytes = read(&path)?;
            let form = match &manifest {
                Some(m) => Form::new()
                    .part("model", Part::bytes(bytes).file_name("model.onnx"))
                    .part("manifest", Part::bytes(read(m)?).file_name("manifest.json")),
                None if bytes.starts_with(b"{") => Form::new().part("bundle", Part::bytes(bytes)),
                None => bail!("give the manifest after the ONNX file, or upload a bundle"),
            };
            with_api(file, &flags, move |api| {
                Box::pin(async move {
                    let v = api
                        .upload(&format!("/api/v1/ml/models{}", tenant_q(&tenant)), form)
                        .await?;
                    println!("{v}");
                    Ok(())
                })
            })
            .await
        }
        ModelCmd::List { tenant, flags } => {
            with_api(file, &flags, move |api| {
                Box::pin(async move {
                    for m in api
                        .all(&format!("/api/v1/ml/models{}", tenant_q(&tenant)))
                        .await?
                    {
                        println!("{m}");
                    }
                    Ok(())
                })
            })
            .await
        }
        ModelCmd::Activate {
            name,
            version,
            tenant,
            flags,
        } => {
            let path = format!(
                "/api/v1/ml/models/{name}/versions/{version}/activate{}",
                tenant_q(&tenant)
            );
            call_and_print(file, &flags, "POST", path, Some(json!({}))).await
        }
        ModelCmd::Ab {
            name,
            candidate,
            share,
            stop,
            tenant,
            flags,
        } => {
            let path = format!("/api/v1/ml/models/{name}/ab{}", tenant_q(&tenant));
            match (stop, candidate) {
                (true, _) => call_and_print(file, &flags, "DELETE", path, None).await,
                (false, Some(c)) => {
                    let body = json!({"candidate": c, "share": share});
                    call_and_print(file, &flags, "PUT", path, Some(body)).await
                }
                (false, None) => anyhow::bail!("give the candidate version, or --stop"),
            }
        }
        ModelCmd::Export {
            name,
            version,
            out,
            tenant,
            flags,
        } => {
            let path = format!(
                "/api/v1/ml/models/{name}/versions/{version}/bundle{}",
                tenant_q(&tenant)
            );
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}-{version}.thm.json")));
            with_api(file, &flags, move |api| {
                Box::pin(async move {
                    let b = api.call("GET", &path, None).await?;
                    std::fs::write(&out, b.to_string())
                        .with_context(|| format!("{}", out.display()))?;
                    println!(
                        "{}",
                        json!({"bundle": out.display().to_string(), "name": name, "version": version, "sha256": b["sha256"]})
                    );
                    Ok(())
                })
            })
            .await
        }
        ModelCmd::Rm {
            name,
            version,
            tenant,
            flags,
        } => {
            let path = format!(
                "/api/v1/ml/models/{name}/versions/{version}{}",
                tenant_q(&tenant)
            );
            call_and_print(file, &flags, "DELETE", path, None).await
        }
    }
}
