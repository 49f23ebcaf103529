# The few packages nixos/module.nix and flake.nix take from `pkgs`, for tests/it/nixos_module.rs:
# placeholders for packages (derivations that are evaluated, never built), `formats.toml`, and stand-ins
# for the builders flake.nix calls (`rustPlatform.buildRustPackage`, `mkShell`, `writeText`) that check
# the arguments flake.nix relies on and return a derivation of the same name.
#
# `formats.toml` has nixpkgs' type (`lib.types.toml`, as pkgs/pkgs-lib/formats.nix declares it). nixpkgs'
# `generate` writes `builtins.toJSON value` to a file and converts it with remarshal's `json2toml`, which
# needs a build (and remarshal) that cannot run offline. Here `generate` writes the same JSON to the store
# at evaluation time (`<name>.json`), and the test converts that JSON to TOML with the `toml` crate
# before handing it to `eka-ci-server --check-config`. Both conversions map JSON objects, arrays,
# strings, booleans and numbers one to one onto TOML tables, arrays, strings, booleans, integers and
# floats, and neither accepts null (the module removes nulls before generating).
{ lib, system ? builtins.currentSystem }:

let
  placeholder =
    name:
    derivation {
      inherit name system;
      builder = "/bin/sh";
      args = [
        "-c"
        "echo placeholder > $out"
      ];
    };
  # Like nixpkgs' stdenv.mkDerivation results: the derivation plus the attributes callers read.
  withAttrs = drv: attrs: drv // attrs;
in
lib.fix (self: {
  # nixpkgs' `pkgs.extend overlay`: the package set with `overlay` applied.
  extend = overlay: lib.fix (final: self // overlay final self);

  stdenv.hostPlatform.system = system;
  eka-ci = placeholder "eka-ci";
  git = placeholder "git";
  bubblewrap = placeholder "bubblewrap";
  nix = placeholder "nix";
  cargo = placeholder "cargo";
  rustc = placeholder "rustc";
  clippy = placeholder "clippy";
  rustfmt = placeholder "rustfmt";

  rustPlatform = {
    rustLibSrc = placeholder "rust-lib-src";
    # nixpkgs: pname, version, src and cargoLock.lockFile (or a cargoHash) are required.
    buildRustPackage =
      args:
      assert builtins.isString args.pname && builtins.isString args.version;
      assert builtins.pathExists args.cargoLock.lockFile;
      withAttrs
        (derivation {
          name = "${args.pname}-${args.version}";
          inherit system;
          builder = "/bin/sh";
          args = [
            "-c"
            "echo placeholder > $out"
          ];
          inherit (args) src;
          cargoLock = args.cargoLock.lockFile;
          doCheck = if args.doCheck or true then "1" else "";
        })
        {
          inherit (args) pname version;
          meta = args.meta or { };
        };
  };

  mkShell =
    args:
    assert builtins.all lib.isDerivation (args.packages or [ ]);
    placeholder "nix-shell";

  writeText =
    name: text:
    derivation {
      inherit name system text;
      builder = "/bin/sh";
      args = [
        "-c"
        "echo \"$text\" > $out"
      ];
    };

  formats.toml =
    { }:
    {
      type = lib.types.toml;
      # toFile refuses references to derivations (a package's path in the settings, e.g. bubblewrap's);
      # nixpkgs' generate builds the file with them as inputs. The test only reads the text.
      generate =
        name: value:
        builtins.toFile "${name}.json" (builtins.unsafeDiscardStringContext (builtins.toJSON value));
    };
})
