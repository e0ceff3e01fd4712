//! The image recipe, top to bottom: validate the inputs, assemble the tree, write the outputs to
//! temporary files and rename them into place only when everything succeeded.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::elf::{self, ElfError};
use crate::ext4::{self, Ext4Error, Ext4Options};
use crate::initramfs::{self, InitramfsError};
use crate::layer_zip::{self, LayerZipError};
use crate::tree::{self, CollectOptions, Node, Source, Tree, TreeError, EXEC_PERM};
use proto::function_config::{ConfigError, FunctionConfig};
use proto::layout;

/// The default config file name inside the function directory.
pub const CONFIG_FILE_NAME: &str = "function.json";

/// Directories every image has, besides those its files imply, with their modes.
const SKELETON: &[(&str, u32)] = &[
    ("/proc", 0o755),
    ("/sys", 0o755),
    ("/dev", 0o755),
    ("/dev/pts", 0o755),
    ("/tmp", 0o1777),
    ("/run", 0o755),
    ("/etc", 0o755),
    ("/etc/lambda", 0o755),
    ("/var", 0o755),
    ("/var/runtime", 0o755),
    ("/var/task", 0o755),
    ("/opt", 0o755),
];

/// Everything one build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Static init binary, installed as `/init`.
    pub init: PathBuf,
    /// Static runtime binary, installed as `/var/runtime/bootstrap`.
    pub bootstrap: PathBuf,
    /// The function code, copied to `/var/task`.
    pub function_dir: PathBuf,
    /// The config file; `None` means `<function_dir>/function.json`.
    pub config: Option<PathBuf>,
    /// Layers (directories, or zip files as Lambda takes them) merged into `/opt` in order
    /// (later ones win), after those `function.json` lists.
    pub layers: Vec<PathBuf>,
    /// A static busybox, installed as `/bin/busybox` with a `/bin` link per applet: the shell
    /// and core tools a Lambda base image has, for functions (and `#!/bin/sh` scripts) that
    /// expect them. `None`: the image has no shell.
    pub busybox: Option<PathBuf>,
    /// Where the initramfs (uncompressed newc cpio) goes.
    pub out: PathBuf,
    /// Also build an ext4 image.
    pub ext4: Option<Ext4Output>,
    /// Every entry's modification time (`SOURCE_DATE_EPOCH`).
    pub mtime: u32,
}

#[derive(Debug, Clone)]
pub struct Ext4Output {
    pub path: PathBuf,
    pub size_mb: Option<u64>,
}

/// What a successful build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub config: FunctionConfig,
    /// Entries in the image, not counting the root directory.
    pub entries: usize,
    pub cpio_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("function directory")]
    FunctionDir(#[source] TreeError),
    #[error("layer {}", path.display())]
    Layer {
        path: PathBuf,
        #[source]
        source: TreeError,
    },
    #[error("layer {}", path.display())]
    LayerZip {
        path: PathBuf,
        #[source]
        source: LayerZipError,
    },
    #[error("init binary")]
    Init(#[source] ElfError),
    #[error("bootstrap binary")]
    Bootstrap(#[source] ElfError),
    #[error("busybox binary")]
    Busybox(#[source] ElfError),
    #[error("listing the applets of {} (`busybox --list`): {message}", path.display())]
    BusyboxApplets { path: PathBuf, message: String },
    #[error("image layout")]
    Layout(#[source] TreeError),
    #[error("runtime {runtime} (`runtime` in the function config) {problem}")]
    Runtime {
        runtime: String,
        problem: &'static str,
    },
    #[error(
        "{worker} needs {needs}, which the image lacks (its first line is `{line}`): ship the \
         interpreter in a layer (--layer), or write the worker in sh (busybox is in the image) \
         or as a Rust function"
    )]
    Interpreter {
        worker: String,
        needs: String,
        line: String,
    },
    #[error(
        "output {} is inside the input directory {}: the next build would pack it",
        output.display(),
        input.display()
    )]
    OutputInsideInput { output: PathBuf, input: PathBuf },
    #[error("cannot write {}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the initramfs")]
    Initramfs(#[from] InitramfsError),
    #[error("building the ext4 image")]
    Ext4(#[from] Ext4Error),
}

/// The config path a build reads: the given one, or `<function_dir>/function.json`.
pub fn config_path(function_dir: &Path, config: Option<&Path>) -> PathBuf {
    config.map_or_else(|| function_dir.join(CONFIG_FILE_NAME), Path::to_owned)
}

/// Builds the image(s). Nothing is left at the output paths unless every output was written.
pub fn build(options: &BuildOptions) -> Result<BuildReport, BuildError> {
    let (config, tree) = assemble(options)?;
    check_outputs_outside_inputs(options)?;

    let mut cpio = temp_output(&options.out)?;
    let output_error = |path: &Path| {
        let path = path.to_owned();
        move |source| BuildError::Output { path, source }
    };
    let mut writer = initramfs::write(&tree, BufWriter::new(cpio.as_file_mut()), options.mtime)?;
    writer.flush().map_err(output_error(&options.out))?;
    drop(writer);
    finish_output(&cpio, &options.out)?;
    let cpio_bytes = cpio
        .as_file()
        .metadata()
        .map_err(output_error(&options.out))?
        .len();

    let ext4 = match &options.ext4 {
        Some(out) => {
            let image = temp_output(&out.path)?;
            let ext4_options = Ext4Options {
                size_mb: out.size_mb,
                mtime: options.mtime,
            };
            ext4::build(&tree, image.path(), &ext4_options)?;
            finish_output(&image, &out.path)?;
            Some((image, &out.path))
        }
        None => None,
    };

    // Renames last, so a failure above leaves no output behind (temporary files delete themselves).
    persist(cpio, &options.out)?;
    if let Some((image, path)) = ext4 {
        persist(image, path)?;
    }
    Ok(BuildReport {
        config,
        entries: tree.len(),
        cpio_bytes,
    })
}

/// Validates the inputs and assembles the image tree without writing anything.
pub fn assemble(options: &BuildOptions) -> Result<(FunctionConfig, Tree), BuildError> {
    // Directories first: a missing function directory should not surface as a missing config.
    tree::check_source_dir(&options.function_dir).map_err(BuildError::FunctionDir)?;
    let config_path = config_path(&options.function_dir, options.config.as_deref());
    let config = FunctionConfig::load(&config_path)?;
    // The config's layers are relative to its own directory, then come those given here.
    let config_dir = config_path.parent().unwrap_or(Path::new("."));
    let layers: Vec<PathBuf> = config
        .layers
        .iter()
        .map(|layer| config_dir.join(layer))
        .chain(options.layers.iter().cloned())
        .collect();
    for layer in &layers {
        let checked = if layer_zip::is_zip(layer) {
            std::fs::metadata(layer)
                .map(|_| ())
                .map_err(TreeError::io(layer))
        } else {
            tree::check_source_dir(layer)
        };
        checked.map_err(|source| BuildError::Layer {
            path: layer.clone(),
            source,
        })?;
    }
    elf::check_static_executable(&options.init).map_err(BuildError::Init)?;
    elf::check_static_executable(&options.bootstrap).map_err(BuildError::Bootstrap)?;

    let mut tree = Tree::new();
    for (path, perm) in SKELETON {
        tree.insert(path, Node::Dir { perm: *perm })
            .map_err(BuildError::Layout)?;
    }
    let (major, minor) = layout::CONSOLE_DEVICE;
    let console = Node::CharDevice {
        perm: 0o600,
        major,
        minor,
    };
    tree.insert(layout::CONSOLE, console)
        .map_err(BuildError::Layout)?;
    let init = binary(&options.init).map_err(BuildError::Init)?;
    tree.insert(layout::INIT, init)
        .map_err(BuildError::Layout)?;
    let bootstrap = binary(&options.bootstrap).map_err(BuildError::Bootstrap)?;
    tree.insert(layout::DEFAULT_RUNTIME, bootstrap)
        .map_err(BuildError::Layout)?;
    if let Some(busybox) = &options.busybox {
        add_busybox(&mut tree, busybox)?;
    }

    // The config is written to /etc/lambda; when it sits in the function directory it is not
    // function code, so it is not copied to /var/task as well.
    let skip = fs::metadata(&config_path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()));
    let collect = CollectOptions { skip };
    tree.add_host_dir(&options.function_dir, layout::TASK_ROOT, &collect)
        .map_err(BuildError::FunctionDir)?;
    let no_skip = CollectOptions::default();
    for layer in &layers {
        if layer_zip::is_zip(layer) {
            layer_zip::add_zip(&mut tree, layer, layout::OPT).map_err(|source| {
                BuildError::LayerZip {
                    path: layer.clone(),
                    source,
                }
            })?;
            continue;
        }
        tree.add_host_dir(layer, layout::OPT, &no_skip)
            .map_err(|source| BuildError::Layer {
                path: layer.clone(),
                source,
            })?;
    }

    let config_json = config.to_canonical_json();
    let config_node = Node::File {
        perm: 0o644,
        size: config_json.len() as u64,
        source: Source::Bytes(config_json),
    };
    tree.insert(layout::CONFIG, config_node)
        .map_err(BuildError::Layout)?;
    check_runtime(&tree, &config.runtime)?;
    check_worker(&tree, &config.handler)?;
    Ok((config, tree))
}

/// An executable taken from the host as is (already checked to be a static ELF).
fn binary(host: &Path) -> Result<Node, ElfError> {
    let meta = fs::metadata(host).map_err(|source| ElfError::Read {
        path: host.to_owned(),
        source,
    })?;
    Ok(Node::File {
        perm: EXEC_PERM,
        size: meta.len(),
        source: Source::Host(host.to_owned()),
    })
}

/// Installs busybox and links each of its applets (`sh`, `cat`, `sed`...) to it in `/bin`.
fn add_busybox(tree: &mut Tree, busybox: &Path) -> Result<(), BuildError> {
    elf::check_static_executable(busybox).map_err(BuildError::Busybox)?;
    let applets_error = |message: String| BuildError::BusyboxApplets {
        path: busybox.to_owned(),
        message,
    };
    let output = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| applets_error(e.to_string()))?;
    if !output.status.success() {
        return Err(applets_error(format!("it exited with {}", output.status)));
    }
    let list = String::from_utf8(output.stdout).map_err(|e| applets_error(e.to_string()))?;
    let node = binary(busybox).map_err(BuildError::Busybox)?;
    tree.insert(layout::BUSYBOX, node)
        .map_err(BuildError::Layout)?;
    for applet in list.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" {
            continue;
        }
        if applet.contains('/') || applet.starts_with('.') {
            return Err(applets_error(format!("odd applet name {applet:?}")));
        }
        let link = Node::Symlink {
            target: layout::BUSYBOX.to_owned(),
        };
        tree.insert(&format!("/bin/{applet}"), link)
            .map_err(BuildError::Layout)?;
        // Scripts name env by this path (`#!/usr/bin/env sh`), as on Lambda's images.
        if applet == "env" {
            let link = Node::Symlink {
                target: layout::BUSYBOX.to_owned(),
            };
            tree.insert("/usr/bin/env", link)
                .map_err(BuildError::Layout)?;
        }
    }
    Ok(())
}

/// Where a worker's `#!/usr/bin/env NAME` looks for NAME: the `PATH` a runtime is started with.
const WORKER_PATH: [&str; 4] = ["/usr/local/bin", "/usr/bin", "/bin", "/opt/bin"];

/// A worker (the handler, when it names a script in the task root, which the `bootstrap`
/// binary starts) must find its interpreter in the image; otherwise every cold start would
/// fail with "No such file or directory". A handler that is no file there is not checked (a
/// Rust function's handler is only a name).
fn check_worker(tree: &Tree, handler: &str) -> Result<(), BuildError> {
    let worker = format!("{}/{handler}", layout::TASK_ROOT);
    let Some((_, Node::File { source, .. })) = tree.resolve(&worker) else {
        return Ok(());
    };
    let Some(line) = shebang(source) else {
        return Ok(());
    };
    let mut words = line.trim_start_matches("#!").split_whitespace();
    let Some(interpreter) = words.next() else {
        return Ok(());
    };
    let executable = |path: &str| matches!(tree.resolve(path), Some((_, Node::File { perm, .. })) if perm & 0o111 != 0);
    let needs = if !executable(interpreter) {
        interpreter.to_owned()
    } else if interpreter.rsplit('/').next() == Some("env") {
        match words.find(|w| !w.starts_with('-')) {
            Some(name)
                if !WORKER_PATH
                    .iter()
                    .any(|dir| executable(&format!("{dir}/{name}"))) =>
            {
                format!("{name} in {}", WORKER_PATH.join(", "))
            }
            _ => return Ok(()),
        }
    } else {
        return Ok(());
    };
    Err(BuildError::Interpreter {
        worker: handler.to_owned(),
        needs,
        line,
    })
}

/// The `#!` line of a script, if the file is one.
fn shebang(source: &Source) -> Option<String> {
    let head: Vec<u8> = match source {
        Source::Bytes(bytes) => bytes.iter().take(256).copied().collect(),
        Source::Host(path) => {
            let mut head = Vec::new();
            let file = fs::File::open(path).ok()?;
            io::Read::read_to_end(&mut io::Read::take(file, 256), &mut head).ok()?;
            head
        }
    };
    if !head.starts_with(b"#!") {
        return None;
    }
    let line = head.split(|&b| b == b'\n').next()?;
    Some(String::from_utf8_lossy(line).trim_end().to_owned())
}

/// Init execs the runtime; a typo in `runtime` should fail the build, not every cold start.
fn check_runtime(tree: &Tree, runtime: &str) -> Result<(), BuildError> {
    let problem = match tree.resolve(runtime) {
        None => "is not in the image",
        Some((_, Node::File { perm, .. })) if perm & 0o111 != 0 => return Ok(()),
        Some((_, Node::File { .. })) => "is not executable",
        Some(_) => "is not a regular file",
    };
    Err(BuildError::Runtime {
        runtime: runtime.to_owned(),
        problem,
    })
}

fn check_outputs_outside_inputs(options: &BuildOptions) -> Result<(), BuildError> {
    let inputs = std::iter::once(&options.function_dir).chain(&options.layers);
    let outputs = std::iter::once(&options.out).chain(options.ext4.as_ref().map(|e| &e.path));
    let canonical_parent = |path: &Path| {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        fs::canonicalize(parent).ok()
    };
    for output in outputs {
        // A missing parent fails later with a clear message when the output is created.
        let Some(parent) = canonical_parent(output) else {
            continue;
        };
        for input in inputs.clone() {
            if let Ok(input_dir) = fs::canonicalize(input) {
                if parent.starts_with(&input_dir) {
                    return Err(BuildError::OutputInsideInput {
                        output: output.clone(),
                        input: input.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// A temporary file beside `path`, so the final rename stays on one filesystem.
fn temp_output(path: &Path) -> Result<NamedTempFile, BuildError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| format!(".{}.", n.to_string_lossy()))
        .unwrap_or_else(|| ".build-rootfs.".to_owned());
    tempfile::Builder::new()
        .prefix(&name)
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|source| BuildError::Output {
            path: path.to_owned(),
            source,
        })
}

/// Makes the written file durable and readable like any build output (temporary files start 0600).
fn finish_output(file: &NamedTempFile, path: &Path) -> Result<(), BuildError> {
    let output_error = |source| BuildError::Output {
        path: path.to_owned(),
        source,
    };
    file.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(output_error)?;
    file.as_file().sync_all().map_err(output_error)
}

fn persist(file: NamedTempFile, path: &Path) -> Result<(), BuildError> {
    file.persist(path)
        .map(drop)
        .map_err(|e| BuildError::Output {
            path: path.to_owned(),
            source: e.error,
        })
}
