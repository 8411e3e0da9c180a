//! The request target as the apps see it: its path and query, whatever form
//! the client sent it in, and the path percent-decoded.

use super::HttpError;

/// Splits a request target into its path and query. Origin-form (`/p?q`),
/// absolute-form (`http://host/p?q`, from proxies) and `*` are accepted.
pub fn split_target(target: &[u8]) -> Result<(&[u8], &[u8]), HttpError> {
    let target = match target.iter().position(|&b| b == b'#') {
        Some(i) => &target[..i],
        None => target,
    };
    let path_and_query = if target.first() == Some(&b'/') || target == b"*" {
        target
    } else if let Some(rest) = strip_scheme(target) {
        match rest.iter().position(|&b| b == b'/' || b == b'?') {
            Some(i) if rest[i] == b'/' => &rest[i..],
            Some(i) => &rest[i..],
            None => b"/",
        }
    } else {
        return Err(HttpError::bad_request("invalid request target"));
    };
    Ok(match path_and_query.iter().position(|&b| b == b'?') {
        Some(0) => (&b"/"[..], &path_and_query[1..]),
        Some(i) => (&path_and_query[..i], &path_and_query[i + 1..]),
        None => (path_and_query, &b""[..]),
    })
}

fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    let lower = |n: usize| target.get(..n).map(|s| s.to_ascii_lowercase());
    if lower(7).as_deref() == Some(b"http://") {
        Some(&target[7..])
    } else if lower(8).as_deref() == Some(b"https://") {
        Some(&target[8..])
    } else {
        None
    }
}

/// Percent-decodes a path; malformed escapes are kept as they are.
pub fn percent_decode(path: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !path.contains(&b'%') {
        return std::borrow::Cow::Borrowed(path);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%'
            && i + 2 < path.len()
            && let (Some(h), Some(l)) = (hex(path[i + 1]), hex(path[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(path[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            split_target(b"/a/b?x=1").unwrap(),
            (&b"/a/b"[..], &b"x=1"[..])
        );
        assert_eq!(split_target(b"/a#frag").unwrap(), (&b"/a"[..], &b""[..]));
        assert_eq!(
            split_target(b"http://example.com/p?q").unwrap(),
            (&b"/p"[..], &b"q"[..])
        );
        assert_eq!(split_target(b"HTTPS://h").unwrap(), (&b"/"[..], &b""[..]));
        assert_eq!(split_target(b"*").unwrap(), (&b"*"[..], &b""[..]));
        assert!(split_target(b"foo").is_err());
    }

    #[test]
    fn decoding() {
        assert_eq!(&*percent_decode(b"/a%20b%2Fc"), b"/a b/c");
        assert_eq!(&*percent_decode(b"/%zz%4"), b"/%zz%4");
        assert_eq!(&*percent_decode(b"/%e9"), b"/\xe9");
    }
}
