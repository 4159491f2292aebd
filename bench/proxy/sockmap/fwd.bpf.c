/* bench/proxy/sockmap: the kernel half of an experimental forwarder.
 *
 * Every forwarded socket sits in SOCKS at an index; PEERS maps a socket's
 * cookie to the index of the socket its bytes go to.  The stream verdict
 * hands each received skb to the peer's send queue without waking any
 * process of ours.  Not part of standin: an experiment to see how close a
 * forwarder that never enters user space comes to a direct connection. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} peers SEC(".maps");

SEC("sk_skb/stream_verdict")
int verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u32 *peer = bpf_map_lookup_elem(&peers, &cookie);

	if (peer == NULL)
		return SK_DROP;
	return bpf_sk_redirect_map(skb, &socks, *peer, 0);
}

char LICENSE[] SEC("license") = "GPL";
