//! The sidecar against a real `redis-server` as the oracle: each scenario runs on Redis directly
//! and then through a sidecar whose upstream is that same Redis, and the reply bytes must match
//! (see `support::oracle` for the harness and `support::oracle::norm` for the only values that
//! are normalised). Each test starts its own Redis and sidecar, so tests run in parallel.
//!
//! Redis 7.0.15 quirks these scenarios pin down (the sidecar must reproduce them):
//! - `HELLO 3 AUTH <user> <any password>` and `AUTH default <any>` succeed when no password is
//!   configured (the default user is `nopass`), while `AUTH <password>` alone is an error and
//!   `AUTH <unknown-user> <pw>` is `-WRONGPASS`.
//! - Before authentication an unknown command still gets "unknown command", not `-NOAUTH`;
//!   unauthenticated clients may send at most 10 arguments and 16 KiB bulks ("unauthenticated
//!   multibulk length" / "unauthenticated bulk length").
//! - RESET drops authentication, the name, RESP3 and every subscription.
//! - A non-positive multibulk length (`*0`, `*-1`, `*-5`) is silently skipped, not an error, and
//!   empty inline lines are ignored.
//! - `UNSUBSCRIBE`/`PUNSUBSCRIBE` with no arguments walk a hash table: their order is undefined
//!   (normalised), and with nothing to drop they answer one confirmation with a nil channel
//!   whose count is the connection's *remaining* subscriptions of every kind.
//! - Shard subscriptions are counted apart: the counts in SSUBSCRIBE/SUNSUBSCRIBE confirmations
//!   cover shard channels only, and SUBSCRIBE's cover channels and patterns only.
//! - In RESP2 subscribed mode, PING answers `["pong", <msg or "">]`, PUBLISH and every other
//!   command are refused with "Can't execute '<cmd>': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE /
//!   PING / QUIT / RESET are allowed in this context" (subcommands named as `client|id`); in RESP3
//!   every command works and PING is `+PONG`. `HELLO 2` while subscribed in RESP3 is accepted and
//!   drops the connection back into RESP2 subscribed mode.
//! - A RESP3 connection subscribed to a channel it publishes on receives its own message (and
//!   pmessage) as pushes *before* the `:n` reply to its PUBLISH. A relay cannot always order them
//!   so; the order is normalised, the count of copies is not.
//! - PUBSUB NUMPAT counts distinct patterns (7.0+), not pattern subscriptions.
//! - `CLIENT SETINFO` does not exist before 7.2 (normalised: see `norm::setinfo`), and 7.2
//!   reworded HELLO's NOAUTH hint (normalised: see `norm::reworded`).
//! - Redis does not check the two bytes after a bulk string's payload: `*1\r\n$4\r\nPINGxx` is a
//!   PING. Not asserted: a sidecar that rejects it is stricter, not wrong.

use switchboard_sidecar_support as support;

use std::time::Duration;

use support::{
    Conn, Endpoint, Oracle, SidecarOptions, Transcript, command, norm, self_check, show,
};

/// Switches `c` to RESP3 when the scenario runs in RESP3, recording the (normalised) HELLO reply.
fn enter(c: &mut Conn, t: &mut Transcript, resp3: bool) {
    if resp3 {
        c.run_norm(t, "HELLO 3\r\n", 1, norm::hello);
    }
}

fn connect(ep: &Endpoint, t: &mut Transcript, name: &str, resp3: bool) -> Conn {
    let mut c = ep.connect(name);
    enter(&mut c, t, resp3);
    c
}

// ---------------------------------------------------------------------------------------------
// Connection commands

fn connection_commands(resp3: bool) {
    Oracle::start().compare(|ep, t| {
        let mut c = connect(ep, t, "c", resp3);
        c.run(t, "PING\r\n");
        c.run(t, "PING hello\r\n");
        c.run(t, "PING a b\r\n");
        c.run(t, "ECHO hi\r\n");
        c.run(t, "ECHO\r\n");
        c.run_args(t, &[b"ECHO", b"bin\r\n\0\xff"]);
        c.run_args(t, &[b"ECHO", b""]);
        // No password configured: AUTH <password> is an error, the nopass default user accepts
        // any password, an unknown user does not exist.
        c.run(t, "AUTH x\r\n");
        c.run(t, "AUTH default anything\r\n");
        c.run(t, "AUTH nobody x\r\n");
        c.run(t, "AUTH\r\n");
        c.run(t, "SELECT 0\r\n");
        c.run(t, "SELECT x\r\n");
        c.run(t, "SELECT 16\r\n");
        c.run(t, "SELECT\r\n");
        c.run(t, "CLIENT GETNAME\r\n");
        c.run(t, "CLIENT SETNAME ot-conn\r\n");
        c.run(t, "CLIENT GETNAME\r\n");
        c.run(t, "CLIENT SETNAME \"a b\"\r\n");
        c.run(t, "CLIENT SETNAME\r\n");
        c.run(t, "CLIENT GETNAME\r\n");
        c.run_norm(t, "CLIENT ID\r\n", 1, norm::any_integer);
        c.run_norm(t, "CLIENT SETINFO lib-name redis-py\r\n", 1, norm::setinfo);
        c.run_norm(t, "CLIENT SETINFO lib-ver 5.0.1\r\n", 1, norm::setinfo);
        c.run(t, "CLIENT FOO\r\n");
        c.run(t, "CLIENT\r\n");
        c.run(t, "FOO bar\r\n");
        c.run(t, "RESET\r\n");
        // RESET cleared the name and went back to RESP2: an empty hash is `*0`, not `%0`.
        c.run(t, "CLIENT GETNAME\r\n");
        c.run(t, "HGETALL ot:none\r\n");
        c.run_until_closed(t, "QUIT\r\n");
    });
}

#[test]
fn connection_commands_resp2() {
    connection_commands(false);
}

#[test]
fn connection_commands_resp3() {
    connection_commands(true);
}

#[test]
fn hello_variants() {
    Oracle::start().compare(|ep, t| {
        let mut c = ep.connect("c");
        c.run_norm(t, "HELLO\r\n", 1, norm::hello);
        c.run_norm(t, "HELLO 2\r\n", 1, norm::hello);
        c.run_norm(t, "HELLO 3\r\n", 1, norm::hello);
        c.run_norm(t, "HELLO 3 SETNAME ot-name\r\n", 1, norm::hello);
        c.run(t, "CLIENT GETNAME\r\n");
        c.run_norm(t, "HELLO 2 SETNAME ot-two\r\n", 1, norm::hello);
        c.run(t, "CLIENT GETNAME\r\n");
        c.run(t, "HELLO 4\r\n");
        c.run(t, "HELLO 1\r\n");
        c.run(t, "HELLO x\r\n");
        c.run(t, "HELLO 3 FOO\r\n");
        c.run(t, "HELLO 3 SETNAME\r\n");
        c.run(t, "HELLO 3 SETNAME \"a b\"\r\n");
        c.run(t, "HELLO 3 AUTH\r\n");
        c.run(t, "HELLO 3 AUTH nobody x\r\n");
        // No password configured: the nopass default user authenticates with anything.
        c.run_norm(t, "HELLO 3 AUTH default whatever\r\n", 1, norm::hello);
        c.run_norm(t, "hello 2\r\n", 1, norm::hello);
        c.run(t, "HGETALL ot:none\r\n");
    });
}

fn case_inline_and_pipelining(resp3: bool) {
    Oracle::start().compare(|ep, t| {
        let mut c = connect(ep, t, "c", resp3);
        c.run(t, "ping\r\n");
        c.run(t, "PiNg\r\n");
        c.run(t, "eCHo x\r\n");
        c.run(t, "client setname ot-lower\r\n");
        c.run(t, "Client GetName\r\n");
        c.run(t, "publish ot:case x\r\n");
        c.run(t, "pubsub numsub ot:case\r\n");
        c.run(t, "PubSub NumPat\r\n");
        c.run_args(t, &[b"pInG"]);
        // Inline forms: LF alone ends a line, runs of spaces separate, quotes group and escape.
        c.run(t, "PING\n");
        c.run(t, "ECHO   spaced   \r\n");
        c.run(t, "ECHO \"a b\"\r\n");
        c.run(t, "ECHO 'c d'\r\n");
        c.run(t, "ECHO \"\\x41\\n\\t\"\r\n");
        c.run(t, "ECHO 'it\\'s'\r\n");
        c.run(t, "\r\n\r\nPING\r\n");
        c.run(t, "*0\r\n*-1\r\n*-5\r\nPING\r\n");
        // Pipelining: inline and multibulk commands, pass-through and local, in one write.
        c.run_n(
            t,
            "PING\r\nECHO a\r\n*2\r\n$4\r\nECHO\r\n$1\r\nb\r\nSET ot:p 1\r\nINCR ot:p\r\n\
             PUBLISH ot:none x\r\nCLIENT GETNAME\r\nGET ot:p\r\n",
            8,
        );
        // A command split across writes, mid-length and mid-payload.
        c.send("*2\r\n$4\r\nEC");
        std::thread::sleep(Duration::from_millis(20));
        c.send("HO\r\n$5\r\nhel");
        std::thread::sleep(Duration::from_millis(20));
        c.run(t, "lo\r\n");
        // Many small commands in one write.
        let many: String = (0..200).map(|i| format!("ECHO m{i}\r\n")).collect();
        c.run_n(t, many, 200);
    });
}

#[test]
fn case_inline_and_pipelining_resp2() {
    case_inline_and_pipelining(false);
}

#[test]
fn case_inline_and_pipelining_resp3() {
    case_inline_and_pipelining(true);
}

fn errors_and_arity(resp3: bool) {
    Oracle::start().compare(|ep, t| {
        let mut c = connect(ep, t, "c", resp3);
        for cmd in [
            "PUBLISH ot:a\r\n",
            "PUBLISH\r\n",
            "PUBLISH ot:a b c\r\n",
            "SPUBLISH ot:a\r\n",
            "SUBSCRIBE\r\n",
            "PSUBSCRIBE\r\n",
            "SSUBSCRIBE\r\n",
            "PUBSUB\r\n",
            "PUBSUB FOO\r\n",
            "PUBSUB NUMPAT x\r\n",
            "PUBSUB CHANNELS a b\r\n",
            "PUBSUB SHARDCHANNELS a b\r\n",
            "CLIENT\r\n",
            "CLIENT FOO\r\n",
            "CLIENT GETNAME x\r\n",
            "CLIENT ID x\r\n",
            "ECHO\r\n",
            "ECHO a b\r\n",
            "PING a b\r\n",
            "SELECT\r\n",
            "HELLO 3 FOO\r\n",
            "FOO\r\n",
            "FOO a b\r\n",
            "GET\r\n",
            "SET ot:k\r\n",
            "RESET x\r\n",
            "PING\r\n",
        ] {
            c.run(t, cmd);
        }
        // QUIT takes no arguments but is not fussy about them: +OK and close.
        c.run_until_closed(t, "QUIT x\r\n");
    });
}

#[test]
fn errors_and_arity_resp2() {
    errors_and_arity(false);
}

#[test]
fn errors_and_arity_resp3() {
    errors_and_arity(true);
}

// ---------------------------------------------------------------------------------------------
// Pub/sub

fn publish_counts(resp3: bool) {
    Oracle::start().compare(|ep, t| {
        let mut p = connect(ep, t, "pub", resp3);
        let mut s = connect(ep, t, "sub", resp3);
        let mut q = connect(ep, t, "psub", resp3);
        p.run(t, "PUBLISH ot:ch hello\r\n");
        s.run(t, "SUBSCRIBE ot:ch\r\n");
        p.run(t, "PUBLISH ot:ch hello\r\n");
        s.expect(t, "message", 1);
        q.run(t, "PSUBSCRIBE ot:c*\r\n");
        p.run(t, "PUBLISH ot:ch again\r\n");
        s.expect(t, "message", 1);
        q.expect(t, "pmessage", 1);
        p.run(t, "PUBLISH ot:cx pattern-only\r\n");
        q.expect(t, "pmessage", 1);
        p.run(t, "PUBLISH ot:other nobody\r\n");
        // Shard channels are a separate namespace.
        p.run(t, "SPUBLISH ot:ch x\r\n");
        let mut s2 = connect(ep, t, "sub2", resp3);
        s2.run(t, "SUBSCRIBE ot:ch\r\n");
        p.run(t, "PUBLISH ot:ch three\r\n");
        s.expect(t, "message", 1);
        q.expect(t, "pmessage", 1);
        s2.expect(t, "message", 1);
        s2.run(t, "UNSUBSCRIBE ot:ch\r\n");
        p.run(t, "PUBLISH ot:ch two\r\n");
        s.expect(t, "message", 1);
        q.expect(t, "pmessage", 1);
    });
}

#[test]
fn publish_counts_resp2() {
    publish_counts(false);
}

#[test]
fn publish_counts_resp3() {
    publish_counts(true);
}

fn subscribe_and_deliver(resp3: bool) {
    Oracle::start().compare(|ep, t| {
        let mut s = connect(ep, t, "sub", resp3);
        let mut p = connect(ep, t, "pub", resp3);
        s.run_n(t, "SUBSCRIBE ot:a ot:b ot:c\r\n", 3);
        s.run(t, "SUBSCRIBE ot:a\r\n");
        s.run_n(t, "SUBSCRIBE ot:b ot:d\r\n", 2);
        s.run_n(t, "subscribe ot:a ot:a\r\n", 2);
        p.run(t, "PUBLISH ot:a one\r\n");
        s.expect(t, "message one", 1);
        p.run(t, "PUBLISH ot:d two\r\n");
        s.expect(t, "message two", 1);
        // Binary-safe payloads and channel names, empty and large ones.
        p.run_args(t, &[b"PUBLISH", b"ot:b", b"\x00\r\n\xff*1\r\n$-1\r\n"]);
        s.expect(t, "binary message", 1);
        p.run_args(t, &[b"PUBLISH", b"ot:c", b""]);
        s.expect(t, "empty message", 1);
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        p.run_args(t, &[b"PUBLISH", b"ot:c", &big]);
        s.expect(t, "1 MB message", 1);
        s.run_args(t, &[b"SUBSCRIBE", b"ot:\x00\xff bin"]);
        p.run_args(t, &[b"PUBLISH", b"ot:\x00\xff bin", b"x"]);
        s.expect(t, "message on a binary channel", 1);
        // Order is kept, across channels, for a burst in one write.
        p.run_n(
            t,
            "PUBLISH ot:a 1\r\nPUBLISH ot:b 2\r\nPUBLISH ot:c 3\r\nPUBLISH ot:a 4\r\n",
            4,
        );
        s.expect(t, "burst", 4);
        if resp3 {
            // RESP3 allows any command while subscribed; replies and pushes interleave.
            s.run(t, "PING\r\n");
            s.run(t, "GET ot:none\r\n");
        }
    });
}

#[test]
fn subscribe_and_deliver_resp2() {
    subscribe_and_deliver(false);
}

#[test]
fn subscribe_and_deliver_resp3() {
    subscribe_and_deliver(true);
}

fn psubscribe_and_pmessage(resp3: bool) {
    Oracle::start().compare(|ep, t| {
        let mut s = connect(ep, t, "sub", resp3);
        let mut p = connect(ep, t, "pub", resp3);
        s.run_n(t, "PSUBSCRIBE ot:news.* ot:h?llo\r\n", 2);
        s.run(t, "PSUBSCRIBE ot:news.*\r\n");
        p.run(t, "PUBLISH ot:news.art x\r\n");
        s.expect(t, "pmessage", 1);
        p.run(t, "PUBLISH ot:hello y\r\n");
        s.expect(t, "pmessage", 1);
        p.run(t, "PUBLISH ot:hllo nomatch\r\n");
        s.run_n(t, "PSUBSCRIBE ot:[ab]x ot:esc\\*\r\n", 2);
        p.run(t, "PUBLISH ot:bx z\r\n");
        s.expect(t, "pmessage [ab]", 1);
        p.run(t, "PUBLISH ot:esc* star\r\n");
        s.expect(t, "pmessage escaped star", 1);
        p.run(t, "PUBLISH ot:escX nomatch\r\n");
        // Channel and pattern on one connection: message first, then pmessage.
        s.run(t, "SUBSCRIBE ot:news.art\r\n");
        p.run(t, "PUBLISH ot:news.art both\r\n");
        s.expect(t, "message then pmessage", 2);
        s.run(t, "PUNSUBSCRIBE ot:h?llo\r\n");
        p.run(t, "PUBLISH ot:hello gone\r\n");
        s.run(t, "PUNSUBSCRIBE ot:h?llo\r\n");
        s.run(t, "PUNSUBSCRIBE ot:never\r\n");
        p.run(t, "PUBLISH ot:news.art last\r\n");
        s.expect(t, "message then pmessage", 2);
    });
}

#[test]
fn psubscribe_and_pmessage_resp2() {
    psubscribe_and_pmessage(false);
}

#[test]
fn psubscribe_and_pmessage_resp3() {
    psubscribe_and_pmessage(true);
}

fn ssubscribe_and_smessage(resp3: bool) {
    Oracle::start().compare(|ep, t| {
        let mut s = connect(ep, t, "sub", resp3);
        let mut p = connect(ep, t, "pub", resp3);
        p.run(t, "SPUBLISH ot:s1 nobody\r\n");
        s.run_n(t, "SSUBSCRIBE ot:s1 ot:s2\r\n", 2);
        s.run(t, "SSUBSCRIBE ot:s1\r\n");
        p.run(t, "SPUBLISH ot:s1 x\r\n");
        s.expect(t, "smessage", 1);
        p.run(t, "PUBLISH ot:s1 classic\r\n");
        // Classic and shard subscriptions are counted apart.
        s.run(t, "SUBSCRIBE ot:s1\r\n");
        p.run(t, "PUBLISH ot:s1 y\r\n");
        s.expect(t, "message", 1);
        p.run(t, "SPUBLISH ot:s2 z\r\n");
        s.expect(t, "smessage", 1);
        s.run(t, "SUNSUBSCRIBE ot:s2\r\n");
        s.run(t, "SUNSUBSCRIBE ot:s2\r\n");
        p.run(t, "SPUBLISH ot:s2 gone\r\n");
        s.run_n(t, "SSUBSCRIBE ot:s3 ot:s4\r\n", 2);
        s.run_unordered_confirmations(t, "SUNSUBSCRIBE\r\n", 3);
        s.run(t, "SUNSUBSCRIBE\r\n");
        p.run(t, "SPUBLISH ot:s1 gone\r\n");
        p.run(t, "PUBLISH ot:s1 still\r\n");
        s.expect(t, "message", 1);
        s.run(t, "UNSUBSCRIBE\r\n");
        s.run(t, "PING\r\n");
    });
}

#[test]
fn ssubscribe_and_smessage_resp2() {
    ssubscribe_and_smessage(false);
}

#[test]
fn ssubscribe_and_smessage_resp3() {
    ssubscribe_and_smessage(true);
}

fn unsubscribe_variants(resp3: bool) {
    Oracle::start().compare(|ep, t| {
        let mut s = connect(ep, t, "sub", resp3);
        let mut p = connect(ep, t, "pub", resp3);
        // Nothing subscribed: one confirmation with a nil channel and count 0.
        s.run(t, "UNSUBSCRIBE\r\n");
        s.run(t, "PUNSUBSCRIBE\r\n");
        s.run(t, "SUNSUBSCRIBE\r\n");
        s.run_n(t, "UNSUBSCRIBE ot:x ot:y\r\n", 2);
        s.run(t, "PUNSUBSCRIBE ot:x*\r\n");
        s.run(t, "SUNSUBSCRIBE ot:x\r\n");
        // Still not in subscribed mode.
        s.run(t, "GET ot:none\r\n");
        s.run_n(t, "SUBSCRIBE ot:a ot:b ot:c\r\n", 3);
        s.run_n(t, "PSUBSCRIBE ot:p1* ot:p2*\r\n", 2);
        s.run(t, "UNSUBSCRIBE ot:b\r\n");
        s.run(t, "UNSUBSCRIBE ot:b\r\n");
        s.run(t, "PUNSUBSCRIBE ot:nope*\r\n");
        s.run_unordered_confirmations(t, "UNSUBSCRIBE\r\n", 2);
        // No channels left but patterns are: nil channel, count of the remaining patterns.
        s.run(t, "UNSUBSCRIBE\r\n");
        p.run(t, "PUBLISH ot:a gone\r\n");
        p.run(t, "PUBLISH ot:p1x kept\r\n");
        s.expect(t, "pmessage", 1);
        s.run_unordered_confirmations(t, "PUNSUBSCRIBE\r\n", 2);
        s.run(t, "PUNSUBSCRIBE\r\n");
        p.run(t, "PUBLISH ot:p1x gone\r\n");
        // Out of subscribed mode again (RESP2 PING is +PONG, not the pong array).
        s.run(t, "PING\r\n");
        s.run_n(t, "SUBSCRIBE ot:a ot:b\r\n", 2);
        s.run_n(t, "UNSUBSCRIBE ot:b ot:a ot:zz\r\n", 3);
        s.run(t, "PING\r\n");
    });
}

#[test]
fn unsubscribe_variants_resp2() {
    unsubscribe_variants(false);
}

#[test]
fn unsubscribe_variants_resp3() {
    unsubscribe_variants(true);
}

#[test]
fn subscribed_mode_resp2() {
    Oracle::start().compare(|ep, t| {
        let mut s = ep.connect("sub");
        let mut p = ep.connect("pub");
        s.run(t, "SUBSCRIBE ot:m\r\n");
        s.run(t, "PING\r\n");
        s.run(t, "PING hi\r\n");
        s.run(t, "ping\r\n");
        s.run(t, "PING a b\r\n");
        s.run(t, "GET ot:k\r\n");
        s.run(t, "PUBLISH ot:m x\r\n");
        s.run(t, "CLIENT ID\r\n");
        s.run(t, "HELLO 2\r\n");
        s.run(t, "ECHO x\r\n");
        s.run(t, "SELECT 0\r\n");
        // Deliberately not compared: Redis reports an unknown command as unknown before the
        // subscribed-mode check; the sidecar does not know the backplane's command table, so it
        // refuses it like any other command here.
        s.run(t, "SUBSCRIBE\r\n");
        s.run(t, "PSUBSCRIBE ot:m*\r\n");
        p.run(t, "PUBLISH ot:m still\r\n");
        s.expect(t, "message then pmessage", 2);
        s.run(t, "RESET\r\n");
        s.run(t, "GET ot:k\r\n");
        s.run(t, "PING\r\n");
        p.run(t, "PUBLISH ot:m after-reset\r\n");
        let mut q = ep.connect("quitter");
        q.run(t, "SUBSCRIBE ot:m\r\n");
        q.run_until_closed(t, "QUIT\r\n");
        p.poll_until(t, "PUBLISH ot:m after-quit\r\n", b":0\r\n");
    });
}

#[test]
fn subscribed_mode_resp3() {
    Oracle::start().compare(|ep, t| {
        let mut s = connect(ep, t, "sub", true);
        let mut p = connect(ep, t, "pub", true);
        s.run(t, "SUBSCRIBE ot:m\r\n");
        s.run(t, "PING\r\n");
        s.run(t, "PING hi\r\n");
        s.run(t, "GET ot:k\r\n");
        s.run(t, "SET ot:k v\r\n");
        s.run(t, "GET ot:k\r\n");
        s.run(t, "PUBLISH ot:other x\r\n");
        s.run_norm(t, "CLIENT ID\r\n", 1, norm::any_integer);
        p.run(t, "PUBLISH ot:m x\r\n");
        s.expect(t, "push message", 1);
        s.run(t, "RESET\r\n");
        s.run(t, "PING\r\n");
        s.run(t, "HGETALL ot:none\r\n");
        p.run(t, "PUBLISH ot:m after-reset\r\n");
        // HELLO 2 while subscribed in RESP3 is accepted: the connection is then in RESP2
        // subscribed mode.
        let mut d = connect(ep, t, "downgrade", true);
        d.run(t, "SUBSCRIBE ot:d\r\n");
        d.run_norm(t, "HELLO 2\r\n", 1, norm::hello);
        d.run(t, "PING\r\n");
        d.run(t, "GET ot:k\r\n");
        p.run(t, "PUBLISH ot:d x\r\n");
        d.expect(t, "RESP2 message", 1);
        let mut q = connect(ep, t, "quitter", true);
        q.run(t, "SUBSCRIBE ot:q\r\n");
        q.run_until_closed(t, "QUIT\r\n");
        p.poll_until(t, "PUBLISH ot:q after-quit\r\n", b":0\r\n");
    });
}

/// A publisher that is also subscribed receives its own message exactly once.
#[test]
fn self_publish_exactly_once_resp3() {
    Oracle::start().compare(|ep, t| {
        let mut s = connect(ep, t, "self", true);
        let mut p = connect(ep, t, "other", true);
        s.run(t, "SUBSCRIBE ot:self\r\n");
        s.run(t, "PSUBSCRIBE ot:se*\r\n");
        s.run_unordered(t, "PUBLISH ot:self mine\r\n", 3);
        // A marker published after it: any second copy of "mine" would arrive before it.
        p.run(t, "PUBLISH ot:self marker\r\n");
        s.expect(t, "marker message and pmessage", 2);
        s.run(t, "SSUBSCRIBE ot:sself\r\n");
        s.run_unordered(t, "SPUBLISH ot:sself mine\r\n", 2);
        p.run(t, "SPUBLISH ot:sself marker\r\n");
        s.expect(t, "marker smessage", 1);
        s.run(t, "PING\r\n");
    });
    if !self_check() {
        // And nothing trails behind, once more without the marker's help.
        let oracle = Oracle::start();
        let ep = Endpoint::new(oracle.sidecar_addr(), support::Side::Sidecar);
        let mut t = Transcript::default();
        let mut s = connect(&ep, &mut t, "self", true);
        s.run(&mut t, "SUBSCRIBE ot:self\r\n");
        s.run_unordered(&mut t, "PUBLISH ot:self mine\r\n", 2);
        s.raw.assert_nothing_within(Duration::from_millis(300));
    }
}

fn pubsub_introspection(resp3: bool) {
    Oracle::start().compare(|ep, t| {
        let mut a = connect(ep, t, "a", resp3);
        let mut b = connect(ep, t, "b", resp3);
        let mut q = connect(ep, t, "query", resp3);
        q.run(t, "PUBSUB NUMSUB ot:i:one\r\n");
        q.run(t, "PUBSUB NUMPAT\r\n");
        a.run_n(t, "SUBSCRIBE ot:i:one ot:i:two\r\n", 2);
        a.run(t, "PSUBSCRIBE ot:i:*\r\n");
        a.run(t, "SSUBSCRIBE ot:i:shard\r\n");
        b.run(t, "SUBSCRIBE ot:i:one\r\n");
        b.run_n(t, "PSUBSCRIBE ot:i:* ot:j*\r\n", 2);
        q.run(t, "PUBSUB NUMSUB ot:i:one ot:i:two ot:i:none\r\n");
        q.run(t, "PUBSUB NUMSUB\r\n");
        q.run(t, "pubsub numsub ot:i:one ot:i:one\r\n");
        q.run(t, "PUBSUB NUMPAT\r\n");
        q.run_norm(t, "PUBSUB CHANNELS ot:i:*\r\n", 1, norm::sorted);
        q.run_norm(t, "PUBSUB CHANNELS ot:i:t*\r\n", 1, norm::sorted);
        q.run(t, "PUBSUB CHANNELS ot:nomatch*\r\n");
        q.run_norm(t, "PUBSUB SHARDCHANNELS ot:i:*\r\n", 1, norm::sorted);
        q.run(t, "PUBSUB SHARDCHANNELS ot:nomatch*\r\n");
        q.run(t, "PUBSUB SHARDNUMSUB ot:i:shard ot:i:one\r\n");
        q.run(t, "PUBSUB SHARDNUMSUB\r\n");
        // Counts follow unsubscribes at once...
        a.run(t, "UNSUBSCRIBE ot:i:two\r\n");
        q.run(t, "PUBSUB NUMSUB ot:i:two\r\n");
        q.run_norm(t, "PUBSUB CHANNELS ot:i:*\r\n", 1, norm::sorted);
        b.run(t, "PUNSUBSCRIBE ot:j*\r\n");
        q.run(t, "PUBSUB NUMPAT\r\n");
        // ...and a connection that goes away (asynchronous: polled).
        drop(a);
        q.poll_until(
            t,
            "PUBSUB NUMSUB ot:i:one\r\n",
            b"*2\r\n$8\r\not:i:one\r\n:1\r\n",
        );
        q.poll_until(
            t,
            "PUBSUB SHARDNUMSUB ot:i:shard\r\n",
            b"*2\r\n$10\r\not:i:shard\r\n:0\r\n",
        );
        q.run(t, "PUBSUB SHARDCHANNELS ot:i:*\r\n");
        q.run(t, "PUBSUB NUMPAT\r\n");
        b.run(t, "RESET\r\n");
        q.run(t, "PUBSUB NUMSUB ot:i:one\r\n");
        q.run(t, "PUBSUB NUMPAT\r\n");
    });
}

#[test]
fn pubsub_introspection_resp2() {
    pubsub_introspection(false);
}

#[test]
fn pubsub_introspection_resp3() {
    pubsub_introspection(true);
}

// ---------------------------------------------------------------------------------------------
// Pass-through

fn passthrough_key_commands(resp3: bool) {
    Oracle::start().compare(|ep, t| {
        let mut c = connect(ep, t, "c", resp3);
        let mut o = connect(ep, t, "other", resp3);
        for cmd in [
            "SET ot:k v\r\n",
            "GET ot:k\r\n",
            "GET ot:missing\r\n",
            "INCR ot:n\r\n",
            "INCR ot:n\r\n",
            "INCRBY ot:n 10\r\n",
            "INCR ot:k\r\n",
            "SET ot:nx v NX\r\n",
            "SET ot:nx w NX\r\n",
            "SET ot:px v PX 100000\r\n",
            "EXISTS ot:px ot:k ot:missing\r\n",
            "TYPE ot:k\r\n",
            "LPUSH ot:k x\r\n",
            "HSET ot:h f1 v1 f2 v2\r\n",
            "HGETALL ot:h\r\n",
            "HGET ot:h f1\r\n",
            "HGET ot:h nope\r\n",
            "HGETALL ot:none\r\n",
            "RPUSH ot:l a b c\r\n",
            "LRANGE ot:l 0 -1\r\n",
            "SADD ot:s a\r\n",
            "SMEMBERS ot:s\r\n",
            "ZADD ot:z 1.5 a 2 b\r\n",
            "ZRANGE ot:z 0 -1 WITHSCORES\r\n",
            "ZSCORE ot:z a\r\n",
            "XADD ot:x MAXLEN 10 1-1 f v\r\n",
            "XRANGE ot:x - +\r\n",
            "XREAD COUNT 5 STREAMS ot:x 0\r\n",
            "BLPOP ot:empty 0.1\r\n",
            "XREAD BLOCK 100 STREAMS ot:x $\r\n",
            "MULTI\r\n",
            "SET ot:m 1\r\n",
            "INCR ot:m\r\n",
            "GET ot:m\r\n",
            "EXEC\r\n",
            "EXEC\r\n",
            "MULTI\r\n",
            "GET\r\n",
            "EXEC\r\n",
            "DEL ot:k ot:n ot:missing\r\n",
            "GET ot:k\r\n",
        ] {
            c.run(t, cmd);
        }
        // WATCH: a write from another connection aborts the transaction (nil EXEC).
        c.run(t, "WATCH ot:w\r\n");
        o.run(t, "SET ot:w 1\r\n");
        c.run(t, "MULTI\r\n");
        c.run(t, "INCR ot:w\r\n");
        c.run(t, "EXEC\r\n");
        c.run(t, "GET ot:w\r\n");
        // A blocked command is released by a write from another connection. (Should the RPUSH
        // win the race, BLPOP pops at once with the same reply; the pause only makes the blocking
        // path the likely one.)
        c.send("BLPOP ot:wake 5\r\n");
        std::thread::sleep(Duration::from_millis(50));
        o.run(t, "RPUSH ot:wake x\r\n");
        c.expect(t, "BLPOP woken", 1);
    });
}

#[test]
fn passthrough_key_commands_resp2() {
    passthrough_key_commands(false);
}

#[test]
fn passthrough_key_commands_resp3() {
    passthrough_key_commands(true);
}

// ---------------------------------------------------------------------------------------------
// Pass-through classes: pooled commands pipelined across clients, and each kind of connection
// state that takes a dedicated link (see `session::passthrough`).

/// Polls the real Redis (behind both runs) until `field:value` shows in `INFO <section>`: how a
/// scenario knows a command is blocked there before it wakes it, on either side.
fn wait_for_info(redis: std::net::SocketAddr, section: &str, field: &str, value: &str) {
    let mut admin = support::RawClient::connect(redis, "info-poll");
    let want = format!("\r\n{field}:{value}\r\n");
    support::wait_for(
        &format!("{field}:{value} in INFO {section}"),
        Duration::from_secs(10),
        || String::from_utf8_lossy(&admin.call(format!("INFO {section}\r\n"))).contains(&want),
    );
}

/// Several clients each pipeline a burst of commands in one write before anyone reads: every
/// client gets its own replies, in its own order, in its own protocol, byte for byte.
fn pooled_pipelines_from_many_clients(resp3: bool) {
    Oracle::start().compare(|ep, t| {
        let mut clients: Vec<Conn> = (0..6)
            .map(|i| connect(ep, t, &format!("c{i}"), resp3))
            .collect();
        let bursts: Vec<(String, usize)> = (0..clients.len())
            .map(|i| {
                let mut burst = String::new();
                for j in 0..40 {
                    burst += &format!("INCR ot:pc:{i}\r\nSET ot:pv:{i}:{j} v{j}\r\nGET ot:pv:{i}:{j}\r\n");
                }
                burst += &format!("HSET ot:ph:{i} a 1 b 2\r\nHGETALL ot:ph:{i}\r\nLPUSH ot:pl:{i} x y\r\nLRANGE ot:pl:{i} 0 -1\r\nGET ot:missing\r\nINCR ot:pv:{i}:0\r\nZADD ot:pz:{i} 1.5 m\r\nZSCORE ot:pz:{i} m\r\n");
                (burst, 40 * 3 + 8)
            })
            .collect();
        for (c, (burst, _)) in clients.iter_mut().zip(&bursts) {
            c.send(burst);
        }
        for (c, (burst, n)) in clients.iter_mut().zip(&bursts) {
            let label = format!("{}> burst of {n}", c.name);
            let _ = burst;
            for frame in c.raw.read_frames(*n) {
                t.record(label.clone(), frame);
            }
        }
        // A client that switches protocol between pipelines gets each reply in the protocol it
        // asked for when it sent the command.
        let mut s = ep.connect("switcher");
        s.run_n(t, "HSET ot:sw f v\r\nHGETALL ot:sw\r\n", 2);
        s.run_norm(t, "HELLO 3\r\n", 1, norm::hello);
        s.run_n(t, "HGETALL ot:sw\r\nZADD ot:swz 2 a\r\nZSCORE ot:swz a\r\nGET ot:none\r\n", 4);
        s.run_norm(t, "HELLO 2\r\n", 1, norm::hello);
        s.run_n(t, "HGETALL ot:sw\r\nZSCORE ot:swz a\r\nGET ot:none\r\n", 3);
        // Local and pass-through commands interleaved in one pipeline stay in order.
        s.run_n(
            t,
            "SET ot:mix 1\r\nPING\r\nINCR ot:mix\r\nECHO e\r\nGET ot:mix\r\nCLIENT GETNAME\r\nDEL ot:mix\r\n",
            7,
        );
    });
}

#[test]
fn pooled_pipelines_from_many_clients_resp2() {
    pooled_pipelines_from_many_clients(false);
}

#[test]
fn pooled_pipelines_from_many_clients_resp3() {
    pooled_pipelines_from_many_clients(true);
}

/// Transactions and WATCH, pipelined and not, with another client writing in between.
fn transactions_and_watch(resp3: bool) {
    Oracle::start().compare(|ep, t| {
        let mut c = connect(ep, t, "c", resp3);
        let mut o = connect(ep, t, "other", resp3);
        // A transaction in one write, and one spread over round trips with another client's
        // write in the middle (which a transaction does not see until EXEC).
        c.run_n(
            t,
            "MULTI\r\nSET ot:t 1\r\nINCR ot:t\r\nGET ot:t\r\nEXEC\r\n",
            5,
        );
        c.run(t, "MULTI\r\n");
        c.run(t, "INCR ot:t\r\n");
        o.run(t, "SET ot:t 10\r\n");
        c.run(t, "GET ot:t\r\n");
        c.run(t, "EXEC\r\n");
        c.run(t, "MULTI\r\n");
        c.run(t, "MULTI\r\n");
        c.run(t, "SET ot:t 0\r\n");
        c.run(t, "DISCARD\r\n");
        c.run(t, "GET ot:t\r\n");
        c.run(t, "DISCARD\r\n");
        c.run(t, "EXEC\r\n");
        // WATCH: a conflicting write from another client aborts; no conflict commits.
        c.run(t, "WATCH ot:w1 ot:w2\r\n");
        o.run(t, "SET ot:w2 other\r\n");
        c.run_n(t, "MULTI\r\nSET ot:w1 mine\r\nEXEC\r\n", 3);
        c.run(t, "GET ot:w1\r\n");
        c.run(t, "WATCH ot:w1\r\n");
        c.run_n(t, "MULTI\r\nSET ot:w1 mine\r\nEXEC\r\n", 3);
        c.run(t, "GET ot:w1\r\n");
        // UNWATCH drops the watch: a later write no longer aborts.
        c.run(t, "WATCH ot:w1\r\n");
        c.run(t, "UNWATCH\r\n");
        o.run(t, "SET ot:w1 theirs\r\n");
        c.run_n(t, "MULTI\r\nGET ot:w1\r\nEXEC\r\n", 3);
        // WATCH inside MULTI is an error, the transaction goes on.
        c.run_n(t, "MULTI\r\nWATCH ot:w1\r\nPING\r\nEXEC\r\n", 4);
        // A queued command with the wrong arity aborts EXEC.
        c.run_n(t, "MULTI\r\nINCR\r\nEXEC\r\nPING\r\n", 4);
    });
}

#[test]
fn transactions_and_watch_resp2() {
    transactions_and_watch(false);
}

#[test]
fn transactions_and_watch_resp3() {
    transactions_and_watch(true);
}

/// Blocking commands wait on a link of their own: woken by another client's write, with the
/// commands pipelined behind them run only after they return, and nobody else held up meanwhile.
fn blocking_commands(resp3: bool) {
    let oracle = Oracle::start();
    let redis = oracle.redis.addr();
    oracle.compare(|ep, t| {
        let mut c = connect(ep, t, "blocked", resp3);
        let mut o = connect(ep, t, "other", resp3);
        c.send("BLPOP ot:bq 10\r\nSET ot:after-blpop 1\r\n");
        wait_for_info(redis, "clients", "blocked_clients", "1");
        // Others go on meanwhile, and the SET behind the BLPOP has not run.
        o.run(t, "GET ot:after-blpop\r\n");
        o.run(t, "PING\r\n");
        o.run(t, "RPUSH ot:bq woken\r\n");
        c.expect(t, "BLPOP woken, then the SET behind it", 2);
        o.run(t, "GET ot:after-blpop\r\n");
        // XREAD BLOCK, woken by XADD.
        o.run(t, "XADD ot:bs 1-1 f v\r\n");
        c.send("XREAD BLOCK 10000 STREAMS ot:bs $\r\n");
        wait_for_info(redis, "clients", "blocked_clients", "1");
        o.run(t, "XADD ot:bs 2-1 g w\r\n");
        c.expect(t, "XREAD woken", 1);
        // BLMOVE and BZPOPMIN that find data at once, and one that times out.
        o.run(t, "RPUSH ot:bm a b\r\n");
        c.run(t, "BLMOVE ot:bm ot:bm2 LEFT RIGHT 1\r\n");
        o.run(t, "ZADD ot:bz 1 m\r\n");
        c.run(t, "BZPOPMIN ot:bz 1\r\n");
        c.run(t, "BRPOP ot:nothing 0.05\r\n");
        // XREAD without BLOCK is an ordinary pooled read; then the client is back on the pool.
        c.run(t, "XREAD COUNT 10 STREAMS ot:bs 0\r\n");
        c.run_n(t, "GET ot:after-blpop\r\nLRANGE ot:bm2 0 -1\r\n", 2);
        // WAIT with no replicas answers 0 at once.
        c.run(t, "WAIT 0 0\r\n");
    });
}

#[test]
fn blocking_commands_resp2() {
    blocking_commands(false);
}

#[test]
fn blocking_commands_resp3() {
    blocking_commands(true);
}

/// SELECT of another database holds a link on that database until SELECT 0.
fn select_another_database(resp3: bool) {
    Oracle::start().compare(|ep, t| {
        let mut c = connect(ep, t, "c", resp3);
        let mut o = connect(ep, t, "other", resp3);
        c.run(t, "SET ot:db here-is-0\r\n");
        c.run(t, "SELECT 1\r\n");
        c.run(t, "GET ot:db\r\n");
        c.run_n(t, "SET ot:db here-is-1\r\nGET ot:db\r\nDBSIZE\r\n", 3);
        o.run(t, "GET ot:db\r\n");
        c.run_norm(t, "CLIENT INFO\r\n", 1, client_info_db);
        c.run(t, "SELECT 16\r\n");
        c.run(t, "GET ot:db\r\n");
        c.run(t, "SELECT 0\r\n");
        c.run(t, "GET ot:db\r\n");
        c.run(t, "SELECT 1\r\n");
        // Clean up database 1 ourselves: the harness only cleans database 0.
        c.run(t, "DEL ot:db\r\n");
        c.run(t, "SELECT 0\r\n");
        c.run(t, "GET ot:db\r\n");
    });
}

/// `CLIENT INFO`'s `db=` field only: the rest (addresses, ages, buffers) is server-specific.
fn client_info_db(frame: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&frame).into_owned();
    let db = text
        .split(' ')
        .find(|f| f.starts_with("db="))
        .unwrap_or("db=<none>")
        .to_owned();
    db.into_bytes()
}

#[test]
fn select_another_database_resp2() {
    select_another_database(false);
}

#[test]
fn select_another_database_resp3() {
    select_another_database(true);
}

/// CLIENT REPLY OFF and SKIP drop replies, and nothing else changes: the commands run.
fn client_reply_modes(resp3: bool) {
    Oracle::start().compare(|ep, t| {
        let mut c = connect(ep, t, "c", resp3);
        c.send("CLIENT REPLY OFF\r\nSET ot:r 1\r\nINCR ot:r\r\nPING\r\nGET\r\n");
        c.run(t, "CLIENT REPLY ON\r\n");
        c.run(t, "GET ot:r\r\n");
        c.send("CLIENT REPLY SKIP\r\nINCR ot:r\r\n");
        c.run(t, "GET ot:r\r\n");
        c.send("CLIENT REPLY SKIP\r\nECHO skipped\r\n");
        c.run_n(t, "ECHO shown\r\nGET ot:r\r\n", 2);
        c.run(t, "CLIENT REPLY MAYBE\r\n");
        c.run(t, "CLIENT REPLY\r\n");
    });
}

#[test]
fn client_reply_modes_resp2() {
    client_reply_modes(false);
}

#[test]
fn client_reply_modes_resp3() {
    client_reply_modes(true);
}

/// AUTH as another ACL user of the backplane: the backplane's ACL decides, for that client only.
#[test]
fn auth_as_another_acl_user() {
    let oracle = Oracle::start();
    let mut admin = oracle.redis.admin();
    assert_eq!(
        admin.call("ACL SETUSER ot-alice on >alicepw ~ot:a:* +@all\r\n"),
        b"+OK\r\n"
    );
    oracle.compare(|ep, t| {
        let mut c = ep.connect("alice");
        let mut o = ep.connect("bystander");
        c.run(t, "AUTH ot-alice wrong\r\n");
        c.run(t, "ACL WHOAMI\r\n");
        c.run(t, "AUTH ot-alice alicepw\r\n");
        c.run_n(
            t,
            "ACL WHOAMI\r\nSET ot:a:1 x\r\nSET ot:b:1 x\r\nGET ot:a:1\r\n",
            4,
        );
        // Others are not affected.
        o.run_n(t, "ACL WHOAMI\r\nSET ot:b:1 y\r\n", 2);
        // A failed AUTH keeps the user; AUTH as default (nopass here) goes back to it.
        c.run(t, "AUTH ot-alice wrong\r\n");
        c.run(t, "SET ot:b:1 z\r\n");
        c.run(t, "AUTH default anything\r\n");
        c.run_n(t, "ACL WHOAMI\r\nSET ot:b:1 z\r\nGET ot:b:1\r\n", 3);
        c.run(t, "AUTH ot-alice alicepw\r\n");
        c.run(t, "RESET\r\n");
        c.run(t, "ACL WHOAMI\r\n");
        // HELLO's AUTH option does the same, and the protocol switch applies to that link.
        let mut h = ep.connect("hello-alice");
        h.run(t, "HELLO 3 AUTH ot-alice wrong\r\n");
        h.run_norm(t, "HELLO 3 AUTH ot-alice alicepw\r\n", 1, norm::hello);
        h.run_n(
            t,
            "ACL WHOAMI\r\nHSET ot:a:h f v\r\nHGETALL ot:a:h\r\nGET ot:b:1\r\n",
            4,
        );
        h.run_norm(t, "HELLO 2\r\n", 1, norm::hello);
        h.run_n(t, "HGETALL ot:a:h\r\nACL WHOAMI\r\n", 2);
    });
}

/// A link lost with commands in flight answers each of them, in order, with an error that says
/// it may or may not have run (or, if the sidecar had not written it yet, that it was not run);
/// nothing is left unanswered and the connection stays usable.
#[test]
fn lost_link_answers_every_command_in_flight() {
    if self_check() {
        eprintln!("skipped in self-check mode: the sidecar's own error");
        return;
    }
    let mut redis = support::RedisServer::start();
    let sidecar = SidecarOptions::upstream(redis.url()).start();
    let mut blocked = support::RawClient::connect(sidecar.addr, "blocked");
    let mut pooled = support::RawClient::connect(sidecar.addr, "pooled");
    assert_eq!(pooled.call("SET ot:k v\r\n"), b"+OK\r\n");
    blocked.send("BLPOP ot:never 0\r\nSET ot:behind 1\r\nGET ot:behind\r\n");
    wait_for_info(redis.addr(), "clients", "blocked_clients", "1");
    // Pooled commands held up: once CLIENT PAUSE has answered, Redis postpones every other
    // client's commands (the sidecar's writes reach its socket and get no answer).
    let mut pauser = redis.admin();
    assert_eq!(pauser.call("CLIENT PAUSE 30000\r\n"), b"+OK\r\n");
    pooled.send("GET ot:k\r\nINCR ot:n\r\nGET ot:k\r\n");
    let pid = redis.pid();
    // Let the sidecar take the three commands before the kill: it has, once it reads them and
    // they count as forwarded.
    support::wait_for(
        "three more commands forwarded",
        Duration::from_secs(10),
        || forwarded(&sidecar) >= 7,
    );
    redis.stop();
    assert_ne!(pid, 0);
    let texts = |c: &mut support::RawClient, n: usize| -> Vec<String> {
        c.read_frames(n)
            .into_iter()
            .map(|f| String::from_utf8_lossy(&f).into_owned())
            .collect()
    };
    let blocked_replies = texts(&mut blocked, 3);
    let pooled_replies = texts(&mut pooled, 3);
    for (who, replies) in [("blocked", &blocked_replies), ("pooled", &pooled_replies)] {
        for reply in replies.iter() {
            assert!(
                reply.starts_with("-ERR switchboard: ")
                    && (reply.contains("it may or may not have run")
                        || reply.contains("was not run")),
                "{who}: every command in flight must be answered with the in-flight error: {replies:?}"
            );
        }
    }
    assert!(
        blocked_replies[0].contains("while running 'blpop'; it may or may not have run"),
        "{blocked_replies:?}"
    );
    // The connection stays usable: with Redis back, the next command works.
    redis.start_again();
    support::wait_for(
        "a pooled command after the restart",
        Duration::from_secs(10),
        || pooled.call("SET ot:k again\r\n") == b"+OK\r\n",
    );
    assert_eq!(pooled.call("GET ot:k\r\n"), b"$5\r\nagain\r\n");
}

/// `switchboard_sidecar_commands_forwarded_total`, read from `/metrics`.
fn forwarded(sidecar: &support::Sidecar) -> u64 {
    metric(sidecar, "switchboard_sidecar_commands_forwarded_total")
}

fn metric(sidecar: &support::Sidecar, name: &str) -> u64 {
    let body = support::http_body(sidecar.http_addr, "/metrics").unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// A client that pipelines without reading is paused at its socket, not buffered, and the others
/// are served meanwhile; once it reads, every one of its replies arrives, in order.
#[test]
fn a_flooding_client_does_not_stall_others() {
    if self_check() {
        eprintln!("skipped in self-check mode: the sidecar's own limits");
        return;
    }
    let redis = support::RedisServer::start();
    let sidecar = SidecarOptions::upstream(redis.url())
        .arg("--client-buffer-bytes", "65536")
        .arg("--passthrough-pool-size", "1")
        .start();
    let value = "v".repeat(1000);
    let mut flood = support::RawClient::connect(sidecar.addr, "flood");
    assert_eq!(flood.call(format!("SET ot:f {value}\r\n")), b"+OK\r\n");
    let n = 50_000;
    let burst = "GET ot:f\r\n".repeat(n);
    // Written from a thread: the sidecar stops reading it long before all of it is sent.
    let mut writer = flood.try_clone_stream();
    let sending = std::thread::spawn(move || {
        use std::io::Write;
        writer.write_all(burst.as_bytes()).expect("write the flood");
    });
    let mut other = support::RawClient::connect(sidecar.addr, "other");
    for i in 0..100 {
        assert_eq!(
            other.call(format!("SET ot:o{i} {i}\r\n")),
            b"+OK\r\n",
            "the other client is served while one floods"
        );
        assert_eq!(
            other.call(format!("GET ot:o{i}\r\n")),
            format!("${}\r\n{i}\r\n", i.to_string().len()).into_bytes()
        );
    }
    // Paused, not buffered: far fewer of the flood's GETs have run than it sent.
    let mut admin = redis.admin();
    let stats = String::from_utf8_lossy(&admin.call("INFO commandstats\r\n")).into_owned();
    let gets: u64 = stats
        .split("cmdstat_get:calls=")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(
        gets < (n as u64) / 2,
        "{gets} of the flood's {n} GETs ran while it read nothing: the sidecar buffered its replies instead of pausing it"
    );
    let expected = format!("$1000\r\n{value}\r\n").into_bytes();
    for i in 0..n {
        let frame = flood.read_frame();
        assert!(frame == expected, "flood reply {i}: {}", show(&frame));
    }
    sending.join().expect("the flood writer");
}

/// However many local clients use key commands, the backplane sees the pool (per protocol used).
#[test]
fn many_clients_share_the_pool() {
    if self_check() {
        eprintln!("skipped in self-check mode: the sidecar's pool");
        return;
    }
    let redis = support::RedisServer::start();
    let sidecar = SidecarOptions::upstream(redis.url())
        .arg("--passthrough-pool-size", "3")
        .start();
    let mut admin = redis.admin();
    let before = connected_clients(&mut admin);
    let mut clients: Vec<support::RawClient> = (0..60)
        .map(|i| support::RawClient::connect(sidecar.addr, &format!("c{i}")))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("SET ot:m{i} {i}\r\nGET ot:m{i}\r\n"));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.read_frame(), b"+OK\r\n");
        assert_eq!(
            c.read_frame(),
            format!("${}\r\n{i}\r\n", i.to_string().len()).into_bytes()
        );
    }
    let after = connected_clients(&mut admin);
    // Clients are spread over the whole pool, and never beyond it.
    assert_eq!(
        after - before,
        3,
        "60 clients doing GET must cost the backplane the pool's 3 connections"
    );
    assert_eq!(
        metric(
            &sidecar,
            "switchboard_sidecar_upstream_connections{kind=\"pool\"}"
        ),
        (after - before) as u64
    );
    // One client in a transaction takes one more link, dedicated, and gives it back after.
    clients[0].call("MULTI\r\n");
    assert_eq!(
        metric(
            &sidecar,
            "switchboard_sidecar_upstream_connections{kind=\"dedicated\"}"
        ),
        1
    );
    assert_eq!(clients[0].call("EXEC\r\n"), b"*0\r\n");
    assert_eq!(clients[1].call("GET ot:m1\r\n"), b"$1\r\n1\r\n");
}

fn connected_clients(admin: &mut support::RawClient) -> i64 {
    let info = String::from_utf8_lossy(&admin.call("INFO clients\r\n")).into_owned();
    info.split("connected_clients:")
        .nth(1)
        .and_then(|rest| rest.split("\r\n").next())
        .and_then(|n| n.parse().ok())
        .expect("INFO clients has connected_clients")
}

// ---------------------------------------------------------------------------------------------
// Malformed input

fn protocol_errors(resp3: bool) {
    let closing: &[&[u8]] = &[
        b"*abc\r\n",
        b"*1\r\n:1\r\n",
        b"*2\r\n$4\r\nECHO\r\n$-1\r\n",
        b"*1\r\n$abc\r\n",
        b"*1\r\n$-5\r\n",
        b"*1\r\n*1\r\n",
        b"*2\r\n$4\r\nECHO\r\n*1\r\n",
        b"PING\r\n*abc\r\n",
        b"ECHO \"abc\r\n",
        b"ECHO 'a\r\n",
        b"ECHO \"a\"b\r\n",
    ];
    Oracle::start().compare(|ep, t| {
        for (i, input) in closing.iter().enumerate() {
            let mut c = connect(ep, t, &format!("bad{i}"), resp3);
            c.run_until_closed(t, input);
        }
        // Lines Redis refuses to buffer past 64 KiB without a CRLF.
        let mut c = connect(ep, t, "inline-too-big", resp3);
        c.run_until_closed(t, vec![b'A'; 70_000]);
        let mut c = connect(ep, t, "mbulk-count-too-big", resp3);
        c.run_until_closed(t, [b"*".as_slice(), &[b'1'; 70_000]].concat());
        let mut c = connect(ep, t, "bulk-count-too-big", resp3);
        c.run_until_closed(t, [b"*1\r\n$".as_slice(), &[b'1'; 70_000]].concat());
        let mut c = connect(ep, t, "survivor", resp3);
        c.run(t, "PING\r\n");
    });
}

#[test]
fn protocol_errors_resp2() {
    protocol_errors(false);
}

#[test]
fn protocol_errors_resp3() {
    protocol_errors(true);
}

/// The sidecar's own limits (not Redis's): a clear protocol error, a closed connection, and the
/// sidecar goes on serving everyone else.
#[test]
fn sidecar_limits_close_only_the_offender() {
    if self_check() {
        eprintln!("skipped in self-check mode: these limits are the sidecar's, not Redis's");
        return;
    }
    let redis = support::RedisServer::start();
    let mut sidecar = SidecarOptions::upstream(redis.url())
        .arg("--max-bulk-bytes", "4096")
        .arg("--max-args", "16")
        .start();
    let mut bystander = support::RawClient::connect(sidecar.addr, "bystander");
    assert_eq!(
        bystander.call("SUBSCRIBE ot:lim\r\n"),
        b"*3\r\n$9\r\nsubscribe\r\n$6\r\not:lim\r\n:1\r\n"
    );

    // At the limits: accepted.
    let mut ok = support::RawClient::connect(sidecar.addr, "at-limit");
    let max_bulk = vec![b'x'; 4096];
    let mut expected = b"$4096\r\n".to_vec();
    expected.extend_from_slice(&max_bulk);
    expected.extend_from_slice(b"\r\n");
    assert_eq!(ok.call(command(&[b"ECHO", &max_bulk])), expected);
    let sixteen: Vec<Vec<u8>> = std::iter::once(b"DEL".to_vec())
        .chain((0..15).map(|i| format!("ot:none{i}").into_bytes()))
        .collect();
    let sixteen: Vec<&[u8]> = sixteen.iter().map(Vec::as_slice).collect();
    assert_eq!(ok.call(command(&sixteen)), b":0\r\n");

    // Over the limits: told why, then closed. Announced lengths suffice; no payload is sent.
    // The reply must say which setting to raise (the flag) and, like Redis's own limit errors,
    // start with the `invalid ... length` wording clients and people recognise. A length that is
    // not a number at all is Redis's plain "invalid bulk length".
    let cases: [(&[u8], &str, Option<&str>); 3] = [
        (
            b"*2\r\n$4\r\nECHO\r\n$4097\r\n",
            "-ERR Protocol error: invalid bulk length",
            Some("--max-bulk-bytes"),
        ),
        (
            b"*17\r\n",
            "-ERR Protocol error: invalid multibulk length",
            Some("--max-args"),
        ),
        (
            b"*2\r\n$4\r\nECHO\r\n$99999999999999999999\r\n",
            "-ERR Protocol error: invalid bulk length",
            None,
        ),
    ];
    for (input, prefix, flag) in cases {
        let mut c = support::RawClient::connect(sidecar.addr, "offender");
        c.send_allow_close(input);
        let frames = c.read_until_closed();
        let reply = String::from_utf8_lossy(&frames.concat()).into_owned();
        assert!(
            frames.len() == 1
                && reply.starts_with(prefix)
                && flag.is_none_or(|f| reply.contains(f)),
            "{}: expected one reply starting {prefix:?} naming {flag:?}, then a close; got {:?}",
            show(input),
            frames.iter().map(|f| show(f)).collect::<Vec<_>>()
        );
        sidecar.assert_running();
    }

    // Everyone else is still served.
    assert_eq!(ok.call("PING\r\n"), b"+PONG\r\n");
    let mut fresh = support::RawClient::connect(sidecar.addr, "fresh");
    assert_eq!(fresh.call("PUBLISH ot:lim still-here\r\n"), b":1\r\n");
    assert_eq!(
        bystander.read_frame(),
        b"*3\r\n$7\r\nmessage\r\n$6\r\not:lim\r\n$10\r\nstill-here\r\n"
    );
    assert_eq!(sidecar.readyz(), Ok(200));
    sidecar.assert_running();
}

// ---------------------------------------------------------------------------------------------
// Sidecar-specific views

/// The sidecar's own upstream subscriptions and registry never show through: an application sees
/// only the channels and patterns applications subscribed to, counted per application connection.
#[test]
fn sidecar_hides_its_own_subscriptions() {
    let oracle = Oracle::start();
    let mut a = support::RawClient::connect(oracle.sidecar_addr(), "a");
    let mut b = support::RawClient::connect(oracle.sidecar_addr(), "b");
    let mut q = support::RawClient::connect(oracle.sidecar_addr(), "query");
    assert_eq!(q.call("PUBSUB NUMPAT\r\n"), b":0\r\n");
    assert_eq!(q.call("PUBSUB CHANNELS\r\n"), b"*0\r\n");
    assert_eq!(q.call("PUBSUB SHARDCHANNELS\r\n"), b"*0\r\n");
    a.call("SUBSCRIBE ot:solo\r\n");
    b.call("SUBSCRIBE ot:solo\r\n");
    assert_eq!(q.call("PUBSUB CHANNELS\r\n"), b"*1\r\n$7\r\not:solo\r\n");
    assert_eq!(
        q.call("PUBSUB NUMSUB ot:solo\r\n"),
        b"*2\r\n$7\r\not:solo\r\n:2\r\n"
    );
    assert_eq!(q.call("PUBLISH ot:solo x\r\n"), b":2\r\n");
    assert_eq!(q.call("PUBSUB NUMPAT\r\n"), b":0\r\n");
}

/// ioredis sends INFO as its ready check and waits for `loading:0`.
#[test]
fn info_answers_loading_0() {
    let oracle = Oracle::start();
    let mut c = support::RawClient::connect(oracle.sidecar_addr(), "c");
    let reply = c.call("INFO\r\n");
    assert!(reply.starts_with(b"$"), "INFO: {}", show(&reply));
    assert!(
        String::from_utf8_lossy(&reply).contains("\r\nloading:0\r\n"),
        "INFO lacks loading:0: {}",
        show(&reply)
    );
}

// ---------------------------------------------------------------------------------------------
// Embedded mode (no upstream): the sidecar is the broker, compared with a Redis of its own.

fn embedded_pubsub(resp3: bool) {
    Oracle::embedded().compare(|ep, t| {
        let mut s = connect(ep, t, "sub", resp3);
        let mut q = connect(ep, t, "psub", resp3);
        let mut p = connect(ep, t, "pub", resp3);
        p.run(t, "PUBLISH ot:e nobody\r\n");
        s.run_n(t, "SUBSCRIBE ot:e ot:f\r\n", 2);
        q.run(t, "PSUBSCRIBE ot:e*\r\n");
        p.run(t, "PUBLISH ot:e hello\r\n");
        s.expect(t, "message", 1);
        q.expect(t, "pmessage", 1);
        p.run(t, "PUBSUB NUMSUB ot:e ot:f ot:g\r\n");
        p.run(t, "PUBSUB NUMPAT\r\n");
        p.run_norm(t, "PUBSUB CHANNELS ot:*\r\n", 1, norm::sorted);
        s.run(t, "SSUBSCRIBE ot:es\r\n");
        p.run(t, "SPUBLISH ot:es shard\r\n");
        s.expect(t, "smessage", 1);
        p.run(t, "PUBSUB SHARDNUMSUB ot:es\r\n");
        s.run_unordered_confirmations(t, "UNSUBSCRIBE\r\n", 2);
        p.run(t, "PUBLISH ot:e bye\r\n");
        q.expect(t, "pmessage", 1);
        drop(q);
        p.poll_until(t, "PUBSUB NUMPAT\r\n", b":0\r\n");
        p.run(t, "PING\r\n");
        p.run(t, "ECHO e\r\n");
    });
}

#[test]
fn embedded_pubsub_resp2() {
    embedded_pubsub(false);
}

#[test]
fn embedded_pubsub_resp3() {
    embedded_pubsub(true);
}

/// With no Redis behind it, a key command gets an error that says why, and the connection stays
/// usable.
#[test]
fn embedded_key_command_is_a_clear_error() {
    if self_check() {
        eprintln!("skipped in self-check mode: Redis has no embedded mode");
        return;
    }
    let mut sidecar = SidecarOptions::embedded().start();
    assert_eq!(sidecar.readyz(), Ok(200));
    let mut c = support::RawClient::connect(sidecar.addr, "c");
    for cmd in ["GET ot:k\r\n", "SET ot:k v\r\n", "MULTI\r\n"] {
        let reply = c.call(cmd);
        let text = String::from_utf8_lossy(&reply).to_lowercase();
        assert!(
            reply.starts_with(b"-") && (text.contains("embedded") || text.contains("upstream")),
            "{cmd:?}: expected an error naming embedded mode / the missing upstream, got {}",
            show(&reply)
        );
    }
    assert_eq!(c.call("PING\r\n"), b"+PONG\r\n");
    sidecar.assert_running();
}

// ---------------------------------------------------------------------------------------------
// Local password

#[test]
fn local_password_matches_requirepass() {
    Oracle::with_password("s3cret").compare(|ep, t| {
        let mut a = ep.connect("anon");
        for cmd in [
            "PING\r\n",
            "GET ot:k\r\n",
            "SUBSCRIBE ot:x\r\n",
            "PUBLISH ot:x y\r\n",
            "PUBSUB NUMSUB ot:x\r\n",
            "CLIENT ID\r\n",
            "SELECT 0\r\n",
            "ECHO x\r\n",
        ] {
            a.run(t, cmd);
        }
        for cmd in ["HELLO 3\r\n", "HELLO 2\r\n", "HELLO\r\n"] {
            a.run_norm(t, cmd, 1, norm::reworded);
        }
        for cmd in [
            // Deliberately not compared: Redis reports an unknown command as unknown even before
            // authentication; the sidecar cannot know the backplane's command table, so it
            // answers NOAUTH, as Redis does for every known command.
            "AUTH wrong\r\n",
            "AUTH default wrong\r\n",
            "AUTH nobody s3cret\r\n",
            "HELLO 3 AUTH default wrong\r\n",
            "AUTH\r\n",
            "AUTH a b c\r\n",
            "PING\r\n",
            "AUTH s3cret\r\n",
            "PING\r\n",
            "GET ot:k\r\n",
            "AUTH default s3cret\r\n",
            "AUTH wrong\r\n",
            // A failed AUTH does not undo an earlier success.
            "PING\r\n",
            // RESET deauthenticates.
            "RESET\r\n",
            "PING\r\n",
        ] {
            a.run(t, cmd);
        }
        let mut b = ep.connect("hello-auth");
        b.run_norm(t, "HELLO 3 AUTH default s3cret\r\n", 1, norm::hello);
        b.run(t, "PING\r\n");
        b.run(t, "SET ot:k v\r\n");
        b.run(t, "HGETALL ot:none\r\n");
        b.run(t, "SUBSCRIBE ot:x\r\n");
        let mut c = ep.connect("hello-setname-auth");
        c.run_norm(
            t,
            "HELLO 2 SETNAME ot-n AUTH default s3cret\r\n",
            1,
            norm::hello,
        );
        c.run(t, "CLIENT GETNAME\r\n");
        c.run(t, "PUBLISH ot:x hi\r\n");
        b.expect(t, "message", 1);
        let mut d = ep.connect("quitter");
        d.run_until_closed(t, "QUIT\r\n");
    });
}

/// Until a client authenticates Redis caps what it will buffer for it; so must the sidecar.
#[test]
fn local_password_unauthenticated_limits() {
    Oracle::with_password("s3cret").compare(|ep, t| {
        let mut a = ep.connect("ten-args");
        a.run(t, command(&[b"PING".as_slice(); 10]));
        let mut b = ep.connect("many-args");
        b.run_until_closed(t, "*11\r\n");
        let mut c = ep.connect("big-bulk");
        c.run_until_closed(t, "*2\r\n$4\r\nAUTH\r\n$16385\r\n");
        let mut d = ep.connect("ok-bulk");
        d.run(t, command(&[b"AUTH", &[b'p'; 16384]]));
    });
}

// ---------------------------------------------------------------------------------------------
// The harness itself

/// Reconnect tests restart Redis on the same port; that must work and come back empty.
#[test]
fn redis_restarts_on_the_same_port() {
    let mut redis = support::RedisServer::start();
    let port = redis.port();
    assert_eq!(redis.admin().call("SET ot:k v\r\n"), b"+OK\r\n");
    let mut before = support::RawClient::connect(redis.addr(), "before");
    redis.restart();
    assert_eq!(redis.port(), port);
    assert!(
        matches!(
            before.try_read_frame(support::REPLY_DEADLINE),
            Err(support::ReadError::Closed(_))
        ),
        "a connection from before the restart must see the server go"
    );
    assert_eq!(redis.admin().call("GET ot:k\r\n"), b"$-1\r\n");
}
