//! Checks that a binary can run as the guest's init or runtime: the image has no dynamic loader
//! and no shared libraries, so it must be a static x86-64 ELF executable (static-pie included).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use object::elf::{DT_NEEDED, EM_X86_64, ET_DYN, ET_EXEC};
use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, FileKind};

const STATIC_HINT: &str =
    "build it static, e.g. RUSTFLAGS='-C target-feature=+crt-static' or gcc -static";

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not an ELF executable", path.display())]
    NotElf { path: PathBuf },
    #[error("{} is a {found} file; the guest needs an x86-64 (64-bit) executable", path.display())]
    WrongArchitecture { path: PathBuf, found: String },
    #[error("{} is a malformed ELF file: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("{} is an ELF {kind}, not an executable", path.display())]
    NotExecutable { path: PathBuf, kind: &'static str },
    #[error(
        "{} is dynamically linked (it needs the loader {interpreter}); the image has no shared \
         libraries: {STATIC_HINT}",
        path.display()
    )]
    HasInterpreter { path: PathBuf, interpreter: String },
    #[error(
        "{} is dynamically linked (it needs {}); the image has no shared libraries: {STATIC_HINT}",
        path.display(),
        libraries.join(", ")
    )]
    NeedsLibraries {
        path: PathBuf,
        libraries: Vec<String>,
    },
}

/// Fails unless `path` is a static x86-64 ELF executable: no `PT_INTERP` and no `DT_NEEDED`.
pub fn check_static_executable(path: &Path) -> Result<(), ElfError> {
    let read_error = |source| ElfError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    // Look at the magic first so that a large non-ELF file given by mistake is not read whole.
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || &magic != b"\x7fELF" {
        return Err(ElfError::NotElf {
            path: path.to_owned(),
        });
    }
    let mut data = magic.to_vec();
    file.read_to_end(&mut data).map_err(read_error)?;
    check_static_elf(&data).map_err(|problem| problem.at(path))
}

/// What is wrong with an ELF image, before the path is attached.
enum Problem {
    WrongArchitecture(String),
    Malformed(String),
    NotExecutable(&'static str),
    HasInterpreter(String),
    NeedsLibraries(Vec<String>),
}

impl Problem {
    fn at(self, path: &Path) -> ElfError {
        let path = path.to_owned();
        match self {
            Problem::WrongArchitecture(found) => ElfError::WrongArchitecture { path, found },
            Problem::Malformed(reason) => ElfError::Malformed { path, reason },
            Problem::NotExecutable(kind) => ElfError::NotExecutable { path, kind },
            Problem::HasInterpreter(interpreter) => ElfError::HasInterpreter { path, interpreter },
            Problem::NeedsLibraries(libraries) => ElfError::NeedsLibraries { path, libraries },
        }
    }
}

fn malformed(e: object::Error) -> Problem {
    Problem::Malformed(e.to_string())
}

fn check_static_elf(data: &[u8]) -> Result<(), Problem> {
    match FileKind::parse(data).map_err(malformed)? {
        FileKind::Elf64 => {}
        FileKind::Elf32 => return Err(Problem::WrongArchitecture("32-bit ELF".to_owned())),
        _ => return Err(Problem::Malformed("unrecognized ELF class".to_owned())),
    }
    let elf = ElfFile64::<Endianness>::parse(data).map_err(malformed)?;
    let endian = elf.endian();
    let header = elf.elf_header();
    let machine = header.e_machine(endian);
    if machine != EM_X86_64 {
        return Err(Problem::WrongArchitecture(format!(
            "ELF for machine {machine} (not x86-64)"
        )));
    }
    match header.e_type(endian) {
        ET_EXEC | ET_DYN => {}
        object::elf::ET_REL => return Err(Problem::NotExecutable("relocatable object (.o)")),
        object::elf::ET_CORE => return Err(Problem::NotExecutable("core dump")),
        _ => return Err(Problem::NotExecutable("file of unknown type")),
    }
    let mut needed = 0usize;
    for segment in elf.elf_program_headers() {
        if let Some(interpreter) = segment.interpreter(endian, data).map_err(malformed)? {
            return Err(Problem::HasInterpreter(
                String::from_utf8_lossy(interpreter).into_owned(),
            ));
        }
        // A static-pie has a PT_DYNAMIC for its self-relocation, but no DT_NEEDED.
        if let Some(entries) = segment.dynamic(endian, data).map_err(malformed)? {
            needed += entries
                .iter()
                .take_while(|d| d.d_tag(endian) != object::elf::DT_NULL)
                .filter(|d| d.d_tag(endian) == DT_NEEDED)
                .count();
        }
    }
    if needed > 0 {
        return Err(Problem::NeedsLibraries(needed_names(&elf, needed)));
    }
    // A shared library is ET_DYN too, but has no entry point to exec.
    if header.e_entry(endian) == 0 {
        return Err(Problem::NotExecutable("shared library (no entry point)"));
    }
    Ok(())
}

/// Library names from the dynamic section, for the message; a stripped section table only costs
/// the names.
fn needed_names(elf: &ElfFile64<'_, Endianness>, count: usize) -> Vec<String> {
    let names: Vec<String> = elf
        .elf_dynamic_table()
        .map(|table| {
            table
                .iter()
                .filter(|d| d.tag == DT_NEEDED)
                .filter_map(|d| table.string(d).ok())
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .collect()
        })
        .unwrap_or_default();
    if names.len() == count {
        names
    } else {
        vec![format!("{count} shared libraries")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_elf_input_is_refused() {
        assert!(matches!(
            check_static_elf(b"\x7fELF"),
            Err(Problem::Malformed(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        let err = check_static_executable(&script).unwrap_err();
        assert!(matches!(err, ElfError::NotElf { .. }), "{err}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(
            check_static_executable(&empty),
            Err(ElfError::NotElf { .. })
        ));
        let missing = dir.path().join("missing");
        assert!(matches!(
            check_static_executable(&missing),
            Err(ElfError::Read { .. })
        ));
    }

    #[test]
    fn this_test_binary_is_dynamic() {
        // Test binaries are linked against the host's libc unless built with crt-static.
        if cfg!(target_feature = "crt-static") {
            return;
        }
        let exe = std::env::current_exe().unwrap();
        match check_static_executable(&exe) {
            Err(ElfError::HasInterpreter { interpreter, .. }) => {
                assert!(interpreter.contains("ld-linux"), "{interpreter}")
            }
            other => panic!("expected a dynamic executable, got {other:?}"),
        }
    }

    #[test]
    fn a_32_bit_elf_is_the_wrong_architecture() {
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 1; // ELFCLASS32
        header[5] = 1; // little-endian
        header[6] = 1; // EV_CURRENT
        assert!(matches!(
            check_static_elf(&header),
            Err(Problem::WrongArchitecture(_))
        ));
    }
}
