//! The functions `lambda-vm` hosts: the one of `--rootfs` and `--function-config`, or each
//! subdirectory of `--functions-dir` (its `function.json` and its one image).

use crate::args::Args;
use anyhow::Context;
use std::path::{Path, PathBuf};

/// One function to host: its configuration, where it came from, and its image.
pub struct Function {
    pub config: proto::FunctionConfig,
    /// Its function.json.
    pub source: PathBuf,
    pub image: PathBuf,
}

/// The functions to host: the one of --rootfs and --function-config, or each in
/// --functions-dir.
pub fn functions(args: &Args) -> anyhow::Result<Vec<Function>> {
    if let (Some(image), Some(config)) = (&args.rootfs, &args.function_config) {
        anyhow::ensure!(
            image.is_file(),
            "--rootfs {}: no such file",
            image.display()
        );
        let source = config.clone();
        let config = proto::FunctionConfig::load(config)
            .with_context(|| format!("--function-config {}", config.display()))?;
        return Ok(vec![Function {
            config,
            source,
            image: image.clone(),
        }]);
    }
    let Some(dir) = &args.functions_dir else {
        anyhow::bail!("give --functions-dir, or --rootfs and --function-config");
    };
    let mut functions = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("--functions-dir {}", dir.display()))?;
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for function_dir in dirs {
        let config_path = function_dir.join("function.json");
        let config = proto::FunctionConfig::load(&config_path)
            .with_context(|| format!("function {}", function_dir.display()))?;
        let image = image_in(&function_dir)?;
        anyhow::ensure!(
            !functions
                .iter()
                .any(|f: &Function| f.config.function_name == config.function_name),
            "{}: a second function named {}",
            config_path.display(),
            config.function_name
        );
        functions.push(Function {
            config,
            source: config_path,
            image,
        });
    }
    anyhow::ensure!(!functions.is_empty(), "--functions-dir {}: no function in it (one subdirectory each, with function.json and an image)", dir.display());
    Ok(functions)
}

/// The one image (`.ext4`, else `.cpio`) in a function's directory.
fn image_in(dir: &Path) -> anyhow::Result<PathBuf> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    for extension in ["ext4", "cpio"] {
        let found: Vec<&PathBuf> = files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == extension))
            .collect();
        match found.as_slice() {
            [one] => return Ok((*one).clone()),
            [] => continue,
            _ => anyhow::bail!("{}: more than one .{extension} image", dir.display()),
        }
    }
    anyhow::bail!("{}: no image (an .ext4 or .cpio file)", dir.display())
}
