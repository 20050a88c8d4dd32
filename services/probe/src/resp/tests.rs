use super::*;
use proptest::prelude::*;

/// Feeds `chunks` of `side` as consecutive transfers from `seq`, each captured
/// up to `cap` bytes; returns what came out.
fn feed(
    s: &mut Session,
    side: Side,
    seq: &mut u32,
    chunks: &[&[u8]],
    cap: usize,
) -> Vec<(Side, Message)> {
    let mut out = Vec::new();
    for c in chunks {
        let t = Transfer {
            seq: *seq,
            len: c.len() as u32,
            data: &c[..c.len().min(cap)],
            ts_ns: 100,
            tid: 7,
        };
        s.feed(side, t, &mut out);
        *seq = seq.wrapping_add(c.len() as u32);
    }
    out
}

fn command(m: &Message) -> &str {
    match &m.l7 {
        L7::Redis(RedisFrame::Command { name }) => name,
        other => panic!("not a command: {other:?}"),
    }
}

fn error(m: &Message) -> &str {
    match &m.l7 {
        L7::Redis(RedisFrame::Reply { error }) => error,
        other => panic!("not a reply: {other:?}"),
    }
}

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    v
}

#[test]
fn a_command_and_its_reply() {
    let mut s = Session::new();
    let (mut c, mut r) = (1000, 5000);
    let out = feed(
        &mut s,
        Side::Requests,
        &mut c,
        &[&cmd(&["get", "user:1"])],
        1024,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(command(&out[0].1), "GET");
    assert_eq!(out[0].1.seq, 1000);
    assert_eq!(out[0].1.bytes, cmd(&["get", "user:1"]).len() as u64);
    let out = feed(&mut s, Side::Answers, &mut r, &[b"$5\r\nalice\r\n"], 1024);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].0, out[0].1.seq, error(&out[0].1)),
        (Side::Answers, 5000, "")
    );
}

#[test]
fn a_pipeline_gives_each_command_and_reply_its_own_sequence_number() {
    let mut s = Session::new();
    let (mut c, mut r) = (0, 0);
    let a = cmd(&["INCR", "n"]);
    let b = cmd(&["SET", "k", "v"]);
    let d = cmd(&["GET", "k"]);
    let all = [a.clone(), b.clone(), d.clone()].concat();
    let out = feed(&mut s, Side::Requests, &mut c, &[&all], 1024);
    let names: Vec<_> = out.iter().map(|(_, m)| command(m).to_owned()).collect();
    assert_eq!(names, ["INCR", "SET", "GET"]);
    let seqs: Vec<_> = out.iter().map(|(_, m)| m.seq).collect();
    assert_eq!(seqs, [0, a.len() as u32, (a.len() + b.len()) as u32]);
    let out = feed(
        &mut s,
        Side::Answers,
        &mut r,
        &[b":1\r\n+OK\r\n$1\r\nv\r\n"],
        1024,
    );
    let seqs: Vec<_> = out.iter().map(|(_, m)| m.seq).collect();
    assert_eq!(seqs, [0, 4, 9]);
}

#[test]
fn error_replies_keep_their_code_only() {
    let mut s = Session::new();
    let (mut c, mut r) = (0, 0);
    let all = [
        cmd(&["LPUSH", "k", "v"]),
        cmd(&["NOPE"]),
        cmd(&["GET", "x"]),
    ]
    .concat();
    feed(&mut s, Side::Requests, &mut c, &[&all], 1024);
    let out = feed(
        &mut s,
        Side::Answers,
        &mut r,
        &[b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n-unknown command 'NOPE'\r\n!21\r\nSYNTAX invalid syntax\r\n"],
        1024,
    );
    let errors: Vec<_> = out.iter().map(|(_, m)| error(m).to_owned()).collect();
    assert_eq!(errors, ["WRONGTYPE", "ERR", "SYNTAX"]);
}

#[test]
fn values_beyond_the_capture_are_skipped_by_length() {
    let mut s = Session::new();
    let (mut c, mut r) = (0, 0);
    let big = "x".repeat(10_000);
    let set = cmd(&["SET", "k", &big]);
    let out = feed(
        &mut s,
        Side::Requests,
        &mut c,
        &[&set[..3000], &set[3000..]],
        64,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(command(&out[0].1), "SET");
    assert_eq!(out[0].1.bytes, set.len() as u64);
    feed(&mut s, Side::Requests, &mut c, &[&cmd(&["GET", "k"])], 64);
    let reply = [
        format!("+OK\r\n${}\r\n", big.len()).as_bytes(),
        big.as_bytes(),
        b"\r\n",
    ]
    .concat();
    let out = feed(&mut s, Side::Answers, &mut r, &[&reply], 64);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].1.seq, 5);
    assert_eq!(out[1].1.bytes, reply.len() as u64 - 5);
    assert_eq!(s.problems, Problems::default());
}

#[test]
fn nested_replies_maps_attributes_and_pushes() {
    let mut s = Session::new();
    let (mut c, mut r) = (0, 0);
    let all = [cmd(&["HELLO", "3"]), cmd(&["EXEC"]), cmd(&["GET", "k"])].concat();
    feed(&mut s, Side::Requests, &mut c, &[&all], 1024);
    let replies: &[u8] = b"%2\r\n+server\r\n+redis\r\n+modules\r\n*0\r\n\
>3\r\n+message\r\n+chan\r\n$2\r\nhi\r\n\
*2\r\n*1\r\n:1\r\n_\r\n\
|1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n";
    let out = feed(&mut s, Side::Answers, &mut r, &[replies], 1024);
    assert_eq!(out.len(), 3, "the push answers no command");
    let map_len = b"%2\r\n+server\r\n+redis\r\n+modules\r\n*0\r\n".len() as u32;
    let push_len = b">3\r\n+message\r\n+chan\r\n$2\r\nhi\r\n".len() as u32;
    assert_eq!(out[1].1.seq, map_len + push_len);
    assert_eq!(s.problems, Problems::default());
}

#[test]
fn a_reply_beyond_the_capture_answering_the_only_command_ends_with_the_next_command() {
    let mut s = Session::new();
    let (mut c, mut r) = (0, 0);
    feed(
        &mut s,
        Side::Requests,
        &mut c,
        &[&cmd(&["LRANGE", "k", "0", "-1"])],
        64,
    );
    // 200 elements: their headers go on far beyond a 64-byte capture.
    let mut reply = b"*200\r\n".to_vec();
    for i in 0..200 {
        reply.extend_from_slice(format!("$3\r\n{i:03}\r\n").as_bytes());
    }
    let out = feed(&mut s, Side::Answers, &mut r, &[&reply], 64);
    assert!(out.is_empty());
    assert_eq!(s.problems.unframed, 1);
    let out = feed(&mut s, Side::Requests, &mut c, &[&cmd(&["PING"])], 64);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].0, out[0].1.seq, out[0].1.bytes),
        (Side::Answers, 0, reply.len() as u64)
    );
    assert_eq!(command(&out[1].1), "PING");
    let out = feed(&mut s, Side::Answers, &mut r, &[b"+PONG\r\n"], 64);
    assert_eq!((out.len(), out[0].1.seq), (1, reply.len() as u32));
    assert_eq!(s.desyncs, 0);
}

#[test]
fn framing_lost_with_several_commands_waiting_is_a_desync_until_quiet() {
    let mut s = Session::new();
    let (mut c, mut r) = (0, 0);
    let all = [cmd(&["LRANGE", "k", "0", "-1"]), cmd(&["GET", "x"])].concat();
    feed(&mut s, Side::Requests, &mut c, &[&all], 1024);
    let mut reply = b"*200\r\n".to_vec();
    for i in 0..200 {
        reply.extend_from_slice(format!("$3\r\n{i:03}\r\n").as_bytes());
    }
    reply.extend_from_slice(b"$1\r\nv\r\n");
    let out = feed(&mut s, Side::Answers, &mut r, &[&reply], 64);
    assert!(out.is_empty());
    assert_eq!((s.problems.truncated, s.desyncs), (1, 1));
    // Nothing is paired until the connection has been quiet.
    let out = feed(&mut s, Side::Requests, &mut c, &[&cmd(&["GET", "y"])], 1024);
    assert!(out.is_empty());
    feed(&mut s, Side::Answers, &mut r, &[b"$1\r\nw\r\n"], 1024);
    s.resync_if_quiet(&mut Vec::new());
    let out = feed(&mut s, Side::Requests, &mut c, &[&cmd(&["GET", "z"])], 1024);
    assert_eq!(command(&out[0].1), "GET");
    let out = feed(&mut s, Side::Answers, &mut r, &[b"_\r\n"], 1024);
    assert_eq!(out.len(), 1);
}

#[test]
fn a_gap_is_a_desync() {
    let mut s = Session::new();
    let (mut c, mut r) = (0, 0);
    feed(&mut s, Side::Requests, &mut c, &[&cmd(&["GET", "a"])], 1024);
    s.gap(Side::Answers);
    assert_eq!(s.desyncs, 1);
    assert!(feed(&mut s, Side::Answers, &mut r, &[b"$1\r\nv\r\n"], 1024).is_empty());
}

#[test]
fn after_subscribe_the_pushes_are_no_replies() {
    let mut s = Session::new();
    let (mut c, mut r) = (0, 0);
    let out = feed(
        &mut s,
        Side::Requests,
        &mut c,
        &[&cmd(&["SUBSCRIBE", "a", "b"])],
        1024,
    );
    assert_eq!(command(&out[0].1), "SUBSCRIBE");
    let out = feed(
        &mut s,
        Side::Answers,
        &mut r,
        &[
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n",
            b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n",
        ],
        1024,
    );
    assert_eq!(out.len(), 1, "one reply for the command, then pushes");
    assert_eq!(s.problems, Problems::default());
}

#[test]
fn inline_commands_and_garbage_are_not_commands() {
    let mut s = Session::new();
    let mut c = 0;
    assert!(feed(&mut s, Side::Requests, &mut c, &[b"PING\r\n"], 1024).is_empty());
    assert_eq!((s.problems.malformed, s.desyncs), (1, 1));
}

#[test]
fn what_starts_a_redis_connection() {
    assert!(looks_like_command(&cmd(&["PING"])));
    assert!(looks_like_command(&cmd(&["hset", "k", "f", "v"])));
    assert!(looks_like_command(&cmd(&["JSON.GET", "doc"])));
    assert!(looks_like_command(b"*2\r\n$3\r\nGET\r\n$1"));
    // A reply of strings that are no command names.
    assert!(!looks_like_command(&cmd(&["alice", "bob"])));
    assert!(!looks_like_command(b"*2\r\n$3\r\nGE"));
    assert!(!looks_like_command(b"GET / HTTP/1.1\r\n\r\n"));
    assert!(!looks_like_command(b"+OK\r\n"));
    assert!(!looks_like_command(b"*1\r\n$9\r\nGET\r\n"));
}

proptest! {
    #[test]
    fn never_panics(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..12),
        cap in 0usize..80,
        sides in proptest::collection::vec(any::<bool>(), 12),
    ) {
        let mut s = Session::new();
        let (mut c, mut r) = (0u32, 0u32);
        for (i, chunk) in chunks.iter().enumerate() {
            if sides[i] {
                feed(&mut s, Side::Requests, &mut c, &[chunk], cap);
            } else {
                feed(&mut s, Side::Answers, &mut r, &[chunk], cap);
            }
        }
        s.resync_if_quiet(&mut Vec::new());
        s.end(&mut Vec::new());
    }

    #[test]
    fn resp_shaped_bytes_cut_anywhere_never_panic(
        cuts in proptest::collection::vec(0usize..200, 0..8),
        cap in 0usize..64,
        n in 1usize..6,
    ) {
        let mut bytes = Vec::new();
        for i in 0..n {
            bytes.extend_from_slice(&cmd(&["SET", &format!("k{i}"), &"v".repeat(i * 7)]));
            bytes.extend_from_slice(b"*2\r\n%1\r\n+a\r\n:1\r\n|1\r\n+t\r\n:1\r\n$-1\r\n");
        }
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        let mut s = Session::new();
        let (mut c, mut r) = (0u32, 0u32);
        for w in points.windows(2) {
            feed(&mut s, Side::Requests, &mut c, &[&bytes[w[0]..w[1]]], cap);
            feed(&mut s, Side::Answers, &mut r, &[&bytes[w[0]..w[1]]], cap);
        }
    }

    #[test]
    fn split_points_do_not_matter(cuts in proptest::collection::vec(1usize..40, 1..20), n in 1usize..8) {
        let mut commands = Vec::new();
        let mut replies = Vec::new();
        for i in 0..n {
            commands.extend_from_slice(&cmd(&["HGET", &format!("h{i}"), "field"]));
            replies.extend_from_slice(format!("${}\r\n{}\r\n", i, "z".repeat(i)).as_bytes());
        }
        let whole = {
            let mut s = Session::new();
            let (mut c, mut r) = (0u32, 0u32);
            let mut out = feed(&mut s, Side::Requests, &mut c, &[&commands], usize::MAX);
            out.extend(feed(&mut s, Side::Answers, &mut r, &[&replies], usize::MAX));
            out
        };
        let split = {
            let mut s = Session::new();
            let (mut c, mut r) = (0u32, 0u32);
            let mut out = Vec::new();
            for bytes in [&commands, &replies] {
                let side = if std::ptr::eq(bytes, &commands) { Side::Requests } else { Side::Answers };
                let mut pos = 0;
                let mut i = 0;
                while pos < bytes.len() {
                    let end = (pos + cuts[i % cuts.len()]).min(bytes.len());
                    let seq = if side == Side::Requests { &mut c } else { &mut r };
                    out.extend(feed(&mut s, side, seq, &[&bytes[pos..end]], usize::MAX));
                    pos = end;
                    i += 1;
                }
            }
            out
        };
        prop_assert_eq!(whole.len(), 2 * n);
        let key = |v: &Vec<(Side, Message)>| v.iter().map(|(s, m)| (*s, m.seq, m.l7.clone(), m.bytes)).collect::<Vec<_>>();
        prop_assert_eq!(key(&whole), key(&split));
    }
}
