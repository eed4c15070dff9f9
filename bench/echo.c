/*
 * echo: the kernel's ceiling for a one-datagram-at-a-time server.
 *
 * Blocking recvfrom, then sendto of the same bytes back to the sender: what any datagram
 * server does per request, minus the work. With -n N, N forked processes share the socket
 * (as midgram's workers do). Logs "listening on TARGET" to stderr once the socket is bound,
 * with the port the kernel chose for port 0; SIGTERM or SIGINT stops it and removes a UNIX
 * socket file.
 *
 * usage: echo [-n PROCESSES] [-b BUFSIZE] TARGET
 *   TARGET: /path | unix:/path | unix:@abstract | udp:HOST:PORT | udp:[V6]:PORT
 *
 * Build: cc -O2 -Wall -Wextra -o echo echo.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static volatile sig_atomic_t stop;

static void die(const char *what)
{
	fprintf(stderr, "echo: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int open_socket(const char *t)
{
	struct sockaddr_storage addr;
	socklen_t addrlen;
	int family;
	memset(&addr, 0, sizeof addr);
	if (strncmp(t, "udp:", 4) == 0) {
		char host[256];
		const char *rest = t + 4, *port;
		if (rest[0] == '[') {
			const char *end = strchr(rest, ']');
			if (!end || end[1] != ':') {
				fprintf(stderr, "echo: bad target %s\n", t);
				exit(2);
			}
			snprintf(host, sizeof host, "%.*s", (int)(end - rest - 1), rest + 1);
			port = end + 2;
		} else {
			const char *colon = strrchr(rest, ':');
			if (!colon) {
				fprintf(stderr, "echo: bad target %s\n", t);
				exit(2);
			}
			snprintf(host, sizeof host, "%.*s", (int)(colon - rest), rest);
			port = colon + 1;
		}
		struct addrinfo hints = {0}, *res;
		hints.ai_socktype = SOCK_DGRAM;
		hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
		int rc = getaddrinfo(host, port, &hints, &res);
		if (rc != 0) {
			fprintf(stderr, "echo: %s: %s\n", t, gai_strerror(rc));
			exit(2);
		}
		memcpy(&addr, res->ai_addr, res->ai_addrlen);
		addrlen = res->ai_addrlen;
		family = res->ai_family;
		freeaddrinfo(res);
	} else {
		const char *path = strncmp(t, "unix:", 5) == 0 ? t + 5 : t;
		struct sockaddr_un *un = (struct sockaddr_un *)&addr;
		size_t len = strlen(path);
		if (len == 0 || len >= sizeof un->sun_path) {
			fprintf(stderr, "echo: bad path %s\n", path);
			exit(2);
		}
		un->sun_family = AF_UNIX;
		memcpy(un->sun_path, path, len);
		if (path[0] == '@') {
			un->sun_path[0] = '\0';
		} else {
			unlink(path);
			memcpy(unix_path, path, len + 1);
		}
		addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] != '@'));
		family = AF_UNIX;
	}
	int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket");
	if (bind(fd, (struct sockaddr *)&addr, addrlen) < 0)
		die("bind");
	return fd;
}

/* Where fd listens, as a target: a UDP socket's address with the port it took (port 0 lets
 * the kernel choose it); TARGET itself for a UNIX one. */
static const char *bound_target(int fd, const char *target, char *out, size_t size)
{
	struct sockaddr_storage addr;
	socklen_t len = sizeof addr;
	char host[NI_MAXHOST], port[NI_MAXSERV];
	if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0 || addr.ss_family == AF_UNIX ||
	    getnameinfo((struct sockaddr *)&addr, len, host, sizeof host, port, sizeof port,
			NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		return target;
	snprintf(out, size, addr.ss_family == AF_INET6 ? "udp:[%s]:%s" : "udp:%s:%s", host, port);
	return out;
}

static void serve(int fd, size_t bufsize)
{
	char *buf = malloc(bufsize);
	if (!buf)
		die("malloc");
	while (!stop) {
		struct sockaddr_storage peer;
		socklen_t plen = sizeof peer;
		ssize_t n = recvfrom(fd, buf, bufsize, 0, (struct sockaddr *)&peer, &plen);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("recvfrom");
		}
		if (plen <= sizeof(sa_family_t))
			continue; /* an unbound UNIX peer cannot be answered */
		while (sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, plen) < 0 && errno == EINTR)
			;
	}
	free(buf);
}

int main(int argc, char **argv)
{
	int nproc = 1, opt;
	size_t bufsize = 65536;
	while ((opt = getopt(argc, argv, "n:b:")) != -1) {
		switch (opt) {
		case 'n': nproc = atoi(optarg); break;
		case 'b': bufsize = (size_t)atol(optarg); break;
		default:
			fputs("usage: echo [-n PROCESSES] [-b BUFSIZE] TARGET\n", stderr);
			return 2;
		}
	}
	if (optind + 1 != argc || nproc < 1 || bufsize < 16) {
		fputs("usage: echo [-n PROCESSES] [-b BUFSIZE] TARGET\n", stderr);
		return 2;
	}
	struct sigaction sa = {0};
	sa.sa_handler = on_signal; /* no SA_RESTART: a blocked recvfrom returns EINTR */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	int fd = open_socket(argv[optind]);
	char shown[NI_MAXHOST + NI_MAXSERV + 8];
	fprintf(stderr, "echo: listening on %s (%d process%s)\n",
		bound_target(fd, argv[optind], shown, sizeof shown), nproc, nproc == 1 ? "" : "es");
	if (nproc == 1) {
		serve(fd, bufsize);
	} else {
		pid_t kids[256];
		int n = nproc < 256 ? nproc : 256;
		for (int i = 0; i < n; i++) {
			kids[i] = fork();
			if (kids[i] < 0)
				die("fork");
			if (kids[i] == 0) {
				serve(fd, bufsize);
				_exit(0);
			}
		}
		while (!stop)
			pause();
		for (int i = 0; i < n; i++)
			kill(kids[i], SIGTERM);
		for (int i = 0; i < n; i++)
			waitpid(kids[i], NULL, 0);
	}
	if (unix_path[0])
		unlink(unix_path);
	return 0;
}
