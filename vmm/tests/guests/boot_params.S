# Checks the boot-protocol state the VMM leaves: the zero page's setup header, e820 map and
# command line, and the MP table in the EBDA. Prints what it finds, then resets.
.code64
.global _start
_start:
    lea banner(%rip), %rdi
    call puts

    cmpl $0x53726448, 0x202(%rsi)      # setup header magic "HdrS"
    jne bad_header
    movzbq 0x1e8(%rsi), %rax           # e820 entries
    lea e820_msg(%rip), %rdi
    call print_value
    mov 0x2e4(%rsi), %rax              # second e820 entry: start
    lea ram_start_msg(%rip), %rdi
    call print_value
    mov 0x2e4(%rsi), %rax              # ... and end
    add 0x2ec(%rsi), %rax
    lea ram_end_msg(%rip), %rdi
    call print_value
    movl 0x218(%rsi), %eax             # ramdisk_image
    lea initrd_msg(%rip), %rdi
    call print_value

    cmpl $0x5f504d5f, 0x9fc00          # "_MP_" in the EBDA
    jne bad_mptable
    lea mptable_ok(%rip), %rdi
    call puts

    lea cmdline_msg(%rip), %rdi
    call puts
    mov %rsi, %rbx
    movl 0x228(%rbx), %edi             # cmd_line_ptr
    call puts
    lea newline(%rip), %rdi
    call puts

    in $0x80, %al                      # a port nothing claims reads as all ones
    movzbq %al, %rax
    lea unclaimed_msg(%rip), %rdi
    call print_value
    jmp reset

bad_header:
    lea bad_header_msg(%rip), %rdi
    call puts
    jmp reset
bad_mptable:
    lea bad_mptable_msg(%rip), %rdi
    call puts
    jmp reset

.include "common.inc"

banner:          .asciz "tiny guest: boot params\n"
e820_msg:        .asciz "e820 entries "
ram_start_msg:   .asciz "ram start "
ram_end_msg:     .asciz "ram end "
initrd_msg:      .asciz "initrd at "
mptable_ok:      .asciz "mp table found\n"
cmdline_msg:     .asciz "cmdline: "
unclaimed_msg:   .asciz "unclaimed port reads "
bad_header_msg:  .asciz "BAD setup header\n"
bad_mptable_msg: .asciz "BAD mp table\n"
