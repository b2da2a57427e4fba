//! Property tests: the SMTP reply parser, the MTA-STS policy/TXT/HTTP parsers and the
//! destination parser never panic, and what they accept is consistent.

use mailtls::probe::Target;
use mailtls::probe::smtp::{ReplyAssembler, SmtpLimits, parse_replies, parse_reply_line};
use mailtls::probe::sts::{mx_matches, parse_http_response, parse_policy, parse_txt};
use proptest::prelude::*;

fn reply_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Well-formed lines.
        (
            "[2-5][0-5][0-9]",
            prop_oneof![Just(" "), Just("-")],
            "[ -~]{0,60}"
        )
            .prop_map(|(c, sep, t)| format!("{c}{sep}{t}\r\n").into_bytes()),
        // Anything at all.
        proptest::collection::vec(any::<u8>(), 0..80),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn reply_parser_never_panics(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let limits = SmtpLimits { max_line_len: 128, max_reply_lines: 8, max_session_bytes: 4096 };
        if let Ok((replies, used)) = parse_replies(&input, &limits) {
            prop_assert!(used <= input.len());
            for r in replies {
                prop_assert!((200..=559).contains(&r.code));
                prop_assert!(!r.lines.is_empty() && r.lines.len() <= 8);
            }
        }
    }

    #[test]
    fn reply_lines_assemble(lines in proptest::collection::vec(reply_line(), 0..20)) {
        let mut asm = ReplyAssembler::new(10);
        for l in &lines {
            let single = parse_reply_line(l);
            match asm.feed(l) {
                Ok(Some(r)) => {
                    prop_assert!(single.is_ok());
                    prop_assert!(r.lines.len() <= 10);
                    asm = ReplyAssembler::new(10);
                }
                Ok(None) => prop_assert!(single.is_ok()),
                Err(_) => { asm = ReplyAssembler::new(10); }
            }
        }
    }

    #[test]
    fn well_formed_multiline_round_trips(
        code in (2u16..=5, 0u16..=5, 0u16..=9).prop_map(|(a, b, c)| a * 100 + b * 10 + c),
        texts in proptest::collection::vec("[ -~]{0,40}", 1..10),
    ) {
        let mut input = String::new();
        for (i, t) in texts.iter().enumerate() {
            let sep = if i + 1 == texts.len() { ' ' } else { '-' };
            input.push_str(&format!("{code}{sep}{t}\r\n"));
        }
        let (replies, used) = parse_replies(input.as_bytes(), &SmtpLimits::default()).expect("parses");
        prop_assert_eq!(used, input.len());
        prop_assert_eq!(replies.len(), 1);
        prop_assert_eq!(&replies[0].lines, &texts);
    }

    #[test]
    fn policy_parser_never_panics(input in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(p) = parse_policy(&input) {
            prop_assert_eq!(p.version.as_str(), "STSv1");
            prop_assert!(p.max_age <= 31_557_600);
        }
    }

    #[test]
    fn policy_parser_structured(
        mode in prop_oneof![
            Just("enforce".to_string()),
            Just("testing".to_string()),
            Just("none".to_string()),
            "[a-z]{0,8}",
        ],
        mx in proptest::collection::vec("(\\*\\.)?[a-z0-9-]{1,10}(\\.[a-z0-9-]{1,10}){0,3}", 0..5),
        max_age in prop_oneof![0u64..100_000_000, Just(31_557_600)],
        crlf in any::<bool>(),
        junk in "[a-z_]{1,8}: [ -~]{0,20}",
    ) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut text = format!("version: STSv1{nl}mode: {mode}{nl}{junk}{nl}");
        for m in &mx { text.push_str(&format!("mx: {m}{nl}")); }
        text.push_str(&format!("max_age: {max_age}{nl}"));
        let parsed = parse_policy(text.as_bytes());
        let junk_key = junk.split(':').next().unwrap_or_default();
        let junk_clashes = ["version", "mode", "max_age", "mx"].contains(&junk_key);
        let valid = ["enforce", "testing", "none"].contains(&mode.as_str())
            && max_age <= 31_557_600
            && (!mx.is_empty() || mode == "none")
            && !junk_clashes;
        if valid {
            let p = parsed.expect("valid policy parses");
            prop_assert_eq!(p.mx.len(), mx.len());
            for (pat, host) in p.mx.iter().zip(&mx) {
                let concrete = host.replacen("*.", "x.", 1);
                prop_assert!(mx_matches(pat, &concrete));
            }
        }
    }

    #[test]
    fn txt_http_and_targets_never_panic(s in "[ -~]{0,200}", b in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_txt(&s);
        let _ = parse_http_response(&b);
        let _ = mx_matches(&s, &s);
        if let Ok(t) = Target::parse(&s, 25) {
            // What parses is stable under display → parse.
            let again = Target::parse(&t.display(), 25).expect("display parses");
            prop_assert_eq!(again.display(), t.display());
        }
    }
}
