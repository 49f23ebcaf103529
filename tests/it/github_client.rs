//! The GitHub App client against the fake GitHub server: installation tokens and their cache, App JWTs,
//! the check-run round trip, the retry and rate-limit discipline, error shapes without tokens, and
//! loading App credentials from every supported source.

use crate::fake_github;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use eka_ci::config::{CredentialSource, GitHubAppConfig, Permissions, ServerConfig};
use eka_ci::forge::github::app::{self, AppCredentials};
use eka_ci::forge::github::client::{
    CheckConclusion, CheckRunFields, CheckRunOutput, CheckStatus, ClientConfig, ClientError, CreateCheckRun,
    GitHubClient, UpdateCheckRun,
};
use eka_ci::forge::github::jwt::AppKey;
use fake_github::{FakeGitHub, Reply, APP_ID, INSTALLATION_ID, PRIVATE_KEY_PKCS1, PRIVATE_KEY_PKCS8};
use serde_json::json;

const REPO: &str = "octo/hello";

fn config(fake: &FakeGitHub) -> ClientConfig {
    ClientConfig {
        api_url: fake.url(),
        max_attempts: 4,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        max_rate_limit_wait: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

fn client_with(app_id: &str, config: ClientConfig) -> GitHubClient {
    let creds = AppCredentials { app_id: app_id.into(), key: AppKey::from_pem(PRIVATE_KEY_PKCS1).unwrap() };
    GitHubClient::new(creds, config).unwrap()
}

fn client(fake: &FakeGitHub) -> GitHubClient {
    client_with(APP_ID, config(fake))
}

fn assert_no_token(fake: &FakeGitHub, text: &str) {
    for token in fake.issued_tokens() {
        assert!(!text.contains(&token), "token leaked into {text:?}");
    }
}

#[test]
fn token_is_fetched_once_and_reused_with_github_headers() {
    let fake = FakeGitHub::start();
    let c = client(&fake);
    smol::block_on(async {
        let pr = c.pull_request(INSTALLATION_ID, REPO, 7).await.unwrap();
        assert_eq!(pr.number, 7);
        assert_eq!(pr.head.sha, "6dcb09b5b57875f334f61aebed695e2e4193db5e");
        assert_eq!(pr.base.git_ref, "master");
        assert_eq!(pr.base.repo.as_ref().unwrap().full_name, REPO);
        c.pull_request(INSTALLATION_ID, REPO, 8).await.unwrap();
        fake.set_permission(REPO, "alice", "write");
        let perm = c.collaborator_permission(INSTALLATION_ID, REPO, "alice").await.unwrap();
        assert_eq!(perm.permission, "write");
        assert_eq!(perm.user.unwrap().login, "alice");
    });
    let token_calls = fake.calls_to("POST", "/app/installations/*/access_tokens");
    assert_eq!(token_calls.len(), 1);
    assert_eq!(token_calls[0].path, format!("/app/installations/{INSTALLATION_ID}/access_tokens"));
    assert_eq!(token_calls[0].status, 201, "the fake verified the JWT");
    let tokens = fake.issued_tokens();
    assert_eq!(tokens.len(), 1);
    let repo_calls = fake.calls_to("GET", "/repos/*");
    assert_eq!(repo_calls.len(), 3);
    for call in fake.calls() {
        assert_eq!(call.header("accept"), Some("application/vnd.github+json"));
        assert_eq!(call.header("x-github-api-version"), Some("2022-11-28"));
        assert_eq!(call.header("user-agent"), Some(format!("eka-ci/{}", eka_ci::VERSION).as_str()));
    }
    for call in &repo_calls {
        assert_eq!(call.header("authorization"), Some(format!("Bearer {}", tokens[0]).as_str()));
    }
    // The JWT is not the installation token.
    assert_ne!(token_calls[0].header("authorization"), repo_calls[0].header("authorization"));
}

#[test]
fn token_is_refreshed_when_near_expiry() {
    let fake = FakeGitHub::start();
    // Tokens valid for one minute are inside the five-minute refresh margin: never reused.
    fake.set_token_lifetime(Duration::from_secs(60));
    let c = client(&fake);
    smol::block_on(async {
        let a = c.installation_token(INSTALLATION_ID).await.unwrap();
        let b = c.installation_token(INSTALLATION_ID).await.unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(format!("{a:?}"), "[redacted]");
    });
    assert_eq!(fake.calls_to("POST", "/app/installations/*").len(), 2);

    // With a lifetime beyond the margin the token is reused.
    fake.set_token_lifetime(Duration::from_secs(3600));
    let c = client(&fake);
    smol::block_on(async {
        let a = c.installation_token(INSTALLATION_ID).await.unwrap();
        let b = c.installation_token(INSTALLATION_ID).await.unwrap();
        assert_eq!(a.expose(), b.expose());
    });
    assert_eq!(fake.calls_to("POST", "/app/installations/*").len(), 3);
}

#[test]
fn a_revoked_token_is_replaced_once() {
    let fake = FakeGitHub::start();
    let c = client(&fake);
    smol::block_on(async {
        c.pull_request(INSTALLATION_ID, REPO, 1).await.unwrap();
        fake.revoke_tokens();
        c.pull_request(INSTALLATION_ID, REPO, 1).await.unwrap();
    });
    let statuses: Vec<u16> = fake.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [201, 200, 401, 201, 200]);
}

#[test]
fn jwt_of_another_app_is_refused_by_the_fake() {
    let fake = FakeGitHub::start();
    let c = client_with("999", config(&fake));
    let err = smol::block_on(c.repo_installation(REPO)).unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert_eq!(fake.calls().len(), 1, "4xx is not retried");
    // The right App gets the installation.
    let inst = smol::block_on(client(&fake).repo_installation(REPO)).unwrap();
    assert_eq!(inst.id, INSTALLATION_ID);
    assert_eq!(inst.account.unwrap().login, "octo");
    let call = fake.calls().pop().unwrap();
    assert_eq!(
        (call.method.as_str(), call.path.as_str(), call.status),
        ("GET", "/repos/octo/hello/installation", 200)
    );
}

#[test]
fn check_run_create_patch_list_round_trip() {
    let fake = FakeGitHub::start();
    let c = client(&fake);
    let sha = "ce587453ced02b1526dfb4cb910479d431683101";
    smol::block_on(async {
        let mut create = CreateCheckRun::new("eka-ci/eval", sha);
        create.fields.status = Some(CheckStatus::InProgress);
        create.fields.external_id = Some("jobset-1".into());
        create.fields.started_at = Some("2026-01-02T03:04:05Z".into());
        create.fields.output =
            Some(CheckRunOutput { title: "Evaluating".into(), summary: "started".into(), text: None });
        let run = c.create_check_run(INSTALLATION_ID, REPO, &create).await.unwrap();
        assert_eq!(run.id, 1001);
        assert_eq!(
            (run.name.as_str(), run.head_sha.as_str(), run.status.as_str()),
            ("eka-ci/eval", sha, "in_progress")
        );
        assert_eq!(run.conclusion, None);

        let update = UpdateCheckRun {
            fields: CheckRunFields {
                conclusion: Some(CheckConclusion::Success),
                completed_at: Some("2026-01-02T03:14:05Z".into()),
                output: Some(CheckRunOutput {
                    title: "Done".into(),
                    summary: "3 rebuilds".into(),
                    text: Some("x".into()),
                }),
                ..CheckRunFields::default()
            },
            ..UpdateCheckRun::default()
        };
        let updated = c.update_check_run(INSTALLATION_ID, REPO, run.id, &update).await.unwrap();
        assert_eq!(updated.status, "completed");
        assert_eq!(updated.conclusion.as_deref(), Some("success"));
        assert_eq!(updated.output.unwrap().summary.as_deref(), Some("3 rebuilds"));

        let second = c
            .create_check_run(INSTALLATION_ID, REPO, &CreateCheckRun::new("eka-ci/build", sha))
            .await
            .unwrap();
        assert_eq!(second.id, 1002);
        assert_eq!(second.status, "queued");

        let all = c.list_check_runs_for_ref(INSTALLATION_ID, REPO, sha, None).await.unwrap();
        assert_eq!(all.total_count, 2);
        assert_eq!(all.check_runs[0].completed_at.as_deref(), Some("2026-01-02T03:14:05Z"));
        let eval = c.list_check_runs_for_ref(INSTALLATION_ID, REPO, sha, Some("eka-ci/eval")).await.unwrap();
        assert_eq!(eval.check_runs.iter().map(|r| r.id).collect::<Vec<_>>(), [1001]);
        let other = c.list_check_runs_for_ref(INSTALLATION_ID, REPO, "0000", None).await.unwrap();
        assert_eq!(other.total_count, 0);
    });
    let creates = fake.calls_to("POST", "/repos/octo/hello/check-runs");
    assert_eq!(
        creates[0].json(),
        json!({
            "name": "eka-ci/eval", "head_sha": sha, "external_id": "jobset-1", "status": "in_progress",
            "started_at": "2026-01-02T03:04:05Z", "output": {"title": "Evaluating", "summary": "started"}
        })
    );
    assert_eq!(creates[0].header("content-type"), Some("application/json"));
    assert_eq!(creates[1].json(), json!({"name": "eka-ci/build", "head_sha": sha}));
    let patches = fake.calls_to("PATCH", "/repos/octo/hello/check-runs/1001");
    assert_eq!(
        patches[0].json(),
        json!({
            "conclusion": "success", "completed_at": "2026-01-02T03:14:05Z",
            "output": {"title": "Done", "summary": "3 rebuilds", "text": "x"}
        })
    );
    let lists = fake.calls_to("GET", "/repos/octo/hello/commits/*/check-runs");
    assert_eq!(lists.len(), 3);
    assert_eq!(lists[1].query, "per_page=100&check_name=eka-ci%2Feval");
    assert_eq!(fake.check_runs(REPO).len(), 2);
}

#[test]
fn retry_after_is_honoured() {
    let fake = FakeGitHub::start();
    let c = client(&fake);
    smol::block_on(c.installation_token(INSTALLATION_ID)).unwrap();
    fake.inject("POST", "/repos/*/check-runs", 1, Reply::retry_after(429, 1));
    let started = Instant::now();
    let run =
        smol::block_on(c.create_check_run(INSTALLATION_ID, REPO, &CreateCheckRun::new("n", "abc"))).unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "waited {:?}", started.elapsed());
    assert_eq!(run.name, "n");
    let statuses: Vec<u16> = fake.calls_to("POST", "/repos/*/check-runs").iter().map(|c| c.status).collect();
    assert_eq!(statuses, [429, 201]);
}

#[test]
fn primary_rate_limit_waits_for_reset_within_the_bound() {
    let fake = FakeGitHub::start();
    let c = client(&fake);
    fake.inject("GET", "/repos/*/pulls/*", 1, Reply::rate_limited(Duration::from_secs(1)));
    smol::block_on(c.pull_request(INSTALLATION_ID, REPO, 3)).unwrap();
    let statuses: Vec<u16> = fake.calls_to("GET", "/repos/*/pulls/*").iter().map(|c| c.status).collect();
    assert_eq!(statuses, [403, 200]);

    // A reset further away than max_rate_limit_wait is an error at once, not a long sleep.
    fake.clear_calls();
    fake.inject("GET", "/repos/*/pulls/*", 1, Reply::rate_limited(Duration::from_secs(3600)));
    let started = Instant::now();
    let err = smol::block_on(c.pull_request(INSTALLATION_ID, REPO, 3)).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, ClientError::RateLimited { status: 403, max_wait_secs: 5, .. }), "{err:?}");
    assert!(err.to_string().contains("API rate limit exceeded"), "{err}");
    assert_eq!(fake.calls_to("GET", "/repos/*/pulls/*").len(), 1);

    // A plain 403 (no rate-limit headers) is a permission error: not retried.
    fake.clear_calls();
    fake.inject("GET", "/repos/*/pulls/*", 1, Reply::error(403, "Resource not accessible by integration"));
    let err = smol::block_on(c.pull_request(INSTALLATION_ID, REPO, 3)).unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert!(err.to_string().contains("Resource not accessible by integration"), "{err}");
    assert_eq!(fake.calls_to("GET", "/repos/*/pulls/*").len(), 1);
}

#[test]
fn server_errors_are_retried_with_a_bound() {
    let fake = FakeGitHub::start();
    let c = client(&fake);
    fake.inject("GET", "/repos/*/pulls/*", 2, Reply::error(502, "Server Error"));
    smol::block_on(c.pull_request(INSTALLATION_ID, REPO, 3)).unwrap();
    let statuses: Vec<u16> = fake.calls_to("GET", "/repos/*/pulls/*").iter().map(|c| c.status).collect();
    assert_eq!(statuses, [502, 502, 200]);

    fake.clear_calls();
    let c = client_with(APP_ID, ClientConfig { max_attempts: 3, ..config(&fake) });
    fake.inject("*", "/repos/*/pulls/*", 10, Reply::error(503, "Service Unavailable"));
    let err = smol::block_on(c.pull_request(INSTALLATION_ID, REPO, 3)).unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 503, attempts: 3, .. }), "{err:?}");
    assert_eq!(fake.calls_to("GET", "/repos/*/pulls/*").len(), 3);
}

#[test]
fn client_errors_are_not_retried_and_carry_githubs_message() {
    let fake = FakeGitHub::start();
    let c = client(&fake);
    fake.inject("GET", "/repos/*/pulls/*", 1, Reply::error(404, "Not Found"));
    let err = smol::block_on(c.pull_request(INSTALLATION_ID, REPO, 3)).unwrap_err();
    match &err {
        ClientError::Api { status, message, documentation_url, attempts, path, method } => {
            assert_eq!((*status, message.as_str(), *attempts, *method), (404, "Not Found", 1, "GET"));
            assert_eq!(path, "/repos/octo/hello/pulls/3");
            assert_eq!(documentation_url.as_deref(), Some("https://docs.github.com/rest"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "GitHub API GET /repos/octo/hello/pulls/3: HTTP 404: Not Found (after 1 attempt(s))"
    );

    // The fake's own validation: `completed` without a conclusion.
    let mut bad = CreateCheckRun::new("n", "abc");
    bad.fields.status = Some(CheckStatus::Completed);
    let err = smol::block_on(c.create_check_run(INSTALLATION_ID, REPO, &bad)).unwrap_err();
    assert_eq!(err.status(), Some(422));
    assert!(err.to_string().contains("Validation Failed"), "{err}");
    assert_eq!(fake.calls_to("POST", "/repos/*/check-runs").len(), 1);
    assert_eq!(fake.calls_to("GET", "/repos/*/pulls/*").len(), 1);

    // Bad arguments never reach GitHub.
    let err = smol::block_on(c.pull_request(INSTALLATION_ID, "../etc", 1)).unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument { .. }), "{err:?}");
}

#[test]
fn tokens_never_appear_in_errors_or_debug_output() {
    let fake = FakeGitHub::start();
    let c = client(&fake);
    let token = smol::block_on(c.installation_token(INSTALLATION_ID)).unwrap();
    let mut texts = vec![format!("{c:?}"), format!("{token:?}")];
    // 401 twice: the cached token is dropped and a fresh one tried, then the error is returned.
    fake.inject("GET", "/repos/*/pulls/*", 2, Reply::error(401, "Bad credentials"));
    fake.inject("POST", "/app/installations/*", 1, Reply::error(422, "Validation Failed"));
    let err = smol::block_on(c.pull_request(INSTALLATION_ID, REPO, 1)).unwrap_err();
    let display = err.to_string();
    assert!(
        display.contains("HTTP 422: Validation Failed") || display.contains("HTTP 401: Bad credentials"),
        "{display}"
    );
    texts.push(display);
    texts.push(format!("{err:?}"));
    fake.inject("POST", "/app/installations/9/*", 1, Reply::error(404, "Not Found"));
    let err = smol::block_on(c.installation_token(9)).unwrap_err();
    texts.push(err.to_string());
    texts.push(format!("{err:?}"));
    assert!(!fake.issued_tokens().is_empty());
    for text in &texts {
        assert_no_token(&fake, text);
        assert!(!text.contains("BEGIN RSA"), "{text}");
    }
}

// --- credentials ------------------------------------------------------------------------------------

fn app_config(id: &str, credentials: CredentialSource) -> GitHubAppConfig {
    GitHubAppConfig { id: id.into(), credentials, permissions: Permissions::default() }
}

fn env_of(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn credentials_from_env() {
    let source =
        CredentialSource::Env { vars: vec!["GITHUB_APP_ID".into(), "GITHUB_APP_PRIVATE_KEY".into()] };
    let env =
        env_of(vec![("GITHUB_APP_ID", "4242".into()), ("GITHUB_APP_PRIVATE_KEY", PRIVATE_KEY_PKCS8.into())]);
    let app = app::load(&app_config("main", source.clone()), &env).unwrap();
    assert_eq!((app.id.as_str(), app.credentials.app_id.as_str()), ("main", "4242"));
    assert_eq!(app.credentials.key.bits(), 2048);
    assert!(!format!("{app:?}").contains("MII"), "Debug shows no key");

    let missing = env_of(vec![("GITHUB_APP_ID", "4242".into())]);
    let err = app::load(&app_config("main", source.clone()), &missing).unwrap_err();
    assert_eq!(
        err.to_string(),
        "GitHub App `main` (credentials `env`): environment variable GITHUB_APP_PRIVATE_KEY is not set or empty"
    );
    let garbage =
        env_of(vec![("GITHUB_APP_ID", "4242".into()), ("GITHUB_APP_PRIVATE_KEY", "s3cr3t-garbage".into())]);
    let err = app::load(&app_config("main", source), &garbage).unwrap_err().to_string();
    assert!(err.contains("not a PEM private key") && !err.contains("s3cr3t"), "{err}");
}

#[test]
fn credentials_from_files_json_and_key_value() {
    let dir = tempfile::tempdir().unwrap();
    let no_env = |_: &str| None;
    // JSON with `\n` escapes (what the documented `sed 's/$/\\n/' | tr -d '\n'` recipe produces).
    let escaped = PRIVATE_KEY_PKCS1.replace('\n', "\\n");
    let json_path = write(
        &dir,
        "app.json",
        &format!("{{\n  \"GITHUB_APP_ID\": \"4242\",\n  \"GITHUB_APP_PRIVATE_KEY\": \"{escaped}\"\n}}\n"),
    );
    let app = app::load(&app_config("j", CredentialSource::File { path: json_path }), &no_env).unwrap();
    assert_eq!(app.credentials.app_id, "4242");
    // The same recipe when the shell turned `\\n` into real newlines that `tr` then removed: one line.
    let flat = PRIVATE_KEY_PKCS1.replace('\n', "");
    let flat_path = write(
        &dir,
        "flat.json",
        &format!("{{\"GITHUB_APP_ID\": 4242, \"GITHUB_APP_PRIVATE_KEY\": \"{flat}\"}}"),
    );
    assert!(app::load(&app_config("f", CredentialSource::File { path: flat_path }), &no_env).is_ok());
    // KEY=value lines with the PEM over several lines.
    let kv_path =
        write(&dir, "app.env", &format!("GITHUB_APP_ID=4242\nGITHUB_APP_PRIVATE_KEY={PRIVATE_KEY_PKCS1}"));
    let app = app::load(&app_config("kv", CredentialSource::File { path: kv_path }), &no_env).unwrap();
    assert_eq!(app.credentials.app_id, "4242");

    let partial = write(&dir, "partial.env", "GITHUB_APP_ID=4242\n");
    let err =
        app::load(&app_config("p", CredentialSource::File { path: partial.clone() }), &no_env).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "GitHub App `p` (credentials `file`): GITHUB_APP_PRIVATE_KEY in {} is missing",
            partial.display()
        )
    );
    let err = app::load(&app_config("m", CredentialSource::File { path: dir.path().join("nope") }), &no_env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read") && err.contains("nope"), "{err}");
}

#[test]
fn credentials_from_key_file_and_systemd_credential() {
    let dir = tempfile::tempdir().unwrap();
    let pem = write(&dir, "app.pem", PRIVATE_KEY_PKCS1);
    let source = CredentialSource::GitHubAppKeyFile { app_id_env: "MY_APP_ID".into(), key_file: pem };
    let app = app::load(&app_config("k", source.clone()), &env_of(vec![("MY_APP_ID", "77".into())])).unwrap();
    assert_eq!(app.credentials.app_id, "77");
    let err = app::load(&app_config("k", source), &|_: &str| None).unwrap_err().to_string();
    assert!(err.contains("MY_APP_ID is not set"), "{err}");

    let creds_dir = tempfile::tempdir().unwrap();
    let escaped = PRIVATE_KEY_PKCS8.replace('\n', "\\n");
    write(
        &creds_dir,
        "github-app",
        &format!("{{\"GITHUB_APP_ID\": \"4242\", \"GITHUB_APP_PRIVATE_KEY\": \"{escaped}\"}}"),
    );
    let source = CredentialSource::SystemdCredential { name: "github-app".into() };
    let dir_str = creds_dir.path().display().to_string();
    let env = env_of(vec![("CREDENTIALS_DIRECTORY", dir_str)]);
    let app = app::load(&app_config("s", source.clone()), &env).unwrap();
    assert_eq!(app.credentials.app_id, "4242");
    let err = app::load(&app_config("s", source), &|_: &str| None).unwrap_err().to_string();
    assert!(err.contains("CREDENTIALS_DIRECTORY is not set"), "{err}");
    let err = app::load(&app_config("s", CredentialSource::SystemdCredential { name: "../x".into() }), &env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a plain file name"), "{err}");
}

#[test]
fn unsupported_sources_fail_load_all_at_startup() {
    let mut config = ServerConfig::default();
    config.github_apps.push(app_config(
        "ok",
        CredentialSource::Env { vars: vec!["GITHUB_APP_ID".into(), "GITHUB_APP_PRIVATE_KEY".into()] },
    ));
    let env =
        env_of(vec![("GITHUB_APP_ID", "4242".into()), ("GITHUB_APP_PRIVATE_KEY", PRIVATE_KEY_PKCS1.into())]);
    assert_eq!(app::load_all(&config, &env).unwrap().len(), 1);
    config.github_apps.push(app_config(
        "vaulted",
        CredentialSource::Vault {
            address: "https://vault.example".into(),
            secret_path: "eka".into(),
            token_env: "VAULT_TOKEN".into(),
            namespace: None,
        },
    ));
    let err = app::load_all(&config, &env).unwrap_err();
    assert_eq!(
        err.to_string(),
        "GitHub App `vaulted` (credentials `vault`): no Vault token: environment variable VAULT_TOKEN is not \
         set or empty, and there is no token file (HOME is not set: ~/.vault-token)"
    );
    let err = app::load(&app_config("x", CredentialSource::None), &env).unwrap_err().to_string();
    assert!(err.contains("credential source `none` cannot hold a GitHub App's id and private key"), "{err}");
    for source in [
        CredentialSource::InstanceMetadata { provider: None },
        CredentialSource::AwsProfile { profile: "p".into() },
    ] {
        let kind = source.kind();
        let err = app::load(&app_config("x", source), &env).unwrap_err().to_string();
        assert!(err.contains(&format!("credential source `{kind}` gives AWS credentials")), "{err}");
    }
}

#[test]
fn pick_takes_the_first_app_allowing_repo_and_branch() {
    let env =
        env_of(vec![("GITHUB_APP_ID", "1".into()), ("GITHUB_APP_PRIVATE_KEY", PRIVATE_KEY_PKCS1.into())]);
    let source =
        CredentialSource::Env { vars: vec!["GITHUB_APP_ID".into(), "GITHUB_APP_PRIVATE_KEY".into()] };
    let mut restricted = app_config("release", source.clone());
    restricted.permissions = Permissions {
        allow_all: false,
        allowed_repos: vec!["myorg/*".into()],
        allowed_branches: vec!["release/*".into()],
    };
    let apps = vec![
        app::load(&restricted, &env).unwrap(),
        app::load(&app_config("fallback", source), &env).unwrap(),
    ];
    let pick = |repo, branch| app::pick(&apps, repo, branch).map(|a| a.id.as_str());
    assert_eq!(pick("myorg/nix", Some("release/v1")), Some("release"));
    assert_eq!(pick("myorg/nix", Some("main")), Some("fallback"));
    assert_eq!(pick("other/nix", Some("release/v1")), Some("fallback"));
    assert_eq!(app::pick(&apps[..1], "other/nix", None).map(|a| a.id.as_str()), None);
}

#[test]
fn concurrent_calls_share_one_token_fetch() {
    let fake = FakeGitHub::start();
    let c = client(&fake);
    smol::block_on(async {
        let (a, b) = futures_lite::future::zip(
            c.pull_request(INSTALLATION_ID, REPO, 1),
            c.collaborator_permission(INSTALLATION_ID, REPO, "carol"),
        )
        .await;
        a.unwrap();
        assert_eq!(b.unwrap().permission, "none");
    });
    assert_eq!(fake.calls_to("POST", "/app/installations/*").len(), 1);
    assert_eq!(fake.calls_to("GET", "/repos/*").len(), 2);
}
