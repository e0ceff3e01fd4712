# Drops to user mode (CPL 3) and loops there: counts at 0x300000, then takes an exception
# (ud2) that a kernel handler counts at 0x300100 and returns from. A snapshot of it restored in
# another process must go on counting in both: user mode and user-to-kernel exceptions work
# after a restore. User mode has no port access, so the handler (at CPL 0) prints a line every
# 1024 exceptions: a test waits for those instead of sleeping.
.code64
.global _start
_start:
    lea banner(%rip), %rdi
    call puts
    # A TSS (GDT index 5, built here: the assembler cannot split a symbol's address into
    # descriptor fields) whose RSP0 is the stack for exceptions from user mode.
    lea tss(%rip), %rax
    mov %rax, %rbx
    and $0xffff, %rbx
    shl $16, %rbx
    or $103, %rbx              # limit 15:0 | base 15:0
    mov %rax, %rcx
    shr $16, %rcx
    and $0xff, %rcx
    shl $32, %rcx
    or %rcx, %rbx              # base 23:16
    mov $0x89, %rcx
    shl $40, %rcx
    or %rcx, %rbx              # access
    mov %rax, %rcx
    shr $24, %rcx
    and $0xff, %rcx
    shl $56, %rcx
    or %rcx, %rbx              # base 31:24
    mov %rbx, gdt_tss(%rip)
    mov %rax, %rcx
    shr $32, %rcx
    mov %rcx, gdt_tss+8(%rip)
    movq $0x3e0000, tss+4(%rip)
    # #UD (vector 6) goes to ud_handler.
    lea ud_handler(%rip), %rax
    lea idt(%rip), %rdi
    add $6*16, %rdi
    mov %ax, (%rdi)            # offset 15:0
    movw $0x08, 2(%rdi)        # selector
    movb $0, 4(%rdi)           # ist
    movb $0x8e, 5(%rdi)        # present, DPL0, interrupt gate
    shr $16, %rax
    mov %ax, 6(%rdi)           # offset 31:16
    shr $16, %rax
    mov %eax, 8(%rdi)          # offset 63:32
    movl $0, 12(%rdi)
    lgdt gdt_ptr(%rip)
    lidt idt_ptr(%rip)
    mov $0x28, %ax
    ltr %ax
    # Let user mode use the 2 MiB page with this code, its stack and the counters.
    orq $4, 0x9000
    orq $4, 0xa000
    orq $4, 0xb008
    mov %cr3, %rax
    mov %rax, %cr3
    # iretq to user code (selector 0x1b) on user data (0x23), interrupts off.
    pushq $0x23
    pushq $0x3f0000
    pushq $0x2
    pushq $0x1b
    lea user(%rip), %rax
    pushq %rax
    iretq
user:
    incq 0x300000
    ud2
    jmp user
ud_handler:
    incq 0x300100
    testq $0x3ff, 0x300100
    jnz 1f
    push %rax
    push %rdx
    push %rdi
    lea ud_msg(%rip), %rdi
    call puts
    pop %rdi
    pop %rdx
    pop %rax
1:  addq $2, (%rsp)
    iretq

.include "common.inc"
banner: .asciz "tiny guest: user mode\n"
ud_msg: .asciz "1024 more exceptions\n"
.align 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00affa000000ffff
    .quad 0x00cff2000000ffff
gdt_tss:
    .quad 0
    .quad 0
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
.align 16
idt:
    .fill 256*16, 1, 0
idt_end:
idt_ptr:
    .word idt_end - idt - 1
    .quad idt
.align 16
tss:
    .fill 104, 1, 0
