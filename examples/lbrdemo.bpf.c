// SPDX-License-Identifier: GPL-2.0
/*
 * lbrdemo: a small tc (sched_cls) traffic classifier, the example workload of bpflbr-shell.
 *
 * It parses Ethernet/IPv4/IPv6 + TCP/UDP/ICMP, keeps per-flow counters in a hash map,
 * per-class counters in an array map, and samples 1 in N packets (N from a config array).
 * It is split on purpose into several JITed functions (static __noinline subprograms and one
 * global function), so the kernel reports several jited_ksyms with BTF func info and line
 * info: what `show prog` and `disasm prog` are about.
 *
 * Build: clang -target bpf -O2 -g -I/usr/include/x86_64-linux-gnu -c lbrdemo.bpf.c
 * (examples/workload.py does this into a cache directory and loads it through libbpf).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

enum traffic_class {
	CLASS_OTHER = 0,
	CLASS_DNS,
	CLASS_HTTP,
	CLASS_TLS,
	CLASS_SSH,
	CLASS_TCP,
	CLASS_UDP,
	CLASS_ICMP,
	CLASS_NON_IP,
	NR_CLASSES,
};

struct flow_key {
	__u32 saddr[4];		/* IPv4 in saddr[0], IPv6 in all four */
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct flow_stats {
	__u64 packets;
	__u64 bytes;
	__u64 first_seen_ns;
	__u64 last_seen_ns;
	__u32 tclass;
	__u32 pad;
};

struct class_stats {
	__u64 packets;
	__u64 bytes;
	__u64 sampled;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct flow_key);
	__type(value, struct flow_stats);
} flow_table SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NR_CLASSES);
	__type(key, __u32);
	__type(value, struct class_stats);
} class_table SEC(".maps");

/* index 0: sample one packet in N (0 = never) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sample_rate SEC(".maps");

static __noinline int parse_l4(struct __sk_buff *skb, void *l4, struct flow_key *key)
{
	void *data_end = (void *)(long)skb->data_end;

	switch (key->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return -1;
		key->sport = bpf_ntohs(th->source);
		key->dport = bpf_ntohs(th->dest);
		return 0;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return -1;
		key->sport = bpf_ntohs(uh->source);
		key->dport = bpf_ntohs(uh->dest);
		return 0;
	}
	default:
		return 0;
	}
}

static __noinline int parse_packet(struct __sk_buff *skb, struct flow_key *key)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);

		if ((void *)(iph + 1) > data_end || iph->ihl < 5)
			return -1;
		key->family = 4;
		key->proto = iph->protocol;
		key->saddr[0] = iph->saddr;
		key->daddr[0] = iph->daddr;
		return parse_l4(skb, (void *)iph + iph->ihl * 4, key);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = (void *)(eth + 1);

		if ((void *)(ip6h + 1) > data_end)
			return -1;
		key->family = 6;
		key->proto = ip6h->nexthdr;
		__builtin_memcpy(key->saddr, &ip6h->saddr, sizeof(key->saddr));
		__builtin_memcpy(key->daddr, &ip6h->daddr, sizeof(key->daddr));
		return parse_l4(skb, ip6h + 1, key);
	}
	return 1;	/* not IP */
}

static __noinline __u32 classify_flow(const struct flow_key *key)
{
	__u16 port = key->dport < key->sport ? key->dport : key->sport;

	switch (key->proto) {
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return CLASS_ICMP;
	case IPPROTO_TCP:
		if (port == 22)
			return CLASS_SSH;
		if (port == 80 || port == 8080)
			return CLASS_HTTP;
		if (port == 443)
			return CLASS_TLS;
		return CLASS_TCP;
	case IPPROTO_UDP:
		if (port == 53)
			return CLASS_DNS;
		if (port == 443)
			return CLASS_TLS;	/* QUIC */
		return CLASS_UDP;
	default:
		return CLASS_OTHER;
	}
}

/* A global function: verified on its own, so it takes only scalars. */
__noinline int account_class(__u32 tclass, __u32 len)
{
	struct class_stats *cs;
	__u32 zero = 0, *rate;
	int sampled = 0;

	cs = bpf_map_lookup_elem(&class_table, &tclass);
	if (!cs)
		return 0;
	__sync_fetch_and_add(&cs->packets, 1);
	__sync_fetch_and_add(&cs->bytes, len);

	rate = bpf_map_lookup_elem(&sample_rate, &zero);
	if (rate && *rate && bpf_get_prandom_u32() % *rate == 0) {
		__sync_fetch_and_add(&cs->sampled, 1);
		sampled = 1;
	}
	return sampled;
}

static __noinline void update_flow(const struct flow_key *key, __u32 tclass, __u32 len)
{
	__u64 now = bpf_ktime_get_ns();
	struct flow_stats *fs;

	fs = bpf_map_lookup_elem(&flow_table, key);
	if (fs) {
		__sync_fetch_and_add(&fs->packets, 1);
		__sync_fetch_and_add(&fs->bytes, len);
		fs->last_seen_ns = now;
		return;
	}

	struct flow_stats init = {
		.packets = 1,
		.bytes = len,
		.first_seen_ns = now,
		.last_seen_ns = now,
		.tclass = tclass,
	};
	bpf_map_update_elem(&flow_table, key, &init, BPF_NOEXIST);
}

SEC("tc")
int tc_classify(struct __sk_buff *skb)
{
	struct flow_key key = {};
	__u32 tclass;
	int ret;

	ret = parse_packet(skb, &key);
	if (ret < 0)
		return TC_ACT_SHOT;	/* truncated header */
	if (ret > 0) {
		account_class(CLASS_NON_IP, skb->len);
		return TC_ACT_OK;
	}

	tclass = classify_flow(&key);
	update_flow(&key, tclass, skb->len);
	skb->tc_classid = tclass;
	if (account_class(tclass, skb->len))
		skb->mark = 0x1b4;	/* sampled: let a later stage pick it up */
	return TC_ACT_OK;
}
