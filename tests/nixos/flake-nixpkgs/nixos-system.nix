# `lib.nixosSystem` of the stand-in nixpkgs flake (./flake.nix): the real `lib.evalModules` over the NixOS
# option declarations of nixos-options.nix, plus the few system options flake.nix's check sets
# (nixpkgs.hostPlatform, boot.isContainer, system.stateVersion) and `systemd.units.<name>.text`,
# rendered from `systemd.services` the way NixOS's systemd-lib renders a [Service] section (a list is
# one line per element, booleans are true/false).
{ lib, pkgsFor }:
{
  modules,
  specialArgs ? { },
  ...
}:
let
  inherit (lib) mkOption types;
  toOption =
    x:
    if x == true then
      "true"
    else if x == false then
      "false"
    else
      toString x;
  section =
    attrs:
    lib.concatStrings (
      lib.concatLists (
        lib.mapAttrsToList (name: value: map (x: "${name}=${toOption x}\n") (lib.toList value)) attrs
      )
    );
  unitText =
    s:
    "[Unit]\n"
    + section {
      Description = s.description;
      After = s.after;
      Wants = s.wants;
    }
    + "\n[Service]\n"
    + lib.concatStrings (
      lib.mapAttrsToList (k: v: "Environment=\"${k}=${toString v}\"\n") (
        s.environment // { PATH = lib.makeBinPath s.path; }
      )
    )
    + section s.serviceConfig
    + "\n[Install]\n"
    + section { WantedBy = s.wantedBy; };
  system = {
    options = {
      nixpkgs.hostPlatform = mkOption { type = types.str; };
      boot.isContainer = mkOption {
        type = types.bool;
        default = false;
      };
      system.stateVersion = mkOption { type = types.str; };
      systemd.units = mkOption {
        type = types.attrsOf (types.submodule { options.text = mkOption { type = types.str; }; });
        default = { };
      };
    };
  };
in
lib.evalModules {
  inherit specialArgs;
  modules = [
    ./nixos-options.nix
    system
    (
      { config, ... }:
      {
        _module.args.pkgs = pkgsFor config.nixpkgs.hostPlatform;
        systemd.units = lib.mapAttrs' (
          name: s: lib.nameValuePair "${name}.service" { text = unitText s; }
        ) config.systemd.services;
      }
    )
  ]
  ++ modules;
}
