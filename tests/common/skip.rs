//! Tests that cannot run in some environments (no root, no IPv6 loopback) skip themselves,
//! except under CI (`CI=true`), where a skip would hide that the test never ran.

/// Skip the calling test (return right after this), or fail it when `CI=true`.
pub fn skip(reason: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true, and this test cannot run here: {reason}"
    );
    eprintln!("skipped: {reason}");
}
