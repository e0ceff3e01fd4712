# Resets at once: measures the VMM's own cost from process start to the guest's first
# instruction and back out.
.code64
.global _start
_start:
    jmp reset

.include "common.inc"
