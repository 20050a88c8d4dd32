# espan with Nix: the three services, their container images and a dev shell.
#
#   nix build .#espan-linker        the binary (also .#espan-probe, .#espan-exporter)
#   nix run .#linker -- --help      run one (apps: probe, linker, exporter)
#   nix build .#image-linker        an OCI image (dockerTools); docker load < result
#   nix develop                     cargo, the pinned nightly with rust-src, bpf-linker
#
# One toolchain builds everything: the nightly the probe's eBPF programs need
# (nightly-2026-05-19, LLVM 22, see /work/shared/design/toolchain.md). Without rustup
# in the sandbox, aya-build (services/probe/build.rs) runs the nested bpf build with
# the cargo on PATH, i.e. this nightly, with -Z build-std=core; so rust-src's own
# Cargo.lock is vendored next to the workspace's and the eBPF crate's.
{
  description = "espan: zero-code distributed tracing from eBPF";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    crane.url = "github:ipetkov/crane";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      crane,
      rust-overlay,
    }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      # The workspace's binaries; packaging/check-nix.sh compares this list with
      # `cargo metadata`.
      services = [
        "probe"
        "linker"
        "exporter"
      ];
      # Metrics/health port of each service (its --metrics-addr default).
      ports = {
        probe = "9531";
        linker = "9530";
        exporter = "9533";
      };
      forAllSystems = nixpkgs.lib.genAttrs systems;
      forServices = f: nixpkgs.lib.genAttrs services f;

      perSystem =
        system:
        let
          pkgs = import nixpkgs {
            inherit system;
            overlays = [ (import rust-overlay) ];
          };
          lib = pkgs.lib;
          toolchain = pkgs.rust-bin.nightly."2026-05-19".minimal.override {
            extensions = [
              "rust-src"
              "clippy"
              "rustfmt"
            ];
          };
          craneLib = (crane.mkLib pkgs).overrideToolchain toolchain;

          # Cargo sources plus what build scripts read: the .proto (espan's
          # build.rs) and the eBPF crate (built by the probe's build.rs).
          src = lib.cleanSourceWith {
            src = ./.;
            filter =
              path: type:
              (craneLib.filterCargoSources path type)
              || lib.hasSuffix ".proto" path
              || lib.hasInfix "/bpf/" path;
          };
          cargoVendorDir = craneLib.vendorMultipleCargoDeps {
            inherit (craneLib.findCargoFiles src) cargoConfigs;
            cargoLockList = [
              ./Cargo.lock
              ./bpf/espan-ebpf/Cargo.lock
              "${toolchain.passthru.availableComponents.rust-src}/lib/rustlib/src/rust/library/Cargo.lock"
            ];
          };
          common = {
            inherit src cargoVendorDir;
            pname = "espan";
            version = "0.1.0";
            strictDeps = true;
            # bpf-linker links the eBPF object; its LLVM must be the nightly's (22).
            nativeBuildInputs = [ pkgs.bpf-linker ];
          };
          # Dependencies once, for all three services.
          cargoArtifacts = craneLib.buildDepsOnly common;

          servicePackage =
            name:
            craneLib.buildPackage (
              common
              // {
                inherit cargoArtifacts;
                pname = "espan-${name}";
                cargoExtraArgs = "--locked -p espan-${name} --bin espan-${name}";
                # The workspace's tests need nats-server, docker and a kernel with
                # BPF: they run in CI (scripts/test.sh), not in the sandbox.
                doCheck = false;
                meta = {
                  mainProgram = "espan-${name}";
                  license = lib.licenses.asl20;
                };
              }
            );
          binaries = forServices servicePackage;

          serviceImage =
            name:
            pkgs.dockerTools.buildLayeredImage {
              name = "espan-${name}";
              tag = "0.1.0";
              # glibc comes with the binary's closure; CA certificates for OTLP and
              # Dataway over TLS.
              contents = [ pkgs.cacert ];
              config = {
                Entrypoint = [ "${binaries.${name}}/bin/espan-${name}" ];
                ExposedPorts = {
                  "${ports.${name}}/tcp" = { };
                };
                Env = [ "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt" ];
                # The probe loads eBPF programs as root (with CAP_BPF, CAP_PERFMON...);
                # the others run as distroless's nonroot uid.
                User = if name == "probe" then "0:0" else "65532:65532";
              };
            };
        in
        {
          inherit pkgs toolchain binaries;
          images = forServices serviceImage;
        };

      bySystem = forAllSystems perSystem;
    in
    {
      packages = forAllSystems (
        system:
        let
          s = bySystem.${system};
        in
        nixpkgs.lib.mapAttrs' (name: value: {
          name = "espan-${name}";
          inherit value;
        }) s.binaries
        // nixpkgs.lib.mapAttrs' (name: value: {
          name = "image-${name}";
          inherit value;
        }) s.images
        // {
          default = s.pkgs.symlinkJoin {
            name = "espan-0.1.0";
            paths = builtins.attrValues s.binaries;
          };
        }
      );

      apps = forAllSystems (
        system:
        forServices (name: {
          type = "app";
          program = "${bySystem.${system}.binaries.${name}}/bin/espan-${name}";
        })
      );

      devShells = forAllSystems (
        system:
        let
          s = bySystem.${system};
        in
        {
          default = s.pkgs.mkShell {
            packages = [
              s.toolchain
              s.pkgs.bpf-linker
              s.pkgs.llvmPackages_22.llvm
              s.pkgs.nats-server
              s.pkgs.protobuf
              s.pkgs.kubectl
            ];
          };
        }
      );

      checks = forAllSystems (system: self.packages.${system});
    };
}
