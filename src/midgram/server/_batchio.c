/*
 * _batchio: batched datagram I/O for midgram's workers (recvmmsg/sendmmsg).
 *
 * A pure-Python server pays one recvfrom() and one sendto() per request: two syscalls and
 * two trips through the socket module (argument parsing, address objects, exceptions). This
 * module reads every datagram waiting on the socket with one recvmmsg() and sends all the
 * replies of that batch with one sendmmsg(), so both costs are paid once per batch.
 *
 *     io = BatchSocket(fd, family, slots, bufsize[, in_hand, big, credentials])
 *     io.recv(block) -> [(data: bytes, peer, truncated: bool, credentials), ...]   ([]: none)
 *     io.send(replies, start) -> index of the first reply not sent
 *
 * Peers are the objects the socket module gives and takes (a path str, an abstract name as
 * bytes, None for an unbound UNIX client, (host, port) or (host, port, flow, scope)), so the
 * rest of midgram (ReplySender, allow_from, tracing) works on them unchanged. With
 * credentials (a UNIX socket with SO_PASSCRED), each datagram comes with what the kernel says
 * of its sender, (pid, uid, gid) from SCM_CREDENTIALS, for the access rules; else None.
 *
 * send() never raises for a send error and never blocks (MSG_DONTWAIT): it stops at the first
 * reply that failed or whose peer it cannot convert, and the caller hands that one (and the
 * rest) to ReplySender, which owns retries, drops and their logs.
 *
 * Built on first use by midgram.server.batchio with the system compiler and Python's headers; when
 * that is not possible midgram serves with the socket module instead.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <limits.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#define MAX_SLOTS 1024
/* The in_hand record: a length and a start time (two long longs), then the bytes. */
#define IN_HAND_HEAD (2 * sizeof(long long))
/* The control buffer of one slot: room for an SCM_CREDENTIALS message. */
#define CREDENTIALS_SPACE CMSG_SPACE(sizeof(struct ucred))

typedef struct {
    struct sockaddr_storage addr;
    socklen_t len;
    PyObject *obj; /* the Python form of addr (a new reference), or NULL */
} PeerCache;

typedef struct {
    PyObject_HEAD
    int fd;
    int family;
    unsigned int slots;
    size_t bufsize;
    char *buffers; /* slots * bufsize bytes: pages the kernel never writes are never resident */
    struct mmsghdr *rmsgs;
    struct iovec *riov;
    struct sockaddr_storage *raddrs;
    struct mmsghdr *smsgs;
    struct iovec *siov;
    struct sockaddr_storage *saddrs;
    PeerCache last; /* the last peer seen: a client sending many requests costs one decode */
    char *controls; /* slots * CREDENTIALS_SPACE bytes when credentials are read, else NULL */
    struct ucred last_credentials; /* the last ones seen, and their Python form (or NULL) */
    PyObject *last_credentials_obj;
    int busy;       /* a call is using the buffers (they are shared): one at a time */
    Py_buffer in_hand; /* where serve() notes the datagram in hand (buf NULL: nowhere) */
    Py_ssize_t big; /* a longer reply is the caller's to send (its send-buffer budget) */
} BatchSocket;

/* --- peers: sockaddr -> Python ------------------------------------------------------- */

static PyObject *unix_peer(const struct sockaddr_un *sun, socklen_t len) {
    size_t path_len = len - offsetof(struct sockaddr_un, sun_path);
    if (path_len > 0 && sun->sun_path[0] == '\0')
        return PyBytes_FromStringAndSize(sun->sun_path, (Py_ssize_t)path_len);
    return PyUnicode_DecodeFSDefaultAndSize(sun->sun_path,
                                            (Py_ssize_t)strnlen(sun->sun_path, path_len));
}

static PyObject *inet_peer(const struct sockaddr_in *sin) {
    char host[INET_ADDRSTRLEN];
    if (!inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host))
        return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("(si)", host, (int)ntohs(sin->sin_port));
}

static PyObject *inet6_peer(const struct sockaddr_in6 *sin6, socklen_t len) {
    /* getnameinfo(), as the socket module does: a link-local peer gets its "%scope" */
    char host[NI_MAXHOST];
    int rc = getnameinfo((const struct sockaddr *)sin6, len, host, sizeof host, NULL, 0,
                         NI_NUMERICHOST);
    if (rc != 0) {
        PyErr_Format(PyExc_OSError, "getnameinfo: %s", gai_strerror(rc));
        return NULL;
    }
    return Py_BuildValue("(siII)", host, (int)ntohs(sin6->sin6_port),
                         (unsigned int)ntohl(sin6->sin6_flowinfo),
                         (unsigned int)sin6->sin6_scope_id);
}

static PyObject *make_peer(const struct sockaddr_storage *addr, socklen_t len) {
    if (len == 0 || (addr->ss_family == AF_UNIX && len <= offsetof(struct sockaddr_un, sun_path)))
        Py_RETURN_NONE; /* an unbound UNIX client */
    switch (addr->ss_family) {
    case AF_UNIX:
        return unix_peer((const struct sockaddr_un *)addr, len);
    case AF_INET:
        return inet_peer((const struct sockaddr_in *)addr);
    case AF_INET6:
        return inet6_peer((const struct sockaddr_in6 *)addr, len);
    default:
        PyErr_Format(PyExc_OSError, "unexpected address family %d", (int)addr->ss_family);
        return NULL;
    }
}

static PyObject *cached_peer(BatchSocket *self, const struct sockaddr_storage *addr,
                             socklen_t len) {
    PeerCache *last = &self->last;
    if (last->obj && last->len == len && memcmp(&last->addr, addr, len) == 0) {
        Py_INCREF(last->obj);
        return last->obj;
    }
    PyObject *peer = make_peer(addr, len);
    if (!peer)
        return NULL;
    Py_XSETREF(last->obj, Py_NewRef(peer));
    memcpy(&last->addr, addr, len);
    last->len = len;
    return peer;
}

/* --- peers: Python -> sockaddr (0: done; -1: not one we convert, the caller's job) ------- */

static int unix_sockaddr(PyObject *peer, struct sockaddr_storage *out, socklen_t *len) {
    struct sockaddr_un *sun = (struct sockaddr_un *)out;
    PyObject *encoded = NULL;
    const char *name;
    Py_ssize_t size;
    if (PyUnicode_CheckExact(peer)) {
        encoded = PyUnicode_EncodeFSDefault(peer);
        if (!encoded) {
            PyErr_Clear();
            return -1;
        }
        name = PyBytes_AS_STRING(encoded);
        size = PyBytes_GET_SIZE(encoded);
    } else if (PyBytes_CheckExact(peer)) {
        name = PyBytes_AS_STRING(peer);
        size = PyBytes_GET_SIZE(peer);
    } else {
        return -1;
    }
    /* a path needs room for its NUL; an abstract name may use all of sun_path */
    size_t room = sizeof sun->sun_path - (encoded ? 1 : 0);
    int ok = size > 0 && (size_t)size <= room;
    if (ok) {
        memset(sun, 0, sizeof *sun);
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path, name, (size_t)size);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)size);
    }
    Py_XDECREF(encoded);
    return ok ? 0 : -1;
}

static int inet_sockaddr(int family, PyObject *peer, struct sockaddr_storage *out,
                         socklen_t *len) {
    if (!PyTuple_CheckExact(peer) || PyTuple_GET_SIZE(peer) < 2 || PyTuple_GET_SIZE(peer) > 4)
        return -1;
    PyObject *host = PyTuple_GET_ITEM(peer, 0);
    if (!PyUnicode_CheckExact(host))
        return -1;
    const char *text = PyUnicode_AsUTF8(host);
    long port = PyLong_AsLong(PyTuple_GET_ITEM(peer, 1));
    if (!text || port < 0 || port > 0xFFFF) {
        PyErr_Clear();
        return -1;
    }
    memset(out, 0, sizeof *out);
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)out;
        if (PyTuple_GET_SIZE(peer) != 2 || inet_pton(AF_INET, text, &sin->sin_addr) != 1)
            return -1;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        *len = sizeof *sin;
        return 0;
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET6, text, &sin6->sin6_addr) != 1)
        return -1; /* a "%scope" host among others: the socket module knows those */
    unsigned long flow = 0, scope = 0;
    if (PyTuple_GET_SIZE(peer) > 2)
        flow = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(peer, 2));
    if (PyTuple_GET_SIZE(peer) > 3)
        scope = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(peer, 3));
    if (PyErr_Occurred() || flow > 0xFFFFF || scope > 0xFFFFFFFFUL) {
        PyErr_Clear();
        return -1;
    }
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons((uint16_t)port);
    sin6->sin6_flowinfo = htonl((uint32_t)flow);
    sin6->sin6_scope_id = (uint32_t)scope;
    *len = sizeof *sin6;
    return 0;
}

static int to_sockaddr(BatchSocket *self, PyObject *peer, struct sockaddr_storage *out,
                       socklen_t *len) {
    if (peer == self->last.obj) { /* the peer recv() just gave: no conversion */
        memcpy(out, &self->last.addr, self->last.len);
        *len = self->last.len;
        return 0;
    }
    if (self->family == AF_UNIX)
        return unix_sockaddr(peer, out, len);
    return inet_sockaddr(self->family, peer, out, len);
}

/* --- the type ------------------------------------------------------------------------- */

static void BatchSocket_dealloc(BatchSocket *self) {
    PyMem_Free(self->buffers);
    PyMem_Free(self->rmsgs);
    PyMem_Free(self->riov);
    PyMem_Free(self->raddrs);
    PyMem_Free(self->smsgs);
    PyMem_Free(self->siov);
    PyMem_Free(self->saddrs);
    PyMem_Free(self->controls);
    Py_XDECREF(self->last.obj);
    Py_XDECREF(self->last_credentials_obj);
    if (self->in_hand.buf)
        PyBuffer_Release(&self->in_hand);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int BatchSocket_init(BatchSocket *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"fd",  "family", "slots", "bufsize", "in_hand",
                               "big", "credentials", NULL};
    int fd, family, credentials = 0;
    Py_ssize_t slots, bufsize, big = PY_SSIZE_T_MAX;
    PyObject *in_hand = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iinn|Onp", keywords, &fd, &family, &slots,
                                     &bufsize, &in_hand, &big, &credentials))
        return -1;
    if (big < 0) {
        PyErr_SetString(PyExc_ValueError, "big must be >= 0");
        return -1;
    }
    if (fd < 0 || slots < 1 || slots > MAX_SLOTS || bufsize < 1 ||
        bufsize > PY_SSIZE_T_MAX / slots) {
        PyErr_Format(PyExc_ValueError,
                     "BatchSocket needs fd >= 0, 1 <= slots <= %d and 1 <= bufsize <= %zd",
                     MAX_SLOTS, PY_SSIZE_T_MAX / (slots > 0 ? slots : 1));
        return -1;
    }
    if (family != AF_UNIX && family != AF_INET && family != AF_INET6) {
        PyErr_Format(PyExc_ValueError, "unsupported address family %d", family);
        return -1;
    }
    if (credentials && family != AF_UNIX) {
        PyErr_SetString(PyExc_ValueError, "credentials come with UNIX datagrams only");
        return -1;
    }
    if (self->buffers) {
        PyErr_SetString(PyExc_RuntimeError, "BatchSocket is already initialised");
        return -1;
    }
    if (in_hand != Py_None) {
        if (PyObject_GetBuffer(in_hand, &self->in_hand, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
            return -1;
        if (self->in_hand.len < (Py_ssize_t)IN_HAND_HEAD) {
            PyBuffer_Release(&self->in_hand);
            self->in_hand.buf = NULL;
            PyErr_SetString(PyExc_ValueError, "in_hand needs room for a length and a time");
            return -1;
        }
    }
    self->fd = fd;
    self->family = family;
    self->big = big;
    self->slots = (unsigned int)slots;
    self->bufsize = (size_t)bufsize;
    self->buffers = PyMem_Malloc((size_t)slots * (size_t)bufsize);
    self->rmsgs = PyMem_Calloc((size_t)slots, sizeof *self->rmsgs);
    self->riov = PyMem_Calloc((size_t)slots, sizeof *self->riov);
    self->raddrs = PyMem_Calloc((size_t)slots, sizeof *self->raddrs);
    self->smsgs = PyMem_Calloc((size_t)slots, sizeof *self->smsgs);
    self->siov = PyMem_Calloc((size_t)slots, sizeof *self->siov);
    self->saddrs = PyMem_Calloc((size_t)slots, sizeof *self->saddrs);
    if (credentials)
        self->controls = PyMem_Calloc((size_t)slots, CREDENTIALS_SPACE);
    if (!self->buffers || !self->rmsgs || !self->riov || !self->raddrs || !self->smsgs ||
        !self->siov || !self->saddrs || (credentials && !self->controls)) {
        PyErr_NoMemory();
        return -1;
    }
    for (unsigned int i = 0; i < self->slots; i++) {
        self->riov[i].iov_base = self->buffers + i * (size_t)bufsize;
        self->riov[i].iov_len = (size_t)bufsize;
        self->rmsgs[i].msg_hdr.msg_iov = &self->riov[i];
        self->rmsgs[i].msg_hdr.msg_iovlen = 1;
        self->rmsgs[i].msg_hdr.msg_name = &self->raddrs[i];
        self->smsgs[i].msg_hdr.msg_iov = &self->siov[i];
        self->smsgs[i].msg_hdr.msg_iovlen = 1;
        self->smsgs[i].msg_hdr.msg_name = &self->saddrs[i];
    }
    return 0;
}

/* Errors a receive reports that are not "no request": ignored as the socket module's
 * Receiver ignores them (an earlier reply's ICMP error left on a UDP socket, for one). */
static int nothing_to_read(int err) {
    return err == EAGAIN || err == EWOULDBLOCK || err == ECONNREFUSED || err == ECONNRESET;
}

/* recvmmsg() into the slots: how many datagrams came (0: none, or a signal whose handler
 * returned), or -1 with an exception set. */
static int receive(BatchSocket *self, int block) {
    if (!self->buffers) {
        PyErr_SetString(PyExc_RuntimeError, "BatchSocket is not initialised");
        return -1;
    }
    for (unsigned int i = 0; i < self->slots; i++) {
        self->rmsgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
        self->rmsgs[i].msg_hdr.msg_flags = 0;
        if (self->controls) { /* the kernel sets the length it wrote: room again each time */
            self->rmsgs[i].msg_hdr.msg_control = self->controls + i * CREDENTIALS_SPACE;
            self->rmsgs[i].msg_hdr.msg_controllen = CREDENTIALS_SPACE;
        }
    }
    /* MSG_WAITFORONE: block (up to SO_RCVTIMEO) for the first datagram only, then take
     * whatever else is already queued. */
    int flags = block ? MSG_WAITFORONE : MSG_DONTWAIT;
    int count, err;
    Py_BEGIN_ALLOW_THREADS
    count = recvmmsg(self->fd, self->rmsgs, self->slots, flags, NULL);
    err = errno;
    Py_END_ALLOW_THREADS
    if (count >= 0)
        return count;
    if (err == EINTR) /* PEP 475: run the signal handlers; the caller looks at its flags */
        return PyErr_CheckSignals() < 0 ? -1 : 0;
    if (nothing_to_read(err))
        return 0;
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

/* What the kernel says of the sender of slot i, (pid, uid, gid), or None when credentials
 * are not read (or, which SO_PASSCRED rules out, none came). A new reference. The kernel
 * fills them in: a sender can give only its own, unless privileged (CAP_SETUID...). */
static PyObject *slot_credentials(BatchSocket *self, unsigned int i) {
    if (!self->controls)
        Py_RETURN_NONE;
    struct msghdr *hdr = &self->rmsgs[i].msg_hdr;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(hdr); c; c = CMSG_NXTHDR(hdr, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_CREDENTIALS ||
            c->cmsg_len < CMSG_LEN(sizeof(struct ucred)))
            continue;
        struct ucred found;
        memcpy(&found, CMSG_DATA(c), sizeof found);
        struct ucred *last = &self->last_credentials;
        if (self->last_credentials_obj && last->pid == found.pid && last->uid == found.uid &&
            last->gid == found.gid)
            return Py_NewRef(self->last_credentials_obj);
        PyObject *credentials = Py_BuildValue("(iII)", (int)found.pid, (unsigned int)found.uid,
                                              (unsigned int)found.gid);
        if (credentials) {
            Py_XSETREF(self->last_credentials_obj, Py_NewRef(credentials));
            *last = found;
        }
        return credentials;
    }
    Py_RETURN_NONE;
}

static PyObject *recv_batch(BatchSocket *self, PyObject *arg) {
    int block = PyObject_IsTrue(arg);
    if (block < 0)
        return NULL;
    int count = receive(self, block);
    if (count < 0)
        return NULL;
    PyObject *batch = PyList_New(count);
    if (!batch)
        return NULL;
    for (int i = 0; i < count; i++) {
        struct msghdr *hdr = &self->rmsgs[i].msg_hdr;
        PyObject *data = PyBytes_FromStringAndSize(self->riov[i].iov_base,
                                                   (Py_ssize_t)self->rmsgs[i].msg_len);
        PyObject *peer = data ? cached_peer(self, &self->raddrs[i], hdr->msg_namelen) : NULL;
        PyObject *credentials = peer ? slot_credentials(self, (unsigned int)i) : NULL;
        PyObject *item = NULL;
        if (credentials) {
            item = PyTuple_New(4);
            if (item) {
                PyTuple_SET_ITEM(item, 0, data);
                PyTuple_SET_ITEM(item, 1, peer);
                PyTuple_SET_ITEM(item, 2, Py_NewRef((hdr->msg_flags & MSG_TRUNC) ? Py_True
                                                                                 : Py_False));
                PyTuple_SET_ITEM(item, 3, credentials);
            }
        }
        if (!item) {
            Py_XDECREF(data);
            Py_XDECREF(peer);
            Py_XDECREF(credentials);
            Py_DECREF(batch);
            return NULL;
        }
        PyList_SET_ITEM(batch, i, item);
    }
    return batch;
}

static PyObject *send_replies(BatchSocket *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "send(replies: list[tuple[bytes, peer]], start: int)");
        return NULL;
    }
    if (!self->buffers) {
        PyErr_SetString(PyExc_RuntimeError, "BatchSocket is not initialised");
        return NULL;
    }
    PyObject *replies = args[0];
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t total = PyList_GET_SIZE(replies);
    if (start < 0 || start > total) {
        PyErr_SetString(PyExc_IndexError, "send: start out of range");
        return NULL;
    }
    Py_ssize_t done = start;
    while (done < total) {
        /* one sendmmsg() for up to `slots` replies, up to the first one we cannot convert */
        unsigned int n = 0;
        while (n < self->slots && done + n < total) {
            PyObject *item = PyList_GET_ITEM(replies, done + n);
            if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2 ||
                !PyBytes_CheckExact(PyTuple_GET_ITEM(item, 0)) ||
                PyBytes_GET_SIZE(PyTuple_GET_ITEM(item, 0)) > self->big)
                break;
            struct msghdr *hdr = &self->smsgs[n].msg_hdr;
            socklen_t len = 0;
            if (to_sockaddr(self, PyTuple_GET_ITEM(item, 1), &self->saddrs[n], &len) < 0)
                break;
            PyObject *data = PyTuple_GET_ITEM(item, 0);
            self->siov[n].iov_base = PyBytes_AS_STRING(data);
            self->siov[n].iov_len = (size_t)PyBytes_GET_SIZE(data);
            hdr->msg_name = &self->saddrs[n];
            hdr->msg_namelen = len;
            n++;
        }
        if (n == 0)
            break; /* the caller's job: not a reply we convert */
        /* The GIL is held: the replies are borrowed from a list another thread could change,
         * and a MSG_DONTWAIT send does not wait. */
        int sent = sendmmsg(self->fd, self->smsgs, n, MSG_DONTWAIT);
        if (sent <= 0)
            break; /* the caller retries that reply with sendto() and learns why */
        done += sent;
        if ((unsigned int)sent < n)
            break;
    }
    return PyLong_FromSsize_t(done);
}

/* --- serve(): the whole common path of a batch, without a Python loop ------------------ */

/* Replies waiting in the send slots: the bytes objects they point into, and which received
 * datagram (whose address they go back to) each answers. */
typedef struct {
    PyObject *reply[MAX_SLOTS];
    unsigned int source[MAX_SLOTS];
    unsigned int count;
} Outbox;

static int leftover(PyObject **list, PyObject *data, PyObject *peer, int truncated,
                    PyObject *handled) {
    if (!*list && !(*list = PyList_New(0)))
        return -1;
    PyObject *item = PyTuple_Pack(4, data, peer, truncated ? Py_True : Py_False, handled);
    if (!item)
        return -1;
    int rc = PyList_Append(*list, item);
    Py_DECREF(item);
    return rc;
}

static int unbound(BatchSocket *self, unsigned int i) {
    socklen_t len = self->rmsgs[i].msg_hdr.msg_namelen;
    return len == 0 ||
           (self->family == AF_UNIX && len <= offsetof(struct sockaddr_un, sun_path));
}

/* Send count replies with one sendmmsg, each to the address of the datagram it answers
 * (source[j]); how many the kernel took (0 when it took none or failed). */
static int sendmmsg_replies(BatchSocket *self, PyObject *const *reply,
                            const unsigned int *source, unsigned int count) {
    for (unsigned int j = 0; j < count; j++) {
        struct msghdr *src = &self->rmsgs[source[j]].msg_hdr;
        struct msghdr *hdr = &self->smsgs[j].msg_hdr;
        hdr->msg_name = src->msg_name;
        hdr->msg_namelen = src->msg_namelen;
        self->siov[j].iov_base = PyBytes_AS_STRING(reply[j]);
        self->siov[j].iov_len = (size_t)PyBytes_GET_SIZE(reply[j]);
    }
    int sent = sendmmsg(self->fd, self->smsgs, count, MSG_DONTWAIT);
    return sent < 0 ? 0 : sent;
}

/* Send what the outbox holds; what the kernel refused (and, once one was refused, every
 * later reply: ReplySender keeps a client's replies in order) becomes a leftover. */
static int flush_outbox(BatchSocket *self, Outbox *box, int *failed, Py_ssize_t *replied,
                        PyObject **leftovers) {
    int sent = 0;
    if (box->count && !*failed) {
        sent = sendmmsg_replies(self, box->reply, box->source, box->count);
        if ((unsigned int)sent < box->count)
            *failed = 1;
        *replied += sent;
    }
    int rc = 0;
    for (unsigned int j = 0; j < box->count; j++) {
        if ((int)j >= sent && rc == 0) {
            unsigned int i = box->source[j];
            PyObject *peer = cached_peer(self, &self->raddrs[i], self->rmsgs[i].msg_hdr.msg_namelen);
            PyObject *data = peer ? PyBytes_FromStringAndSize(
                                        self->riov[i].iov_base, (Py_ssize_t)self->rmsgs[i].msg_len)
                                  : NULL;
            if (!data || leftover(leftovers, data, peer, 0, box->reply[j]) < 0)
                rc = -1;
            Py_XDECREF(data);
            Py_XDECREF(peer);
        }
        Py_DECREF(box->reply[j]);
    }
    box->count = 0;
    return rc;
}

/* settle(data, handled, peer, credentials) for the datagram of slot i whose answer is not
 * bytes (handled None: truncated): its reply (bytes), None (no reply), or anything else: a
 * leftover for the caller to finish later (an async call in flight), which holds no later
 * reply back. The sender is settle's to know (a command the access rules guard is run, or
 * refused, there). A new reference; NULL with an exception set. */
static PyObject *settled(BatchSocket *self, PyObject *settle, PyObject *data, PyObject *handled,
                         unsigned int i) {
    PyObject *peer = cached_peer(self, &self->raddrs[i], self->rmsgs[i].msg_hdr.msg_namelen);
    if (!peer)
        return NULL;
    PyObject *credentials = slot_credentials(self, i);
    PyObject *reply = credentials ? PyObject_CallFunctionObjArgs(settle, data, handled, peer,
                                                                 credentials, NULL)
                                  : NULL;
    Py_DECREF(peer);
    Py_XDECREF(credentials);
    return reply;
}

/* The datagram about to be answered, noted where a supervisor can read it: to name it if
 * this process dies answering it, and to replace a worker that holds it past worker_timeout.
 * Its length (a native long long), when it was taken (CLOCK_MONOTONIC_COARSE, ns: a read of
 * a shared page, no syscall), then its first bytes. A copy of at most a hundred bytes or
 * so, against the microsecond the answer takes. */
static void hold(BatchSocket *self, int i) {
    char *record = self->in_hand.buf;
    long long size = (long long)self->rmsgs[i].msg_len;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    long long since = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    size_t room = (size_t)self->in_hand.len - IN_HAND_HEAD;
    memcpy(record + IN_HAND_HEAD, self->riov[i].iov_base,
           (size_t)size < room ? (size_t)size : room);
    memcpy(record + sizeof size, &since, sizeof since);
    memcpy(record, &size, sizeof size);
}

static void let_go(BatchSocket *self) {
    if (self->in_hand.buf)
        memset(self->in_hand.buf, 0, sizeof(long long));
}

static PyObject *serve_batch(BatchSocket *self, PyObject *answer, PyObject *settle, int count,
                             unsigned int flush) {
    Outbox box = {.count = 0};
    PyObject *leftovers = NULL;
    Py_ssize_t replied = 0;
    int failed = 0;
    for (int i = 0; i < count; i++) {
        struct msghdr *hdr = &self->rmsgs[i].msg_hdr;
        int truncated = (hdr->msg_flags & MSG_TRUNC) != 0;
        PyObject *data = PyBytes_FromStringAndSize(self->riov[i].iov_base,
                                                   (Py_ssize_t)self->rmsgs[i].msg_len);
        if (!data)
            goto error;
        if (self->in_hand.buf)
            hold(self, i);
        PyObject *handled = truncated ? Py_NewRef(Py_None) : PyObject_CallOneArg(answer, data);
        int deferred = 0; /* settle's own leftover: its reply comes later, out of order */
        if (handled && settle && !PyBytes_CheckExact(handled)) {
            /* settled now, so that its reply goes out in order with the others */
            Py_SETREF(handled, settled(self, settle, data, handled, (unsigned int)i));
            if (handled == Py_None) { /* nothing to send */
                Py_DECREF(handled);
                Py_DECREF(data);
                continue;
            }
            deferred = handled && !PyBytes_CheckExact(handled);
        }
        if (!handled) {
            Py_DECREF(data);
            goto error;
        }
        int ours = PyBytes_CheckExact(handled) && PyBytes_GET_SIZE(handled) <= self->big;
        if (ours && !failed && !unbound(self, (unsigned int)i)) {
            Py_DECREF(data);
            box.reply[box.count] = handled; /* the outbox owns it now */
            box.source[box.count++] = (unsigned int)i;
            if (box.count >= flush && flush_outbox(self, &box, &failed, &replied, &leftovers) < 0)
                goto error;
            continue;
        }
        /* anything else is the caller's, in order after what is already out */
        if (flush_outbox(self, &box, &failed, &replied, &leftovers) < 0) {
            Py_DECREF(data);
            Py_DECREF(handled);
            goto error;
        }
        if (!ours && !deferred)
            failed = 1; /* the caller answers or sends it: every later reply is theirs too */
        PyObject *peer = cached_peer(self, &self->raddrs[i], hdr->msg_namelen);
        int rc = peer ? leftover(&leftovers, data, peer, truncated, handled) : -1;
        Py_XDECREF(peer);
        Py_DECREF(data);
        Py_DECREF(handled);
        if (rc < 0)
            goto error;
    }
    if (flush_outbox(self, &box, &failed, &replied, &leftovers) < 0)
        goto error;
    let_go(self);
    return Py_BuildValue("(inN)", count, replied, leftovers ? leftovers : Py_NewRef(Py_None));
error:
    /* the datagram in hand stays noted: it is the one whose answer failed */
    /* the replies already answered still go out; the exception goes up */
    {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        flush_outbox(self, &box, &failed, &replied, &leftovers);
        PyErr_Restore(type, value, traceback);
    }
    Py_XDECREF(leftovers);
    return NULL;
}

static PyObject *serve(BatchSocket *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "serve(answer, block: bool, flush: int[, settle])");
        return NULL;
    }
    if (!self->buffers) {
        PyErr_SetString(PyExc_RuntimeError, "BatchSocket is not initialised");
        return NULL;
    }
    PyObject *settle = nargs == 4 && args[3] != Py_None ? args[3] : NULL;
    int block = PyObject_IsTrue(args[1]);
    long flush = PyLong_AsLong(args[2]);
    if (block < 0 || (flush == -1 && PyErr_Occurred()))
        return NULL;
    if (flush < 1 || flush > (long)self->slots) {
        PyErr_Format(PyExc_ValueError, "serve: flush must be 1..%u", self->slots);
        return NULL;
    }
    int count = receive(self, block);
    if (count <= 0)
        return count < 0 ? NULL : Py_BuildValue("(iiO)", 0, 0, Py_None);
    return serve_batch(self, args[0], settle, count, (unsigned int)flush);
}

/* --- one call at a time ------------------------------------------------------------------ */

/* recv, send and serve share the buffers, and recv and serve run Python code (signal
 * handlers, answer, settle) or release the GIL: a second call while one is running, from
 * another thread or from that code, is refused instead of corrupting them. */
static int enter(BatchSocket *self) {
    if (!self->buffers) {
        PyErr_SetString(PyExc_RuntimeError, "BatchSocket is not initialised");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "BatchSocket is in use: recv, send and serve run one at a time");
        return -1;
    }
    self->busy = 1;
    return 0;
}

static PyObject *BatchSocket_recv(BatchSocket *self, PyObject *arg) {
    if (enter(self) < 0)
        return NULL;
    PyObject *result = recv_batch(self, arg);
    self->busy = 0;
    return result;
}

static PyObject *BatchSocket_send(BatchSocket *self, PyObject *const *args, Py_ssize_t nargs) {
    if (enter(self) < 0)
        return NULL;
    PyObject *result = send_replies(self, args, nargs);
    self->busy = 0;
    return result;
}

static PyObject *BatchSocket_serve(BatchSocket *self, PyObject *const *args, Py_ssize_t nargs) {
    if (enter(self) < 0)
        return NULL;
    PyObject *result = serve(self, args, nargs);
    self->busy = 0;
    return result;
}

static PyObject *BatchSocket_get_slots(BatchSocket *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLong(self->slots);
}

static PyObject *BatchSocket_get_bufsize(BatchSocket *self, void *closure) {
    (void)closure;
    return PyLong_FromSize_t(self->bufsize);
}

static PyObject *BatchSocket_serve_traced(BatchSocket *self, PyObject *const *args,
                                          Py_ssize_t nargs); /* with FastAnswer's reader, below */

static PyMethodDef BatchSocket_methods[] = {
    {"recv", (PyCFunction)BatchSocket_recv, METH_O,
     "recv(block) -> list of (data, peer, truncated, credentials): every datagram waiting, up "
     "to `slots`; with block, wait (up to SO_RCVTIMEO) for the first one. credentials: "
     "(pid, uid, gid) of the sender, or None when not read."},
    {"serve", (PyCFunction)(void (*)(void))BatchSocket_serve, METH_FASTCALL,
     "serve(answer, block, flush[, settle]) -> (received, replied, leftovers): receive a "
     "batch, call answer(data) on each datagram and send the bytes it returns back to the "
     "datagram's sender, flush at a time. An answer that is not bytes, or a truncated "
     "datagram (answer not called, handled None), goes to "
     "settle(data, handled, peer, credentials), whose "
     "bytes are sent in turn (None: no reply; anything else is a leftover that holds no "
     "later reply back). leftovers (None if none) lists, in order, "
     "(data, peer, truncated, handled) for what the caller must finish: a reply the kernel "
     "refused, longer than big, or to an unbound client (handled: its bytes) and, without "
     "settle, what settle would have had; after a refused reply or one the caller "
     "finishes, every later reply of the batch is a leftover too, so that each client's "
     "replies keep their order."},
    {"serve_traced", (PyCFunction)(void (*)(void))BatchSocket_serve_traced, METH_FASTCALL,
     "serve_traced(answer, block, flush, hooks) -> (received, replied, traced): serve() for a "
     "worker that traces to a HEP collector. hooks is (fd, request, reply, finish, refused, "
     "lost): the collector's connected socket, request(method, peer, now_ns) -> Trace | None "
     "(its packet first) for a call without params answered OK, reply(trace, reply, now_ns) "
     "-> the packet of a reply that went out (now_ns: time.time_ns() as C reads it), finish(data, peer, truncated, handled) -> bool for any other "
     "datagram (the caller answers, sends and traces it; handled None: not answered yet), "
     "refused(trace, reply, peer) -> bool for a reply this could not send (both say whether "
     "replies may still go out directly), lost(packet) for a packet the collector's socket "
     "refused. traced counts the packets sent here."},
    {"send", (PyCFunction)(void (*)(void))BatchSocket_send, METH_FASTCALL,
     "send(replies, start) -> int: send replies[start:] as (data, peer) pairs without "
     "blocking, up to the first one longer than big; the index of the first one not sent "
     "(len(replies) when all went)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef BatchSocket_getset[] = {
    {"slots", (getter)BatchSocket_get_slots, NULL, "datagrams per recvmmsg()/sendmmsg()", NULL},
    {"bufsize", (getter)BatchSocket_get_bufsize, NULL, "bytes read per datagram", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BatchSocketType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "midgram.server._batchio.BatchSocket",
    .tp_basicsize = sizeof(BatchSocket),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BatchSocket(fd, family, slots, bufsize, in_hand=None, big=sys.maxsize, "
              "credentials=False): "
              "recvmmsg()/sendmmsg() over a datagram socket's file descriptor (not owned). "
              "in_hand, a writable buffer, is where serve() notes each datagram before "
              "answering it (a native long long length, a long long CLOCK_MONOTONIC_COARSE "
              "time in ns, then its first bytes; the length is 0 once the batch is served), "
              "for a supervisor to read if the process dies or is stuck answering it. A reply longer than big is left to the caller (who weighs it "
              "against the send buffer). credentials (a UNIX socket with SO_PASSCRED): read "
              "each sender's SCM_CREDENTIALS.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)BatchSocket_init,
    .tp_dealloc = (destructor)BatchSocket_dealloc,
    .tp_methods = BatchSocket_methods,
    .tp_getset = BatchSocket_getset,
};

/* --- FastAnswer: Dispatcher.answer's busiest case, in C ---------------------------------- */

/* The request monitors send most is a bare call: {"jsonrpc":"2.0","method":"uptime","id":7}.
 * For it Dispatcher.answer parses the datagram with orjson, checks the members, looks the
 * method up and calls its handler: about as much Python as the rest of the request. A
 * FastAnswer recognises that shape in C, straight from the bytes, and calls the same handler
 * and the same Python functions after it, so the reply is the same. It recognises only text
 * whose meaning is beyond doubt (see recognise()); anything else, however valid, is handed
 * to Dispatcher.answer unread, so it can only be faster than answer, never different.
 * A call with flat named params ({"user":"alice","count":3}: plain strings, integers of at
 * most 18 digits, true, false) is the next busiest: it is bound here by the command's
 * binder for those names (Command.named_binders, the recipe select_recipe picks), calling a
 * getter only for a value it would change; a getter that refuses a value sends the datagram
 * to answer (the handler has not run), which says why.
 * tests/test_dispatch_fast.py checks it against Dispatcher.handle on any datagram. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *bare;       /* Registry's live table: method -> handler taking no arguments */
    PyObject *compact;    /* Dispatcher._compact(result, id) -> bytes | None */
    PyObject *after_bare; /* Dispatcher._after_bare(method, id, result, error) -> Outcome */
    PyObject *answer;     /* Dispatcher.answer: everything else */
    PyObject *named;      /* Registry's live table: method -> (handler, named binders) */
    PyObject *method;     /* the last method name seen: a poller sends the same one */
} FastAnswer;

typedef struct {
    const char *p, *end;
} Cursor;

typedef struct {
    const char *start;
    Py_ssize_t len;
} Span;

static void skip_space(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int take(Cursor *c, char ch) {
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A string of printable ASCII without escapes (what method names and most ids are). */
static int plain_string(Cursor *c, Span *out) {
    if (!take(c, '"'))
        return 0;
    const char *start = c->p;
    for (; c->p < c->end; c->p++) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            out->start = start;
            out->len = c->p++ - start;
            return 1;
        }
        if (ch < 0x20 || ch > 0x7e || ch == '\\')
            return 0;
    }
    return 0;
}

static int span_is(const Span *span, const char *text) {
    size_t n = strlen(text);
    return (size_t)span->len == n && memcmp(span->start, text, n) == 0;
}

/* An integer of at most 18 digits (so it fits a long long), in JSON's own spelling. */
static int small_integer(Cursor *c, long long *out) {
    int negative = take(c, '-');
    const char *digits = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
        c->p++;
    Py_ssize_t n = c->p - digits;
    if (n == 0 || n > 18 || (n > 1 && digits[0] == '0'))
        return 0;
    long long value = 0; /* summed only once it is known to fit: no signed overflow */
    for (Py_ssize_t i = 0; i < n; i++)
        value = value * 10 + (digits[i] - '0');
    *out = negative ? -value : value; /* a fraction or exponent after it: not a ',' or '}' */
    return 1;
}

/* [] or {}: params that OpenSIPS counts as absent. */
static int empty_container(Cursor *c) {
    char close = take(c, '[') ? ']' : take(c, '{') ? '}' : 0;
    if (!close)
        return 0;
    skip_space(c);
    return take(c, close);
}

enum { SEEN_JSONRPC = 1, SEEN_METHOD = 2, SEEN_ID = 4, SEEN_PARAMS = 8 };

/* Named params read here: at most this many, each a plain string, an integer of at most 18
 * digits, true or false (what monitors send); anything else is answer's. */
#define MAX_NAMED 8

typedef enum { VALUE_TEXT, VALUE_NUMBER, VALUE_TRUE, VALUE_FALSE } ValueKind;

typedef struct {
    Span key;
    ValueKind kind;
    Span text;
    long long number;
} NamedParam;

typedef struct {
    Span method;
    Span id_text; /* when the id is a string */
    long long id_number;
    int id_is_text;
    int named_count; /* 0: no params, or empty ones */
    NamedParam named[MAX_NAMED];
} BareCall;

static int literal(Cursor *c, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0)
        return 0;
    c->p += n;
    return 1;
}

static int named_value(Cursor *c, NamedParam *param) {
    if (c->p < c->end && *c->p == '"') {
        param->kind = VALUE_TEXT;
        return plain_string(c, &param->text);
    }
    if (literal(c, "true")) {
        param->kind = VALUE_TRUE;
        return 1;
    }
    if (literal(c, "false")) {
        param->kind = VALUE_FALSE;
        return 1;
    }
    param->kind = VALUE_NUMBER;
    return small_integer(c, &param->number);
}

/* params: [] or {}, or a flat object of named params (each name once). */
static int params_member(Cursor *c, BareCall *call) {
    const char *start = c->p;
    if (empty_container(c))
        return 1;
    c->p = start;
    if (!take(c, '{'))
        return 0;
    do {
        skip_space(c);
        if (call->named_count == MAX_NAMED)
            return 0;
        NamedParam *param = &call->named[call->named_count];
        if (!plain_string(c, &param->key))
            return 0;
        for (int i = 0; i < call->named_count; i++)
            if (call->named[i].key.len == param->key.len &&
                memcmp(call->named[i].key.start, param->key.start, (size_t)param->key.len) == 0)
                return 0; /* a name given twice: answer's */
        skip_space(c);
        if (!take(c, ':'))
            return 0;
        skip_space(c);
        if (!named_value(c, param))
            return 0;
        call->named_count++;
        skip_space(c);
    } while (take(c, ','));
    return take(c, '}');
}

/* One member of the request object; 0 if it is not one recognise() accepts. */
static int member(Cursor *c, int *seen, BareCall *call) {
    Span key, value;
    if (!plain_string(c, &key))
        return 0;
    skip_space(c);
    if (!take(c, ':'))
        return 0;
    skip_space(c);
    int which = span_is(&key, "jsonrpc")  ? SEEN_JSONRPC
                : span_is(&key, "method") ? SEEN_METHOD
                : span_is(&key, "id")     ? SEEN_ID
                : span_is(&key, "params") ? SEEN_PARAMS
                                          : 0;
    if (!which || (*seen & which)) /* another member, or one given twice */
        return 0;
    *seen |= which;
    switch (which) {
    case SEEN_JSONRPC:
        return plain_string(c, &value) && span_is(&value, "2.0");
    case SEEN_METHOD:
        return plain_string(c, &call->method);
    case SEEN_ID:
        call->id_is_text = c->p < c->end && *c->p == '"';
        return call->id_is_text ? plain_string(c, &call->id_text)
                                : small_integer(c, &call->id_number);
    default:
        return params_member(c, call);
    }
}

/* Whether the datagram is exactly a bare call: one object with "jsonrpc":"2.0", a method,
 * an id (a plain string or an integer of at most 18 digits) and maybe empty params, each
 * once, in any order, with any JSON whitespace, and nothing after it. */
static int recognise(const char *text, Py_ssize_t len, BareCall *call) {
    Cursor c = {text, text + len};
    int seen = 0;
    call->named_count = 0;
    skip_space(&c);
    if (!take(&c, '{'))
        return 0;
    do {
        skip_space(&c);
        if (!member(&c, &seen, call))
            return 0;
        skip_space(&c);
    } while (take(&c, ','));
    if (!take(&c, '}'))
        return 0;
    skip_space(&c);
    int required = SEEN_JSONRPC | SEEN_METHOD | SEEN_ID;
    return c.p == c.end && (seen & required) == required;
}

/* A name as a str, the last one's (*last) when it is the same. New reference. */
static PyObject *cached_name(PyObject **last, const Span *span) {
    if (*last && PyUnicode_GET_LENGTH(*last) == span->len &&
        memcmp(PyUnicode_1BYTE_DATA(*last), span->start, (size_t)span->len) == 0)
        return Py_NewRef(*last);
    PyObject *name = PyUnicode_DecodeASCII(span->start, span->len, NULL);
    if (name)
        Py_XSETREF(*last, Py_NewRef(name));
    return name;
}

/* The method's name as a str, the last one's when it is the same. New reference. */
static PyObject *method_name(FastAnswer *self, const Span *span) {
    return cached_name(&self->method, span);
}

/* The exception being raised, taken (new reference), with its traceback attached. */
static PyObject *raised(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *error, *traceback;
    PyErr_Fetch(&type, &error, &traceback);
    PyErr_NormalizeException(&type, &error, &traceback);
    if (traceback)
        PyException_SetTraceback(error, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return error;
#endif
}

/* What answer's inlined case does once the handler is known: call it, encode compactly,
 * or hand the result (or the error) to the general path. */
static PyObject *run_bare(FastAnswer *self, PyObject *handler, PyObject *method, PyObject *id) {
    Py_INCREF(handler); /* the call may unregister it */
    PyObject *result = PyObject_CallNoArgs(handler);
    Py_DECREF(handler);
    if (!result) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL; /* KeyboardInterrupt, SystemExit: as answer, let them go */
        PyObject *error = raised(); /* as `except Exception as exc` sees it */
        PyObject *outcome =
            PyObject_CallFunctionObjArgs(self->after_bare, method, id, Py_None, error, NULL);
        Py_DECREF(error);
        return outcome;
    }
    PyObject *reply = PyObject_CallFunctionObjArgs(self->compact, result, id, NULL);
    if (reply == Py_None)
        Py_SETREF(reply,
                  PyObject_CallFunctionObjArgs(self->after_bare, method, id, result, Py_None, NULL));
    Py_DECREF(result);
    return reply;
}

/* The request's id as a Python object. New reference. */
static PyObject *call_id(const BareCall *call) {
    return call->id_is_text ? PyUnicode_DecodeASCII(call->id_text.start, call->id_text.len, NULL)
                            : PyLong_FromLongLong(call->id_number);
}

static PyObject *named_value_object(const NamedParam *param) {
    switch (param->kind) {
    case VALUE_TEXT:
        return PyUnicode_DecodeASCII(param->text.start, param->text.len, NULL);
    case VALUE_TRUE:
        return Py_NewRef(Py_True);
    case VALUE_FALSE:
        return Py_NewRef(Py_False);
    default:
        return PyLong_FromLongLong(param->number);
    }
}

/* The params as orjson reads them (a dict in the datagram's order), for the general path
 * after the handler ran. New reference. */
static PyObject *params_dict(PyObject *const *keys, PyObject *const *values, int n) {
    PyObject *params = PyDict_New();
    for (int i = 0; params && i < n; i++)
        if (PyDict_SetItem(params, keys[i], values[i]) < 0)
            Py_CLEAR(params);
    return params;
}

/* The argument bound to one parameter: the value itself when its getter would hand it on
 * unchanged, else what the getter makes of it. New reference; NULL with an exception set. */
static PyObject *bound(PyObject *binding, PyObject *value) {
    PyObject *name = PyTuple_GET_ITEM(binding, 0);
    PyObject *unchanged = PyTuple_GET_ITEM(binding, 1);
    if ((PyObject *)Py_TYPE(value) == unchanged)
        return Py_NewRef(value);
    return PyObject_CallFunctionObjArgs(PyTuple_GET_ITEM(binding, 2), value, name, NULL);
}

/* Call the handler with the params its binder found, then as run_bare: compact, or the
 * general path with the params. keys and values are the call's, in its order. */
static PyObject *run_named(FastAnswer *self, PyObject *handler, PyObject *binder,
                           PyObject *const *keys, PyObject *const *values, int n,
                           PyObject *method, PyObject *id, PyObject *data) {
    PyObject *argv[MAX_NAMED];
    Py_ssize_t count = PyTuple_GET_SIZE(binder);
    if (count != n)
        return PyObject_CallOneArg(self->answer, data); /* not a binder of these names */
    PyObject *kwnames = PyTuple_New(count);
    if (!kwnames)
        return NULL;
    Py_ssize_t made = 0;
    for (; made < count; made++) {
        PyObject *binding = PyTuple_GET_ITEM(binder, made);
        PyObject *name = PyTuple_GET_ITEM(binding, 0);
        int at = -1;
        for (int i = 0; i < n && at < 0; i++) {
            int same = keys[i] == name ? 1 : PyUnicode_Compare(keys[i], name) == 0;
            if (same)
                at = i;
        }
        PyObject *arg = at >= 0 ? bound(binding, values[at]) : NULL;
        if (!arg)
            break;
        argv[made] = arg;
        PyTuple_SET_ITEM(kwnames, made, Py_NewRef(name));
    }
    PyObject *reply = NULL;
    if (made == count) {
        Py_INCREF(handler); /* the call may unregister it */
        PyObject *result = PyObject_Vectorcall(handler, argv, 0, kwnames);
        Py_DECREF(handler);
        PyObject *error = NULL;
        if (!result && PyErr_ExceptionMatches(PyExc_Exception))
            error = raised(); /* as `except Exception as exc` sees it */
        if (result)
            reply = PyObject_CallFunctionObjArgs(self->compact, result, id, NULL);
        if (error || reply == Py_None) {
            Py_XSETREF(reply, NULL);
            PyObject *params = params_dict(keys, values, n);
            if (params)
                reply = PyObject_CallFunctionObjArgs(self->after_bare, method, id,
                                                     result ? result : Py_None,
                                                     error ? error : Py_None, params, NULL);
            Py_XDECREF(params);
        }
        Py_XDECREF(error);
        Py_XDECREF(result);
    } else if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_Exception)) {
        /* a getter refused a value (the handler has not run): answer says how */
        PyErr_Clear();
        reply = PyObject_CallOneArg(self->answer, data);
    }
    for (Py_ssize_t j = 0; j < made; j++)
        Py_DECREF(argv[j]);
    Py_DECREF(kwnames);
    return reply;
}

/* A call with named params: its command's binder for these names (the recipe select_recipe
 * picks), the handler called with what the binder makes of them. Anything else (a method
 * with no binder of these names, an async command) is answer's. */
static PyObject *fast_named(FastAnswer *self, const BareCall *call, PyObject *data) {
    if (!self->named)
        return PyObject_CallOneArg(self->answer, data);
    PyObject *method = method_name(self, &call->method);
    if (!method)
        return NULL;
    PyObject *entry = PyDict_GetItemWithError(self->named, method); /* borrowed */
    if (!entry || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2) {
        Py_DECREF(method);
        return PyErr_Occurred() ? NULL : PyObject_CallOneArg(self->answer, data);
    }
    Py_INCREF(entry); /* the handler may unregister it */
    int n = call->named_count;
    PyObject *keys[MAX_NAMED], *values[MAX_NAMED];
    PyObject *names = PyTuple_New(n);
    int made = 0;
    for (; names && made < n; made++) {
        keys[made] = PyUnicode_DecodeASCII(call->named[made].key.start, call->named[made].key.len,
                                           NULL);
        values[made] = keys[made] ? named_value_object(&call->named[made]) : NULL;
        if (!values[made]) {
            Py_XDECREF(keys[made]);
            break;
        }
        PyTuple_SET_ITEM(names, made, Py_NewRef(keys[made]));
    }
    PyObject *reply = NULL;
    if (made == n) {
        PyObject *key = PyFrozenSet_New(names);
        PyObject *binder = key ? PyDict_GetItemWithError(PyTuple_GET_ITEM(entry, 1), key) : NULL;
        Py_XDECREF(key);
        PyObject *id = binder && PyTuple_CheckExact(binder) ? call_id(call) : NULL;
        if (id)
            reply = run_named(self, PyTuple_GET_ITEM(entry, 0), binder, keys, values, n, method,
                              id, data);
        else if (!PyErr_Occurred()) /* names no recipe has: answer says which error */
            reply = PyObject_CallOneArg(self->answer, data);
        Py_XDECREF(id);
    }
    for (int i = 0; i < made; i++) {
        Py_DECREF(keys[i]);
        Py_DECREF(values[i]);
    }
    Py_XDECREF(names);
    Py_DECREF(entry);
    Py_DECREF(method);
    return reply;
}

static PyObject *fast_answer(FastAnswer *self, PyObject *data) {
    BareCall call;
    if (!PyBytes_CheckExact(data) ||
        !recognise(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &call))
        return PyObject_CallOneArg(self->answer, data);
    if (call.named_count)
        return fast_named(self, &call, data);
    PyObject *method = method_name(self, &call.method);
    if (!method)
        return NULL;
    PyObject *handler = PyDict_GetItemWithError(self->bare, method); /* borrowed */
    if (!handler) {
        Py_DECREF(method);
        /* params to bind, an unknown method, async: the general path */
        return PyErr_Occurred() ? NULL : PyObject_CallOneArg(self->answer, data);
    }
    PyObject *id = call_id(&call);
    PyObject *reply = id ? run_bare(self, handler, method, id) : NULL;
    Py_XDECREF(id);
    Py_DECREF(method);
    return reply;
}

static PyObject *FastAnswer_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                       PyObject *kwnames) {
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "FastAnswer takes one argument: the datagram");
        return NULL;
    }
    if (!((FastAnswer *)callable)->answer) {
        PyErr_SetString(PyExc_RuntimeError, "FastAnswer is not initialised");
        return NULL;
    }
    return fast_answer((FastAnswer *)callable, args[0]);
}

static int FastAnswer_init(FastAnswer *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"bare", "compact", "after_bare", "answer", "named", NULL};
    PyObject *bare, *compact, *after_bare, *answer, *named = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OOO|O!:FastAnswer", keywords, &PyDict_Type,
                                     &bare, &compact, &after_bare, &answer, &PyDict_Type, &named))
        return -1;
    if (!PyCallable_Check(compact) || !PyCallable_Check(after_bare) || !PyCallable_Check(answer)) {
        PyErr_SetString(PyExc_TypeError, "FastAnswer: compact, after_bare and answer must be callable");
        return -1;
    }
    Py_XSETREF(self->bare, Py_NewRef(bare));
    Py_XSETREF(self->compact, Py_NewRef(compact));
    Py_XSETREF(self->after_bare, Py_NewRef(after_bare));
    Py_XSETREF(self->answer, Py_NewRef(answer));
    Py_XSETREF(self->named, Py_XNewRef(named));
    return 0;
}

static PyObject *FastAnswer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    FastAnswer *self = (FastAnswer *)PyType_GenericNew(type, args, kwargs);
    if (self)
        self->vectorcall = FastAnswer_vectorcall;
    return (PyObject *)self;
}

static int FastAnswer_traverse(FastAnswer *self, visitproc visit, void *arg) {
    Py_VISIT(self->bare);
    Py_VISIT(self->compact);
    Py_VISIT(self->after_bare);
    Py_VISIT(self->answer);
    Py_VISIT(self->named);
    return 0;
}

static int FastAnswer_clear(FastAnswer *self) {
    Py_CLEAR(self->bare);
    Py_CLEAR(self->compact);
    Py_CLEAR(self->after_bare);
    Py_CLEAR(self->answer);
    Py_CLEAR(self->named);
    Py_CLEAR(self->method);
    return 0;
}

static void FastAnswer_dealloc(FastAnswer *self) {
    PyObject_GC_UnTrack(self);
    FastAnswer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject FastAnswerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "midgram.server._batchio.FastAnswer",
    .tp_basicsize = sizeof(FastAnswer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "FastAnswer(bare, compact, after_bare, answer, named=None): a callable equal to "
              "Dispatcher.answer, which answers a bare call (no params), and one with flat "
              "named params, without parsing it in Python: bare is the registry's table of "
              "handlers taking no arguments, named its table of (handler, named binders) by "
              "command, compact and after_bare(method, id, result, error[, params]) the "
              "dispatcher's own steps after the handler, answer the rest.",
    .tp_new = FastAnswer_new,
    .tp_init = (initproc)FastAnswer_init,
    .tp_dealloc = (destructor)FastAnswer_dealloc,
    .tp_traverse = (traverseproc)FastAnswer_traverse,
    .tp_clear = (inquiry)FastAnswer_clear,
    .tp_vectorcall_offset = offsetof(FastAnswer, vectorcall),
    .tp_call = PyVectorcall_Call,
};

/* --- serve_traced(): serve() with HEP tracing on ---------------------------------------- */

/* A traced request costs two more datagrams (its packet and its reply's), each built by the
 * Tracer in Python (one encoder) and sent, in the reference path, with a sendto() of its own
 * while the loop serves one datagram at a time. serve_traced() keeps the common case here:
 * a call without params (recognise(), as FastAnswer reads it) answered OK. It asks Python
 * for the request's packet, sends the replies `flush` at a time, then asks for the packets of
 * the replies that went out and sends them all, requests' first, with one sendmmsg() on the
 * collector's connected socket. Any other datagram is finished by Python (the reference
 * path, its reply and packets included) once everything held here went out, so each
 * client's replies and the packets keep their order; so is every datagram after a reply
 * that is left waiting for its client. */

#define HEP_BATCH 16

typedef struct {
    int fd;            /* the collector's connected UDP socket */
    PyObject *request; /* request(method, peer, now) -> Trace (its packet first) | None */
    PyObject *reply;   /* reply(trace, reply, now) -> the packet of a reply that went out */
    PyObject *finish;  /* finish(data, peer, truncated, handled) -> bool: direct sends go on */
    PyObject *refused; /* refused(trace, reply, peer) -> bool: a reply not sent here */
    PyObject *lost;    /* lost(packet): a packet the collector's socket refused */
} TraceHooks;

typedef struct {
    PyObject *packet[HEP_BATCH];
    unsigned int count;
} HepBox;

typedef struct {
    PyObject *reply[MAX_SLOTS];
    PyObject *trace[MAX_SLOTS]; /* None: not traced */
    unsigned int source[MAX_SLOTS];
    unsigned int count;
} TracedBox;

/* Send the packets held, in order; what the socket refused goes to lost(), which says why. */
static int hep_flush(const TraceHooks *hooks, HepBox *box, Py_ssize_t *traced) {
    struct mmsghdr msgs[HEP_BATCH];
    struct iovec iov[HEP_BATCH];
    int sent = 0;
    if (box->count) {
        memset(msgs, 0, sizeof msgs[0] * box->count);
        for (unsigned int j = 0; j < box->count; j++) {
            iov[j].iov_base = PyBytes_AS_STRING(box->packet[j]);
            iov[j].iov_len = (size_t)PyBytes_GET_SIZE(box->packet[j]);
            msgs[j].msg_hdr.msg_iov = &iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
        }
        sent = sendmmsg(hooks->fd, msgs, box->count, MSG_DONTWAIT);
        if (sent < 0)
            sent = 0;
        *traced += sent;
    }
    int rc = 0;
    for (unsigned int j = 0; j < box->count; j++) {
        if ((int)j >= sent && rc == 0) {
            PyObject *done = PyObject_CallOneArg(hooks->lost, box->packet[j]);
            rc = done ? 0 : -1;
            Py_XDECREF(done);
        }
        Py_DECREF(box->packet[j]);
    }
    box->count = 0;
    return rc;
}

static int hep_add(const TraceHooks *hooks, HepBox *box, PyObject *packet, Py_ssize_t *traced) {
    if (!PyBytes_CheckExact(packet)) {
        PyErr_SetString(PyExc_TypeError, "serve_traced: a HEP packet must be bytes");
        return -1;
    }
    if (box->count == HEP_BATCH && hep_flush(hooks, box, traced) < 0)
        return -1;
    box->packet[box->count++] = Py_NewRef(packet);
    return 0;
}

/* The time a packet is stamped with, as time.time_ns() gives it. New reference. */
static PyObject *now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return PyLong_FromLongLong((long long)now.tv_sec * 1000000000LL + now.tv_nsec);
}

/* A bool from a hook's result (a new reference, or NULL), which is released. */
static int truth(PyObject *result) {
    int yes = result ? PyObject_IsTrue(result) : -1;
    Py_XDECREF(result);
    return yes;
}

/* Send the replies held, then the packets of the requests and of the replies that went out;
 * replies the kernel refused go to refused(), in order, after those packets. */
static int traced_flush(BatchSocket *self, const TraceHooks *hooks, TracedBox *box, HepBox *hep,
                        int *direct, Py_ssize_t *replied, Py_ssize_t *traced) {
    int sent = 0;
    if (box->count) {
        sent = sendmmsg_replies(self, box->reply, box->source, box->count);
        *replied += sent;
    }
    int rc = 0;
    for (int j = 0; j < sent && rc == 0; j++) {
        if (box->trace[j] == Py_None)
            continue;
        PyObject *now = now_ns();
        PyObject *packet = now ? PyObject_CallFunctionObjArgs(hooks->reply, box->trace[j],
                                                              box->reply[j], now, NULL)
                               : NULL;
        Py_XDECREF(now);
        rc = packet ? hep_add(hooks, hep, packet, traced) : -1;
        Py_XDECREF(packet);
    }
    if (rc == 0)
        rc = hep_flush(hooks, hep, traced);
    for (unsigned int j = (unsigned int)sent; j < box->count && rc == 0; j++) {
        unsigned int i = box->source[j];
        PyObject *peer = cached_peer(self, &self->raddrs[i], self->rmsgs[i].msg_hdr.msg_namelen);
        int go_on = peer ? truth(PyObject_CallFunctionObjArgs(hooks->refused, box->trace[j],
                                                               box->reply[j], peer, NULL))
                         : -1;
        Py_XDECREF(peer);
        if (go_on < 0)
            rc = -1;
        else
            *direct = *direct && go_on;
    }
    for (unsigned int j = 0; j < box->count; j++) {
        Py_DECREF(box->reply[j]);
        Py_DECREF(box->trace[j]);
    }
    box->count = 0;
    return rc;
}

/* A bare call answered OK: its request packet now, its reply held (or, when this cannot send
 * it, given to refused() after what is held). Steals handled. */
static int traced_reply(BatchSocket *self, const TraceHooks *hooks, TracedBox *box, HepBox *hep,
                        unsigned int i, PyObject *method, PyObject *handled, unsigned int flush,
                        int *direct, Py_ssize_t *replied, Py_ssize_t *traced) {
    PyObject *peer = cached_peer(self, &self->raddrs[i], self->rmsgs[i].msg_hdr.msg_namelen);
    PyObject *now = peer ? now_ns() : NULL;
    PyObject *trace =
        now ? PyObject_CallFunctionObjArgs(hooks->request, method, peer, now, NULL) : NULL;
    Py_XDECREF(now);
    int rc = trace ? 0 : -1;
    if (rc == 0 && trace != Py_None) {
        if (PyTuple_Check(trace) && PyTuple_GET_SIZE(trace) > 0)
            rc = hep_add(hooks, hep, PyTuple_GET_ITEM(trace, 0), traced);
        else {
            PyErr_SetString(PyExc_TypeError, "serve_traced: request() must give a Trace or None");
            rc = -1;
        }
    }
    if (rc == 0 && PyBytes_GET_SIZE(handled) <= self->big && !unbound(self, i)) {
        box->reply[box->count] = handled; /* the box owns both now */
        box->trace[box->count] = trace;
        box->source[box->count++] = i;
        Py_DECREF(peer);
        if (box->count >= flush)
            return traced_flush(self, hooks, box, hep, direct, replied, traced);
        return 0;
    }
    if (rc == 0) /* too long for this loop, or an unbound client: the caller's to send */
        rc = traced_flush(self, hooks, box, hep, direct, replied, traced);
    if (rc == 0) {
        int go_on = truth(PyObject_CallFunctionObjArgs(hooks->refused, trace, handled, peer, NULL));
        rc = go_on < 0 ? -1 : 0;
        *direct = *direct && go_on > 0;
    }
    Py_XDECREF(trace);
    Py_XDECREF(peer);
    Py_DECREF(handled);
    return rc;
}

static int trace_hooks(PyObject *arg, TraceHooks *hooks) {
    if (!PyTuple_Check(arg) || PyTuple_GET_SIZE(arg) != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "serve_traced: hooks is (fd, request, reply, finish, refused, lost)");
        return -1;
    }
    long fd = PyLong_AsLong(PyTuple_GET_ITEM(arg, 0));
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "serve_traced: the collector's fd is out of range");
        return -1;
    }
    hooks->fd = (int)fd;
    hooks->request = PyTuple_GET_ITEM(arg, 1);
    hooks->reply = PyTuple_GET_ITEM(arg, 2);
    hooks->finish = PyTuple_GET_ITEM(arg, 3);
    hooks->refused = PyTuple_GET_ITEM(arg, 4);
    hooks->lost = PyTuple_GET_ITEM(arg, 5);
    return 0;
}

static PyObject *serve_traced_batch(BatchSocket *self, PyObject *answer, const TraceHooks *hooks,
                                    int count, unsigned int flush) {
    TracedBox box = {.count = 0};
    HepBox hep = {.count = 0};
    Py_ssize_t replied = 0, traced = 0;
    int direct = 1; /* replies go out from here: no reply of this batch waits for its client */
    PyObject *method = NULL;
    for (int i = 0; i < count; i++) {
        struct msghdr *hdr = &self->rmsgs[i].msg_hdr;
        int truncated = (hdr->msg_flags & MSG_TRUNC) != 0;
        const char *text = self->riov[i].iov_base;
        Py_ssize_t len = (Py_ssize_t)self->rmsgs[i].msg_len;
        PyObject *data = PyBytes_FromStringAndSize(text, len);
        if (!data)
            goto error;
        if (self->in_hand.buf)
            hold(self, i);
        BareCall call;
        PyObject *handled = NULL;
        if (direct && !truncated && recognise(text, len, &call) && !call.named_count) {
            handled = PyObject_CallOneArg(answer, data);
            if (!handled) {
                Py_DECREF(data);
                goto error;
            }
            if (PyBytes_CheckExact(handled)) {
                PyObject *name = cached_name(&method, &call.method);
                int rc = name ? traced_reply(self, hooks, &box, &hep, (unsigned int)i, name,
                                             handled, flush, &direct, &replied, &traced)
                              : (Py_DECREF(handled), -1);
                Py_XDECREF(name);
                Py_DECREF(data);
                if (rc < 0)
                    goto error;
                continue;
            }
        }
        /* anything else: the reference path, once what is held went out */
        int go_on = -1;
        if (traced_flush(self, hooks, &box, &hep, &direct, &replied, &traced) == 0) {
            PyObject *peer = cached_peer(self, &self->raddrs[i], hdr->msg_namelen);
            if (peer)
                go_on = truth(PyObject_CallFunctionObjArgs(hooks->finish, data, peer,
                                                           truncated ? Py_True : Py_False,
                                                           handled ? handled : Py_None, NULL));
            Py_XDECREF(peer);
        }
        Py_XDECREF(handled);
        Py_DECREF(data);
        if (go_on < 0)
            goto error;
        direct = direct && go_on;
    }
    if (traced_flush(self, hooks, &box, &hep, &direct, &replied, &traced) < 0)
        goto error;
    let_go(self);
    Py_XDECREF(method);
    return Py_BuildValue("(inn)", count, replied, traced);
error:
    /* what was answered still goes out (and is traced); the exception goes up */
    {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (traced_flush(self, hooks, &box, &hep, &direct, &replied, &traced) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, traceback);
    }
    Py_XDECREF(method);
    return NULL;
}

static PyObject *BatchSocket_serve_traced(BatchSocket *self, PyObject *const *args,
                                          Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "serve_traced(answer, block: bool, flush: int, hooks)");
        return NULL;
    }
    TraceHooks hooks;
    int block = PyObject_IsTrue(args[1]);
    long flush = PyLong_AsLong(args[2]);
    if (block < 0 || (flush == -1 && PyErr_Occurred()) || trace_hooks(args[3], &hooks) < 0)
        return NULL;
    if (enter(self) < 0)
        return NULL;
    PyObject *result = NULL;
    if (flush < 1 || flush > (long)self->slots)
        PyErr_Format(PyExc_ValueError, "serve_traced: flush must be 1..%u", self->slots);
    else {
        int count = receive(self, block);
        if (count == 0)
            result = Py_BuildValue("(iii)", 0, 0, 0);
        else if (count > 0)
            result = serve_traced_batch(self, args[0], &hooks, count, (unsigned int)flush);
    }
    self->busy = 0;
    return result;
}

static struct PyModuleDef batchio_module = {
    PyModuleDef_HEAD_INIT, "_batchio", "Batched datagram I/O (recvmmsg/sendmmsg).", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__batchio(void) {
    if (PyType_Ready(&BatchSocketType) < 0 || PyType_Ready(&FastAnswerType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&batchio_module);
    if (!module)
        return NULL;
    if (PyModule_AddObjectRef(module, "BatchSocket", (PyObject *)&BatchSocketType) < 0 ||
        PyModule_AddObjectRef(module, "FastAnswer", (PyObject *)&FastAnswerType) < 0 ||
        PyModule_AddIntConstant(module, "MAX_SLOTS", MAX_SLOTS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
