/* bench/proxy/sockmap: an experimental TCP forwarder whose bytes never
 * enter user space (BPF sockmap with a stream verdict, fwd.bpf.c).
 *
 *   sockmap-fwd BPF_OBJECT LISTEN_PORT BACKEND_PORT
 *
 * Accepts on 127.0.0.1:LISTEN_PORT, connects to 127.0.0.1:BACKEND_PORT and
 * puts both sockets in the sockmap; the kernel forwards from then on.  This
 * process only sets pairs up and tears them down: at EOF or error on either
 * side both are closed (no half-close, no byte counts, no backpressure
 * policy).  A benchmark instrument, not standin code. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#define SLOTS 32768		/* pairs; index 2i client, 2i+1 backend */

static int socks_fd, peers_fd;
static int slot_fd[2 * SLOTS];
static uint64_t slot_cookie[2 * SLOTS];
static uint32_t pair_gen[SLOTS];	/* epoll events name a pair and its generation */

static void
die(const char *what)
{
	fprintf(stderr, "sockmap-fwd: %s: %s\n", what, strerror(errno));
	exit(1);
}

static uint64_t
cookie_of(int fd)
{
	uint64_t c = 0;
	socklen_t len = sizeof(c);

	if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &len) < 0)
		die("SO_COOKIE");
	return c;
}

static void
pair_close(uint32_t pair)
{
	pair_gen[pair]++;
	for (uint32_t i = 2 * pair; i < 2 * pair + 2; i++) {
		if (slot_fd[i] < 0)
			continue;
		bpf_map_delete_elem(socks_fd, &i);
		bpf_map_delete_elem(peers_fd, &slot_cookie[i]);
		close(slot_fd[i]);
		slot_fd[i] = -1;
	}
}

int
main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: sockmap-fwd BPF_OBJECT LISTEN_PORT BACKEND_PORT\n");
		return 2;
	}
	struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
	if (obj == NULL || bpf_object__load(obj) != 0)
		die("loading the BPF object");
	socks_fd = bpf_object__find_map_fd_by_name(obj, "socks");
	peers_fd = bpf_object__find_map_fd_by_name(obj, "peers");
	struct bpf_program *prog = bpf_object__find_program_by_name(obj, "verdict");
	if (socks_fd < 0 || peers_fd < 0 || prog == NULL)
		die("the BPF object has no socks, peers or verdict");
	if (bpf_prog_attach(bpf_program__fd(prog), socks_fd, BPF_SK_SKB_STREAM_VERDICT, 0) != 0)
		die("attaching the stream verdict");

	int one = 1, l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in la = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct sockaddr_in ba = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(l, (struct sockaddr *)&la, sizeof(la)) < 0 || listen(l, 4096) < 0)
		die("listen");
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = UINT64_MAX };
	epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
	for (uint32_t i = 0; i < 2 * SLOTS; i++)
		slot_fd[i] = -1;
	uint32_t next = 0;
	printf("ready\n");
	fflush(stdout);

	for (;;) {
		struct epoll_event evs[64];
		int n = epoll_wait(ep, evs, 64, -1);
		for (int k = 0; k < n; k++) {
			if (evs[k].data.u64 != UINT64_MAX) {
				/* EOF or error on one side: the pair ends (unless it
				 * already ended and its slot was taken again). */
				uint32_t pair = (uint32_t)evs[k].data.u64;
				if (pair_gen[pair] == (uint32_t)(evs[k].data.u64 >> 32))
					pair_close(pair);
				continue;
			}
			int c;
			while ((c = accept4(l, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
				uint32_t pair = SLOTS;
				for (uint32_t t = 0; t < SLOTS; t++, next = (next + 1) % SLOTS)
					if (slot_fd[2 * next] < 0) {
						pair = next;
						next = (next + 1) % SLOTS;
						break;
					}
				int b = socket(AF_INET, SOCK_STREAM, 0);
				if (pair == SLOTS || b < 0 ||
				    connect(b, (struct sockaddr *)&ba, sizeof(ba)) < 0) {
					close(c);
					if (b >= 0)
						close(b);
					continue;
				}
				setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
				setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
				uint32_t ic = 2 * pair, ib = ic + 1;
				slot_fd[ic] = c;
				slot_fd[ib] = b;
				slot_cookie[ic] = cookie_of(c);
				slot_cookie[ib] = cookie_of(b);
				uint64_t vc = (uint64_t)c, vb = (uint64_t)b;
				if (bpf_map_update_elem(peers_fd, &slot_cookie[ic], &ib, BPF_ANY) != 0 ||
				    bpf_map_update_elem(peers_fd, &slot_cookie[ib], &ic, BPF_ANY) != 0 ||
				    bpf_map_update_elem(socks_fd, &ic, &vc, BPF_ANY) != 0 ||
				    bpf_map_update_elem(socks_fd, &ib, &vb, BPF_ANY) != 0) {
					pair_close(pair);
					continue;
				}
				/* Bytes that arrived before the sockets were in the map
				 * wait for the next data_ready (a client's first message
				 * then hangs); setting SO_RCVLOWAT makes TCP call it now. */
				setsockopt(c, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
				setsockopt(b, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
				struct epoll_event e = { .events = EPOLLRDHUP };
				e.data.u64 = (uint64_t)pair_gen[pair] << 32 | pair;
				epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
				epoll_ctl(ep, EPOLL_CTL_ADD, b, &e);
			}
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED)
				die("accept4");
		}
	}
}
