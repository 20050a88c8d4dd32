//! What a span keeps of an SQL statement: its text with the literals taken out
//! (`db.query.text`), and a low-cardinality summary (`db.query.summary`, the
//! operation and its first table: `SELECT orders`) with its operation
//! (`db.operation.name`). Never a literal: values in strings, numbers, dollar
//! quotes and hex/bit strings become `?`.

/// Longest statement text kept (the capture limits it further).
const MAX_TEXT: usize = 1024;

/// The statement with every literal replaced by `?` and runs of white space
/// collapsed. Quoted identifiers (`"Name"`) stay; a statement cut by the
/// capture in the middle of a literal ends with `?`.
pub fn without_literals(sql: &str) -> String {
    // Bytes throughout: every place the text is cut is an ASCII byte, so no
    // character is split (but the MAX_TEXT cut, which the lossy copy mends).
    let b = sql.as_bytes();
    let mut out = Vec::with_capacity(sql.len().min(MAX_TEXT));
    let mut i = 0;
    let mut space = false;
    while i < b.len() && out.len() < MAX_TEXT {
        let c = b[i];
        match c {
            b'\'' => {
                i = skip_quoted(b, i + 1, b'\'');
                push_token(&mut out, &mut space, b"?");
            }
            b'E' | b'e' | b'B' | b'b' | b'X' | b'x' | b'N' | b'n'
                if b.get(i + 1) == Some(&b'\'') && !ident_before(b, i) =>
            {
                // E'…', B'…', X'…', N'…' literals.
                i = skip_quoted(b, i + 2, b'\'');
                push_token(&mut out, &mut space, b"?");
            }
            b'$' if dollar_tag(b, i).is_some() => {
                let tag_len = dollar_tag(b, i).unwrap_or(1);
                let tag = &b[i..i + tag_len];
                let body = i + tag_len;
                i = b[body..]
                    .windows(tag_len)
                    .position(|w| w == tag)
                    .map_or(b.len(), |p| body + p + tag_len);
                push_token(&mut out, &mut space, b"?");
            }
            b'$' => {
                // A parameter ($1) stays as written.
                let end = i + 1 + b[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
                push_token(&mut out, &mut space, &b[i..end]);
                i = end;
            }
            b'0'..=b'9' if !ident_before(b, i) => {
                let end = i + b[i..]
                    .iter()
                    .take_while(|d| d.is_ascii_alphanumeric() || **d == b'.' || **d == b'_')
                    .count();
                push_token(&mut out, &mut space, b"?");
                i = end;
            }
            b'"' => {
                let end = skip_quoted(b, i + 1, b'"');
                push_token(&mut out, &mut space, &b[i..end.min(b.len())]);
                i = end;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                // A comment may hold anything: dropped.
                i += b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .unwrap_or(b.len() - i);
                space = !out.is_empty();
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = b[i + 2..]
                    .windows(2)
                    .position(|w| w == b"*/")
                    .map_or(b.len(), |p| i + 2 + p + 2);
                space = !out.is_empty();
            }
            c if c.is_ascii_whitespace() => {
                space = !out.is_empty();
                i += 1;
            }
            c if is_word(c) => {
                // An identifier or keyword (a number cannot start one here).
                let end = i + b[i..].iter().take_while(|&&x| is_word(x)).count();
                push_token(&mut out, &mut space, &b[i..end]);
                i = end;
            }
            _ => {
                // Punctuation, one byte at a time.
                push_token(&mut out, &mut space, &b[i..i + 1]);
                i += 1;
            }
        }
    }
    out.truncate(MAX_TEXT);
    String::from_utf8_lossy(&out).into_owned()
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Whether the byte before `i` continues an identifier (`t1`, `x'`).
fn ident_before(b: &[u8], i: usize) -> bool {
    i > 0 && is_word(b[i - 1])
}

/// The end of a quoted run starting after its opening quote (doubled quotes
/// escape; a backslash escapes too, as in E'' strings and MySQL).
fn skip_quoted(b: &[u8], mut i: usize, quote: u8) -> usize {
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// The length of a dollar-quote tag (`$$`, `$body$`) starting at `i`.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let rest = &b[i + 1..];
    let name = rest
        .iter()
        .take_while(|c| c.is_ascii_alphabetic() || **c == b'_')
        .count();
    (rest.get(name) == Some(&b'$')).then_some(name + 2)
}

fn push_token(out: &mut Vec<u8>, space: &mut bool, token: &[u8]) {
    if *space && !out.is_empty() {
        out.push(b' ');
    }
    *space = false;
    out.extend_from_slice(token);
}

/// The operation (`SELECT`) and the summary (`SELECT orders`) of a statement
/// already without literals: the first keyword, and the table it reads or
/// writes first when one is named (after FROM, INTO, UPDATE, TABLE or JOIN).
pub fn summarize(text: &str) -> (String, String) {
    let words: Vec<&str> = text
        .split(|c: char| c.is_ascii_whitespace() || c == '(' || c == ')' || c == ',' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let Some(first) = words.first() else {
        return (String::new(), String::new());
    };
    let operation = first.to_ascii_uppercase();
    if !operation.bytes().all(|c| c.is_ascii_alphabetic()) || operation.len() > 16 {
        return (String::new(), String::new());
    }
    let after = match operation.as_str() {
        "SELECT" | "DELETE" => &["FROM"][..],
        "INSERT" | "REPLACE" => &["INTO"][..],
        "UPDATE" => &["UPDATE"][..],
        "COPY" | "TRUNCATE" | "LOCK" => &[][..],
        "CREATE" | "DROP" | "ALTER" => &["TABLE", "INDEX", "VIEW"][..],
        _ => return (operation.clone(), operation),
    };
    let table = if after.is_empty() {
        words
            .get(1)
            .filter(|w| !w.eq_ignore_ascii_case("TABLE"))
            .or_else(|| words.get(2))
    } else {
        words
            .iter()
            .position(|w| after.iter().any(|a| w.eq_ignore_ascii_case(a)))
            .and_then(|p| {
                words[p + 1..].iter().find(|w| {
                    !["ONLY", "IF", "NOT", "EXISTS", "LOW_PRIORITY", "IGNORE"]
                        .iter()
                        .any(|k| w.eq_ignore_ascii_case(k))
                })
            })
    };
    let table = table.filter(|t| {
        t.bytes()
            .all(|c| is_word(c) || c == b'.' || c == b'"' || c == b'`')
    });
    match table {
        Some(t) => (operation.clone(), format!("{operation} {t}")),
        None => (operation.clone(), operation),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_go_identifiers_and_parameters_stay() {
        assert_eq!(
            without_literals("SELECT * FROM users WHERE name = 'O''Brien' AND id = 42"),
            "SELECT * FROM users WHERE name = ? AND id = ?"
        );
        assert_eq!(
            without_literals("insert into t1 (a, \"B c\") values ($1, E'x\\'y', 3.5e10, X'ff')"),
            "insert into t1 (a, \"B c\") values ($1, ?, ?, ?)"
        );
        assert_eq!(
            without_literals("SELECT $tag$ secret $tag$, $$x$$ -- a comment 'z'\n FROM t"),
            "SELECT ?, ? FROM t"
        );
        assert_eq!(without_literals("SELECT 'cut by the capt"), "SELECT ?");
        assert_eq!(
            without_literals("UPDATE a2 SET v=v+1"),
            "UPDATE a2 SET v=v+?"
        );
    }

    #[test]
    fn summaries_name_the_operation_and_its_table() {
        let s = |q: &str| summarize(&without_literals(q)).1;
        assert_eq!(
            s("SELECT id FROM orders o JOIN users u ON u.id = o.uid"),
            "SELECT orders"
        );
        assert_eq!(
            s("insert into public.items(a) values (1)"),
            "INSERT public.items"
        );
        assert_eq!(
            s("UPDATE counters SET n = n + 1 WHERE k = 'a'"),
            "UPDATE counters"
        );
        assert_eq!(s("DELETE FROM sessions WHERE t < now()"), "DELETE sessions");
        assert_eq!(s("select 1"), "SELECT");
        assert_eq!(s("BEGIN"), "BEGIN");
        assert_eq!(s("CREATE TABLE IF NOT EXISTS kv (k text)"), "CREATE kv");
        assert_eq!(s(""), "");
        assert_eq!(summarize("SELECT").0, "SELECT");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = summarize(&without_literals(&s));
        }

        #[test]
        fn never_keeps_a_literal(
            s in "[a-zA-Z0-9_ =<>(),.*+]{0,60}",
            secret in "[a-z]{12}",
            number in 1u64..u64::MAX,
        ) {
            let q = format!("{s} '{secret}' {s} = {number}");
            let out = without_literals(&q);
            proptest::prop_assert!(!out.contains(&secret) || s.contains(&secret), "{}", out);
            let digits = number.to_string();
            proptest::prop_assert!(!out.contains(&digits) || s.contains(&digits), "{}", out);
        }
    }
}
