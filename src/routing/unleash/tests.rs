use super::*;

struct One(Option<String>);
impl Context for One {
    fn get(&self, field: Field) -> Option<&str> {
        (field == Field::UserId).then_some(self.0.as_deref()).flatten()
    }
    fn now_ms(&self) -> i64 {
        0
    }
    fn random(&self) -> u32 {
        0
    }
}

fn regex(pattern: &str, inverted: bool, warn: &mut Vec<String>) -> Cond {
    let c = Constraint {
        context_name: "userId".into(),
        operator: "REGEX".into(),
        value: Some(pattern.into()),
        inverted,
        ..Constraint::default()
    };
    Cond::compile(&c, &mut Schema::default(), warn)
}

/// The bounds that keep a REGEX constraint's cost per request in microseconds: a pattern
/// past the length or program size is an error (as an invalid one: `check` says so), and a
/// value past the text bound does not match.
#[test]
fn regex_constraints_are_bounded() {
    let mut warn = Vec::new();
    let c = regex("^a+$", false, &mut warn);
    assert!(warn.is_empty());
    let text = |n: usize| One(Some("a".repeat(n)));
    assert!(c.holds(&text(MAX_REGEX_TEXT)));
    assert!(!c.holds(&text(MAX_REGEX_TEXT + 1)));
    assert!(!c.holds(&text(60_000)));
    // Inverted, a value past the bound holds.
    assert!(regex("^a+$", true, &mut warn).holds(&text(60_000)));
    // Too long a pattern, or too large a program, is refused with a reason.
    regex(&"a".repeat(MAX_REGEX_PATTERN + 1), false, &mut warn);
    assert!(warn.pop().unwrap().contains("at most 512"));
    regex("(?:[a-z]|[0-9]|[a-m]){0,200}(?:[a-z]|1){200}x", false, &mut warn);
    assert!(warn.pop().unwrap().contains("size limit"), "{warn:?}");
    // Classes are ASCII (as JavaScript's), so common patterns fit the program bound.
    for p in [
        r"^[\w.+-]+@[\w-]+\.[\w.]+$",
        r"^user\d{3}$",
        r"\bcat\b",
        r"^[[:alpha:]]+$",
        r"(?i)mobile|android",
    ] {
        regex(p, false, &mut warn);
        assert!(warn.is_empty(), "{p}: {warn:?}");
    }
    let email = regex(r"^[\w.+-]+@[\w-]+\.[\w.]+$", false, &mut warn);
    assert!(email.holds(&One(Some("test@example.com".into()))));
    assert!(!email.holds(&One(Some("not-an-email".into()))));
}

fn cond(operator: &str, value: Option<&str>, values: &[&str], warn: &mut Vec<String>) -> Cond {
    let c = Constraint {
        context_name: "userId".into(),
        operator: operator.into(),
        value: value.map(Into::into),
        values: values.iter().map(|v| (*v).to_owned()).collect(),
        ..Constraint::default()
    };
    Cond::compile(&c, &mut Schema::default(), warn)
}

/// Awkward inputs, read as Unleash's SDKs read them.
#[test]
fn awkward_values_are_read_as_the_sdks_read_them() {
    let mut warn = Vec::new();
    let user = |v: &str| One(Some(v.into()));
    // Single-value operators read `value`; `values` is for the list operators.
    let gt = cond("NUM_GT", None, &["5"], &mut warn);
    assert!(warn.pop().unwrap().contains("is not a number"));
    assert!(!gt.holds(&user("10")));
    let gt = cond("NUM_GT", Some(" 5"), &[], &mut warn);
    assert!(warn.is_empty(), "{warn:?}");
    assert!(gt.holds(&user(" 10")) && !gt.holds(&user("4")));
    assert!(gt.holds(&user("inf")));
    assert!(!gt.holds(&user("")));
    // A padded address is no address; an IPv4-mapped one is not in an IPv4 range.
    let cidr = cond("IN_CIDR", None, &["10.0.0.0/8"], &mut warn);
    assert!(cidr.holds(&user("10.1.2.3")));
    assert!(!cidr.holds(&user(" 10.1.2.3")));
    assert!(!cidr.holds(&user("::ffff:10.1.2.3")));
}
