# Reads the registers of the first virtio-mmio device (MMIO exits), prints them, resets.
.code64
.global _start
_start:
    # The VMM's boot page tables identity-map only the first GiB, as Linux needs; map the
    # 2 MiB holding the device window at 0xd0000000 with a page directory of our own at 0xc000
    # (free: the VMM's tables end at 0xbfff).
    mov $(0xd0000000 | 0x83), %rax                  # present, writable, 2 MiB page
    mov %rax, 0xc000 + 8 * ((0xd0000000 >> 21) & 511)
    movq $(0xc000 | 0x3), 0xa000 + 8 * 3            # the PDPT entry for the fourth GiB
    mov %cr3, %rax
    mov %rax, %cr3
    mov $0xd0000000, %r12              # put_hex uses %rbx
    movl 0x00(%r12), %eax              # magic "virt"
    lea magic_msg(%rip), %rdi
    call print_value
    movl 0x04(%r12), %eax              # version
    lea version_msg(%rip), %rdi
    call print_value
    movl 0x08(%r12), %eax              # device id
    lea device_msg(%rip), %rdi
    call print_value
    movl $0, 0x30(%r12)                # QueueSel 0
    movl 0x34(%r12), %eax              # QueueNumMax
    lea queue_msg(%rip), %rdi
    call print_value
    jmp reset

.include "common.inc"

magic_msg:   .asciz "magic "
version_msg: .asciz "version "
device_msg:  .asciz "device "
queue_msg:   .asciz "queue 0 max "
