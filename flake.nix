{
  description = "eka-ci: a continuous-integration server for Nix repositories";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});

      cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);

      # The package, as a function of a package set (used for our own outputs, the overlay and, on
      # systems we do not list, the NixOS module's default).
      mkEkaCi =
        pkgs:
        pkgs.rustPlatform.buildRustPackage {
          pname = "eka-ci";
          inherit (cargoToml.package) version;

          # The repository without build output (target/, result links, VCS metadata).
          src = lib.cleanSourceWith {
            name = "eka-ci-source";
            src = self;
            filter =
              path: type:
              !(type == "directory" && baseNameOf (toString path) == "target")
              && lib.cleanSourceFilter path type;
          };

          cargoLock.lockFile = ./Cargo.lock;

          nativeCheckInputs = [
            pkgs.nix
            pkgs.git
          ];
          # The test suite drives real Nix evaluations and builds, which need a writable Nix store and a
          # nix-daemon; the build sandbox has neither. Run the tests with scripts/test instead.
          doCheck = false;

          meta = {
            description = cargoToml.package.description;
            homepage = "https://github.com/ekala-project/eka-ci";
            license = lib.licenses.mit;
            mainProgram = "eka-ci-server";
            platforms = lib.platforms.linux;
          };
        };
    in
    {
      packages = forAllSystems (
        _system: pkgs:
        let
          eka-ci = mkEkaCi pkgs;
        in
        {
          inherit eka-ci;
          default = eka-ci;
        }
      );

      overlays.default = final: _prev: { eka-ci = mkEkaCi final; };

      # `services.eka-ci`, with this flake's package as the default `services.eka-ci.package`.
      nixosModules.daemon =
        { lib, pkgs, ... }:
        {
          # Lets `daemon` and `default` both be imported without declaring the options twice.
          key = "eka-ci#nixosModules.daemon";
          _file = "${self.outPath}/flake.nix#nixosModules.daemon";
          imports = [ ./nixos/module.nix ];
          services.eka-ci.package = lib.mkDefault (
            self.packages.${pkgs.stdenv.hostPlatform.system}.default or (mkEkaCi pkgs)
          );
        };
      nixosModules.default = self.nixosModules.daemon;

      devShells = forAllSystems (
        _system: pkgs: {
          default = pkgs.mkShell {
            packages = [
              pkgs.cargo
              pkgs.rustc
              pkgs.clippy
              pkgs.rustfmt
              pkgs.nix
              pkgs.git
            ];
            RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
          };
        }
      );

      checks = forAllSystems (
        system: pkgs:
        let
          # Evaluates the module inside a minimal NixOS system and keeps the generated unit and config
          # file, so `nix flake check` catches option/type errors without booting a VM.
          nixos = lib.nixosSystem {
            modules = [
              self.nixosModules.daemon
              {
                nixpkgs.hostPlatform = system;
                boot.isContainer = true;
                system.stateVersion = "25.05";
                services.eka-ci = {
                  enable = true;
                  environmentFile = "/run/secrets/eka-ci.env";
                  credentials.github-app-key = "/run/secrets/github-app.json";
                  settings = {
                    graph_lru_capacity = 200000;
                    web.allowed_origins = [ "https://ci.example.com" ];
                    github_apps = [
                      {
                        id = "main";
                        credentials.systemd-credential.name = "github-app-key";
                      }
                    ];
                  };
                };
              }
            ];
          };
          failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) nixos.config.assertions);
        in
        {
          package = self.packages.${system}.default;
          # The overlay gives the same package.
          overlay = (pkgs.extend self.overlays.default).eka-ci;
          # NixOS checks assertions when it builds the system; this check stops at the unit, so it checks
          # them itself.
          module =
            if failedAssertions != [ ] then
              throw "services.eka-ci assertions failed:\n${lib.concatStringsSep "\n" failedAssertions}"
            else
              pkgs.writeText "eka-ci.service" nixos.config.systemd.units."eka-ci.service".text;
        }
      );
    };
}
