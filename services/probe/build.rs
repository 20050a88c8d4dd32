// Builds the kernel programs (bpf/espan-ebpf) for the bpf target with aya-build,
// so `cargo build` of the workspace is enough (no xtask). aya-build runs a nested
// cargo with the nightly toolchain (build-std=core) and bpf-linker; the object lands
// in OUT_DIR and src/loader.rs embeds it.
//
// The nightly is pinned to 2026-05-19 when rustup has it under that name: its LLVM (22)
// is the one bpf-linker is built against (scripts/setup.d/probe.sh); a newer nightly
// may carry LLVM 23 and fail to link.
use std::process::Command;

const PINNED: &str = "nightly-2026-05-19";

fn main() -> anyhow::Result<()> {
    let pinned = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with(PINNED))
        })
        .unwrap_or(false);
    let toolchain = if pinned {
        aya_build::Toolchain::Custom(PINNED)
    } else {
        aya_build::Toolchain::Nightly
    };
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bpf/espan-ebpf");
    // The eBPF crate is outside the workspace (it must never be built for the host),
    // so the nested cargo runs from its own directory, where it is its own root;
    // cargo's feature resolver panics on `--package` for a build-dependency.
    std::env::set_current_dir(root_dir)?;
    println!("cargo:rerun-if-changed={root_dir}/../espan-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "espan-ebpf",
            root_dir,
            ..Default::default()
        }],
        toolchain,
    )
}
