# Declarations of the NixOS options that nixos/module.nix (and the docs/nixos.md example) set or read,
# written to match NixOS's own declarations (nixos/modules/... of nixpkgs, 2026): the same names, types,
# defaults and merge behaviour. NixOS itself is not available offline, so tests/it/nixos_module.rs
# evaluates the module against these with the real nixpkgs `lib` (lib.evalModules): a misspelt option, a
# value of the wrong type or a conflicting definition fails here as it would on NixOS.
#
# Only what is used is declared. Where NixOS's type is richer than needed, the part that decides what
# our module may set is kept (for example systemd's unit-option merge: lists concatenate, scalars must
# agree).
{ lib, pkgs, ... }:

let
  inherit (lib) mkOption types;

  # nixos/lib/systemd-unit-options.nix: a value of a [Service] key.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    description = "systemd unit option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  # nixos/modules/services/system/nix-daemon.nix: nix.settings' freeform values.
  confAtom =
    types.nullOr (
      types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        types.package
      ]
    )
    // {
      description = "Nix config atom (null, bool, int, float, str, path or package)";
    };
  semanticConfType = types.attrsOf (types.either confAtom (types.listOf confAtom));

  service = types.submodule {
    options = {
      description = mkOption {
        type = types.str;
        default = "";
      };
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      wantedBy = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      requiredBy = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      wants = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      requires = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      after = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      before = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      path = mkOption {
        type = types.listOf (types.oneOf [
          types.package
          types.str
        ]);
        default = [ ];
      };
      environment = mkOption {
        type = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        );
        default = { };
      };
      serviceConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
      preStart = mkOption {
        type = types.lines;
        default = "";
      };
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      startLimitIntervalSec = mkOption {
        type = types.nullOr types.int;
        default = null;
      };
    };
  };

  user = types.submodule (
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = types.passwdEntry types.str;
          default = name;
        };
        description = mkOption {
          type = types.passwdEntry types.str;
          default = "";
        };
        uid = mkOption {
          type = types.nullOr types.int;
          default = null;
        };
        isSystemUser = mkOption {
          type = types.bool;
          default = false;
        };
        isNormalUser = mkOption {
          type = types.bool;
          default = false;
        };
        group = mkOption {
          type = types.str;
          default = "";
        };
        extraGroups = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        home = mkOption {
          type = types.passwdEntry types.path;
          default = "/var/empty";
        };
        createHome = mkOption {
          type = types.bool;
          default = false;
        };
      };
    }
  );

  group = types.submodule (
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = types.passwdEntry types.str;
          default = name;
        };
        gid = mkOption {
          type = types.nullOr types.int;
          default = null;
        };
        members = mkOption {
          type = types.listOf (types.passwdEntry types.str);
          default = [ ];
        };
      };
    }
  );

  # nixos/modules/config/nix-remote-build.nix.
  buildMachine = types.submodule {
    options = {
      hostName = mkOption { type = types.str; };
      protocol = mkOption {
        type = types.enum [
          null
          "ssh"
          "ssh-ng"
        ];
        default = "ssh";
      };
      system = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      systems = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      sshUser = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      sshKey = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      maxJobs = mkOption {
        type = types.int;
        default = 1;
      };
      speedFactor = mkOption {
        type = types.int;
        default = 1;
      };
      mandatoryFeatures = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      supportedFeatures = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      publicHostKey = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
    };
  };

  # nixos/modules/services/web-servers/nginx/{vhost,location}-options.nix (the part the docs use).
  location = types.submodule {
    options = {
      proxyPass = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      proxyWebsockets = mkOption {
        type = types.bool;
        default = false;
      };
      recommendedProxySettings = mkOption {
        type = types.bool;
        default = false;
      };
      return = mkOption {
        type = types.nullOr (types.oneOf [
          types.str
          types.int
        ]);
        default = null;
      };
      extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
    };
  };
  vhost = types.submodule {
    options = {
      enableACME = mkOption {
        type = types.bool;
        default = false;
      };
      forceSSL = mkOption {
        type = types.bool;
        default = false;
      };
      locations = mkOption {
        type = types.attrsOf location;
        default = { };
      };
      extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
    };
  };
in
{
  options = {
    # nixos/modules/misc/assertions.nix
    assertions = mkOption {
      type = types.listOf types.unspecified;
      internal = true;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      internal = true;
      default = [ ];
    };

    # nixos/modules/config/system-path.nix
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };

    # nixos/modules/services/networking/firewall.nix
    networking.firewall.allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };

    # nixos/modules/config/users-groups.nix
    users.users = mkOption {
      type = types.attrsOf user;
      default = { };
    };
    users.groups = mkOption {
      type = types.attrsOf group;
      default = { };
    };

    # nixos/modules/system/boot/systemd.nix
    systemd.services = mkOption {
      type = types.attrsOf service;
      default = { };
    };

    # nixos/modules/services/system/nix-daemon.nix, nixos/modules/config/nix.nix,
    # nixos/modules/config/nix-remote-build.nix
    nix.enable = mkOption {
      type = types.bool;
      default = true;
    };
    nix.package = mkOption {
      type = types.package;
      default = pkgs.nix;
    };
    nix.distributedBuilds = mkOption {
      type = types.bool;
      default = false;
    };
    nix.buildMachines = mkOption {
      type = types.listOf buildMachine;
      default = [ ];
    };
    nix.settings = mkOption {
      type = types.submodule {
        freeformType = semanticConfType;
        options = {
          sandbox = mkOption {
            type = types.either types.bool (types.enum [ "relaxed" ]);
            default = true;
          };
          allowed-users = mkOption {
            type = types.listOf types.str;
            default = [ "*" ];
          };
          trusted-users = mkOption {
            type = types.listOf types.str;
            default = [ "root" ];
          };
          experimental-features = mkOption {
            type = types.listOf types.str;
            default = [ ];
          };
        };
      };
      default = { };
    };

    # nixos/modules/services/web-servers/nginx/default.nix, nixos/modules/security/acme/default.nix
    services.nginx = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      recommendedProxySettings = mkOption {
        type = types.bool;
        default = false;
      };
      recommendedTlsSettings = mkOption {
        type = types.bool;
        default = false;
      };
      virtualHosts = mkOption {
        type = types.attrsOf vhost;
        default = { };
      };
    };
    security.acme = {
      acceptTerms = mkOption {
        type = types.bool;
        default = false;
      };
      defaults.email = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
    };
  };
}
