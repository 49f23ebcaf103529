//! Whether a job's outputs may go to a cache, and whether a `nix-copy` destination is on a host the
//! server may reach.
//!
//! [`decide`] applies a cache's `permissions` (`allow_all`, `allowed_repos` over `owner/name`,
//! `allowed_branches` over the branch a pull request targets or a merge queue entry's base, with the
//! whole-name globs of `config/glob.rs`) and `allow_forks` (a pull request whose head lives outside the
//! base repository is never pushed unless the cache allows forks). [`destination_host`] and
//! [`check_destination`] refuse a `nix-copy` destination whose host resolves to a loopback, private,
//! link-local or unspecified address unless `security.allow_private_cache_hosts` is set (SSRF
//! protection: a cache URL in the server's configuration must not become a way into the local network).

use std::net::{IpAddr, ToSocketAddrs as _};

use crate::config::glob::glob_match;
use crate::config::{CacheConfig, CacheType};

/// What the push is for: a repository, the branch it lands on, and whether the code comes from a fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `owner/name`.
    pub repo: String,
    /// The branch a pull request targets (a merge queue entry's base).
    pub branch: String,
    /// The pull request's head lives outside the base repository.
    pub fork: bool,
}

/// Why a job's outputs are not pushed to a cache it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("no cache with this id is configured on this server")]
    Unknown,
    #[error("the cache does not allow repository {0} (allowed_repos)")]
    Repo(String),
    #[error("the cache does not allow branch {0} (allowed_branches)")]
    Branch(String),
    #[error("the pull request comes from a fork and the cache does not set allow_forks")]
    Fork,
}

/// Whether `subject` may push to `cache`.
pub fn decide(cache: &CacheConfig, subject: &Subject) -> Result<(), Skip> {
    if subject.fork && !cache.allow_forks {
        return Err(Skip::Fork);
    }
    let p = &cache.permissions;
    if p.allows(&subject.repo, Some(&subject.branch)) {
        return Ok(());
    }
    // Refused: say by what, with the same globs `Permissions::allows` used.
    if p.allowed_repos.iter().any(|r| glob_match(r, &subject.repo)) {
        Err(Skip::Branch(subject.branch.clone()))
    } else {
        Err(Skip::Repo(subject.repo.clone()))
    }
}

/// The network host a `nix-copy` destination talks to, if any: the authority of `http(s)://`,
/// `ssh://`, `ssh-ng://` URLs (user and port removed), the `endpoint` of an `s3://` URL. Local
/// stores (`file://`, `local`, `daemon`, a path) and S3 without an endpoint (AWS) have none.
pub fn destination_host(destination: &str) -> Option<String> {
    let (scheme, rest) = destination.split_once("://")?;
    let authority_of = |rest: &str| -> Option<String> {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = if let Some(v6) = host_port.strip_prefix('[') {
            v6.split_once(']').map(|(h, _)| h)?
        } else {
            host_port.split_once(':').map_or(host_port, |(h, _)| h)
        };
        (!host.is_empty()).then(|| host.to_ascii_lowercase())
    };
    match scheme {
        "http" | "https" | "ssh" | "ssh-ng" => authority_of(rest),
        "s3" => {
            let query = rest.split_once('?')?.1;
            let endpoint = query.split('&').find_map(|kv| kv.strip_prefix("endpoint="))?;
            let endpoint = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
            authority_of(endpoint)
        }
        _ => None,
    }
}

/// Whether an address is one the SSRF protection refuses.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // 100.64.0.0/10
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let seg = v6.segments()[0];
            v6.is_loopback() || v6.is_unspecified() || (seg & 0xfe00) == 0xfc00 || (seg & 0xffc0) == 0xfe80
        }
    }
}

/// Refuses a `nix-copy` destination whose host resolves to a private address unless `allow_private`.
/// Blocking (DNS): call through `smol::unblock`. Other cache types are not checked (their destination
/// is a cache name their client resolves).
pub fn check_destination(cache: &CacheConfig, allow_private: bool) -> Result<(), String> {
    if allow_private || cache.cache_type != CacheType::NixCopy {
        return Ok(());
    }
    let Some(host) = destination_host(&cache.destination) else { return Ok(()) };
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match (host.as_str(), 0u16).to_socket_addrs() {
            Ok(a) => a.map(|s| s.ip()).collect(),
            Err(e) => return Err(format!("cannot resolve the destination host {host}: {e}")),
        },
    };
    match addrs.iter().find(|ip| is_private(**ip)) {
        Some(ip) => Err(format!(
            "the destination host {host} resolves to the private or loopback address {ip}; set \
             security.allow_private_cache_hosts = true to allow it"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CredentialSource, Permissions};

    fn cache(p: Permissions, allow_forks: bool) -> CacheConfig {
        CacheConfig {
            id: "c".into(),
            cache_type: CacheType::NixCopy,
            destination: "file:///tmp/c".into(),
            credentials: CredentialSource::None,
            permissions: p,
            push_cached: false,
            allow_forks,
            secret_key_file: None,
        }
    }

    fn subject(repo: &str, branch: &str, fork: bool) -> Subject {
        Subject { repo: repo.into(), branch: branch.into(), fork }
    }

    #[test]
    fn repos_branches_and_forks() {
        let p = Permissions {
            allow_all: false,
            allowed_repos: vec!["myorg/*".into()],
            allowed_branches: vec!["main".into(), "release/*".into()],
        };
        let c = cache(p, false);
        assert_eq!(decide(&c, &subject("myorg/app", "main", false)), Ok(()));
        assert_eq!(decide(&c, &subject("myorg/app", "release/v1", false)), Ok(()));
        assert_eq!(
            decide(&c, &subject("myorg/app", "release-x", false)),
            Err(Skip::Branch("release-x".into()))
        );
        assert_eq!(decide(&c, &subject("other/app", "main", false)), Err(Skip::Repo("other/app".into())));
        assert_eq!(decide(&c, &subject("myorg/a/b", "main", false)), Err(Skip::Repo("myorg/a/b".into())));
        assert_eq!(decide(&c, &subject("myorg/app", "main", true)), Err(Skip::Fork));
        let all = cache(Permissions::default(), true);
        assert_eq!(decide(&all, &subject("anyone/x", "feature", true)), Ok(()));
        assert_eq!(
            decide(&cache(Permissions::default(), false), &subject("a/b", "m", true)),
            Err(Skip::Fork)
        );
    }

    #[test]
    fn hosts_of_destinations() {
        assert_eq!(destination_host("https://cache.example.com/x").as_deref(), Some("cache.example.com"));
        assert_eq!(destination_host("http://127.0.0.1:8080").as_deref(), Some("127.0.0.1"));
        assert_eq!(destination_host("ssh-ng://nix@[::1]:22?ssh-key=/k").as_deref(), Some("::1"));
        assert_eq!(destination_host("ssh://builder@10.0.0.5").as_deref(), Some("10.0.0.5"));
        assert_eq!(
            destination_host("s3://b/p?region=x&endpoint=http://minio.local:9000").as_deref(),
            Some("minio.local")
        );
        assert_eq!(destination_host("s3://bucket/p?region=us-east-1"), None);
        assert_eq!(destination_host("file:///srv/cache"), None);
        assert_eq!(destination_host("/srv/cache"), None);
    }

    #[test]
    fn private_destinations_are_refused_unless_allowed() {
        let mut c = cache(Permissions::default(), false);
        for d in ["http://127.0.0.1:8080", "ssh://root@10.1.2.3", "https://[::1]/", "http://169.254.169.254/"]
        {
            c.destination = d.into();
            let err = check_destination(&c, false).unwrap_err();
            assert!(err.contains("allow_private_cache_hosts"), "{d}: {err}");
            assert_eq!(check_destination(&c, true), Ok(()));
        }
        c.destination = "http://93.184.216.34/".into();
        assert_eq!(check_destination(&c, false), Ok(()));
        c.destination = "file:///srv/cache".into();
        assert_eq!(check_destination(&c, false), Ok(()));
    }
}
