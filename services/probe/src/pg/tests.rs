use super::*;
use proptest::prelude::*;

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', format!("{sql}\0").as_bytes())
}

/// Parse, Bind, Describe, Execute, Sync of one statement.
fn extended(sql: &str) -> Vec<u8> {
    [
        msg(b'P', format!("\0{sql}\0\0\0").as_bytes()),
        msg(b'B', b"\0\0\0\0\0\0\0\0\0\0"),
        msg(b'D', b"P\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'S', b""),
    ]
    .concat()
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn result(rows: usize) -> Vec<u8> {
    let mut v = msg(
        b'T',
        b"\0\x01id\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    );
    for i in 0..rows {
        v.extend(msg(b'D', format!("\0\x01\0\0\0\x05{i:05}").as_bytes()));
    }
    v.extend(msg(b'C', b"SELECT 1\0"));
    v.extend(ready());
    v
}

fn error(code: &str) -> Vec<u8> {
    [
        msg(
            b'E',
            format!("SERROR\0VERROR\0C{code}\0Mrelation \"nope\" does not exist\0\0").as_bytes(),
        ),
        ready(),
    ]
    .concat()
}

fn startup() -> Vec<u8> {
    let body = b"\0\x03\0\0user\0app\0database\0app\0\0";
    let mut v = (body.len() as u32 + 4).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

struct Pg {
    s: Session,
    c: u32,
    r: u32,
    cap: usize,
}

impl Pg {
    fn new(mid_way: bool) -> Self {
        Self {
            s: Session::new(mid_way),
            c: 1000,
            r: 5000,
            cap: 4096,
        }
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
            tid: 3,
        };
        *seq = seq.wrapping_add(bytes.len() as u32);
        let mut out = Vec::new();
        self.s.feed(side, t, &mut out);
        out
    }
    /// SSLRequest, `N`, startup, trust authentication, ready.
    fn connect(&mut self) {
        assert!(
            self.send(Side::Requests, &[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f])
                .is_empty()
        );
        assert!(self.send(Side::Answers, b"N").is_empty());
        assert!(self.send(Side::Requests, &startup()).is_empty());
        let hello = [
            msg(b'R', &[0, 0, 0, 0]),
            msg(b'S', b"server_version\x0015.18\0"),
            msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]),
            ready(),
        ]
        .concat();
        assert!(self.send(Side::Answers, &hello).is_empty());
    }
}

fn text(m: &Message) -> &str {
    match &m.l7 {
        L7::Postgres(PgFrame::Query { text }) => text,
        other => panic!("not a query: {other:?}"),
    }
}

fn state(m: &Message) -> &str {
    match &m.l7 {
        L7::Postgres(PgFrame::Result { sqlstate }) => sqlstate,
        other => panic!("not a result: {other:?}"),
    }
}

#[test]
fn startup_makes_no_span_and_a_simple_query_makes_one() {
    let mut pg = Pg::new(false);
    pg.connect();
    let (c, r) = (pg.c, pg.r);
    let q = query("SELECT id FROM users WHERE name = 'bob'");
    let out = pg.send(Side::Requests, &q);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].1.seq, text(&out[0].1)),
        (c, "SELECT id FROM users WHERE name = 'bob'")
    );
    let res = result(3);
    let out = pg.send(Side::Answers, &res);
    assert_eq!((out.len(), out[0].1.seq, state(&out[0].1)), (1, r, ""));
    assert_eq!(out[0].1.bytes, res.len() as u64);
    assert_eq!(pg.s.desyncs, 0);
}

#[test]
fn pipelined_extended_queries_pair_in_order_with_their_errors() {
    let mut pg = Pg::new(false);
    pg.connect();
    let (c, r) = (pg.c, pg.r);
    let a = extended("SELECT * FROM t WHERE id = $1");
    let b = extended("SELECT * FROM nope");
    let out = pg.send(Side::Requests, &[a.clone(), b].concat());
    let seqs: Vec<_> = out
        .iter()
        .map(|(_, m)| (m.seq, text(m).to_owned()))
        .collect();
    assert_eq!(
        seqs,
        [
            (c, "SELECT * FROM t WHERE id = $1".to_owned()),
            (c + a.len() as u32, "SELECT * FROM nope".to_owned())
        ]
    );
    let ok = [msg(b'1', b""), msg(b'2', b""), result(1)].concat();
    let out = pg.send(
        Side::Answers,
        &[ok.clone(), msg(b'1', b""), error("42P01")].concat(),
    );
    let got: Vec<_> = out
        .iter()
        .map(|(_, m)| (m.seq, state(m).to_owned()))
        .collect();
    assert_eq!(
        got,
        [
            (r, String::new()),
            (r + ok.len() as u32, "42P01".to_owned())
        ]
    );
}

#[test]
fn a_prepared_statement_names_its_query_when_bound_later() {
    let mut pg = Pg::new(false);
    pg.connect();
    let prepare = [
        msg(b'P', b"_pg3_0\0SELECT v FROM items WHERE k = $1\0\0\0"),
        msg(b'S', b""),
    ]
    .concat();
    assert_eq!(
        text(&pg.send(Side::Requests, &prepare)[0].1),
        "SELECT v FROM items WHERE k = $1"
    );
    pg.send(Side::Answers, &[msg(b'1', b""), ready()].concat());
    let execute = [
        msg(b'B', b"\0_pg3_0\0\0\0\0\x01\0\0\0\x01a\0\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'S', b""),
    ]
    .concat();
    assert_eq!(
        text(&pg.send(Side::Requests, &execute)[0].1),
        "SELECT v FROM items WHERE k = $1"
    );
    pg.send(Side::Answers, &[msg(b'2', b""), result(1)].concat());
    // Closed: a later Bind of that name names nothing.
    pg.send(
        Side::Requests,
        &[msg(b'C', b"S_pg3_0\0"), msg(b'S', b"")].concat(),
    );
    pg.send(Side::Answers, &[msg(b'3', b""), ready()].concat());
    assert_eq!(text(&pg.send(Side::Requests, &execute)[0].1), "");
}

#[test]
fn ssl_accepted_is_not_followed() {
    let mut pg = Pg::new(false);
    pg.send(Side::Requests, &[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f]);
    pg.send(Side::Answers, b"S");
    assert!(pg.send(Side::Requests, &query("SELECT 1")).is_empty());
    assert_eq!(pg.s.desyncs, 0);
}

#[test]
fn many_rows_beyond_the_capture_answer_the_only_query_until_the_next_one() {
    let mut pg = Pg::new(false);
    pg.connect();
    pg.cap = 256;
    let r = pg.r;
    pg.send(Side::Requests, &query("SELECT id FROM big"));
    let rows = result(500);
    assert!(pg.send(Side::Answers, &rows).is_empty());
    assert_eq!(pg.s.problems.unframed, 1);
    let out = pg.send(Side::Requests, &query("SELECT 2"));
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].1.seq, out[0].1.bytes), (r, rows.len() as u64));
    let out = pg.send(Side::Answers, &result(0));
    assert_eq!((out.len(), out[0].1.seq), (1, r + rows.len() as u32));
}

#[test]
fn framing_lost_with_two_queries_waiting_is_a_desync_until_quiet() {
    let mut pg = Pg::new(false);
    pg.connect();
    pg.cap = 256;
    pg.send(
        Side::Requests,
        &[query("SELECT a FROM big"), query("SELECT 1")].concat(),
    );
    assert!(
        pg.send(Side::Answers, &[result(500), result(0)].concat())
            .is_empty()
    );
    assert_eq!((pg.s.problems.truncated, pg.s.desyncs), (1, 1));
    assert!(pg.send(Side::Requests, &query("SELECT 3")).is_empty());
    pg.send(Side::Answers, &result(0));
    pg.s.resync_if_quiet(&mut Vec::new());
    assert_eq!(pg.send(Side::Requests, &query("SELECT 4")).len(), 1);
    assert_eq!(pg.send(Side::Answers, &result(0)).len(), 1);
}

#[test]
fn notices_between_queries_and_copy_data_are_no_exchanges() {
    let mut pg = Pg::new(false);
    pg.connect();
    assert!(
        pg.send(Side::Answers, &msg(b'A', b"\0\0\0\x01chan\0hi\0"))
            .is_empty()
    );
    pg.send(Side::Requests, &query("COPY t FROM STDIN"));
    pg.send(Side::Answers, &msg(b'G', b"\0\0\0"));
    assert!(
        pg.send(
            Side::Requests,
            &[msg(b'd', b"1\n"), msg(b'c', b"")].concat()
        )
        .is_empty()
    );
    let out = pg.send(Side::Answers, &[msg(b'C', b"COPY 1\0"), ready()].concat());
    assert_eq!(out.len(), 1);
    assert!(pg.send(Side::Requests, &msg(b'X', b"")).is_empty());
}

#[test]
fn what_starts_a_postgres_connection() {
    fn t(data: &[u8]) -> Transfer<'_> {
        Transfer {
            seq: 0,
            len: data.len() as u32,
            data,
            ts_ns: 0,
            tid: 0,
        }
    }
    assert_eq!(
        starts_session(&t(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f])),
        Some(false)
    );
    assert_eq!(starts_session(&t(&startup())), Some(false));
    assert_eq!(starts_session(&t(&query("SELECT 1"))), Some(true));
    assert_eq!(starts_session(&t(&extended("SELECT 1"))), Some(true));
    assert_eq!(starts_session(&t(&query("SELECT 1")[..6])), None);
    assert_eq!(starts_session(&t(b"GET / HTTP/1.1\r\n\r\n")), None);
    assert_eq!(starts_session(&t(b"*1\r\n$4\r\nPING\r\n")), None);
}

#[test]
fn the_sqlstate_of_an_error() {
    assert_eq!(sqlstate(b"SERROR\0C23505\0Mdup\0\0"), "23505");
    assert_eq!(sqlstate(b"SERROR\0Mno code\0\0"), "XX000");
    assert_eq!(sqlstate(b"SERR"), "XX000");
}

proptest! {
    #[test]
    fn never_panics(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..12),
        cap in 0usize..80,
        sides in proptest::collection::vec(any::<bool>(), 12),
        mid_way in any::<bool>(),
    ) {
        let mut pg = Pg::new(mid_way);
        pg.cap = cap;
        for (i, chunk) in chunks.iter().enumerate() {
            let out = pg.send(if sides[i] { Side::Requests } else { Side::Answers }, chunk);
            // Whatever comes, what it makes is made of bytes it saw, and what
            // it holds stays small.
            prop_assert!(out.iter().all(|(_, m)| m.bytes > 0));
            prop_assert!(pg.s.held_bytes() <= 8 * 1024, "{}", pg.s.held_bytes());
        }
        pg.s.resync_if_quiet(&mut Vec::new());
        pg.s.end(&mut Vec::new());
    }

    #[test]
    fn split_points_do_not_matter(cuts in proptest::collection::vec(1usize..30, 1..20), n in 1usize..6) {
        let requests: Vec<u8> = (0..n).flat_map(|i| if i % 2 == 0 { query(&format!("SELECT {i}")) } else { extended("SELECT $1") }).collect();
        let results: Vec<u8> = (0..n).flat_map(|i| if i % 3 == 2 { error("42601") } else { result(i) }).collect();
        let run = |split: bool| {
            let mut pg = Pg::new(false);
            pg.connect();
            let mut out = Vec::new();
            for (side, bytes) in [(Side::Requests, &requests), (Side::Answers, &results)] {
                if !split {
                    out.extend(pg.send(side, bytes));
                    continue;
                }
                let (mut pos, mut i) = (0, 0);
                while pos < bytes.len() {
                    let end = (pos + cuts[i % cuts.len()]).min(bytes.len());
                    out.extend(pg.send(side, &bytes[pos..end]));
                    pos = end;
                    i += 1;
                }
            }
            out.into_iter().map(|(s, m)| (s, m.seq, m.l7, m.bytes)).collect::<Vec<_>>()
        };
        let whole = run(false);
        prop_assert_eq!(whole.len(), 2 * n);
        prop_assert_eq!(whole, run(true));
    }
}
