# make-test.nix: one attest test as a derivation.
#
#   import "${attest}/nix/make-test.nix" {
#     inherit pkgs; attest = attest.packages.x86_64-linux.default;
#     name = "nginx"; backend = "qemu";
#     nodes.server = { ... }: { services.nginx.enable = true; };
#     testScript = ''start_all(); server.wait_for_unit("nginx.service");'';
#   }
#
# Every option is documented in docs/nix.md. The pure parts (numbering, IP
# plan, hosts, JSON config, option checks) are in ./lib and are evaluated
# without nixpkgs by nix/check; this file glues them to NixOS and nixpkgs.
# The argument set is open on purpose: nix/lib/options.nix names an unknown
# or missing option with the list of known ones, which a closed set (Nix's
# own "called with unexpected argument") would pre-empt.
args:
let
  attestLib = import ./lib;
  a = attestLib.normalizeArgs args;
  inherit (a) pkgs attest;
  inherit (pkgs) lib;

  backendImpl =
    {
      qemu = import ./backends/qemu.nix { inherit pkgs lib a; };
      nspawn = import ./backends/nspawn.nix { inherit pkgs lib a; };
      firecracker = import ./backends/microvm.nix {
        inherit pkgs lib a;
        vmm = "firecracker";
      };
      cloud-hypervisor = import ./backends/microvm.nix {
        inherit pkgs lib a;
        vmm = "cloud-hypervisor";
      };
    }
    .${a.backend};

  plan = attestLib.ipPlan { inherit (a) nodeNames enableNetwork vlans; };
  hosts = attestLib.hostsFile plan;

  # One NixOS system per node: nixpkgs' modules, attest's node modules
  # (nix/node-modules.nix: name, number, addresses, hosts, backend), then
  # `defaults` and the user's node module.
  systems = lib.genAttrs a.nodeNames (
    nodeName:
    import (pkgs.path + "/nixos/lib/eval-config.nix") {
      system = null;
      modules = [
        { nixpkgs.pkgs = lib.mkDefault pkgs; }
        # The other nodes' configurations, as NixOS tests provide them.
        { _module.args.nodes = lib.mapAttrs (_: s: s.config) systems; }
      ]
      ++ import ./node-modules.nix {
        inherit (a) backend debugBoot splitStore;
        inherit nodeName plan hosts;
        # The package installs the agent it embeds (flake.nix); shipped in
        # the node, the driver skips uploading it each boot.
        agentBinary = "${attest}/libexec/attest/attest-agent";
      }
      ++ [
        a.defaults
        a.nodes.${nodeName}
      ];
    }
  );

  shared = backendImpl.shared systems;

  scriptFile =
    if builtins.isPath a.testScript then
      builtins.path {
        path = a.testScript;
        name = "${a.name}-test-script.rhai";
      }
    else
      pkgs.writeText "${a.name}-test-script.rhai" a.testScript;

  testConfig = attestLib.mkTestConfig {
    inherit (a) name globalTimeout enableNetwork bootTimeout;
    vlans = lib.mapAttrs (n: _: plan.${n}.vlans) a.nodes;
    script = "${scriptFile}";
    nodes = lib.mapAttrs (nodeName: system: {
      inherit (a) backend;
      settings = backendImpl.settings nodeName system shared // (a.extraBackendSettings.${nodeName} or { });
    }) systems;
  };

  configJSON = builtins.toJSON testConfig;
  configFile = pkgs.writeText "${a.name}-attest.json" configJSON;

  # The same config without the nodes' store paths as dependencies: `attest
  # check --no-files` does not look at them, so the script is checked without
  # building a single node, and a script error fails in seconds.
  checkConfigFile = pkgs.writeText "${a.name}-attest-check.json" (
    builtins.unsafeDiscardStringContext configJSON
  );
  scriptCheck = pkgs.runCommand "attest-check-${a.name}" { nativeBuildInputs = [ attest ]; } ''
    test -f ${scriptFile}
    attest check --no-files ${checkConfigFile}
    touch $out
  '';

  # OCR only when a test enables it, with what nixpkgs' test-driver uses:
  # imagemagick_light and tesseract with English only.
  ocrTools = lib.optionals a.enableOCR [
    pkgs.imagemagick_light
    (pkgs.tesseract.override { enableLanguages = [ "eng" ]; })
  ];
  ocrPath = lib.optionalString a.enableOCR "export PATH=${lib.makeBinPath ocrTools}:$PATH\n";

  driver = pkgs.writeShellScriptBin "attest-driver-${a.name}" ''
    ${ocrPath}exec ${attest}/bin/attest run ${configFile} "$@"
  '';
  driverInteractive = pkgs.writeShellScriptBin "attest-driver-${a.name}-interactive" ''
    ${ocrPath}exec ${attest}/bin/attest repl ${configFile} "$@"
  '';

  passthru = {
    config = testConfig;
    inherit configFile scriptCheck driver driverInteractive systems;
    nodes = lib.mapAttrs (_: s: s.config) systems;
    inherit plan hosts;
    backend = a.backend;
  };

  test = pkgs.runCommand "attest-test-${a.name}"
    {
      nativeBuildInputs = [ attest ] ++ ocrTools;
      requiredSystemFeatures = backendImpl.requiredSystemFeatures;
      inherit passthru;
      meta.timeout = a.globalTimeout + 300;
    }
    ''
      # ${scriptCheck} already passed; check again against the real paths.
      attest check ${configFile}
      mkdir -p $out
      attest run ${configFile} --junit $out/junit.xml --log-json $out/log.json
      cp ${configFile} $out/attest.json
    '';
in
if a.interactive then driverInteractive // { inherit passthru; } // passthru else test
