//! Showing a database URL to a person: everything but the password.

/// `url` with its password, if it has one, replaced by `***`; for messages
/// and logs. A string that is not a URL comes back trimmed and unchanged.
///
/// ```
/// use flowstone_postgres::redact;
///
/// assert_eq!(redact("postgres://fs:s3cret@db:5432/flow"), "postgres://fs:***@db:5432/flow");
/// assert_eq!(redact("postgres://fs@db/flow"), "postgres://fs@db/flow");
/// ```
pub fn redact(url: &str) -> String {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };

    // The authority ends at the path, the query or the fragment; its user
    // information ends at the last `@` inside it.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{}", redact_query_password(tail))
}

/// `tail` (path, query, fragment) with a `password=` query parameter hidden.
fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let cases = [
            ("postgres://u:p@h/db", "postgres://u:***@h/db"),
            (
                "postgresql://u:p@ss@h:5432/db?sslmode=disable",
                "postgresql://u:***@h:5432/db?sslmode=disable",
            ),
            (
                "postgres://u@h/db?password=x&sslmode=require",
                "postgres://u@h/db?password=***&sslmode=require",
            ),
            ("postgres://h/db", "postgres://h/db"),
            ("postgres://h/db?password=x", "postgres://h/db?password=***"),
            ("  postgres://u:p@h  ", "postgres://u:***@h"),
            ("postgres://x", "postgres://x"),
            ("not a url", "not a url"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown, "{url}");
        }
    }
}
