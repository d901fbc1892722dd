// SPDX-License-Identifier: GPL-2.0
/*
 * sockstat: a socket filter that counts packets per IP protocol and a packet-size histogram,
 * the BCC half of bpflbr-shell's example workload (examples/workload.py loads it).
 *
 * BCC C, compiled at run time by BCC: BCC cannot link bpf-to-bpf calls, so this is one
 * function (everything below is inlined into sock_stats).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>

struct proto_stats {
    u64 packets;
    u64 bytes;
    u64 last_seen_ns;
};

BPF_HASH(proto_table, u32, struct proto_stats, 256);
BPF_ARRAY(size_log2, u64, 16);

static inline u32 log2_bucket(u32 v)
{
    u32 r = 0;
#pragma unroll
    for (int i = 0; i < 15; i++) {
        if (v > 1) {
            v >>= 1;
            r++;
        }
    }
    return r;
}

int sock_stats(struct __sk_buff *skb)
{
    u32 proto = 0;
    u16 h_proto = 0;
    u8 ip_proto = 0;
    u64 now = bpf_ktime_get_ns();

    if (bpf_skb_load_bytes(skb, 12, &h_proto, sizeof(h_proto)) < 0)
        return 0;
    if (h_proto == htons(ETH_P_IP))
        bpf_skb_load_bytes(skb, ETH_HLEN + 9, &ip_proto, 1);
    else if (h_proto == htons(ETH_P_IPV6))
        bpf_skb_load_bytes(skb, ETH_HLEN + 6, &ip_proto, 1);
    proto = ((u32)ntohs(h_proto) << 8) | ip_proto;

    struct proto_stats zero = {};
    struct proto_stats *ps = proto_table.lookup_or_try_init(&proto, &zero);
    if (ps) {
        __sync_fetch_and_add(&ps->packets, 1);
        __sync_fetch_and_add(&ps->bytes, skb->len);
        ps->last_seen_ns = now;
    }
    size_log2.increment(log2_bucket(skb->len));
    return 0;   /* a socket filter that keeps nothing: observe only */
}
