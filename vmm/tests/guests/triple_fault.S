# Faults with no IDT: a triple fault, which must end the VM as a guest crash.
.code64
.global _start
_start:
    lea msg(%rip), %rdi
    call puts
    ud2

.include "common.inc"

msg: .asciz "tiny guest: about to fault\n"
