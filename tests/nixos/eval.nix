# Evaluates nixos/module.nix with nixpkgs' module system (`lib.evalModules` of a real nixpkgs `lib`),
# the NixOS option declarations of ./nixos-options.nix, the placeholder packages of ./pkgs.nix and one
# configuration, and returns what tests/it/nixos_module.rs asserts on, as JSON-compatible values:
#
#   nix-instantiate --eval --strict --json tests/nixos/eval.nix \
#     --arg lib '<dir>/lib' --arg configuration ./some-configuration.nix
{
  # The `lib` directory of nixpkgs (nixpkgs-lib-2026-06.tar.xz unpacked), as a path.
  lib,
  # A NixOS module setting services.eka-ci and whatever else the case needs.
  configuration,
  # The module under test.
  module ? ../../nixos/module.nix,
}:

let
  lib' = import lib;
  pkgs = import ./pkgs.nix { lib = lib'; };
  evaluated = lib'.evalModules {
    modules = [
      ./nixos-options.nix
      { _module.args.pkgs = pkgs; }
      module
      configuration
    ];
  };
  inherit (evaluated) config;
  service = config.systemd.services.eka-ci or null;
in
{
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  service =
    if service == null then
      null
    else
      {
        inherit (service)
          description
          wantedBy
          wants
          after
          environment
          serviceConfig
          ;
        path = map toString service.path;
      };
  users = lib'.mapAttrs (_: u: {
    inherit (u)
      name
      description
      isSystemUser
      group
      home
      ;
  }) config.users.users;
  groups = builtins.attrNames config.users.groups;
  firewall = config.networking.firewall.allowedTCPPorts;
  systemPackages = map toString config.environment.systemPackages;
  packages = {
    eka-ci = toString pkgs.eka-ci;
    git = toString pkgs.git;
    bubblewrap = toString pkgs.bubblewrap;
  };
  nginx = {
    inherit (config.services.nginx) enable;
    virtualHosts = lib'.mapAttrs (_: v: {
      inherit (v) enableACME forceSSL;
      locations = lib'.mapAttrs (_: l: { inherit (l) proxyPass return; }) v.locations;
    }) config.services.nginx.virtualHosts;
  };
}
