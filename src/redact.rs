//! Secrets kept out of logs and error messages: URLs with their passwords replaced.

/// A URL fit for logs and error messages: any password replaced by `***`. A comma-separated list
/// (a cluster's seeds) is redacted URL by URL: parsed whole, the seeds after the first would be
/// read as the first one's path and kept as they are.
pub fn redact_url(raw: &str) -> String {
    let urls: Vec<&str> = raw.split(',').map(str::trim).collect();
    if urls.len() > 1 && urls.iter().all(|u| u.contains("://")) {
        return urls
            .iter()
            .map(|u| redact_one_url(u))
            .collect::<Vec<_>>()
            .join(",");
    }
    redact_one_url(raw)
}

fn redact_one_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // libpq-style URLs may carry the password as a parameter too.
            if u.query_pairs().any(|(k, _)| is_secret_param(&k)) {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if is_secret_param(&k) {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        // Not a URL we can parse: show only the scheme, never the rest (it may hold a secret).
        Err(_) => match raw.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://(unparseable URL)"),
            None => "(unparseable URL)".to_string(),
        },
    }
}

fn is_secret_param(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "password" | "pass" | "sslpassword"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        let r = redact_url("postgres://app:s3cret@db:5432/chat");
        assert!(!r.contains("s3cret"), "{r}");
        assert!(r.contains("app:***@db"), "{r}");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
        assert!(!redact_url("redis://:pw@[bad").contains("pw"));
        let seeds =
            redact_url("redis://u:pw1@a:7000/,redis://u:pw2@b:7001/, rediss://u:pw3@c:7002/");
        assert_eq!(
            seeds,
            "redis://u:***@a:7000/,redis://u:***@b:7001/,rediss://u:***@c:7002/"
        );
        let q = redact_url("postgres://db/chat?sslmode=require&password=hunter2");
        assert!(
            !q.contains("hunter2") && q.contains("sslmode=require"),
            "{q}"
        );
    }
}
