# A stand-in for the nixpkgs flake input, for checking flake.nix offline (tests/it/nixos_module.rs,
# `nix flake check --no-build --override-input nixpkgs path:…`). The test puts it in a directory with
# nixpkgs' real `lib/` (nixpkgs-lib-2026-06.tar.xz) and ../pkgs.nix, ../nixos-options.nix beside it:
#
# - `lib` is nixpkgs' real lib, with `nixosSystem` from ./nixos-system.nix (the NixOS options
#   eka-ci's module touches, evaluated by the real `lib.evalModules`);
# - `legacyPackages.<system>` are the placeholders and builder stand-ins of ../pkgs.nix.
#
# So the check proves flake.nix's own wiring (every output exists and evaluates, the module wrapper,
# the overlay, the package's arguments), not that nixpkgs' buildRustPackage builds the package.
{
  outputs =
    { self }:
    let
      lib = import ./lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      pkgsFor = system: import ./pkgs.nix { inherit lib system; };
    in
    {
      lib = lib // {
        nixosSystem = import ./nixos-system.nix { inherit lib pkgsFor; };
      };
      legacyPackages = lib.genAttrs systems pkgsFor;
    };
}
