# Counts forever: increments a counter in memory and one in %r12, prints both, waits a little,
# repeats. A snapshot taken at any point and restored in another process must go on with the
# next number, both copies agreeing: the memory file and the vCPU registers were restored.
.code64
.global _start
_start:
    xor %r12, %r12
next:
    incq counter(%rip)
    inc %r12
    lea tick_msg(%rip), %rdi
    call puts
    mov counter(%rip), %rax
    call put_hex
    lea space(%rip), %rdi
    call puts
    mov %r12, %rax
    call put_hex
    lea newline(%rip), %rdi
    call puts
    mov $100000, %rcx
1:  dec %rcx
    jnz 1b
    jmp next

.include "common.inc"

tick_msg: .asciz "tick "
space:    .asciz " "
.data
counter:  .quad 0
