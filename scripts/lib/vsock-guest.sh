# The one-program guest that scripts/bench-vsock-bulk.sh and scripts/bench-restore-vmms.sh boot
# in our vmm and in Firecracker alike. Sourced after scripts/lib/common.sh; sets:
#   kernel     the project's vmlinux (scripts/build-kernel.sh)
#   target     the cargo target directory, where release `vmm` is built
#   work       a temporary directory, removed at exit with every process in `pids`
#   initramfs  $work/initramfs.cpio: benches/src/bin/vsock_bulk_guest.rs, static, as /init (it
#              mounts devtmpfs for its console itself; it listens on vsock port 5000 and prints
#              "vsock_bulk_guest: listening")
#   boot_args  our vmm's default kernel command line for this host (vmm/src/builder.rs:
#              DEFAULT_BOOT_ARGS, and PVM_BOOT_ARGS under kvm_pvm), given to both VMMs explicitly
# and checks FIRECRACKER (empty, or an executable) into `firecracker`.

[ -e /dev/kvm ] || die "/dev/kvm is missing"
firecracker="${FIRECRACKER:-}"
[ -z "$firecracker" ] || [ -x "$firecracker" ] || die "FIRECRACKER=$firecracker is not an executable"
command -v cpio >/dev/null || ensure_apt_packages cpio
ensure_cargo
kernel="$(scripts/build-kernel.sh | tail -n1)"
step "building the static guest program (benches/src/bin/vsock_bulk_guest.rs)"
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --quiet --release -p benches --bin vsock_bulk_guest --target "$STATIC_TARGET" >&2
step "building vmm (release)"
cargo build --quiet --release -p vmm
target="$(cargo_target_dir)"

work="$(mktemp -d)"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/root"
cp "$target/$STATIC_TARGET/release/vsock_bulk_guest" "$work/root/init"
(cd "$work/root" && echo init | cpio -o -H newc --quiet) >"$work/initramfs.cpio"
initramfs="$work/initramfs.cpio"

boot_args="console=ttyS0 reboot=k panic=1 rodata=off clocksource=kvm-clock"
if [ -d /sys/module/kvm_pvm ]; then
    boot_args="$boot_args noxsave nosmap nofsgsbase nopku clearcpuid=cx16,popcnt,rdrand,rdseed,fsgsbase,smap,smep,pku,ospke,invpcid,pcid,rdtscp,3dnowprefetch,clflushopt,clwb,rdpid,avx,avx2 pvm_no_int3_selftest pvm_no_fwait pvm_syscall_fixup"
fi

# wait_listening NAME PID CONSOLE: waits up to 600 s for the guest's listening line in CONSOLE
# while process PID lives.
wait_listening() {
    local name="$1" pid="$2" console="$3" _
    for _ in $(seq 6000); do
        grep -q "vsock_bulk_guest: listening" "$console" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || { cat "$console" >&2; die "$name exited"; }
        sleep 0.1
    done
    tail -n 20 "$console" >&2
    die "$name's guest did not listen within 600 s"
}
