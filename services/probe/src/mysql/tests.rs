use super::*;
use proptest::prelude::*;

fn packet(seq_id: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    v.push(seq_id);
    v.extend_from_slice(payload);
    v
}

fn greeting() -> Vec<u8> {
    let mut p = vec![10];
    p.extend_from_slice(b"10.11.14-MariaDB-0+deb12u2\0");
    p.extend_from_slice(&[0; 40]);
    packet(0, &p)
}

fn handshake_response(deprecate_eof: bool) -> Vec<u8> {
    let caps: u32 = 0x000A_A20F
        | if deprecate_eof {
            CLIENT_DEPRECATE_EOF
        } else {
            0
        };
    let mut p = caps.to_le_bytes().to_vec();
    p.extend_from_slice(&[0, 0, 0, 1, 33]);
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(b"root\0\0");
    packet(1, &p)
}

fn ok(seq_id: u8, status: u16) -> Vec<u8> {
    let mut p = vec![0x00, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    packet(seq_id, &p)
}

fn eof(seq_id: u8) -> Vec<u8> {
    packet(seq_id, &[0xFE, 0, 0, 2, 0])
}

fn query(text: &str) -> Vec<u8> {
    let mut p = vec![COM_QUERY];
    p.extend_from_slice(text.as_bytes());
    packet(0, &p)
}

/// A result set of one column and `rows` rows, old style (EOFs) or new (a
/// final OK with a 0xFE header).
fn result_set(rows: usize, deprecate_eof: bool) -> Vec<u8> {
    let mut v = packet(1, &[1]);
    v.extend(packet(
        2,
        b"\x03def\x00\x00\x00\x01v\x01v\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00",
    ));
    let mut seq = 3;
    if !deprecate_eof {
        v.extend(eof(seq));
        seq += 1;
    }
    for i in 0..rows {
        v.extend(packet(seq, format!("\x05{i:05}").as_bytes()));
        seq = seq.wrapping_add(1);
    }
    if deprecate_eof {
        v.extend(packet(seq, &[0xFE, 0, 0, 2, 0, 0, 0]));
    } else {
        v.extend(eof(seq));
    }
    v
}

fn err(code: u16) -> Vec<u8> {
    let mut p = vec![0xFF];
    p.extend_from_slice(&code.to_le_bytes());
    p.extend_from_slice(b"#42S02Table 'test.nope' doesn't exist");
    packet(1, &p)
}

struct My {
    s: Session,
    c: u32,
    r: u32,
    cap: usize,
}

impl My {
    fn connected(deprecate_eof: bool) -> Self {
        let mut my = My {
            s: Session::new(false),
            c: 100,
            r: 900,
            cap: 4096,
        };
        assert!(my.send(Side::Answers, &greeting()).is_empty());
        assert!(
            my.send(Side::Requests, &handshake_response(deprecate_eof))
                .is_empty()
        );
        assert!(my.send(Side::Answers, &ok(2, 2)).is_empty());
        my
    }
    fn send(&mut self, side: Side, bytes: &[u8]) -> Vec<(Side, Message)> {
        let seq = match side {
            Side::Requests => &mut self.c,
            Side::Answers => &mut self.r,
        };
        let t = Transfer {
            seq: *seq,
            len: bytes.len() as u32,
            data: &bytes[..bytes.len().min(self.cap)],
            ts_ns: 1,
            tid: 2,
        };
        *seq = seq.wrapping_add(bytes.len() as u32);
        let mut out = Vec::new();
        self.s.feed(side, t, &mut out);
        out
    }
}

fn text(m: &Message) -> &str {
    match &m.l7 {
        L7::Mysql(MysqlFrame::Command { text }) => text,
        other => panic!("not a command: {other:?}"),
    }
}

fn error(m: &Message) -> &str {
    match &m.l7 {
        L7::Mysql(MysqlFrame::Result { error }) => error,
        other => panic!("not a result: {other:?}"),
    }
}

#[test]
fn queries_and_result_sets_old_and_new_style() {
    for deprecate in [false, true] {
        let mut my = My::connected(deprecate);
        let (c, r) = (my.c, my.r);
        let out = my.send(Side::Requests, &query("SELECT v FROM items WHERE k = 'x'"));
        assert_eq!(
            (out[0].1.seq, text(&out[0].1)),
            (c, "SELECT v FROM items WHERE k = 'x'")
        );
        let rs = result_set(3, deprecate);
        // Row by row: it ends with its last packet, not before.
        let out = my.send(Side::Answers, &rs[..rs.len() - 7]);
        assert!(out.is_empty(), "deprecate {deprecate}");
        let out = my.send(Side::Answers, &rs[rs.len() - 7..]);
        assert_eq!(out.len(), 1, "deprecate {deprecate}");
        assert_eq!((out[0].1.seq, out[0].1.bytes), (r, rs.len() as u64));
        assert_eq!(error(&out[0].1), "");
    }
}

#[test]
fn ok_err_and_multiple_result_sets() {
    let mut my = My::connected(false);
    my.send(Side::Requests, &query("INSERT INTO t VALUES (1)"));
    assert_eq!(my.send(Side::Answers, &ok(1, 2)).len(), 1);
    my.send(Side::Requests, &query("SELECT * FROM nope"));
    let out = my.send(Side::Answers, &err(1146));
    assert_eq!(error(&out[0].1), "1146");
    // CALL p(): a result set with "more results", then the final OK.
    my.send(Side::Requests, &query("CALL p()"));
    let mut first = result_set(1, false);
    let n = first.len();
    first[n - 2..].copy_from_slice(&(2u16 | SERVER_MORE_RESULTS_EXISTS).to_le_bytes());
    assert!(my.send(Side::Answers, &first).is_empty());
    assert_eq!(my.send(Side::Answers, &ok(6, 2)).len(), 1);
}

#[test]
fn prepared_statements_name_their_executions() {
    let mut my = My::connected(false);
    let mut prepare = vec![COM_STMT_PREPARE];
    prepare.extend_from_slice(b"SELECT v FROM items WHERE k = ?");
    let out = my.send(Side::Requests, &packet(0, &prepare));
    assert_eq!(text(&out[0].1), "SELECT v FROM items WHERE k = ?");
    // OK: statement 7, one column, one parameter; their definitions, each
    // group with its EOF.
    let def = b"\x03def\x00\x00\x00\x01?\x00\x0c\x3f\x00\x00\x00\x00\x00\xfd\x80\x00\x00\x00\x00";
    let answer = [
        packet(1, &[0, 7, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]),
        packet(2, def),
        eof(3),
        packet(4, def),
        eof(5),
    ]
    .concat();
    assert_eq!(my.send(Side::Answers, &answer).len(), 1);
    let execute = packet(
        0,
        &[
            COM_STMT_EXECUTE,
            7,
            0,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            1,
            0xfd,
            0,
            1,
            b'a',
        ],
    );
    let out = my.send(Side::Requests, &execute);
    assert_eq!(text(&out[0].1), "SELECT v FROM items WHERE k = ?");
    assert_eq!(my.send(Side::Answers, &result_set(1, false)).len(), 1);
    // Closed: no answer, no span; a later execute of it names nothing.
    assert!(
        my.send(Side::Requests, &packet(0, &[COM_STMT_CLOSE, 7, 0, 0, 0]))
            .is_empty()
    );
    assert_eq!(text(&my.send(Side::Requests, &execute)[0].1), "");
}

#[test]
fn rows_beyond_the_capture_end_with_the_next_command() {
    let mut my = My::connected(true);
    my.cap = 200;
    let r = my.r;
    my.send(Side::Requests, &query("SELECT v FROM big"));
    let rs = result_set(300, true);
    assert!(my.send(Side::Answers, &rs).is_empty());
    assert_eq!(my.s.problems.unframed, 1);
    let out = my.send(Side::Requests, &packet(0, &[0x0e]));
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].1.seq, out[0].1.bytes), (r, rs.len() as u64));
    assert_eq!(text(&out[1].1), "PING");
    assert_eq!(my.send(Side::Answers, &ok(1, 2)).len(), 1);
}

#[test]
fn tls_is_not_followed() {
    let mut my = My {
        s: Session::new(false),
        c: 0,
        r: 0,
        cap: 4096,
    };
    my.send(Side::Answers, &greeting());
    let caps = (0x000A_A20F_u32 | CLIENT_SSL).to_le_bytes();
    let mut ssl = caps.to_vec();
    ssl.extend_from_slice(&[0; 28]);
    my.send(Side::Requests, &packet(1, &ssl));
    assert!(my.send(Side::Requests, &query("SELECT 1")).is_empty());
}

#[test]
fn what_starts_a_mysql_connection() {
    fn t(data: &[u8]) -> Transfer<'_> {
        Transfer {
            seq: 0,
            len: data.len() as u32,
            data,
            ts_ns: 0,
            tid: 0,
        }
    }
    assert_eq!(starts_session(&t(&greeting())), Some(false));
    assert_eq!(starts_session(&t(&query("SELECT 1"))), Some(true));
    assert_eq!(starts_session(&t(&ok(1, 2))), None);
    assert_eq!(starts_session(&t(b"GET / HTTP/1.1\r\n\r\n")), None);
    assert_eq!(starts_session(&t(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f])), None);
}

proptest! {
    #[test]
    fn never_panics(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..12),
        cap in 0usize..80,
        sides in proptest::collection::vec(any::<bool>(), 12),
        mid_way in any::<bool>(),
    ) {
        let mut my = My { s: Session::new(mid_way), c: 0, r: 0, cap };
        for (i, chunk) in chunks.iter().enumerate() {
            let out = my.send(if sides[i] { Side::Requests } else { Side::Answers }, chunk);
            // Whatever comes, what it makes is made of bytes it saw, and what
            // it holds stays small.
            prop_assert!(out.iter().all(|(_, m)| m.bytes > 0));
            prop_assert!(my.s.held_bytes() <= 8 * 1024, "{}", my.s.held_bytes());
        }
        my.s.resync_if_quiet(&mut Vec::new());
        my.s.end(&mut Vec::new());
    }

    #[test]
    fn split_points_do_not_matter(cuts in proptest::collection::vec(1usize..30, 1..20), rows in 0usize..6) {
        let run = |split: bool| {
            let mut my = My::connected(rows % 2 == 0);
            let mut out = Vec::new();
            for i in 0..4 {
                for (side, bytes) in [
                    (Side::Requests, query(&format!("SELECT {i}"))),
                    (Side::Answers, if i == 2 { err(1064) } else { result_set(rows + i, rows % 2 == 0) }),
                ] {
                    if !split {
                        out.extend(my.send(side, &bytes));
                        continue;
                    }
                    let (mut pos, mut k) = (0, 0);
                    while pos < bytes.len() {
                        let end = (pos + cuts[k % cuts.len()]).min(bytes.len());
                        out.extend(my.send(side, &bytes[pos..end]));
                        pos = end;
                        k += 1;
                    }
                }
            }
            out.into_iter().map(|(s, m)| (s, m.seq, m.l7, m.bytes)).collect::<Vec<_>>()
        };
        let whole = run(false);
        prop_assert_eq!(whole.len(), 8);
        prop_assert_eq!(whole, run(true));
    }
}
