# Halts with interrupts off and never wakes: a guest that stays up while touching almost no
# memory, for measuring the VMM's own resident memory.
.code64
.global _start
_start:
    cli
1:  hlt
    jmp 1b
