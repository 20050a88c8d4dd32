// Empty: the programs are the `espan` binary (src/main.rs). The library target
// exists so services/probe can name this crate as a build-dependency, which
// aya-build needs to build it with `cargo build --package espan-ebpf`.
#![no_std]
