{
  description = "attest: a NixOS integration test driver (Rhai test scripts; QEMU, firecracker, cloud-hypervisor and nspawn nodes)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # The attest package: built from Cargo.lock, with the programs the
      # backends start put on its PATH. OCR (tesseract, imagemagick) is not
      # among them: make-test.nix adds it to a test that sets enableOCR, as
      # nixpkgs' test-driver does.
      src =
        pkgs:
        pkgs.lib.fileset.toSource {
          root = ./.;
          fileset = pkgs.lib.fileset.unions [
            ./Cargo.toml
            ./Cargo.lock
            ./src
            ./nix
            (pkgs.lib.fileset.maybeMissing ./tests)
            (pkgs.lib.fileset.maybeMissing ./examples)
            (pkgs.lib.fileset.maybeMissing ./benches)
          ];
        };

      mkAttest =
        pkgs:
        let
          runtimeDeps = [
            pkgs.qemu_test # qemu backend (qemu_test: what NixOS tests use)
            pkgs.systemd # systemd-nspawn
            pkgs.vde2 # vde_switch for QEMU vlans
            pkgs.socat
            pkgs.openssh # ssh backend
            pkgs.util-linux # nsenter, unshare
            pkgs.iproute2 # bridges, TAPs, veths
            pkgs.coreutils
          ]
          ++ pkgs.lib.optionals (pkgs.stdenv.hostPlatform.isx86_64 || pkgs.stdenv.hostPlatform.isAarch64) [
            pkgs.firecracker
            pkgs.cloud-hypervisor
          ];
        in
        pkgs.rustPlatform.buildRustPackage {
          pname = "attest";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
          src = src pkgs;
          cargoLock.lockFile = ./Cargo.lock;
          nativeBuildInputs = [ pkgs.makeWrapper ];
          # The integration tests boot guests; the sandbox of a package build
          # has no /dev/kvm and no Debian image. Unit tests still run.
          cargoTestFlags = [
            "--lib"
            "--bins"
          ];
          postInstall = ''
            wrapProgram $out/bin/attest --prefix PATH : ${pkgs.lib.makeBinPath runtimeDeps}
            # The guest agent build.rs built and attest embeds, for guests
            # that ship it (nix/modules/agent.nix); absent if its build failed.
            agent=$(find . -path '*/build/attest-*/out/attest-agent' -size +0 | head -n1)
            if [ -n "$agent" ]; then install -Dm755 "$agent" $out/libexec/attest/attest-agent; fi
            mkdir -p $out/share/attest
            cp -r ${./nix} $out/share/attest/nix
          '';
          meta = {
            description = "A NixOS integration test driver";
            license = pkgs.lib.licenses.mit;
            mainProgram = "attest";
            platforms = pkgs.lib.platforms.linux;
          };
        };

      makeTestFor =
        pkgs: backend: args:
        import ./nix/make-test.nix (
          {
            inherit pkgs backend;
            attest = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          }
          // args
        );

      backends = [
        "qemu"
        "firecracker"
        "cloud-hypervisor"
        "nspawn"
      ];

      # The examples every backend runs.
      examples = {
        nginx = {
          name = "nginx";
          nodes.server =
            { ... }:
            {
              services.nginx.enable = true;
              services.nginx.virtualHosts.localhost.root = "/etc";
              networking.firewall.allowedTCPPorts = [ 80 ];
            };
          testScript = ''
            start_all();
            server.wait_for_unit("nginx.service");
            server.wait_for_open_port(80);
            server.succeed("curl -sf http://localhost/hostname");
          '';
        };
        network = {
          name = "network";
          nodes.server =
            { ... }:
            {
              services.nginx.enable = true;
              services.nginx.virtualHosts.server.root = "/etc";
              networking.firewall.allowedTCPPorts = [ 80 ];
            };
          nodes.client = { pkgs, ... }: { environment.systemPackages = [ pkgs.curl ]; };
          testScript = ''
            start_all();
            server.wait_for_unit("nginx.service");
            client.wait_for_unit("multi-user.target");
            client.succeed("ping -c1 server");
            client.succeed("curl -sf http://server/hostname");
          '';
        };
      };
      benchFor =
        pkgs:
        let
          drivers = map (backend: {
            inherit backend;
            driver =
              (makeTestFor pkgs backend (examples.network // { name = "bench-${backend}"; })).passthru.driver;
          }) backends;
        in
        pkgs.writeShellScriptBin "attest-bench" ''
          set -u
          results=()
          ${nixpkgs.lib.concatMapStrings (d: ''
            echo "== ${d.backend}" >&2
            start=$(date +%s%N)
            if ${d.driver}/bin/attest-driver-bench-${d.backend} "$@" >&2; then status=pass; else status=fail; fi
            end=$(date +%s%N)
            ms=$(( (end - start) / 1000000 ))
            results+=("$(printf '%-18s %-6s %6d.%03d' ${d.backend} "$status" $((ms / 1000)) $((ms % 1000)))")
          '') drivers}
          printf '%-18s %-6s %10s\n' backend result seconds
          printf '%s\n' "''${results[@]}"
        '';
    in
    {
      overlays.default = final: prev: {
        attest = mkAttest final;
      };

      packages = forAllSystems (pkgs: {
        default = mkAttest pkgs;
        attest = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      }
      // nixpkgs.lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
        # attest-bench: runs the network example on every backend and prints
        # a comparison table (also `nix run .#bench`).
        bench = benchFor pkgs;
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = [
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.cargo-nextest
            pkgs.nixfmt
            pkgs.tesseract
            pkgs.imagemagick_light
            pkgs.qemu_test
            pkgs.vde2
            pkgs.socat
            pkgs.erofs-utils
          ];
        };
      });

      # lib.makeTest { pkgs; name; nodes; testScript; backend ? "qemu"; ... }
      # (see docs/nix.md); `attest` defaults to this flake's package.
      lib.makeTest =
        args:
        import ./nix/make-test.nix (
          { attest = self.packages.${args.pkgs.stdenv.hostPlatform.system}.default; } // args
        );
      lib.attest = import ./nix/lib;

      formatter = forAllSystems (pkgs: pkgs.nixfmt);

      # Every example on every backend, e.g.
      # nix build .#legacyPackages.x86_64-linux.attestTests.network-nspawn -L
      # Not all of them are `checks`: a stock host cannot run every backend
      # (docs/nix.md, "Host settings").
      legacyPackages.x86_64-linux.attestTests =
        let
          pkgs = nixpkgs.legacyPackages.x86_64-linux;
        in
        nixpkgs.lib.listToAttrs (
          nixpkgs.lib.concatMap (
            backend:
            nixpkgs.lib.mapAttrsToList (ex: args: {
              name = "${ex}-${backend}";
              value = makeTestFor pkgs backend (args // { name = "${ex}-${backend}"; });
            }) examples
          ) backends
        )
        // {
          network-firecracker-split-store = makeTestFor pkgs "firecracker" (
            examples.network
            // {
              name = "network-firecracker-split-store";
              splitStore = true;
            }
          );
        };

      # What `nix flake check` runs on a stock NixOS host (kvm and nixos-test
      # are default system features where /dev/kvm exists): the cheap checks
      # and the QEMU tests. nspawn needs uid-range, the microVMs
      # attest-dev-net-tun: build those from attestTests on a host set up
      # for them.
      checks.x86_64-linux =
        let
          pkgs = nixpkgs.legacyPackages.x86_64-linux;
          tests = self.legacyPackages.x86_64-linux.attestTests;
        in
        {
          nginx-qemu = tests.nginx-qemu;
          network-qemu = tests.network-qemu;

          # nixfmt and rustfmt agree with the tree.
          fmt = pkgs.runCommand "attest-fmt" {
            nativeBuildInputs = [
              pkgs.nixfmt
              pkgs.rustfmt
              pkgs.cargo
            ];
          } ''
            cp -r ${src pkgs} src && chmod -R u+w src && cd src
            nixfmt --check $(find . -name '*.nix')
            cargo fmt --check
            touch $out
          '';

          # cargo clippy with the package's vendored dependencies.
          clippy = (mkAttest pkgs).overrideAttrs (old: {
            pname = "attest-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = "cargo clippy --offline --all-targets -- -D warnings";
            doCheck = false;
            installPhase = "touch $out";
            postInstall = "";
          });

          # nix/check: every .nix file parses, the pure fixtures, and the
          # guest modules evaluated with this nixpkgs' lib.
          nix-check = pkgs.runCommand "attest-nix-check" {
            nativeBuildInputs = [
              pkgs.nix
              pkgs.bash
              pkgs.findutils
            ];
            NIXPKGS_LIB = "${nixpkgs}/lib";
          } ''
            cp -r ${src pkgs} src && chmod -R u+w src && cd src
            bash nix/check
            touch $out
          '';
        };

      # nix run .#bench: the network example on every backend, one after
      # the other, then a table of wall-clock times per backend.
      apps.x86_64-linux.bench = {
        type = "app";
        program = "${self.packages.x86_64-linux.bench}/bin/attest-bench";
      };
    };
}
