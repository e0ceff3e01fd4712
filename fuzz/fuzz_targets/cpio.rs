//! The strict newc cpio reader (it checks what the image builder wrote). Whatever it accepts,
//! the writer must reproduce byte for byte when the entries are ones the writer makes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rootfs::cpio::{read_archive, Writer, S_IFDIR, S_IFLNK, S_IFREG};

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = read_archive(data) else {
        return;
    };
    // Every byte of every entry comes from the input.
    let total: usize = entries.iter().map(|e| e.name.len() + e.data.len()).sum();
    assert!(total <= data.len());
    // Rewrite the entries and read them back: the reader must see what the writer wrote.
    let mut writer = Writer::new(Vec::new(), 0);
    let mut written = Vec::new();
    for entry in &entries {
        let ok = match entry.file_type() {
            S_IFDIR => writer.directory(&entry.name, entry.perm()).is_ok(),
            S_IFREG => writer
                .file(
                    &entry.name,
                    entry.perm(),
                    entry.data.len() as u64,
                    &mut &entry.data[..],
                )
                .is_ok(),
            S_IFLNK => match std::str::from_utf8(&entry.data) {
                Ok(target) => writer.symlink(&entry.name, target).is_ok(),
                Err(_) => false,
            },
            _ => false,
        };
        if !ok {
            return;
        }
        written.push(entry);
    }
    let archive = writer.finish().expect("a vec does not fail");
    let again = read_archive(&archive).expect("the writer's archive reads back");
    assert_eq!(again.len(), written.len());
    for (read, original) in again.iter().zip(written) {
        assert_eq!(read.name, original.name);
        assert_eq!(read.file_type(), original.file_type());
        if read.file_type() != S_IFLNK {
            assert_eq!(read.perm(), original.perm());
        }
        assert_eq!(read.data, original.data);
    }
});
