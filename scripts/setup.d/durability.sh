# The durability tests (services/espan/tests/durability.rs, the linker's
# tests/power_cut.rs) cut the power of a simulated disk: an ext4 file system
# (mkfs.ext4: e2fsprogs) in a loop device (losetup, mount: the mount package).
# Sourced by scripts/setup.sh (apt_install defined).
command -v losetup >/dev/null && command -v mkfs.ext4 >/dev/null || apt_install mount e2fsprogs
