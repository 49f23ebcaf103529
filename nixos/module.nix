# NixOS module for the eka-ci server: `services.eka-ci`.
#
# Configuration follows the RFC-42 pattern: `settings` is freeform TOML, serialised to ekaci.toml and
# handed to the daemon with `--config-file`. The commonly used keys are typed so they are validated at
# evaluation time and show up in the option documentation; any other key is passed through unchanged.
#
# Secrets never belong in `settings` (everything there lands in the world-readable Nix store): use
# `environmentFile` (WEBHOOK_SECRET, JWT_SECRET, ...) or `credentials` (systemd LoadCredential=).
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkOption
    optional
    optionalAttrs
    types
    ;

  cfg = config.services.eka-ci;
  settingsFormat = pkgs.formats.toml { };

  # Fixed locations under this module; the XDG variables below make the server's own defaults land here.
  stateDir = "/var/lib/eka-ci"; # StateDirectory=eka-ci, also $HOME and $XDG_DATA_HOME
  runtimeDir = "/run/eka-ci"; # RuntimeDirectory=eka-ci, also $XDG_RUNTIME_DIR
  cacheDir = "/var/cache/eka-ci"; # CacheDirectory=eka-ci, also $XDG_CACHE_HOME (nix/git caches)

  # TOML has no null, and an unset optional key must simply be absent from ekaci.toml. Empty lists and
  # tables are left out too: every list and table of the server's schema defaults to empty, and the
  # server warns about some keys ("accepted, not yet acted on") as soon as the file names them.
  isEmpty = v: v == null || v == [ ] || v == { };
  prune =
    v:
    if lib.isDerivation v then
      "${v}"
    else if builtins.isAttrs v then
      lib.filterAttrs (_: x: !(isEmpty x)) (lib.mapAttrs (_: prune) v)
    else if builtins.isList v then
      map prune (builtins.filter (x: x != null) v)
    else
      v;

  configFile = settingsFormat.generate "ekaci.toml" (prune cfg.settings);

  # Shared by the `permissions` of caches and GitHub Apps.
  permissionsOption = what: {
    options = {
      allow_all = mkOption {
        type = types.bool;
        default = true;
        description = ''
          When true, ignores `allowed_repos` and `allowed_branches` and grants access to every
          repository and branch.
        '';
      };
      allowed_repos = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "myorg/*" ];
        description = ''
          Glob patterns of `owner/repo` strings that are permitted to use this ${what}. Ignored when
          `allow_all` is true.
        '';
      };
      allowed_branches = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [
          "main"
          "release/*"
        ];
        description = ''
          Glob patterns of branch names permitted to use this ${what}. Ignored when `allow_all` is true.
        '';
      };
    };
  };

  credentialsDescription = ''
    Credential source. One of:

    - `{ env = { vars = [ ... ]; }; }`
    - `{ file = { path = "/etc/..."; }; }`
    - `{ aws-profile = { profile = "..."; }; }`
    - `{ cachix-token = { env_var = "..."; }; }`
    - `{ vault = { address; secret_path; token_env ? "VAULT_TOKEN"; namespace ? null; }; }`
    - `{ aws-secrets-manager = { secret_name; region ? null; }; }`
    - `{ systemd-credential = { name = "..."; }; }`
    - `"instance-metadata"`
    - `{ github-app-key-file = { app_id_env; key_file; }; }`
    - `"none"`

    Prefer `systemd-credential` together with the top-level
    {option}`services.eka-ci.credentials` option so that secrets stay out of the Nix store.
  '';

  # A domain + token entry (Gitea and GitLab instances).
  forgeInstance = name: exampleDomain: envVar: {
    freeformType = settingsFormat.type;
    options = {
      domain = mkOption {
        type = types.str;
        example = exampleDomain;
        description = "${name} instance domain (without protocol).";
      };
      token = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = ''
          ${name} access token. Avoid setting this in Nix: values here end up in the world-readable
          Nix store. Use {option}`services.eka-ci.environmentFile` to supply `${envVar}` instead (single
          instance) or configure tokens via systemd credentials.
        '';
      };
    };
  };

  nullOrPath = types.nullOr types.path;

  settingsModule = {
    freeformType = settingsFormat.type;

    options = {
      db_path = mkOption {
        type = nullOrPath;
        default = null;
        description = ''
          Path of the redb database file. When null the server falls back to
          `$XDG_DATA_HOME/ekaci/ekaci.redb`, which under this module resolves to
          `${stateDir}/ekaci/ekaci.redb`. Mirrors, worktrees and GC roots are kept next to it.
        '';
      };

      logs_dir = mkOption {
        type = nullOrPath;
        default = null;
        description = ''
          Directory where build logs are stored. When null the server falls back to
          `$XDG_DATA_HOME/ekaci/build-logs`, i.e. `${stateDir}/ekaci/build-logs`.
        '';
      };

      require_approval = mkOption {
        type = types.bool;
        default = false;
        description = "Require maintainer approval before building PRs from external contributors.";
      };

      merge_queue_require_approval = mkOption {
        type = types.bool;
        default = false;
        description = "Require approval before building entries pulled from the GitHub merge queue.";
      };

      build_no_output_timeout_seconds = mkOption {
        type = types.ints.between 30 86400;
        default = 1200;
        description = "Number of seconds with no build output after which a build is considered hung.";
      };

      build_max_duration_seconds = mkOption {
        type = types.ints.between 60 604800;
        default = 14400;
        description = "Hard upper bound, in seconds, on total build wall-clock time.";
      };

      graph_lru_capacity = mkOption {
        type = types.ints.positive;
        default = 100000;
        description = "Capacity of the in-memory derivation-graph LRU cache, in nodes.";
      };

      default_merge_method = mkOption {
        type = types.nullOr (
          types.enum [
            "merge"
            "squash"
            "rebase"
          ]
        );
        default = null;
        description = ''
          Default merge method of the `@eka-ci merge` comment command (the server's default:
          `"squash"`). Accepted, not yet acted on.
        '';
      };

      web = mkOption {
        default = { };
        description = "HTTP server settings.";
        type = types.submodule {
          freeformType = settingsFormat.type;
          options = {
            address = mkOption {
              type = types.str;
              default = "127.0.0.1";
              description = "IPv4 address the HTTP server binds to.";
            };
            port = mkOption {
              type = types.port;
              default = 3030;
              description = "TCP port the HTTP server binds to.";
            };
            bundle_path = mkOption {
              type = nullOrPath;
              default = null;
              description = "Optional path to a pre-built web UI bundle.";
            };
            allowed_origins = mkOption {
              type = types.listOf types.str;
              default = [ ];
              example = [ "https://app.example.com" ];
              description = ''
                CORS allow-list. Each entry must be a fully-qualified `http://` or `https://` origin
                with no path, query, fragment, or `*` wildcard. An empty list rejects all cross-origin
                requests.
              '';
            };
          };
        };
      };

      unix = mkOption {
        default = { };
        description = "Unix-domain-socket settings (the control socket used by the `ekaci` CLI).";
        type = types.submodule {
          freeformType = settingsFormat.type;
          options.socket_path = mkOption {
            type = nullOrPath;
            default = null;
            description = ''
              Unix domain socket the CLI client connects to. When null the server falls back to
              `$XDG_RUNTIME_DIR/ekaci.socket`, which under this module resolves to
              `${runtimeDir}/ekaci.socket`.
            '';
          };
        };
      };

      oauth = mkOption {
        default = { };
        description = "OAuth settings for the (optional) web UI.";
        type = types.submodule {
          freeformType = settingsFormat.type;
          options = {
            client_id = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = ''
                GitHub OAuth client ID. May also be supplied via the `GITHUB_OAUTH_CLIENT_ID`
                environment variable (preferred, see {option}`services.eka-ci.environmentFile`).
              '';
            };
            client_secret = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = ''
                GitHub OAuth client secret. Avoid setting this in Nix: values here end up in the
                world-readable Nix store. Supply `GITHUB_OAUTH_CLIENT_SECRET` through
                {option}`services.eka-ci.environmentFile` instead.
              '';
            };
            redirect_url = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = ''
                OAuth callback URL. Defaults to `http://{web.address}:{web.port}/github/auth/callback`
                when unset.
              '';
            };
            jwt_secret = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = ''
                JWT signing secret. Avoid setting this in Nix; provide `JWT_SECRET` through
                {option}`services.eka-ci.environmentFile`. When omitted entirely the server generates
                an ephemeral secret on each start (sessions are invalidated by restarts).
              '';
            };
          };
        };
      };

      security = mkOption {
        default = { };
        description = "Security-related settings.";
        type = types.submodule {
          freeformType = settingsFormat.type;
          options = {
            max_hook_timeout_seconds = mkOption {
              type = types.nullOr (types.ints.between 1 86400);
              default = null;
              description = ''
                Maximum wall-clock time, in seconds, that any post-build hook may run (the server's
                default: 300). Accepted, not yet acted on.
              '';
            };
            audit_hooks = mkOption {
              type = types.nullOr types.bool;
              default = null;
              description = ''
                Emit structured audit log records every time a hook runs (the server's default: true).
                Accepted, not yet acted on.
              '';
            };
            webhook_secret = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = ''
                Webhook HMAC secret used for all forges (GitHub, GitLab, Gitea). Avoid setting this in
                Nix; provide `WEBHOOK_SECRET` through {option}`services.eka-ci.environmentFile`.

                The server refuses to start without a webhook secret unless `allow_insecure_webhooks`
                is true.
              '';
            };
            allow_insecure_webhooks = mkOption {
              type = types.bool;
              default = false;
              description = ''
                Allow the server to start without a webhook secret. For local development only; never
                enable this in production.
              '';
            };
            allow_unsandboxed_builds = mkOption {
              type = types.bool;
              default = false;
              description = ''
                Start with a GitHub App configured although Nix's `sandbox` setting is not `true`, so
                that a pull request's builders run on the host. For tests and local demos only; on
                NixOS keep `nix.settings.sandbox = true` (the default).
              '';
            };
            allow_private_cache_hosts = mkOption {
              type = types.nullOr types.bool;
              default = null;
              description = ''
                Allow cache destinations whose DNS resolves to private/loopback addresses. This disables
                the built-in SSRF protection; only enable it in trusted, isolated networks.
              '';
            };
          };
        };
      };

      caches = mkOption {
        default = [ ];
        description = "Binary caches the server may push to.";
        type = types.listOf (
          types.submodule {
            freeformType = settingsFormat.type;
            options = {
              id = mkOption {
                type = types.str;
                example = "production-s3";
                description = "Cache identifier referenced from a repository's `.eka-ci/config.json`.";
              };
              cache_type = mkOption {
                type = types.enum [
                  "nix-copy"
                  "cachix"
                  "attic"
                ];
                example = "nix-copy";
                description = "Backend type for this cache.";
              };
              destination = mkOption {
                type = types.str;
                example = "s3://my-bucket/nix-cache?region=us-east-1";
                description = ''
                  Destination URL passed to the chosen backend. Validated against SSRF unless
                  `settings.security.allow_private_cache_hosts` is set.
                '';
              };
              credentials = mkOption {
                type = settingsFormat.type;
                example = literalExpression ''
                  {
                    env.vars = [ "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" ];
                  }
                '';
                description = credentialsDescription;
              };
              permissions = mkOption {
                type = types.submodule (permissionsOption "cache");
                default = { };
                description = "Repository/branch access control for this cache.";
              };
            };
          }
        );
      };

      github_apps = mkOption {
        default = [ ];
        description = "GitHub Apps the server authenticates as.";
        type = types.listOf (
          types.submodule {
            freeformType = settingsFormat.type;
            options = {
              id = mkOption {
                type = types.str;
                example = "main";
                description = "GitHub App identifier referenced from per-app permission lookups.";
              };
              credentials = mkOption {
                type = settingsFormat.type;
                example = literalExpression ''
                  {
                    file.path = "/etc/eka-ci/github-app.json";
                  }
                '';
                description = ''
                  Credential source. Same shape as
                  {option}`services.eka-ci.settings.caches.*.credentials`.
                '';
              };
              permissions = mkOption {
                type = types.submodule (permissionsOption "GitHub App");
                default = { };
                description = "Repository/branch access control for this GitHub App.";
              };
            };
          }
        );
      };

      remote_builders = mkOption {
        default = [ ];
        description = ''
          Remote build machines (`[[remote_builders]]`). Every {option}`nix.buildMachines` entry is added
          here too, unless {option}`services.eka-ci.useNixBuildMachines` is false.
        '';
        type = types.listOf (
          types.submodule {
            freeformType = settingsFormat.type;
            options = {
              uri = mkOption {
                type = types.str;
                example = "ssh-ng://builder@10.0.0.5";
                description = "Store URI of the machine.";
              };
              systems = mkOption {
                type = types.nonEmptyListOf types.str;
                example = [ "x86_64-linux" ];
                description = "Systems it builds for.";
              };
              max_jobs = mkOption {
                type = types.ints.positive;
                default = 1;
                description = "Builds it runs at once.";
              };
              speed_factor = mkOption {
                type = types.ints.positive;
                default = 1;
                description = "Preference among builders; higher is preferred.";
              };
              supported_features = mkOption {
                type = types.listOf types.str;
                default = [ ];
                description = "System features it supports.";
              };
              mandatory_features = mkOption {
                type = types.listOf types.str;
                default = [ ];
                description = "Features a derivation must require to be built there.";
              };
              ssh_key = mkOption {
                type = types.nullOr types.str;
                default = null;
                description = "SSH private key used to reach it (readable by the service user).";
              };
            };
          }
        );
      };

      gitea_instances = mkOption {
        default = [ ];
        description = ''
          Gitea instances the server integrates with (gitea.com or self-hosted). Each needs a domain and
          an access token.
        '';
        type = types.listOf (types.submodule (forgeInstance "Gitea" "gitea.example.com" "GITEA_TOKEN"));
      };

      gitlab_instances = mkOption {
        default = [ ];
        description = ''
          GitLab instances the server integrates with (gitlab.com or self-hosted). Each needs a domain
          and a project access token (`glpat-...`).
        '';
        type = types.listOf (types.submodule (forgeInstance "GitLab" "gitlab.com" "GITLAB_TOKEN"));
      };
    };
  };

  # Paths the server writes that the sandbox does not already make writable (ProtectSystem=strict only
  # leaves StateDirectory/RuntimeDirectory/CacheDirectory writable). "-" = ignore if missing.
  underManagedDir = p: lib.any (d: lib.hasPrefix "${d}/" "${toString p}/") [
    stateDir
    runtimeDir
    cacheDir
  ];
  extraWritablePaths = map (p: "-${toString p}") (
    builtins.filter (p: !(underManagedDir p)) (
      optional (cfg.settings.db_path != null) (builtins.dirOf (toString cfg.settings.db_path))
      ++ optional (cfg.settings.logs_dir != null) cfg.settings.logs_dir
      ++ optional (cfg.settings.unix.socket_path != null) (
        builtins.dirOf (toString cfg.settings.unix.socket_path)
      )
    )
  );

  serviceUser = if cfg.dynamicUser then "eka-ci" else cfg.user;
  serviceGroup = if cfg.dynamicUser then "eka-ci" else cfg.group;

  nixAllows =
    users:
    lib.any (u: u == "*" || u == serviceUser || u == "@${serviceGroup}") (users);
  nixSettings = config.nix.settings or { };
  userMayUseNix = nixAllows (
    (nixSettings.allowed-users or [ "*" ]) ++ (nixSettings.trusted-users or [ ])
  );

  # systemd's directory of this unit's credentials ($CREDENTIALS_DIRECTORY).
  credentialsDir = "/run/credentials/eka-ci.service";

  # nix.buildMachines, as NixOS writes them to /etc/nix/machines, turned into [[remote_builders]]. An SSH
  # key is handed over with LoadCredential=, so a key only root can read (the usual /root/.ssh/...) is
  # still usable by the service user, and ProtectHome= does not hide it.
  nixMachines = lib.imap0 (i: m: m // { keyCredential = "nix-build-machine-${toString i}"; }) (
    if cfg.useNixBuildMachines then config.nix.buildMachines else [ ]
  );
  machineUri =
    m:
    "${if m.protocol == null then "ssh" else m.protocol}://"
    + lib.optionalString (m.sshUser != null) "${m.sshUser}@"
    + m.hostName;
  machineSystems =
    m:
    let
      listed = optional (m.system != null) m.system ++ m.systems;
    in
    if listed == [ ] then [ pkgs.stdenv.hostPlatform.system ] else listed;
  machineBuilder = m: {
    uri = machineUri m;
    systems = machineSystems m;
    max_jobs = m.maxJobs;
    speed_factor = m.speedFactor;
    supported_features = m.supportedFeatures;
    mandatory_features = m.mandatoryFeatures;
    ssh_key = if m.sshKey == null then null else "${credentialsDir}/${m.keyCredential}";
  };
  machineCredentials = lib.listToAttrs (
    map (m: lib.nameValuePair m.keyCredential m.sshKey) (builtins.filter (m: m.sshKey != null) nixMachines)
  );
  allCredentials = cfg.credentials // machineCredentials;

  # The systemd credentials ekaci.toml names (`systemd-credential.name`, or `systemd.credential_id`).
  credentialName =
    c:
    if !builtins.isAttrs c then
      null
    else if c ? systemd-credential then
      c.systemd-credential.name or null
    else if c ? systemd then
      c.systemd.credential_id or null
    else
      null;
  namedCredentials = builtins.filter (x: x.name != null) (
    map (a: {
      where = "settings.github_apps (id \"${a.id}\")";
      name = credentialName a.credentials;
    }) cfg.settings.github_apps
    ++ map (c: {
      where = "settings.caches (id \"${c.id}\")";
      name = credentialName c.credentials;
    }) cfg.settings.caches
  );
  validCredentialName = n: builtins.match "[A-Za-z0-9_.@-]+" n != null && n != "." && n != "..";
  inStore = p: lib.hasPrefix "${builtins.storeDir}/" (toString p);
  sandboxed = (config.nix.settings.sandbox or true) == true;
  outsideStateDirs = builtins.filter (p: !(underManagedDir p)) (
    optional (cfg.settings.db_path != null) cfg.settings.db_path
    ++ optional (cfg.settings.logs_dir != null) cfg.settings.logs_dir
    ++ optional (cfg.settings.unix.socket_path != null) cfg.settings.unix.socket_path
  );

  webhookSecretMayBeSet =
    cfg.settings.security.allow_insecure_webhooks
    || cfg.settings.security.webhook_secret != null
    || cfg.environmentFile != null;
in
{
  options.services.eka-ci = {
    enable = mkEnableOption "EkaCI, a Nix-aware Continuous Integration server";

    package = mkOption {
      type = types.package;
      default = pkgs.eka-ci;
      defaultText = literalExpression "pkgs.eka-ci";
      description = ''
        The eka-ci package to use. It provides both the `eka-ci-server` daemon and the `ekaci` admin
        CLI (the latter is added to {option}`environment.systemPackages`). The flake's
        `nixosModules.daemon` sets this to the flake's own package.
      '';
    };

    user = mkOption {
      type = types.str;
      default = "eka-ci";
      description = ''
        User the service runs as when `dynamicUser` is false (created if left at the default).
        Ignored when `dynamicUser = true`.
      '';
    };

    group = mkOption {
      type = types.str;
      default = "eka-ci";
      description = ''
        Group the service runs as when `dynamicUser` is false (created if left at the default).
        Ignored when `dynamicUser = true`.
      '';
    };

    dynamicUser = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Use systemd's `DynamicUser=` to run the service under an ephemeral user/group. Recommended
        unless you need a stable UID for filesystem permissions on shared storage.
      '';
    };

    sandboxedChecks = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Let the unit run repositories' checks (`checks` in `.eka-ci/config.json`, docs/checks.md) in
        bubblewrap. The unit's hardening otherwise forbids what bubblewrap needs, so every check ends
        with "the sandbox could not run". Enabling it sets `settings.checks.bwrap_path` to nixpkgs'
        bubblewrap, allows the namespaces bubblewrap creates (`RestrictNamespaces`), allows the
        `@mount` system calls, `pivot_root`, `capset`, `sethostname` and the resource limits the server
        sets before starting a check (`SystemCallFilter`), and delegates the `memory` and `pids` cgroup
        controllers to the unit (`Delegate=`, `ProtectControlGroups = false`) so each check gets its own
        cgroup. Unprivileged user namespaces must be allowed (`security.allowUserNamespaces`, NixOS'
        default). These unit settings are checked by evaluating the module; they have not been run on a
        NixOS host by eka-ci's tests.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `settings.web.port` in the system firewall.";
    };

    environmentFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/eka-ci.env";
      description = ''
        File passed to systemd as `EnvironmentFile=`, read at service start and never copied into the
        Nix store (give it as a string, not a Nix path literal). Use it for secrets such as
        `WEBHOOK_SECRET`, `GITHUB_OAUTH_CLIENT_SECRET`, `JWT_SECRET`, `VAULT_TOKEN`, `GITEA_TOKEN`,
        `GITLAB_TOKEN`, AWS keys and any variable named by `settings.caches.*.credentials.env.vars`.
      '';
    };

    credentials = mkOption {
      type = types.attrsOf types.path;
      default = { };
      example = {
        github-app-key = "/run/secrets/github-app.json";
        s3-creds = "/run/secrets/s3.json";
      };
      description = ''
        Map of credential name to file path, wired through systemd's `LoadCredential=`. Each entry is
        available inside the unit at `$CREDENTIALS_DIRECTORY/<name>` and can be referenced from
        ekaci.toml with the `systemd-credential` credential source, e.g.
        `settings.github_apps = [ { id = "main"; credentials.systemd-credential.name = "github-app-key"; } ];`
      '';
    };

    useNixBuildMachines = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Add every {option}`nix.buildMachines` entry to eka-ci's remote builders
        (`settings.remote_builders`). eka-ci schedules remote builds itself and never lets Nix offload
        behind its back, so the machines Nix knows are only used when they are listed here. SSH keys
        (`sshKey`) are handed to the service with `LoadCredential=`.
      '';
    };

    extraEnvironment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        RUST_LOG = "eka_ci=debug,info";
      };
      description = "Additional `Environment=` entries passed to the systemd unit.";
    };

    settings = mkOption {
      type = types.submodule settingsModule;
      default = { };
      description = ''
        Configuration for EkaCI, serialised to ekaci.toml and passed to the server with
        `--config-file`. The submodule is freeform: any key not modelled here is still accepted and
        forwarded as-is. Everything here is world-readable in the Nix store: keep secrets out.
      '';
    };
  };

  config = mkIf cfg.enable {
    services.eka-ci.settings = lib.mkMerge [
      {
        # Entries eka-ci cannot use are left out here and reported by the assertion below (rather than
        # as a type error of an option the user never wrote).
        remote_builders = map machineBuilder (
          builtins.filter (m: m.maxJobs >= 1 && m.speedFactor >= 1) nixMachines
        );
      }
      (mkIf cfg.sandboxedChecks {
        checks.bwrap_path = lib.mkDefault "${pkgs.bubblewrap}/bin/bwrap";
      })
    ];

    assertions = [
      {
        assertion = cfg.settings.github_apps == [ ] || sandboxed || cfg.settings.security.allow_unsandboxed_builds;
        message = ''
          services.eka-ci: settings.github_apps is set but nix.settings.sandbox is not true, so a pull
          request's builders would run on the host; eka-ci-server refuses to start. Keep
          nix.settings.sandbox = true.
        '';
      }
      {
        assertion = !(cfg.environmentFile != null && inStore cfg.environmentFile);
        message = ''
          services.eka-ci: environmentFile is in the Nix store, where every user can read it. Give the
          path of a file outside the store as a string.
        '';
      }
      {
        assertion = !cfg.dynamicUser || outsideStateDirs == [ ];
        message = ''
          services.eka-ci: ${lib.concatMapStringsSep ", " toString outsideStateDirs} lie outside
          ${stateDir}, ${runtimeDir} and ${cacheDir}; a dynamic user cannot own them. Set
          services.eka-ci.dynamicUser = false and give the user those directories.
        '';
      }
      {
        assertion = cfg.dynamicUser || config.users.users ? ${cfg.user};
        message = ''
          services.eka-ci: the user "${cfg.user}" is not declared in users.users (only the default
          "eka-ci" is created by the module).
        '';
      }
      {
        assertion = cfg.dynamicUser || config.users.groups ? ${cfg.group};
        message = ''
          services.eka-ci: the group "${cfg.group}" is not declared in users.groups (only the default
          "eka-ci" is created by the module).
        '';
      }
    ]
    ++ lib.mapAttrsToList (name: path: {
      assertion = validCredentialName name;
      message = ''
        services.eka-ci: credential name "${name}" is not a valid systemd credential name (letters,
        digits, "_", ".", "@" and "-" only).
      '';
    }) cfg.credentials
    ++ lib.mapAttrsToList (name: path: {
      assertion = !(inStore path);
      message = ''
        services.eka-ci: credentials.${name} is in the Nix store, where every user can read it. Give the
        path of a file outside the store as a string.
      '';
    }) cfg.credentials
    ++ map (x: {
      assertion = allCredentials ? ${x.name};
      message = ''
        services.eka-ci: ${x.where} reads the systemd credential "${x.name}", which is not in
        services.eka-ci.credentials; the server would not find it in $CREDENTIALS_DIRECTORY.
      '';
    }) namedCredentials
    ++ map (m: {
      assertion = m.maxJobs >= 1 && m.speedFactor >= 1;
      message = ''
        services.eka-ci: nix.buildMachines entry ${m.hostName} has maxJobs = ${toString m.maxJobs} and
        speedFactor = ${toString m.speedFactor}; eka-ci needs both at least 1 (or set
        services.eka-ci.useNixBuildMachines = false).
      '';
    }) nixMachines;

    warnings =
      optional (!webhookSecretMayBeSet) ''
        services.eka-ci: no webhook secret is configured (neither environmentFile nor
        settings.security.webhook_secret is set, and settings.security.allow_insecure_webhooks is
        false). eka-ci-server refuses to start without one: put WEBHOOK_SECRET=... into
        services.eka-ci.environmentFile.
      ''
      ++ optional
        (
          cfg.settings.security.webhook_secret != null
          || cfg.settings.oauth.client_secret != null
          || cfg.settings.oauth.jwt_secret != null
        )
        ''
          services.eka-ci: a secret is set in services.eka-ci.settings (security.webhook_secret,
          oauth.client_secret or oauth.jwt_secret); it will be world-readable in the Nix store. Use
          services.eka-ci.environmentFile instead.
        ''
      ++ optional (!(config.nix.enable or true)) ''
        services.eka-ci: nix.enable is false, so there is no nix-daemon; eka-ci evaluates and builds
        through the nix-daemon and will not work.
      ''
      ++ optional (!userMayUseNix) ''
        services.eka-ci: the service user "${serviceUser}" is not in nix.settings.allowed-users (or
        trusted-users); the nix-daemon will refuse its connections. Add "${serviceUser}" (or
        "@${serviceGroup}") to nix.settings.allowed-users.
      ''
      ++ map (m: ''
        services.eka-ci: the publicHostKey of nix.buildMachines entry ${m.hostName} is not passed to
        eka-ci; add the host key to programs.ssh.knownHosts so that the service's ssh accepts it.
      '') (builtins.filter (m: m.publicHostKey != null) nixMachines)
      ++ optional (cfg.openFirewall && lib.elem cfg.settings.web.address [ "127.0.0.1" "::1" ]) ''
        services.eka-ci: openFirewall is set but settings.web.address is ${cfg.settings.web.address}, a
        loopback address: the opened port reaches nothing.
      '';

    environment.systemPackages = [ cfg.package ];

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ cfg.settings.web.port ];

    users.users = mkIf (!cfg.dynamicUser && cfg.user == "eka-ci") {
      eka-ci = {
        isSystemUser = true;
        group = cfg.group;
        home = stateDir;
        description = "eka-ci server";
      };
    };
    users.groups = mkIf (!cfg.dynamicUser && cfg.group == "eka-ci") { eka-ci = { }; };

    systemd.services.eka-ci = {
      description = "EkaCI continuous-integration server";
      wantedBy = [ "multi-user.target" ];
      wants = [
        "network-online.target"
        "nix-daemon.socket"
      ];
      after = [
        "network-online.target"
        "nix-daemon.socket"
      ];

      # The server shells out to nix (evaluation, builds, store queries, GC roots) and git (mirrors,
      # worktrees). Add more tools with `systemd.services.eka-ci.path`.
      path = [
        config.nix.package
        pkgs.git
      ];

      environment = {
        HOME = stateDir;
        XDG_DATA_HOME = stateDir; # database, build logs, mirrors: ${stateDir}/ekaci/
        XDG_RUNTIME_DIR = runtimeDir; # control socket: ${runtimeDir}/ekaci.socket
        XDG_CONFIG_HOME = "${stateDir}/.config"; # unused by the server (--config-file is explicit)
        XDG_CACHE_HOME = cacheDir; # nix fetcher/eval caches
        # Always go through the nix-daemon: the store is owned by root and written by the daemon only.
        NIX_REMOTE = "daemon";
      }
      // cfg.extraEnvironment;

      serviceConfig =
        {
          Type = "simple";
          ExecStart = "${cfg.package}/bin/eka-ci-server --config-file ${configFile}";
          Restart = "on-failure";
          RestartSec = 5;

          DynamicUser = cfg.dynamicUser;
          StateDirectory = "eka-ci";
          StateDirectoryMode = "0750";
          RuntimeDirectory = "eka-ci";
          RuntimeDirectoryMode = "0750";
          CacheDirectory = "eka-ci";
          CacheDirectoryMode = "0750";
          WorkingDirectory = stateDir;
          User = serviceUser;
          Group = serviceGroup;
          LoadCredential = lib.mapAttrsToList (name: path: "${name}:${toString path}") allCredentials;

          # Hardening. The Nix store stays read-only for us: every store write (builds, GC roots,
          # substitution) is done by the nix-daemon, reached over its unix socket.
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          NoNewPrivileges = true;
          ProtectKernelModules = true;
          ProtectKernelTunables = true;
          ProtectKernelLogs = true;
          # Without sandboxed checks the cgroup tree stays read-only; with them the unit owns a delegated
          # subtree (below) where each check gets a cgroup of its own.
          ProtectControlGroups = !cfg.sandboxedChecks;
          ProtectClock = true;
          ProtectHostname = true;
          # A flake job's lock file is checked by `nix flake metadata` in a network namespace of its
          # own, which an unprivileged process creates together with a user namespace.
          # bubblewrap (sandboxedChecks) creates every kind of namespace but the time namespace.
          RestrictNamespaces = if cfg.sandboxedChecks then "user mnt pid ipc uts cgroup net" else "user net";
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          RestrictAddressFamilies = [
            "AF_UNIX"
            "AF_INET"
            "AF_INET6"
          ];
          LockPersonality = true;
          MemoryDenyWriteExecute = true;
          SystemCallArchitectures = "native";
          SystemCallFilter =
            if cfg.sandboxedChecks then
              # bubblewrap mounts its root, pivots into it, drops capabilities and names its UTS
              # namespace; the server limits a check's resources before starting it.
              [
                "@system-service"
                "@mount"
                "pivot_root"
                "capset"
                "sethostname"
              ]
            else
              [
                "@system-service"
                "~@privileged"
                "~@resources"
              ];
          # Refuse filtered syscalls with EPERM instead of killing the process: the nix and git
          # children may probe e.g. setrlimit/sched_setaffinity and cope with a failure.
          SystemCallErrorNumber = "EPERM";
          CapabilityBoundingSet = "";
          AmbientCapabilities = "";
          UMask = "0077";
        }
        // optionalAttrs cfg.sandboxedChecks {
          Delegate = "memory pids";
        }
        // optionalAttrs (cfg.environmentFile != null) {
          EnvironmentFile = toString cfg.environmentFile;
        }
        // optionalAttrs (extraWritablePaths != [ ]) {
          ReadWritePaths = extraWritablePaths;
        };
    };
  };
}
