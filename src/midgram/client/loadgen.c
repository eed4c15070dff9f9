/*
 * loadgen: a closed-loop JSON-RPC datagram load generator for midgram's benchmarks
 * (`midgram bench`, and bench/ in the source tree).
 *
 * Keeps a fixed number of requests in flight against one server (UNIX datagram or UDP v4/v6)
 * for a fixed duration after a warm-up, matches replies by id, counts error replies, replies it
 * cannot match, late replies and timeouts, and records latency in a log-linear histogram
 * (0.4 % resolution). Prints one JSON object on stdout.
 *
 * Each in-flight slot owns the ids slot + k * inflight (k = that slot's send count), so a reply
 * is matched in O(1) and a reply to a request that already timed out is recognised as late.
 * The id is read from the last "id" member of the reply (where OpenSIPS, Kamailio and an echo
 * of the templates put it). A reply whose first bytes hold an "error" member is an error reply;
 * one that is not a JSON object (OpenSIPS's plain-text "400 Parse_error") is a bad reply.
 *
 * Replies are read with one blocking recvmmsg per wake-up (MSG_WAITFORONE) and new requests
 * sent with sendmmsg, so the generator spends fewer syscalls per request than any
 * one-datagram-at-a-time server it drives.
 * A UNIX datagram server's queue is bounded (net.unix.max_dgram_qlen): a send that finds it
 * full (EAGAIN) is kept and retried after the next replies arrive; its latency counts from
 * the first attempt, as a client blocked in sendto would see it.
 *
 * With -p PID,PID,... it also reads utime+stime of those processes (/proc/PID/stat) at the
 * start and end of the measured window, so the server's CPU excludes the warm-up.
 *
 * It is plain C with no Python in it: loadgen_run() (loadgen.h) takes the command line a
 * program would and returns the JSON line, or an error message. _loadgen.c wraps it as the
 * extension module midgram.client._loadgen, built at install time with _batchio; midgram.client.loadtest
 * runs it in a process of its own (python -m midgram.cli.loadgen), which keeps the process
 * model of a standalone program: one run per process, its own CPU figures, killed at will.
 */
#define _GNU_SOURCE
#include "loadgen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define ID_MARK "%ID%"
#define BATCH 64
#define SCAN_NS 1000000ull /* timeouts and phase changes are checked this often */
#define MAX_INFLIGHT 4096
#define MAX_PIDS 256
#define SAMPLE_BYTES 160
#define HIST_LINEAR 256
#define HIST_SUB 128
#define HIST_OCTAVES 48
#define HIST_SIZE (HIST_LINEAR + HIST_OCTAVES * HIST_SUB)

static const char *DEFAULT_TEMPLATE = "{\"jsonrpc\":\"2.0\",\"method\":\"uptime\",\"id\":%ID%}";

struct slot {
	uint64_t gen;      /* number of requests this slot has sent */
	uint64_t sent_ns;  /* first send attempt of the outstanding request */
	int outstanding;   /* a reply is awaited */
	int queued;        /* waiting in the send queue */
	int tried;         /* a send was refused (server queue full): keep the first attempt time */
	size_t len;        /* request length */
	char *buf;         /* request bytes */
};

struct stats {
	uint64_t sent, received, ok, error_replies, bad_replies, late, timeouts, truncated,
	    send_errors, eagain;
	uint64_t reply_bytes_min, reply_bytes_max, reply_bytes_sum;
	uint64_t lat_sum_ns, lat_max_ns;
	uint64_t hist[HIST_SIZE];
};

static struct {
	struct sockaddr_storage addr;
	socklen_t addrlen;
	int family;
	const char *target;
	const char *label;
	const char *tmpl_pre;
	size_t pre_len;
	const char *tmpl_post;
	size_t post_len;
	int inflight;
	double duration;
	double warmup;
	uint64_t timeout_ns;
	size_t bufsize;
	int pids[MAX_PIDS];
	int npids;
	const char *bind_path;
} cfg;

static struct slot slots[MAX_INFLIGHT];
static struct stats st;
static int send_queue[MAX_INFLIGHT];
static int queue_len;
static char sample[SAMPLE_BYTES];
static size_t sample_len;
static int have_sample;
static char bound_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static int sock_fd = -1;   /* what a failed run must release: */
static char *reply_bufs;   /* the socket, the reply buffers */
static jmp_buf failed;     /* die() returns to loadgen_run() through this */
static char *error_text;   /* ...with its message here */
static size_t error_size;

/* Ends the run: the message goes to loadgen_run()'s caller. */
static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(error_text, error_size, fmt, ap);
	va_end(ap);
	longjmp(failed, 1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* --- latency histogram -------------------------------------------------------------------- */

static int hist_index(uint64_t v)
{
	if (v < HIST_LINEAR)
		return (int)v;
	int msb = 63 - __builtin_clzll(v);
	int shift = msb - 7;
	int idx = HIST_LINEAR + (msb - 8) * HIST_SUB + (int)((v >> shift) - HIST_SUB);
	return idx < HIST_SIZE ? idx : HIST_SIZE - 1;
}

static double hist_value(int idx)
{
	if (idx < HIST_LINEAR)
		return idx;
	int octave = (idx - HIST_LINEAR) / HIST_SUB;
	uint64_t mantissa = (uint64_t)((idx - HIST_LINEAR) % HIST_SUB + HIST_SUB);
	int shift = octave + 1;
	return (double)(mantissa << shift) + (double)(1ull << shift) / 2.0;
}

static double percentile_us(const struct stats *s, double q)
{
	uint64_t total = 0;
	for (int i = 0; i < HIST_SIZE; i++)
		total += s->hist[i];
	if (total == 0)
		return 0.0;
	uint64_t rank = (uint64_t)(q * (double)total);
	if (rank >= total)
		rank = total - 1;
	uint64_t seen = 0;
	for (int i = 0; i < HIST_SIZE; i++) {
		seen += s->hist[i];
		if (seen > rank)
			return hist_value(i) / 1000.0;
	}
	return 0.0;
}

/* --- targets ------------------------------------------------------------------------------ */

static void parse_target(const char *t)
{
	memset(&cfg.addr, 0, sizeof cfg.addr);
	if (strncmp(t, "udp:", 4) == 0) {
		char host[256];
		const char *rest = t + 4, *port;
		if (rest[0] == '[') {
			const char *end = strchr(rest, ']');
			if (!end || end[1] != ':')
				die("bad UDP target '%s' (udp:[v6]:port)", t);
			snprintf(host, sizeof host, "%.*s", (int)(end - rest - 1), rest + 1);
			port = end + 2;
		} else {
			const char *colon = strrchr(rest, ':');
			if (!colon)
				die("bad UDP target '%s' (udp:host:port)", t);
			snprintf(host, sizeof host, "%.*s", (int)(colon - rest), rest);
			port = colon + 1;
		}
		struct addrinfo hints = {0}, *res;
		hints.ai_socktype = SOCK_DGRAM;
		hints.ai_flags = AI_NUMERICSERV;
		int rc = getaddrinfo(host, port, &hints, &res);
		if (rc != 0)
			die("cannot resolve '%s': %s", t, gai_strerror(rc));
		memcpy(&cfg.addr, res->ai_addr, res->ai_addrlen);
		cfg.addrlen = res->ai_addrlen;
		cfg.family = res->ai_family;
		freeaddrinfo(res);
		return;
	}
	const char *path = strncmp(t, "unix:", 5) == 0 ? t + 5 : t;
	struct sockaddr_un *un = (struct sockaddr_un *)&cfg.addr;
	un->sun_family = AF_UNIX;
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof un->sun_path)
		die("bad UNIX socket path '%s'", path);
	memcpy(un->sun_path, path, len);
	if (path[0] == '@') /* abstract namespace */
		un->sun_path[0] = '\0';
	cfg.addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] != '@'));
	cfg.family = AF_UNIX;
}

static int connected; /* the socket is connected to the server: sends name no address */

static int open_socket(void)
{
	int fd = socket(cfg.family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket: %s", strerror(errno));
	if (cfg.family == AF_UNIX) {
		struct sockaddr_un me = {.sun_family = AF_UNIX};
		socklen_t len = sizeof(sa_family_t); /* autobind: a unique abstract name */
		if (cfg.bind_path) {
			snprintf(me.sun_path, sizeof me.sun_path, "%s", cfg.bind_path);
			unlink(me.sun_path);
			len = (socklen_t)sizeof me;
		}
		if (bind(fd, (struct sockaddr *)&me, len) < 0)
			die("bind reply socket: %s", strerror(errno));
		if (cfg.bind_path)
			snprintf(bound_path, sizeof bound_path, "%s", cfg.bind_path);
	}
	/* Room for every in-flight reply (up to 64 KB each); SO_RCVBUFFORCE needs CAP_NET_ADMIN. */
	int want = (int)(cfg.bufsize * (size_t)cfg.inflight * 2 + (1 << 20));
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &want, sizeof want) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &want, sizeof want);
	setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof want);
	struct timeval tv = {.tv_sec = 0, .tv_usec = (suseconds_t)(SCAN_NS / 1000)};
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0)
		die("SO_RCVTIMEO: %s", strerror(errno));
	/* Connected, a send names no address: the kernel skips the lookup of the server's
	 * socket (a path walk) on every request, the generator's largest cost after the copies
	 * (about a fifth of its CPU per request). A server not there yet is sent to by address,
	 * and its silence counted. UDP stays unconnected: a connected UDP socket would drop a
	 * reply from another local address than the one it sent to (a server on 0.0.0.0). */
	connected = cfg.family == AF_UNIX &&
		    connect(fd, (struct sockaddr *)&cfg.addr, cfg.addrlen) == 0;
	return fd;
}

/* --- requests and replies ----------------------------------------------------------------- */

static void build_request(int i)
{
	struct slot *s = &slots[i];
	uint64_t id = s->gen * (uint64_t)cfg.inflight + (uint64_t)i;
	char digits[24];
	int n = snprintf(digits, sizeof digits, "%llu", (unsigned long long)id);
	memcpy(s->buf, cfg.tmpl_pre, cfg.pre_len);
	memcpy(s->buf + cfg.pre_len, digits, (size_t)n);
	memcpy(s->buf + cfg.pre_len + (size_t)n, cfg.tmpl_post, cfg.post_len);
	s->len = cfg.pre_len + (size_t)n + cfg.post_len;
}

static void enqueue(int i)
{
	if (!slots[i].queued) {
		slots[i].queued = 1;
		send_queue[queue_len++] = i;
	}
}

/* Send the queued requests; those the kernel refuses for now stay queued. */
static void flush_queue(int fd)
{
	static struct mmsghdr msgs[BATCH];
	static struct iovec iov[BATCH];
	int done = 0;
	while (done < queue_len) {
		int n = queue_len - done < BATCH ? queue_len - done : BATCH;
		uint64_t t = now_ns();
		for (int k = 0; k < n; k++) {
			int i = send_queue[done + k];
			slots[i].gen++;
			build_request(i);
			if (!slots[i].tried) /* latency counts the wait for room in the server's queue */
				slots[i].sent_ns = t;
			slots[i].tried = 1;
			iov[k].iov_base = slots[i].buf;
			iov[k].iov_len = slots[i].len;
			memset(&msgs[k].msg_hdr, 0, sizeof msgs[k].msg_hdr);
			if (!connected) {
				msgs[k].msg_hdr.msg_name = &cfg.addr;
				msgs[k].msg_hdr.msg_namelen = cfg.addrlen;
			}
			msgs[k].msg_hdr.msg_iov = &iov[k];
			msgs[k].msg_hdr.msg_iovlen = 1;
		}
		int sent = sendmmsg(fd, msgs, (unsigned)n, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (sent < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
				st.eagain++;
			} else if (errno == EINTR) {
				continue;
			} else {
				/* e.g. ECONNREFUSED / ENOENT: the server is gone; drop one and count it. */
				st.send_errors++;
				if (st.send_errors > 1000)
					die("sendmmsg: %s", strerror(errno));
				slots[send_queue[done]].queued = 0;
				slots[send_queue[done]].tried = 0;
				slots[send_queue[done]].outstanding = 1; /* will time out and be re-sent */
				done += 1;
				continue;
			}
			break; /* the unsent keep their place (and take a fresh id next time) */
		}
		for (int k = 0; k < sent; k++) {
			struct slot *s = &slots[send_queue[done + k]];
			s->queued = 0;
			s->tried = 0;
			s->outstanding = 1;
			st.sent++;
		}
		done += sent;
		if (sent < n)
			break;
	}
	if (done > 0) {
		memmove(send_queue, send_queue + done, (size_t)(queue_len - done) * sizeof(int));
		queue_len -= done;
	}
}

static const char *find_last(const char *hay, size_t len, const char *needle, size_t nlen)
{
	if (len < nlen)
		return NULL;
	for (size_t i = len - nlen + 1; i-- > 0;)
		if (hay[i] == needle[0] && memcmp(hay + i, needle, nlen) == 0)
			return hay + i;
	return NULL;
}

/* The value of the last "id" member, or -1. */
static int64_t reply_id(const char *buf, size_t len)
{
	const char *p = find_last(buf, len, "\"id\"", 4);
	if (!p)
		return -1;
	const char *end = buf + len;
	p += 4;
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	if (p >= end || *p != ':')
		return -1;
	p++;
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	if (p < end && *p == '"')
		p++;
	if (p >= end || *p < '0' || *p > '9')
		return -1;
	int64_t v = 0;
	while (p < end && *p >= '0' && *p <= '9' && v < (INT64_MAX / 10 - 10))
		v = v * 10 + (*p++ - '0');
	return v;
}

static void on_reply(const char *buf, size_t len, int truncated, uint64_t t, int measuring)
{
	if (!have_sample) {
		sample_len = len < SAMPLE_BYTES ? len : SAMPLE_BYTES;
		memcpy(sample, buf, sample_len);
		have_sample = 1;
	}
	size_t skip = 0;
	while (skip < len && (buf[skip] == ' ' || buf[skip] == '\n' || buf[skip] == '\t'))
		skip++;
	int64_t id = (skip < len && buf[skip] == '{') ? reply_id(buf, len) : -1;
	if (id < 0) {
		if (measuring)
			st.bad_replies++;
		return;
	}
	int i = (int)(id % cfg.inflight);
	uint64_t gen = (uint64_t)id / (uint64_t)cfg.inflight;
	struct slot *s = &slots[i];
	if (!s->outstanding || s->gen != gen) {
		if (measuring)
			st.late++;
		return;
	}
	s->outstanding = 0;
	enqueue(i);
	if (!measuring)
		return;
	uint64_t lat = t - s->sent_ns;
	st.received++;
	st.hist[hist_index(lat)]++;
	st.lat_sum_ns += lat;
	if (lat > st.lat_max_ns)
		st.lat_max_ns = lat;
	if (truncated)
		st.truncated++;
	if (len < st.reply_bytes_min || st.reply_bytes_min == 0)
		st.reply_bytes_min = len;
	if (len > st.reply_bytes_max)
		st.reply_bytes_max = len;
	st.reply_bytes_sum += len;
	size_t head = len < 64 ? len : 64;
	if (memmem(buf, head, "\"error\"", 7) != NULL)
		st.error_replies++;
	else
		st.ok++;
}

/*
 * Read every waiting reply, first waiting for one up to the socket's receive timeout
 * (MSG_WAITFORONE: one blocking recvmmsg per wake-up). Returns how many were read.
 */
static int drain(int fd, char *bufs, int measuring)
{
	static struct mmsghdr msgs[BATCH];
	static struct iovec iov[BATCH];
	int total = 0, flags = MSG_WAITFORONE;
	for (;;) {
		for (int k = 0; k < BATCH; k++) {
			iov[k].iov_base = bufs + (size_t)k * cfg.bufsize;
			iov[k].iov_len = cfg.bufsize;
			memset(&msgs[k].msg_hdr, 0, sizeof msgs[k].msg_hdr);
			msgs[k].msg_hdr.msg_iov = &iov[k];
			msgs[k].msg_hdr.msg_iovlen = 1;
		}
		int n = recvmmsg(fd, msgs, BATCH, flags, NULL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				return total;
			if (errno == ECONNREFUSED)
				continue;
			die("recvmmsg: %s", strerror(errno));
		}
		flags = MSG_DONTWAIT;
		uint64_t t = now_ns();
		for (int k = 0; k < n; k++) {
			size_t len = msgs[k].msg_len;
			int trunc = (msgs[k].msg_hdr.msg_flags & MSG_TRUNC) != 0;
			on_reply(bufs + (size_t)k * cfg.bufsize, len, trunc, t, measuring);
		}
		total += n;
		if (n < BATCH)
			return total;
	}
}

static void check_timeouts(uint64_t t, int measuring)
{
	for (int i = 0; i < cfg.inflight; i++) {
		struct slot *s = &slots[i];
		if (s->outstanding && t - s->sent_ns >= cfg.timeout_ns) {
			s->outstanding = 0;
			if (measuring)
				st.timeouts++;
			enqueue(i);
		}
	}
}

/* --- CPU of the server processes ---------------------------------------------------------- */

static long long proc_cpu_ticks(int pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	if (!p)
		return -1;
	/* fields after ")": 3 state ... 14 utime 15 stime */
	unsigned long long utime = 0, stime = 0;
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) !=
	    2)
		return -1;
	return (long long)(utime + stime);
}

static long long servers_cpu_ticks(void)
{
	long long total = 0;
	for (int i = 0; i < cfg.npids; i++) {
		long long t = proc_cpu_ticks(cfg.pids[i]);
		if (t > 0)
			total += t;
	}
	return total;
}

static uint64_t self_cpu_us(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec +
	       (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec;
}

/* --- output ------------------------------------------------------------------------------- */

static void json_string(FILE *out, const char *s, size_t len)
{
	fputc('"', out);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\')
			fprintf(out, "\\%c", c);
		else if (c == '\n')
			fputs("\\n", out);
		else if (c == '\t')
			fputs("\\t", out);
		else if (c < 0x20 || c >= 0x7f)
			fprintf(out, "\\u%04x", c);
		else
			fputc(c, out);
	}
	fputc('"', out);
}

static void usage(void) __attribute__((noreturn));
static void usage(void)
{
	die("usage: loadgen -t TARGET [-r TEMPLATE] [-c INFLIGHT] [-d SECONDS] [-w SECONDS]\n"
	    "               [-T TIMEOUT_MS] [-b BUFSIZE] [-p PID,PID...] [-B REPLY_PATH] [-l LABEL]\n"
	    "  TARGET: /path | unix:/path | unix:@abstract | udp:HOST:PORT | udp:[V6]:PORT\n"
	    "  TEMPLATE: the request, with %s where the id goes (default: uptime)",
	    ID_MARK);
}

static void parse_pids(const char *arg)
{
	const char *p = arg;
	while (*p && cfg.npids < MAX_PIDS) {
		char *end;
		long v = strtol(p, &end, 10);
		if (end == p || v <= 0)
			die("bad pid list '%s'", arg);
		cfg.pids[cfg.npids++] = (int)v;
		p = *end == ',' ? end + 1 : end;
		if (*end && *end != ',')
			die("bad pid list '%s'", arg);
	}
}

/* The options of argv into cfg; the first word (the program's name) is skipped. */
static void configure(int argc, char **argv)
{
	const char *tmpl = DEFAULT_TEMPLATE;
	cfg.inflight = 8;
	cfg.duration = 5.0;
	cfg.warmup = 1.0;
	cfg.timeout_ns = 1000000000ull;
	cfg.bufsize = 65536;
	cfg.label = "";
	optind = 0; /* GNU getopt: start over, as a new program would */
	opterr = 0; /* an unknown option is die()'s to report, not getopt's on stderr */
	int opt;
	while ((opt = getopt(argc, argv, "+t:r:c:d:w:T:b:p:B:l:h")) != -1) {
		switch (opt) {
		case 't': cfg.target = optarg; break;
		case 'r': tmpl = optarg; break;
		case 'c': cfg.inflight = atoi(optarg); break;
		case 'd': cfg.duration = atof(optarg); break;
		case 'w': cfg.warmup = atof(optarg); break;
		case 'T': cfg.timeout_ns = (uint64_t)(atof(optarg) * 1e6); break;
		case 'b': cfg.bufsize = (size_t)atol(optarg); break;
		case 'p': parse_pids(optarg); break;
		case 'B': cfg.bind_path = optarg; break;
		case 'l': cfg.label = optarg; break;
		default: usage();
		}
	}
	if (!cfg.target || optind != argc)
		usage();
	if (cfg.inflight < 1 || cfg.inflight > MAX_INFLIGHT)
		die("in-flight count must be 1..%d", MAX_INFLIGHT);
	if (cfg.duration <= 0 || cfg.warmup < 0 || cfg.timeout_ns == 0 || cfg.bufsize < 64)
		die("bad duration, warm-up, timeout or buffer size");
	const char *mark = strstr(tmpl, ID_MARK);
	if (!mark)
		die("the request template has no %s", ID_MARK);
	cfg.tmpl_pre = tmpl;
	cfg.pre_len = (size_t)(mark - tmpl);
	cfg.tmpl_post = mark + strlen(ID_MARK);
	cfg.post_len = strlen(cfg.tmpl_post);
	parse_target(cfg.target);
}

/* What a run measured, besides st. */
struct window {
	double secs;
	long long cpu_ticks;
	uint64_t self_us;
};

/* The closed loop: warm-up, then the measured window. */
static struct window measure(void)
{
	sock_fd = open_socket();
	size_t reqmax = cfg.pre_len + cfg.post_len + 24;
	for (int i = 0; i < cfg.inflight; i++) {
		slots[i].buf = malloc(reqmax);
		if (!slots[i].buf)
			die("out of memory");
	}
	reply_bufs = malloc(cfg.bufsize * BATCH);
	if (!reply_bufs)
		die("out of memory");

	uint64_t t0 = now_ns();
	uint64_t warm_end = t0 + (uint64_t)(cfg.warmup * 1e9);
	uint64_t end = warm_end + (uint64_t)(cfg.duration * 1e9);
	uint64_t last_scan = t0, measure_start = 0;
	long long cpu_start = 0;
	uint64_t self_start = 0;
	int measuring = 0;

	for (int i = 0; i < cfg.inflight; i++)
		enqueue(i);
	for (;;) {
		flush_queue(sock_fd);
		uint64_t t = now_ns();
		if (!measuring && t >= warm_end) {
			memset(&st, 0, sizeof st);
			measuring = 1;
			measure_start = t;
			cpu_start = servers_cpu_ticks();
			self_start = self_cpu_us();
		}
		if (t >= end)
			break;
		if (t - last_scan >= SCAN_NS) {
			check_timeouts(t, measuring);
			last_scan = t;
			if (queue_len)
				continue;
		}
		/* Wait for replies (at most SCAN_NS: the receive timeout), read them all. Requests
		 * a full server queue refused are retried after them, or after the timeout. */
		drain(sock_fd, reply_bufs, measuring);
	}
	uint64_t measure_end = now_ns();
	struct window w = {
		.secs = (double)(measure_end - measure_start) / 1e9,
		.cpu_ticks = servers_cpu_ticks() - cpu_start,
		.self_us = self_cpu_us() - self_start,
	};
	return w;
}

/* The JSON line. */
static void report(FILE *o, const struct window *w)
{
	double hz = (double)sysconf(_SC_CLK_TCK);
	double server_cpu_us = cfg.npids ? (double)w->cpu_ticks / hz * 1e6 : -1.0;
	uint64_t n = st.received;

	fputs("{\"label\":", o);
	json_string(o, cfg.label, strlen(cfg.label));
	fputs(",\"target\":", o);
	json_string(o, cfg.target, strlen(cfg.target));
	fprintf(o, ",\"inflight\":%d,\"warmup_s\":%.3f,\"duration_s\":%.6f", cfg.inflight,
		cfg.warmup, w->secs);
	fprintf(o,
		",\"sent\":%llu,\"received\":%llu,\"ok\":%llu,\"error_replies\":%llu,"
		"\"bad_replies\":%llu,\"late\":%llu,\"timeouts\":%llu,\"truncated\":%llu,"
		"\"send_errors\":%llu,\"send_eagain\":%llu",
		(unsigned long long)st.sent, (unsigned long long)n, (unsigned long long)st.ok,
		(unsigned long long)st.error_replies, (unsigned long long)st.bad_replies,
		(unsigned long long)st.late, (unsigned long long)st.timeouts,
		(unsigned long long)st.truncated, (unsigned long long)st.send_errors,
		(unsigned long long)st.eagain);
	fprintf(o, ",\"rps\":%.1f", w->secs > 0 ? (double)n / w->secs : 0.0);
	fprintf(o,
		",\"latency_us\":{\"mean\":%.1f,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,"
		"\"p999\":%.1f,\"max\":%.1f}",
		n ? (double)st.lat_sum_ns / (double)n / 1000.0 : 0.0, percentile_us(&st, 0.50),
		percentile_us(&st, 0.90), percentile_us(&st, 0.99), percentile_us(&st, 0.999),
		(double)st.lat_max_ns / 1000.0);
	fprintf(o, ",\"reply_bytes\":{\"min\":%llu,\"mean\":%.1f,\"max\":%llu}",
		(unsigned long long)st.reply_bytes_min,
		n ? (double)st.reply_bytes_sum / (double)n : 0.0,
		(unsigned long long)st.reply_bytes_max);
	if (cfg.npids) {
		fprintf(o, ",\"server_cpu_us\":%.0f,\"server_cpu_us_per_req\":%.3f,\"clk_tck\":%.0f",
			server_cpu_us, n ? server_cpu_us / (double)n : 0.0, hz);
	} else {
		fputs(",\"server_cpu_us\":null,\"server_cpu_us_per_req\":null,\"clk_tck\":null", o);
	}
	fprintf(o, ",\"loadgen_cpu_us_per_req\":%.3f", n ? (double)w->self_us / (double)n : 0.0);
	fputs(",\"sample\":", o);
	json_string(o, sample, have_sample ? sample_len : 0);
	fputs("}\n", o);
}

/* Everything a run leaves behind, whether it ended well or in die(). */
static void release(void)
{
	if (bound_path[0])
		unlink(bound_path);
	if (sock_fd >= 0)
		close(sock_fd);
	for (int i = 0; i < MAX_INFLIGHT; i++)
		free(slots[i].buf);
	free(reply_bufs);
}

/* The state a run starts from: a second run in the same process starts as the first. */
static void reset(void)
{
	memset(&cfg, 0, sizeof cfg);
	memset(slots, 0, sizeof slots);
	memset(&st, 0, sizeof st);
	queue_len = 0;
	sample_len = 0;
	have_sample = 0;
	bound_path[0] = '\0';
	connected = 0;
	sock_fd = -1;
	reply_bufs = NULL;
}

int loadgen_run(int argc, char **argv, char **json, char *error, size_t error_len)
{
	*json = NULL;
	reset();
	error_text = error;
	error_size = error_len;
	if (setjmp(failed)) {
		release();
		return -1;
	}
	configure(argc, argv);
	struct window w = measure();
	size_t size = 0;
	FILE *out = open_memstream(json, &size);
	if (!out)
		die("open_memstream: %s", strerror(errno));
	report(out, &w);
	if (fclose(out) != 0) {
		free(*json);
		*json = NULL;
		die("out of memory");
	}
	release();
	return 0;
}
