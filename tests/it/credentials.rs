//! The remote credential sources (`eka_ci::credentials`) against loopback services that answer as Vault,
//! AWS Secrets Manager and the EC2 metadata service document (`fake_cloud`): the exact requests, the
//! secrets returned, the errors (status and the service's message, never a secret), and GitHub Apps
//! whose id and key come from Vault or Secrets Manager, loaded by the real server at start-up.

use crate::common::{self, Home};
use crate::fake_cloud::{AwsKey, FakeCloud};
use crate::fake_github;
use crate::github_app::{pull_request, Fixture, Setup};

use std::collections::BTreeMap;

use eka_ci::config::CredentialSource;
use eka_ci::credentials::{self, Ctx, Problem};
use serde_json::json;

const TOKEN: &str = "hvs.CAESIJ-test-vault-token-7f3a";
const SM_SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY-sm";
const SESSION: &str = "IQoJb3JpZ2luX2VjEFAKE-session-token";

fn vault(address: &str, secret_path: &str, namespace: Option<&str>) -> CredentialSource {
    CredentialSource::Vault {
        address: address.to_string(),
        secret_path: secret_path.to_string(),
        token_env: "VAULT_TOKEN".to_string(),
        namespace: namespace.map(String::from),
    }
}

fn exposed(map: &BTreeMap<String, eka_ci::secret::Secret>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.expose().to_string())).collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A home directory with nothing in it: no `~/.aws/credentials`, no `~/.vault-token`.
fn empty_home() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn vault_reads_the_kv2_secret_with_token_and_namespace() {
    let cloud = FakeCloud::start();
    cloud.vault_auth(TOKEN, Some("production"));
    let data =
        json!({ "AWS_ACCESS_KEY_ID": "AKIAVAULT", "AWS_SECRET_ACCESS_KEY": "vault-held-secret", "PORT": 5 });
    cloud.vault_put("secret", "eka-ci/s3-cache", data);
    let home = empty_home();
    let ctx = Ctx::default().with_var("VAULT_TOKEN", TOKEN).with_var("HOME", home.path().to_str().unwrap());
    // Both documented spellings of the path reach the same API path.
    for path in ["secret/data/eka-ci/s3-cache", "eka-ci/s3-cache"] {
        let got = credentials::fetch(&vault(&cloud.url(), path, Some("production")), &ctx).expect(path);
        assert_eq!(
            exposed(&got),
            pairs(&[
                ("AWS_ACCESS_KEY_ID", "AKIAVAULT"),
                ("AWS_SECRET_ACCESS_KEY", "vault-held-secret"),
                ("PORT", "5")
            ])
        );
    }
    let calls = cloud.calls();
    assert_eq!(calls.len(), 2);
    for call in &calls {
        assert_eq!((call.method.as_str(), call.path.as_str()), ("GET", "/v1/secret/data/eka-ci/s3-cache"));
        assert_eq!(call.header("x-vault-token"), Some(TOKEN));
        assert_eq!(call.header("x-vault-namespace"), Some("production"));
    }
    // Another mount, written as the API path.
    cloud.vault_auth(TOKEN, None);
    cloud.vault_put("kv", "team/app", json!({ "K": "v" }));
    let got = credentials::fetch(&vault(&cloud.url(), "kv/data/team/app", None), &ctx).unwrap();
    assert_eq!(exposed(&got), pairs(&[("K", "v")]));
    assert_eq!(cloud.calls().last().unwrap().header("x-vault-namespace"), None);

    // The token may come from ~/.vault-token instead.
    std::fs::write(home.path().join(".vault-token"), format!("{TOKEN}\n")).unwrap();
    let file_only = Ctx::default().with_var("HOME", home.path().to_str().unwrap());
    assert!(credentials::fetch(&vault(&cloud.url(), "kv/data/team/app", None), &file_only).is_ok());
}

#[test]
fn vault_errors_name_the_request_and_vaults_message_but_never_the_token() {
    let cloud = FakeCloud::start();
    cloud.vault_auth(TOKEN, None);
    cloud.vault_put("secret", "present", json!({ "A": "x" }));
    let home = empty_home();
    let h = home.path().to_str().unwrap();
    let url = cloud.url();
    let fetch = |path: &str, ctx: &Ctx| credentials::fetch(&vault(&url, path, None), ctx).unwrap_err();

    let wrong = Ctx::default().with_var("VAULT_TOKEN", "hvs.wrong-token-value").with_var("HOME", h);
    let denied = fetch("present", &wrong).to_string();
    assert_eq!(
        denied,
        format!("credential source `vault`: GET {url}/v1/secret/data/present: HTTP 403: permission denied")
    );
    let right = Ctx::default().with_var("VAULT_TOKEN", TOKEN).with_var("HOME", h);
    let err = fetch("absent", &right).to_string();
    assert!(err.contains("/v1/secret/data/absent: HTTP 404: no secret at this path"), "{err}");

    cloud.inject(200, "<html>proxy login</html>");
    let err = fetch("present", &right);
    assert!(matches!(err.problem, Problem::Malformed { .. }), "{err}");
    cloud.inject(200, r#"{"data":{"data":null,"metadata":{"deletion_time":"2026-01-01T00:00:00Z"}}}"#);
    assert!(fetch("present", &right).to_string().contains("deleted or destroyed"));
    cloud.inject(200, r#"{"data":{"keys":["a"]}}"#);
    assert!(fetch("present", &right).to_string().contains("KV version 2"));
    cloud.inject(503, r#"{"errors":["Vault is sealed"]}"#);
    assert!(fetch("present", &right).to_string().ends_with("HTTP 503: Vault is sealed"));

    // No token anywhere: nothing is requested.
    let before = cloud.calls().len();
    let err = fetch("present", &Ctx::default().with_var("HOME", h));
    assert!(matches!(err.problem, Problem::NoVaultToken { .. }), "{err}");
    assert!(err.to_string().contains("VAULT_TOKEN is not set"), "{err}");
    assert_eq!(cloud.calls().len(), before);

    // A server that is down: the transport error, with the URL.
    drop(cloud);
    let err = fetch("present", &right).to_string();
    assert!(err.contains(&format!("GET {url}/v1/secret/data/present:")), "{err}");
    for e in [&err, &denied] {
        assert!(!e.contains(TOKEN) && !e.contains("wrong-token-value"), "{e}");
    }
}

fn sm_source(name: &str) -> CredentialSource {
    CredentialSource::AwsSecretsManager { secret_name: name.to_string(), region: None }
}

fn aws_env(cloud: &FakeCloud, home: &tempfile::TempDir) -> Ctx {
    Ctx::default()
        .with_var("AWS_REGION", "eu-central-1")
        .with_var("AWS_ENDPOINT_URL_SECRETS_MANAGER", &cloud.url())
        .with_var("HOME", home.path().to_str().unwrap())
        // Nothing answers here: a fall-through to instance metadata fails at once.
        .with_var("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
}

#[test]
fn secrets_manager_get_secret_value_is_sigv4_signed_and_checked() {
    let cloud = FakeCloud::start();
    let key = AwsKey { id: "ASIAENVKEY".into(), secret: SM_SECRET_KEY.into(), token: Some(SESSION.into()) };
    cloud.sm_accept("eu-central-1", key);
    cloud.sm_put(
        "eka-ci/s3-cache-credentials",
        r#"{"AWS_ACCESS_KEY_ID":"AKIASM","AWS_SECRET_ACCESS_KEY":"sm-held"}"#,
    );
    let home = empty_home();
    let ctx = aws_env(&cloud, &home)
        .with_var("AWS_ACCESS_KEY_ID", "ASIAENVKEY")
        .with_var("AWS_SECRET_ACCESS_KEY", SM_SECRET_KEY)
        .with_var("AWS_SESSION_TOKEN", SESSION);
    let got = credentials::fetch(&sm_source("eka-ci/s3-cache-credentials"), &ctx).expect("GetSecretValue");
    assert_eq!(
        exposed(&got),
        pairs(&[("AWS_ACCESS_KEY_ID", "AKIASM"), ("AWS_SECRET_ACCESS_KEY", "sm-held")])
    );
    let call = cloud.calls().pop().unwrap();
    assert_eq!((call.method.as_str(), call.path.as_str(), call.status), ("POST", "/", 200));
    assert_eq!(call.header("x-amz-target"), Some("secretsmanager.GetSecretValue"));
    assert_eq!(call.header("content-type"), Some("application/x-amz-json-1.1"));
    assert_eq!(call.header("x-amz-security-token"), Some(SESSION));
    let auth = call.header("authorization").unwrap();
    assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=ASIAENVKEY/"), "{auth}");
    assert!(auth.contains("/eu-central-1/secretsmanager/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, Signature="), "{auth}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&call.body).unwrap(),
        json!({ "SecretId": "eka-ci/s3-cache-credentials" })
    );

    // The source's region wins over AWS_REGION; the fake only accepts eu-central-1.
    let other_region = CredentialSource::AwsSecretsManager {
        secret_name: "eka-ci/s3-cache-credentials".into(),
        region: Some("us-west-2".into()),
    };
    let err = credentials::fetch(&other_region, &ctx).unwrap_err().to_string();
    assert!(err.contains("HTTP 400: InvalidSignatureException"), "{err}");

    // A wrong secret key: the recomputed signature differs.
    let wrong = ctx.clone().with_var("AWS_SECRET_ACCESS_KEY", "not-the-right-secret-key");
    let err = credentials::fetch(&sm_source("eka-ci/s3-cache-credentials"), &wrong).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "credential source `aws-secrets-manager`: POST {}/: HTTP 400: InvalidSignatureException: The request \
             signature we calculated does not match the signature you provided. Check your AWS Secret Access Key \
             and signing method.",
            cloud.url()
        )
    );
    let err2 = credentials::fetch(&sm_source("nope"), &ctx).unwrap_err().to_string();
    assert!(
        err2.ends_with(
            "HTTP 400: ResourceNotFoundException: Secrets Manager can't find the specified secret."
        ),
        "{err2}"
    );
    let err3 = credentials::fetch(&sm_source("x"), &ctx.clone().with_var("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN"))
        .unwrap_err()
        .to_string();
    assert!(err3.contains("UnrecognizedClientException"), "{err3}");

    cloud.sm_put("plain", "just-a-password");
    let err4 = credentials::fetch(&sm_source("plain"), &ctx).unwrap_err().to_string();
    assert!(
        err4.contains("SecretString is not a JSON object") && !err4.contains("just-a-password"),
        "{err4}"
    );
    cloud.inject(200, "not json");
    let err5 = credentials::fetch(&sm_source("plain"), &ctx).unwrap_err();
    assert!(matches!(err5.problem, Problem::Malformed { .. }), "{err5}");

    let no_region = Ctx::default().with_var("AWS_ACCESS_KEY_ID", "ASIAENVKEY");
    assert!(matches!(
        credentials::fetch(&sm_source("x"), &no_region).unwrap_err().problem,
        Problem::NoRegion
    ));
    for e in [&err, &err2, &err3, &err4] {
        assert!(!e.contains(SM_SECRET_KEY) && !e.contains(SESSION) && !e.contains("not-the-right"), "{e}");
    }
}

#[test]
fn secrets_manager_signs_with_a_profile_or_the_instance_role_when_the_environment_has_no_keys() {
    let cloud = FakeCloud::start();
    cloud.sm_accept(
        "eu-central-1",
        AwsKey { id: "AKIAPROFILE".into(), secret: "profile-secret".into(), token: None },
    );
    let role_key =
        AwsKey { id: "ASIAROLE".into(), secret: "role-secret".into(), token: Some("role-session".into()) };
    cloud.sm_accept("eu-central-1", role_key.clone());
    cloud.sm_put("app", r#"{"K":"from-sm"}"#);
    let home = empty_home();

    // AWS_PROFILE in the shared credentials file.
    let file = home.path().join("shared-credentials");
    std::fs::write(&file, "[default]\naws_access_key_id = AKIANOPE\naws_secret_access_key = nope\n\n[ci]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = profile-secret\n").unwrap();
    let ctx = aws_env(&cloud, &home)
        .with_var("AWS_SHARED_CREDENTIALS_FILE", file.to_str().unwrap())
        .with_var("AWS_PROFILE", "ci");
    assert_eq!(exposed(&credentials::fetch(&sm_source("app"), &ctx).unwrap()), pairs(&[("K", "from-sm")]));
    let missing = ctx.clone().with_var("AWS_PROFILE", "absent");
    assert!(credentials::fetch(&sm_source("app"), &missing)
        .unwrap_err()
        .to_string()
        .contains("no profile [absent]"));

    // No variables, no credentials file: the instance role from IMDSv2.
    cloud.imds_role(Some(("eka-ci-role", role_key)));
    let imds = aws_env(&cloud, &home).with_var("AWS_EC2_METADATA_SERVICE_ENDPOINT", &cloud.url());
    assert_eq!(exposed(&credentials::fetch(&sm_source("app"), &imds).unwrap()), pairs(&[("K", "from-sm")]));
    let call = cloud.calls().pop().unwrap();
    assert_eq!(call.header("x-amz-security-token"), Some("role-session"));

    // Nothing at all: the error says what was tried.
    cloud.imds_role(None);
    let err = credentials::fetch(&sm_source("app"), &imds).unwrap_err().to_string();
    assert!(err.contains("AWS_ACCESS_KEY_ID is not set") && err.contains("no IAM role"), "{err}");
}

#[test]
fn instance_metadata_uses_an_imdsv2_session_token() {
    let cloud = FakeCloud::start();
    let key =
        AwsKey { id: "ASIAIMDS".into(), secret: "imds-secret".into(), token: Some("imds-session".into()) };
    cloud.imds_role(Some(("web-role", key)));
    let ctx = Ctx::default().with_var("AWS_EC2_METADATA_SERVICE_ENDPOINT", &cloud.url());
    let source = CredentialSource::InstanceMetadata { provider: Some("aws".into()) };
    let got = credentials::fetch(&source, &ctx).unwrap();
    assert_eq!(
        exposed(&got),
        pairs(&[
            ("AWS_ACCESS_KEY_ID", "ASIAIMDS"),
            ("AWS_SECRET_ACCESS_KEY", "imds-secret"),
            ("AWS_SESSION_TOKEN", "imds-session")
        ])
    );
    let calls = cloud.calls();
    let seen: Vec<(&str, &str, u16)> =
        calls.iter().map(|c| (c.method.as_str(), c.path.as_str(), c.status)).collect();
    assert_eq!(
        seen,
        [
            ("PUT", "/latest/api/token", 200),
            ("GET", "/latest/meta-data/iam/security-credentials/", 200),
            ("GET", "/latest/meta-data/iam/security-credentials/web-role", 200),
        ]
    );
    assert_eq!(calls[0].header("x-aws-ec2-metadata-token-ttl-seconds"), Some("21600"));
    assert_eq!(calls[1].header("x-aws-ec2-metadata-token"), Some("AQAEAFake-imds-token-1"));

    // The fake refuses what IMDSv1 clients send: a GET without the session token.
    let (status, _, _) =
        common::http_get(&cloud.url().replace("http://", ""), "/latest/meta-data/iam/security-credentials/");
    assert_eq!(status, 401);

    cloud.imds_role(None);
    let err = credentials::fetch(&source, &ctx).unwrap_err().to_string();
    assert!(err.contains("HTTP 404: no IAM role is attached to this instance"), "{err}");
    cloud.inject(403, "Forbidden");
    let err = credentials::fetch(&source, &ctx).unwrap_err().to_string();
    assert!(err.contains(&format!("PUT {}/latest/api/token: HTTP 403: Forbidden", cloud.url())), "{err}");
    let off = ctx.clone().with_var("AWS_EC2_METADATA_DISABLED", "true");
    assert!(credentials::fetch(&source, &off).unwrap_err().to_string().contains("disabled"));
}

#[test]
fn aws_profile_gives_the_profiles_keys_as_environment_variables() {
    let home = empty_home();
    std::fs::create_dir_all(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        "[production]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\nregion = us-west-2\n",
    )
    .unwrap();
    let ctx = Ctx::capture(&CredentialSource::AwsProfile { profile: "production".into() }, &|k| {
        (k == "HOME").then(|| home.path().to_str().unwrap().to_string())
    });
    let got =
        credentials::fetch(&CredentialSource::AwsProfile { profile: "production".into() }, &ctx).unwrap();
    assert_eq!(
        exposed(&got),
        pairs(&[
            ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        ])
    );
}

fn app_secret() -> serde_json::Value {
    json!({ "GITHUB_APP_ID": fake_github::APP_ID, "GITHUB_APP_PRIVATE_KEY": fake_github::PRIVATE_KEY_PKCS1 })
}

#[test]
fn a_github_app_from_vault_authenticates_to_github() {
    let cloud = FakeCloud::start();
    cloud.vault_auth(TOKEN, Some("ci"));
    cloud.vault_put("secret", "eka-ci/github-app", app_secret());
    let credentials = format!(
        "{{ vault = {{ address = \"{}\", secret_path = \"eka-ci/github-app\", namespace = \"ci\" }} }}",
        cloud.url()
    );
    let s = Setup::with_app_credentials(&credentials, &[("VAULT_TOKEN", TOKEN.as_ref())]);
    assert_eq!(cloud.calls().len(), 1, "read once, at start-up");
    let f = Fixture::new();
    let head = f.head("head", r#"lib = mk "lib-2" "echo lib2 > $out" [];"#);
    let body = pull_request("opened", 3, f.path(), &head, &f.base, false, "octocat");
    assert_eq!(s.deliver("pull_request", "d-vault-1", &body), 202);
    // The check run exists only if GitHub accepted a JWT signed with the key held in Vault.
    let configure = s.wait_completed(&head, "EkaCI: Configure");
    assert_eq!(configure["conclusion"], "success");
    assert!(!s.fake.calls_to("POST", "/app/installations/*/access_tokens").is_empty());
    let log = s.server().log();
    assert!(!log.contains(TOKEN) && !log.contains("BEGIN RSA PRIVATE KEY"), "{log}");
}

#[test]
fn github_app_secrets_are_fetched_at_start_up_and_failures_stop_it() {
    let cloud = FakeCloud::start();
    let home = Home::new();
    let check = |credentials: &str, env: &[(&str, &str)]| {
        let cfg =
            home.write_config(&format!("[[github_apps]]\nid = \"main\"\ncredentials = {credentials}\n"));
        home.check_config(&cfg, env)
    };
    // Secrets Manager, signed with keys from the environment, endpoint on loopback.
    cloud.sm_accept(
        "us-east-1",
        AwsKey { id: "AKIASERVER".into(), secret: SM_SECRET_KEY.into(), token: None },
    );
    cloud.sm_put("prod/eka-ci/github-app", &app_secret().to_string());
    let sm = "{ aws-secrets-manager = { secret_name = \"prod/eka-ci/github-app\", region = \"us-east-1\" } }";
    let url = cloud.url();
    let aws = [
        ("AWS_ACCESS_KEY_ID", "AKIASERVER"),
        ("AWS_SECRET_ACCESS_KEY", SM_SECRET_KEY),
        ("AWS_ENDPOINT_URL", &url),
    ];
    let (code, err) = check(sm, &aws);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(cloud.calls().last().map(|c| c.status), Some(200));

    // A secret without the key names the missing field and the secret.
    cloud.sm_put("prod/eka-ci/github-app", r#"{"GITHUB_APP_ID":"4242"}"#);
    let (code, err) = check(sm, &aws);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "GITHUB_APP_PRIVATE_KEY in the Secrets Manager secret `prod/eka-ci/github-app` is missing"
        ),
        "{err}"
    );

    // Vault refusing the token: exit 2 with Vault's answer, without the token.
    cloud.vault_auth(TOKEN, None);
    let vault =
        format!("{{ vault = {{ address = \"{}\", secret_path = \"eka-ci/github-app\" }} }}", cloud.url());
    let (code, err) = check(&vault, &[("VAULT_TOKEN", "hvs.not-accepted")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("GitHub App `main` (credentials `vault`):")
            && err.contains("/v1/secret/data/eka-ci/github-app: HTTP 403: permission denied"),
        "{err}"
    );
    assert!(!err.contains("hvs.not-accepted"), "{err}");

    // Instance metadata and AWS profiles hold AWS keys, not an App key: refused with the way out.
    let (code, err) = check("\"instance-metadata\"", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("gives AWS credentials, not a GitHub App's id and private key"), "{err}");
}
