//! The hand-off relay: once the daemon has connected a passed client to the backend MTA, both
//! sockets go into `scr_relay_socks` and this stream verdict program sends each socket's
//! incoming data straight out of its peer, so relayed mail never enters userspace.
//!
//! The peer comes from `scr_relay_peers`, keyed by the socket cookie; the daemon writes both
//! entries of a pair there before it inserts either socket. Data of a socket without a peer
//! entry (or whose peer already left the sockhash) is passed to the socket itself, where the
//! daemon reads and forwards it.
//!
//! The redirect has no backpressure of its own: it takes the data off the sending socket,
//! whose window reopens, and queues it for the peer, charged to no socket. So each socket
//! has a credit in `scr_relay_cred`, the bytes it may have redirected in all, which the
//! daemon keeps at what the peer took plus a margin. Data that would pass it stays on the
//! socket, and so does everything after it (`stopped`, so that no byte overtakes another):
//! the daemon relays the connection in userspace from then on, where the socket's own
//! receive buffer holds the sender back.
//!
//! # Minimum kernel version
//!
//! 5.15: sockhash stream verdict without a stream parser (`read_sock` for TCP), and
//! `bpf_get_socket_cookie` in `sk_skb` programs.

use aya_ebpf::{
    bindings::sk_action::SK_PASS, helpers::bpf_get_socket_cookie, macros::stream_verdict,
    programs::SkBuffContext,
};

use crate::maps::{RELAY_CREDIT, RELAY_PEERS, RELAY_SOCKS};

#[stream_verdict]
pub fn smtp_screen_relay(ctx: SkBuffContext) -> u32 {
    // SAFETY: the context of an sk_skb program is a valid `__sk_buff`, whose socket the
    // helper reads.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let Some(peer) = RELAY_PEERS.get_ptr_mut(cookie) else {
        return SK_PASS;
    };
    // SAFETY: the pointer comes from a successful lookup and the entry outlives this run;
    // the program runs under this socket's lock, so it is the only writer of the entry.
    let (stopped, redirected, mut target) =
        unsafe { ((*peer).stopped, (*peer).redirected, (*peer).peer) };
    if stopped != 0 {
        return SK_PASS;
    }
    // SAFETY: a u64 the daemon writes whole.
    let credit = unsafe { RELAY_CREDIT.get(&cookie) }.copied().unwrap_or(0);
    if redirected + u64::from(ctx.len()) > credit {
        // SAFETY: as above.
        unsafe { (*peer).stopped = 1 };
        return SK_PASS;
    }
    let verdict = RELAY_SOCKS.redirect_skb(&ctx, &mut target, 0);
    if verdict != i64::from(SK_PASS) {
        // The peer left the sockhash (its side is closing): keep the data on this socket.
        return SK_PASS;
    }
    // Runs under this socket's lock, so this is the only writer of the entry.
    // SAFETY: as above.
    unsafe { (*peer).redirected += u64::from(ctx.len()) };
    SK_PASS
}
