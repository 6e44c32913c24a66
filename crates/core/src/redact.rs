//! Connection strings without their secrets, for logs and error messages: one definition for
//! the service and the tooling.
//!
//! Whatever the string, parsable or not: a typo in the scheme (`postgress://`), a bad port or
//! an unencoded character must not put the password on stderr. The user information is taken
//! to end at the string's last `@` (a password may hold `/`, `?` or `#` unencoded; a query that
//! holds an `@` is then masked too, the safe side), and query parameters that carry a secret
//! (`password`, `sslpassword`) are masked alike.

/// What a masked secret reads as.
pub const MASK: &str = "***";

/// `url` with its password, and any query parameter carrying one, replaced by `***`.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let (authority, tail) = match rest.rfind('@') {
        Some(at) => {
            let (userinfo, tail) = rest.split_at(at);
            let user = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:{MASK}"),
                None => userinfo.to_owned(),
            };
            (user, tail)
        }
        None => (String::new(), rest),
    };
    format!("{scheme}{authority}{}", mask_query(tail))
}

/// The query parameters that carry a secret, masked.
fn mask_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _)) if is_secret_key(key) => format!("{key}={MASK}"),
            _ => param.to_owned(),
        })
        .collect();
    format!("{path}?{}", params.join("&"))
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || key == "passfile" || key == "token"
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn no_password_survives_whatever_the_string() {
        for (url, shown) in [
            (
                "postgres://cdr:S3cretPW@db:5432/cdr",
                "postgres://cdr:***@db:5432/cdr",
            ),
            (
                "postgress://cdr:S3cretPW@db:5432/cdr",
                "postgress://cdr:***@db:5432/cdr",
            ),
            ("ampq://u:S3cretPW@mq/%2f", "ampq://u:***@mq/%2f"),
            (
                "amqp://u:S3cretPW@mq:notaport/",
                "amqp://u:***@mq:notaport/",
            ),
            (
                "postgres://cdr:S3/cr?et#PW@db/cdr",
                "postgres://cdr:***@db/cdr",
            ),
            ("cdr:S3cretPW@db", "cdr:***@db"),
            (
                "postgres://db/cdr?user=cdr&password=S3cretPW&sslmode=require",
                "postgres://db/cdr?user=cdr&password=***&sslmode=require",
            ),
            ("postgres://cdr@db/cdr", "postgres://cdr@db/cdr"),
            ("amqp://mq:5672/%2f", "amqp://mq:5672/%2f"),
            ("", ""),
        ] {
            let redacted = redact(url);
            assert_eq!(redacted, shown, "{url}");
            assert!(!redacted.contains("S3cret"), "{redacted}");
        }
    }
}
