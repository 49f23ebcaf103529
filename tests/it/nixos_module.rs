//! The NixOS module (`nixos/module.nix`), evaluated with today's module system: nixpkgs' real `lib`
//! (`tests/nixos/vendor/nixpkgs-lib-2026-06.tar.xz`, or the tarball `EKACI_NIXPKGS_LIB` names) runs
//! `lib.evalModules` over the module, the NixOS option declarations of `tests/nixos/nixos-options.nix`
//! and the placeholder packages of `tests/nixos/pkgs.nix` (`tests/nixos/eval.nix`), with real
//! `nix-instantiate`. The tests assert on the systemd unit, hand the generated `ekaci.toml` to the built
//! `eka-ci-server --check-config` with the unit's environment, its `EnvironmentFile=` and its
//! credentials, check that `nix.buildMachines` reach the server's builder list, that every assertion of
//! the module fires on what it guards against, and that the configuration docs/nixos.md shows evaluates
//! and starts. No NixOS system is built and no VM booted (docs/nixos.md, "What is verified").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common;
use crate::fake_github::PRIVATE_KEY_PKCS1;

const LIB_TARBALL: &str = "nixpkgs-lib-2026-06.tar.xz";

/// The nixpkgs `lib` tarball: `$EKACI_NIXPKGS_LIB`, else the copy vendored in `tests/nixos/vendor/`.
/// Missing, the test fails: the module is only verified against the real `lib`.
fn lib_tarball() -> PathBuf {
    let path = match std::env::var_os("EKACI_NIXPKGS_LIB") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nixos/vendor").join(LIB_TARBALL),
    };
    assert!(
        path.is_file(),
        "nixpkgs' lib tarball {} is missing: the NixOS module is evaluated with the real nixpkgs lib. \
         Restore tests/nixos/vendor/{LIB_TARBALL}, or set EKACI_NIXPKGS_LIB to its path",
        path.display()
    );
    path
}

/// One evaluation's directory: nixpkgs' `lib` unpacked, and the configuration files.
struct Eval {
    dir: tempfile::TempDir,
}

impl Eval {
    fn new() -> Eval {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("tar")
            .arg("-xJf")
            .arg(lib_tarball())
            .arg("-C")
            .arg(dir.path())
            .output()
            .expect("run tar");
        assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
        assert!(dir.path().join("lib/default.nix").is_file(), "the tarball has no lib/default.nix");
        Eval { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Evaluates `tests/nixos/eval.nix` with `configuration` (a NixOS module's text).
    fn eval(&self, configuration: &str) -> Value {
        let file = self.path().join("configuration.nix");
        std::fs::write(&file, configuration).expect("write configuration");
        let eval_nix = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nixos/eval.nix");
        // Read-write mode: `pkgs.formats.toml`'s `generate` writes its file to the store while evaluating.
        let out = Command::new("nix-instantiate")
            .args(["--read-write-mode", "--eval", "--strict", "--json"])
            .arg(&eval_nix)
            .arg("--arg")
            .arg("lib")
            .arg(self.path().join("lib"))
            .arg("--arg")
            .arg("configuration")
            .arg(&file)
            .env("NIX_CONFIG", "substituters =")
            .output()
            .expect("run nix-instantiate");
        assert!(
            out.status.success(),
            "evaluating the module failed:\n{}\nconfiguration:\n{configuration}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON from nix-instantiate")
    }
}

/// A configuration for the GitHub App deployment most tests start from.
const GITHUB_APP: &str = r#"{
  services.eka-ci = {
    enable = true;
    environmentFile = "/run/secrets/eka-ci.env";
    credentials.github-app = "/run/secrets/github-app";
    settings = {
      graph_lru_capacity = 200000;
      github_apps = [ { id = "main"; credentials.systemd-credential.name = "github-app"; } ];
      web.webhook_address = "127.0.0.1:3031";
    };
  };
}"#;

fn service(v: &Value) -> &Value {
    assert!(v["service"].is_object(), "no eka-ci service: {v:#}");
    &v["service"]
}

/// The unit's `ExecStart`, split: the program and its arguments.
fn exec_start(v: &Value) -> Vec<String> {
    let line = service(v)["serviceConfig"]["ExecStart"].as_str().expect("ExecStart is a string");
    line.split_whitespace().map(String::from).collect()
}

/// The generated `ekaci.toml`: the JSON `pkgs.formats.toml` was given (tests/nixos/pkgs.nix), converted
/// to TOML as nixpkgs' json2toml does.
fn generated_toml(v: &Value) -> String {
    let args = exec_start(v);
    let at = args.iter().position(|a| a == "--config-file").expect("--config-file in ExecStart");
    let path = &args[at + 1];
    assert!(path.starts_with("/nix/store/") && path.ends_with("-ekaci.toml.json"), "{path}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read generated file"))
        .expect("generated JSON");
    let value: toml::Value = serde_json::from_value(json).expect("TOML has a value for every JSON value");
    toml::to_string(&value).expect("render TOML")
}

/// Runs `eka-ci-server` as the unit would for `--check-config`: the generated configuration, the unit's
/// `Environment=`, the variables of `env_file` (its `EnvironmentFile=`) and `$CREDENTIALS_DIRECTORY`
/// holding `credentials` (name, content), as systemd provides them with `LoadCredential=`.
fn check_config(
    v: &Value,
    dir: &Path,
    env_file: Option<&str>,
    credentials: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let config = dir.join("ekaci.toml");
    std::fs::write(&config, generated_toml(v)).expect("write ekaci.toml");
    let args = exec_start(v);
    assert!(args[0].ends_with("/bin/eka-ci-server"), "{args:?}");
    let mut cmd = Command::new(common::SERVER);
    for a in &args[1..] {
        if a.ends_with("-ekaci.toml.json") {
            cmd.arg(&config);
        } else {
            cmd.arg(a);
        }
    }
    cmd.arg("--check-config").env_clear();
    let env = service(v)["environment"].as_object().expect("environment");
    for (k, val) in env {
        cmd.env(k, val.as_str().expect("environment values are strings"));
    }
    if let Some(text) = env_file {
        for line in text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
            let (k, val) = line.split_once('=').expect("KEY=value");
            cmd.env(k, val);
        }
    }
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds).expect("mkdir credentials");
    for (name, content) in credentials {
        std::fs::write(creds.join(name), content).expect("write credential");
    }
    cmd.env("CREDENTIALS_DIRECTORY", &creds);
    let out = cmd.output().expect("run eka-ci-server");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn app_credential() -> String {
    format!("GITHUB_APP_ID={}\nGITHUB_APP_PRIVATE_KEY={PRIVATE_KEY_PKCS1}", crate::fake_github::APP_ID)
}

#[test]
fn the_unit_runs_the_package_hardened_with_its_secrets_outside_the_store() {
    let e = Eval::new();
    let v = e.eval(GITHUB_APP);
    assert_eq!(v["failedAssertions"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["warnings"], serde_json::json!([]), "{v:#}");
    let s = service(&v);
    let package = v["packages"]["eka-ci"].as_str().expect("package");
    let args = exec_start(&v);
    assert_eq!(args.len(), 3, "{args:?}");
    assert_eq!(args[0], format!("{package}/bin/eka-ci-server"));
    assert_eq!(args[1], "--config-file");
    assert_eq!(s["wantedBy"], serde_json::json!(["multi-user.target"]));
    assert!(s["after"].as_array().expect("after").iter().any(|a| a == "nix-daemon.socket"), "{s:#}");
    assert!(s["path"].as_array().expect("path").iter().any(|p| p == &v["packages"]["git"]), "{s:#}");
    assert_eq!(v["systemPackages"], serde_json::json!([package]));

    let c = &s["serviceConfig"];
    let expect = serde_json::json!({
        "User": "eka-ci",
        "Group": "eka-ci",
        "DynamicUser": true,
        "StateDirectory": "eka-ci",
        "RuntimeDirectory": "eka-ci",
        "CacheDirectory": "eka-ci",
        "WorkingDirectory": "/var/lib/eka-ci",
        "NoNewPrivileges": true,
        "ProtectSystem": "strict",
        "ProtectHome": true,
        "PrivateTmp": true,
        "PrivateDevices": true,
        "ProtectKernelModules": true,
        "ProtectKernelTunables": true,
        "ProtectKernelLogs": true,
        "ProtectControlGroups": true,
        "RestrictNamespaces": "user net",
        "RestrictSUIDSGID": true,
        "RestrictAddressFamilies": ["AF_UNIX", "AF_INET", "AF_INET6"],
        "SystemCallFilter": ["@system-service", "~@privileged", "~@resources"],
        "SystemCallArchitectures": "native",
        "SystemCallErrorNumber": "EPERM",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "LockPersonality": true,
        "MemoryDenyWriteExecute": true,
        "UMask": "0077",
        "LoadCredential": ["github-app:/run/secrets/github-app"],
        "EnvironmentFile": "/run/secrets/eka-ci.env",
    });
    for (k, want) in expect.as_object().expect("object") {
        assert_eq!(&c[k], want, "serviceConfig.{k}: {c:#}");
    }
    assert!(c.get("ReadWritePaths").is_none(), "nothing outside the unit's directories: {c:#}");
    let env = &s["environment"];
    assert_eq!(env["XDG_DATA_HOME"], "/var/lib/eka-ci");
    assert_eq!(env["XDG_RUNTIME_DIR"], "/run/eka-ci");
    assert_eq!(env["NIX_REMOTE"], "daemon");

    // Secrets stay out of the generated file: it names the credential, never holds a secret.
    let toml = generated_toml(&v);
    assert!(toml.contains("name = \"github-app\""), "{toml}");
    assert!(!toml.contains("secret"), "{toml}");

    // A fixed user: declared by the module, and the unit runs as it.
    let v = e.eval(
        r#"{ services.eka-ci = { enable = true; dynamicUser = false; environmentFile = "/run/secrets/env"; }; }"#,
    );
    assert_eq!(v["failedAssertions"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["users"]["eka-ci"]["isSystemUser"], true, "{v:#}");
    assert_eq!(v["users"]["eka-ci"]["group"], "eka-ci", "{v:#}");
    assert_eq!(v["groups"], serde_json::json!(["eka-ci"]));
    let c = &service(&v)["serviceConfig"];
    assert_eq!(
        (&c["User"], &c["Group"], &c["DynamicUser"]),
        (&"eka-ci".into(), &"eka-ci".into(), &false.into())
    );
    assert!(c.get("LoadCredential").is_none_or(|l| l == &serde_json::json!([])), "{c:#}");

    // Disabled: nothing at all.
    let v = e.eval("{ services.eka-ci.enable = false; }");
    assert_eq!(v["service"], Value::Null);
    assert_eq!(v["systemPackages"], serde_json::json!([]));
}

/// `sandboxedChecks`: the unit lets bubblewrap run (namespaces, mount system calls, resource limits, a
/// delegated cgroup subtree) and the server finds nixpkgs' bubblewrap; without it the hardening stays.
#[test]
fn sandboxed_checks_relax_only_what_bubblewrap_needs() {
    let e = Eval::new();
    let v = e.eval(r#"{ services.eka-ci = { enable = true; sandboxedChecks = true; }; }"#);
    assert_eq!(v["failedAssertions"], serde_json::json!([]), "{v:#}");
    let c = &service(&v)["serviceConfig"];
    let expect = serde_json::json!({
        "RestrictNamespaces": "user mnt pid ipc uts cgroup net",
        "SystemCallFilter": ["@system-service", "@mount", "pivot_root", "capset", "sethostname"],
        "ProtectControlGroups": false,
        "Delegate": "memory pids",
        "NoNewPrivileges": true,
        "CapabilityBoundingSet": "",
        "ProtectSystem": "strict",
    });
    for (k, want) in expect.as_object().expect("object") {
        assert_eq!(&c[k], want, "serviceConfig.{k}: {c:#}");
    }
    let toml = generated_toml(&v);
    let bwrap = format!("{}/bin/bwrap", v["packages"]["bubblewrap"].as_str().expect("bubblewrap"));
    assert!(toml.contains(&format!("bwrap_path = \"{bwrap}\"")), "{toml}");

    // A user's own bwrap_path wins; off, the checks table is not generated and the hardening stays.
    let v = e.eval(
        r#"{ services.eka-ci = { enable = true; sandboxedChecks = true; settings.checks.bwrap_path = "/run/wrappers/bin/bwrap"; }; }"#,
    );
    assert!(generated_toml(&v).contains("bwrap_path = \"/run/wrappers/bin/bwrap\""), "{v:#}");
    let v = e.eval("{ services.eka-ci.enable = true; }");
    let c = &service(&v)["serviceConfig"];
    assert_eq!(c["RestrictNamespaces"], "user net");
    assert_eq!(c["ProtectControlGroups"], true);
    assert!(c.get("Delegate").is_none(), "{c:#}");
    assert!(!generated_toml(&v).contains("bwrap_path"), "{v:#}");
}

#[test]
fn the_generated_configuration_passes_check_config_with_the_units_secrets() {
    let e = Eval::new();
    let v = e.eval(GITHUB_APP);
    let secret = "WEBHOOK_SECRET=0123456789abcdef0123456789abcdef\n";
    let (code, out, err) = check_config(&v, e.path(), Some(secret), &[("github-app", &app_credential())]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}\nekaci.toml:\n{}", generated_toml(&v));
    // The server's own defaults land in the unit's directories.
    assert!(out.contains("db_path = /var/lib/eka-ci/ekaci/ekaci.redb\n"), "{out}");
    assert!(out.contains("logs_dir = /var/lib/eka-ci/ekaci/build-logs\n"), "{out}");
    assert!(out.contains("socket_path = /run/eka-ci/ekaci.socket\n"), "{out}");
    assert!(out.contains("http = 127.0.0.1:3030\n"), "{out}");
    // Only what was configured is written: no key the server warns about, no unknown key.
    assert!(!err.contains("warning"), "{err}\nekaci.toml:\n{}", generated_toml(&v));

    // The webhook secret comes from the EnvironmentFile: without it the server refuses to start.
    let (code, _, err) = check_config(&v, e.path(), None, &[("github-app", &app_credential())]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("webhook secret"), "{err}");
    // The App's key comes from the credential: without it, neither.
    let creds = e.path().join("credentials/github-app");
    std::fs::remove_file(&creds).expect("remove credential");
    let (code, _, err) = check_config(&v, e.path(), Some(secret), &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("github-app"), "{err}");
}

#[test]
fn nix_build_machines_reach_the_builder_list() {
    let e = Eval::new();
    let machines = r#"
      nix.buildMachines = [
        {
          hostName = "10.0.0.5";
          protocol = "ssh-ng";
          sshUser = "builder";
          sshKey = "/root/.ssh/id_builder";
          systems = [ "x86_64-linux" "i686-linux" ];
          maxJobs = 4;
          speedFactor = 2;
          supportedFeatures = [ "kvm" "big-parallel" ];
          mandatoryFeatures = [ "big-parallel" ];
          publicHostKey = "c3NoLWVkMjU1MTkgQUFBQQ==";
        }
        { hostName = "arm.example.com"; protocol = null; system = "aarch64-linux"; }
      ];"#;
    let v = e.eval(&format!(
        r#"{{ {machines}
        services.eka-ci = {{
          enable = true;
          environmentFile = "/run/secrets/eka-ci.env";
          settings.remote_builders = [ {{ uri = "ssh://own@10.0.0.9"; systems = [ "x86_64-linux" ]; }} ];
        }};
      }}"#
    ));
    assert_eq!(v["failedAssertions"], serde_json::json!([]), "{v:#}");
    // The key only root can read reaches the service as a credential.
    let c = &service(&v)["serviceConfig"];
    assert_eq!(c["LoadCredential"], serde_json::json!(["nix-build-machine-0:/root/.ssh/id_builder"]));
    let warnings = v["warnings"].as_array().expect("warnings");
    assert!(
        warnings.len() == 1
            && warnings[0]
                .as_str()
                .is_some_and(|w| w.contains("publicHostKey of nix.buildMachines entry 10.0.0.5")),
        "{warnings:#?}"
    );
    let (code, out, err) = check_config(&v, e.path(), Some("WEBHOOK_SECRET=s\n"), &[]);
    assert_eq!(code, Some(0), "{err}");
    let builders: Vec<&str> = out.lines().filter(|l| l.starts_with("remote_builder = ")).collect();
    assert_eq!(
        builders,
        [
            "remote_builder = ssh-ng://builder@10.0.0.5 systems=x86_64-linux,i686-linux ssh_key=/run/credentials/eka-ci.service/nix-build-machine-0 max_jobs=4 speed_factor=2 supported_features=kvm,big-parallel mandatory_features=big-parallel",
            "remote_builder = ssh://arm.example.com systems=aarch64-linux ssh_key=- max_jobs=1 speed_factor=1 supported_features=- mandatory_features=-",
            "remote_builder = ssh://own@10.0.0.9 systems=x86_64-linux ssh_key=- max_jobs=1 speed_factor=1 supported_features=- mandatory_features=-",
        ],
        "{out}"
    );

    // Opting out leaves the operator's own list alone.
    let v = e.eval(&format!(
        r#"{{ {machines}
        services.eka-ci = {{ enable = true; useNixBuildMachines = false; environmentFile = "/run/secrets/eka-ci.env"; }};
      }}"#
    ));
    let (code, out, err) = check_config(&v, e.path(), Some("WEBHOOK_SECRET=s\n"), &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("remote_builder"), "{out}");
    assert!(service(&v)["serviceConfig"].get("LoadCredential").is_none_or(|l| l == &serde_json::json!([])));
}

#[test]
fn each_assertion_fires_on_the_configuration_it_guards_against() {
    let e = Eval::new();
    let base = r#"enable = true; environmentFile = "/run/secrets/eka-ci.env";"#;
    let cases: &[(&str, &str, &str)] = &[
        (
            "a GitHub App over an unsandboxed Nix",
            r#"nix.settings.sandbox = false;
               services.eka-ci.credentials.app = "/run/secrets/app";
               services.eka-ci.settings.github_apps = [ { id = "main"; credentials.systemd-credential.name = "app"; } ];"#,
            "nix.settings.sandbox is not true",
        ),
        (
            "an environment file in the store",
            r#"services.eka-ci.environmentFile = lib.mkForce "/nix/store/00000000000000000000000000000000-eka-ci.env";"#,
            "environmentFile is in the Nix store",
        ),
        (
            "a database outside the unit's directories with a dynamic user",
            r#"services.eka-ci.settings.db_path = "/srv/ekaci/ekaci.redb";"#,
            "a dynamic user cannot own them",
        ),
        (
            "an undeclared fixed user",
            r#"users.groups.ci = { }; services.eka-ci = { dynamicUser = false; user = "ci"; group = "ci"; };"#,
            "the user \"ci\" is not declared",
        ),
        (
            "an undeclared fixed group",
            r#"users.users.ci = { isSystemUser = true; group = "ci"; };
               services.eka-ci = { dynamicUser = false; user = "ci"; group = "ci"; };"#,
            "the group \"ci\" is not declared",
        ),
        (
            "a credential name systemd cannot use",
            r#"services.eka-ci.credentials."app:key" = "/run/secrets/app";"#,
            "credential name \"app:key\" is not a valid systemd credential name",
        ),
        (
            "a credential in the store",
            r#"services.eka-ci.credentials.app = "/nix/store/00000000000000000000000000000000-app";"#,
            "credentials.app is in the Nix store",
        ),
        (
            "a credential the configuration names but the unit does not load",
            r#"services.eka-ci.settings.caches = [ {
                 id = "s3"; cache_type = "nix-copy"; destination = "s3://bucket";
                 credentials.systemd-credential.name = "s3-creds"; } ];"#,
            "settings.caches (id \"s3\") reads the systemd credential \"s3-creds\"",
        ),
        (
            "a build machine eka-ci cannot use",
            r#"nix.buildMachines = [ { hostName = "b"; system = "x86_64-linux"; maxJobs = 0; } ];"#,
            "nix.buildMachines entry b has maxJobs = 0",
        ),
    ];
    for (what, config, message) in cases {
        let v = e.eval(&format!(
            "{{ lib, ... }}: {{ imports = [ {{ services.eka-ci = {{ {base} }}; }} ]; {config} }}"
        ));
        let failed: Vec<&str> =
            v["failedAssertions"].as_array().expect("list").iter().filter_map(Value::as_str).collect();
        assert!(
            failed.len() == 1 && failed[0].contains(message),
            "{what}: expected exactly one failed assertion containing {message:?}, got {failed:#?}"
        );
    }
    // The same shapes, done right, pass.
    let v = e.eval(&format!(
        r#"{{ services.eka-ci = {{ {base}
             dynamicUser = false; user = "ci"; group = "ci";
             settings.db_path = "/srv/ekaci/ekaci.redb";
             credentials.app = "/run/secrets/app";
             settings.github_apps = [ {{ id = "main"; credentials.systemd-credential.name = "app"; }} ]; }};
           users.users.ci = {{ isSystemUser = true; group = "ci"; }};
           users.groups.ci = {{ }};
           nix.buildMachines = [ {{ hostName = "b"; system = "x86_64-linux"; maxJobs = 2; }} ]; }}"#
    ));
    assert_eq!(v["failedAssertions"], serde_json::json!([]), "{v:#}");
    assert_eq!(service(&v)["serviceConfig"]["ReadWritePaths"], serde_json::json!(["-/srv/ekaci"]));
}

#[test]
fn each_warning_names_what_will_not_work() {
    let e = Eval::new();
    let cases: &[(&str, &str)] = &[
        ("services.eka-ci.enable = true;", "no webhook secret is configured"),
        (
            r#"services.eka-ci = { enable = true; settings.security.webhook_secret = "in-the-store"; };"#,
            "a secret is set in services.eka-ci.settings",
        ),
        (
            r#"nix.enable = false; services.eka-ci = { enable = true; environmentFile = "/run/s"; };"#,
            "nix.enable is false",
        ),
        (
            r#"nix.settings.allowed-users = [ "root" "@wheel" ];
               services.eka-ci = { enable = true; environmentFile = "/run/s"; };"#,
            "the service user \"eka-ci\" is not in nix.settings.allowed-users",
        ),
        (
            r#"services.eka-ci = { enable = true; environmentFile = "/run/s"; openFirewall = true; };"#,
            "openFirewall is set but settings.web.address is 127.0.0.1",
        ),
    ];
    for (config, message) in cases {
        let v = e.eval(&format!("{{ {config} }}"));
        let warnings: Vec<&str> =
            v["warnings"].as_array().expect("list").iter().filter_map(Value::as_str).collect();
        assert!(
            warnings.len() == 1 && warnings[0].contains(message),
            "{config}: expected one warning containing {message:?}, got {warnings:#?}"
        );
        assert_eq!(v["failedAssertions"], serde_json::json!([]), "{config}");
    }
    // Allowed through a group, and a firewall opened for a public address: nothing to say.
    let v = e.eval(
        r#"{ nix.settings.allowed-users = [ "@eka-ci" ];
             services.eka-ci = { enable = true; environmentFile = "/run/s"; openFirewall = true;
                                 settings.web = { address = "0.0.0.0"; port = 8080; }; }; }"#,
    );
    assert_eq!(v["warnings"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["firewall"], serde_json::json!([8080]), "{v:#}");
}

/// The block of docs/nixos.md that opens with this line is the complete configuration the test runs.
const DOCS_MARK: &str = "# configuration.nix: a GitHub App deployment behind nginx";

#[test]
fn the_configuration_in_the_docs_evaluates_and_passes_check_config() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/nixos.md"))
        .expect("read docs/nixos.md");
    let start = doc.find(DOCS_MARK).expect("docs/nixos.md has the complete configuration");
    let block = &doc[start..];
    let block = &block[..block.find("\n```").expect("the block ends")];
    let e = Eval::new();
    let v = e.eval(block);
    assert_eq!(v["failedAssertions"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["warnings"], serde_json::json!([]), "{v:#}");
    // nginx exposes only the webhook, on the webhook listener.
    let vhosts = v["nginx"]["virtualHosts"].as_object().expect("virtual hosts");
    assert_eq!(vhosts.len(), 1, "{vhosts:#?}");
    let (_, vhost) = vhosts.iter().next().expect("one");
    assert_eq!(vhost["forceSSL"], true);
    let locations: BTreeMap<&str, &Value> =
        vhost["locations"].as_object().expect("locations").iter().map(|(k, v)| (k.as_str(), v)).collect();
    assert_eq!(locations["= /github/webhook"]["proxyPass"], "http://127.0.0.1:3031");
    assert_eq!(locations["/"]["return"], 404);
    assert_eq!(v["firewall"], serde_json::json!([80, 443]), "{v:#}");

    let (code, out, err) = check_config(
        &v,
        e.path(),
        Some("WEBHOOK_SECRET=0123456789abcdef0123456789abcdef\n"),
        &[("github-app", &app_credential())],
    );
    assert_eq!(code, Some(0), "{err}\nekaci.toml:\n{}", generated_toml(&v));
    assert!(!err.contains("warning"), "{err}");
    assert!(out.contains("http = 127.0.0.1:3030\n"), "{out}");
}

/// Runs `nix` with flakes enabled and no substituters.
fn nix_flakes(args: &[&str]) -> std::process::Output {
    Command::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes"])
        .args(args)
        .env("NIX_CONFIG", "substituters =")
        .output()
        .expect("run nix")
}

/// flake.nix, with its nixpkgs input replaced by the stand-in of `tests/nixos/flake-nixpkgs` (nixpkgs'
/// real `lib`, the NixOS option declarations, placeholder packages): `nix flake check --no-build`
/// evaluates every output offline, and the outputs the docs name are there. The repository is read as
/// the git checkout it is, so only tracked files count (as for users of the flake).
#[test]
fn the_flake_evaluates_every_output_offline() {
    let e = Eval::new();
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nixos");
    let nixpkgs = e.path().join("nixpkgs");
    std::fs::create_dir(&nixpkgs).expect("mkdir");
    for (from, to) in [
        ("flake-nixpkgs/flake.nix", "flake.nix"),
        ("flake-nixpkgs/nixos-system.nix", "nixos-system.nix"),
        ("pkgs.nix", "pkgs.nix"),
        ("nixos-options.nix", "nixos-options.nix"),
    ] {
        std::fs::copy(tests.join(from), nixpkgs.join(to)).expect("copy the stand-in");
    }
    std::fs::rename(e.path().join("lib"), nixpkgs.join("lib")).expect("move lib");
    let input = format!("path:{}", nixpkgs.display());
    let repo = env!("CARGO_MANIFEST_DIR");
    let with_input = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--no-write-lock-file", "--override-input", "nixpkgs", &input]);
        let out = nix_flakes(&all);
        assert!(out.status.success(), "nix {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    with_input(&["flake", "check", "--no-build", repo]);

    let shown: Value = serde_json::from_str(&with_input(&["flake", "show", "--json", repo])).expect("JSON");
    for system in ["x86_64-linux", "aarch64-linux"] {
        let name = format!("eka-ci-{}", env!("CARGO_PKG_VERSION"));
        assert_eq!(shown["packages"][system]["default"]["name"], name.as_str(), "{shown:#}");
        for check in ["package", "overlay", "module"] {
            assert_eq!(shown["checks"][system][check]["type"], "derivation", "{shown:#}");
        }
        assert_eq!(shown["devShells"][system]["default"]["type"], "derivation", "{shown:#}");
    }
    assert_eq!(shown["nixosModules"]["daemon"]["type"], "nixos-module", "{shown:#}");
    assert_eq!(shown["overlays"]["default"]["type"], "nixpkgs-overlay", "{shown:#}");

    // The module check's unit runs the flake's own package, and the overlay gives that same package.
    let attr = |a: &str| format!("{repo}#{a}");
    let unit = with_input(&["eval", "--raw", &attr("checks.x86_64-linux.module.text")]);
    let package = with_input(&["eval", "--raw", &attr("packages.x86_64-linux.default.outPath")]);
    assert!(unit.contains(&format!("ExecStart={package}/bin/eka-ci-server --config-file ")), "{unit}");
    assert!(unit.contains("LoadCredential=github-app-key:/run/secrets/github-app.json\n"), "{unit}");
    let overlay = with_input(&["eval", "--raw", &attr("checks.x86_64-linux.overlay.outPath")]);
    assert_eq!(overlay, package);
    // The source is the repository without build output.
    let src = with_input(&["eval", "--raw", &attr("packages.x86_64-linux.default.src")]);
    assert!(
        Path::new(&src).join("Cargo.lock").is_file() && !Path::new(&src).join("target").exists(),
        "{src}"
    );
}
