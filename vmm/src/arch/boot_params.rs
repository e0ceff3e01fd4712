//! The 64-bit Linux boot protocol (Documentation/x86/boot.rst): the zero page with its setup
//! header, the e820 memory map, the command line and the initrd.

use super::layout::{low32, CMDLINE_START, EBDA_START, HIMEM_START, ZERO_PAGE_START};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS": the setup header is present.
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader id: we are not one of the registered loaders.
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// Where the initrd was placed.
#[derive(Debug, Clone, Copy)]
pub struct InitrdPlacement {
    pub address: u64,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    #[error("too many e820 entries")]
    TooManyE820Entries,
    #[error("the initrd ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdDoesNotFit { size: u64 },
    #[error("a {len}-byte kernel command line does not fit the zero page")]
    CmdlineTooLong { len: usize },
    #[error("the initrd at {address:#x} ({size} bytes) is beyond the zero page's 32-bit fields")]
    InitrdAbove4G { address: u64, size: u64 },
    #[error("writing the zero page")]
    Write(#[from] linux_loader::configurator::Error),
}

/// Picks the initrd's address: the top of RAM, page aligned, as high as possible so a kernel
/// that decompresses or relocates itself never overwrites it.
pub fn place_initrd(
    ram_end: u64,
    kernel_end: u64,
    size: u64,
) -> Result<InitrdPlacement, BootParamsError> {
    let address = ram_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or(BootParamsError::InitrdDoesNotFit { size })?;
    Ok(InitrdPlacement { address, size })
}

/// Writes the zero page for a guest with RAM `[0, ram_end)`.
pub fn write(
    memory: &GuestMemoryMmap,
    ram_end: u64,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
) -> Result<(), BootParamsError> {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    params.hdr.cmd_line_ptr = low32(CMDLINE_START);
    params.hdr.cmdline_size = u32::try_from(cmdline_len)
        .map_err(|_| BootParamsError::CmdlineTooLong { len: cmdline_len })?;
    if let Some(initrd) = initrd {
        let above = BootParamsError::InitrdAbove4G {
            address: initrd.address,
            size: initrd.size,
        };
        let (Ok(image), Ok(size)) = (u32::try_from(initrd.address), u32::try_from(initrd.size))
        else {
            return Err(above);
        };
        params.hdr.ramdisk_image = image;
        params.hdr.ramdisk_size = size;
    }
    // Low memory stops at the EBDA (which holds the MP table); [EBDA, 1 MiB) is the legacy
    // hole, left out of the map so the kernel never allocates it.
    add_e820(&mut params, 0, EBDA_START)?;
    add_e820(&mut params, HIMEM_START, ram_end - HIMEM_START)?;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        memory,
    )?;
    Ok(())
}

fn add_e820(params: &mut boot_params, addr: u64, size: u64) -> Result<(), BootParamsError> {
    let index = params.e820_entries as usize;
    let entry = params
        .e820_table
        .get_mut(index)
        .ok_or(BootParamsError::TooManyE820Entries)?;
    *entry = boot_e820_entry {
        addr,
        size,
        r#type: E820_RAM,
    };
    params.e820_entries += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn zero_page_carries_the_map_the_cmdline_and_the_initrd() {
        let ram_end = 64 << 20;
        let memory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), usize::try_from(ram_end).unwrap())])
                .unwrap();
        let initrd = place_initrd(ram_end, 16 << 20, 5000).unwrap();
        assert_eq!(initrd.address, (ram_end - 5000) & !0xfff);
        write(&memory, ram_end, 42, Some(initrd)).unwrap();
        let params: boot_params = memory.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!(params.e820_entries, 2);
        let (a, s) = (params.e820_table[1].addr, params.e820_table[1].size);
        assert_eq!((a, a + s), (HIMEM_START, ram_end));
        assert_eq!(u64::from(params.hdr.cmd_line_ptr), CMDLINE_START);
        assert_eq!({ params.hdr.ramdisk_size }, 5000);
        assert_eq!({ params.hdr.header }, KERNEL_HDR_MAGIC);
    }

    #[test]
    fn an_initrd_that_would_overlap_the_kernel_is_refused() {
        assert!(place_initrd(32 << 20, 30 << 20, 4 << 20).is_err());
        assert!(place_initrd(1 << 20, 0, 2 << 20).is_err());
    }
}
