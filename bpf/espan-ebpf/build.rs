// Rebuild when bpf-linker changes: cargo does not know that the bpf target links with it.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
