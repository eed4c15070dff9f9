/*
 * _batchio: batched datagram I/O for midgram's workers (recvmmsg/sendmmsg).
 *
 * A pure-Python server pays one recvfrom() and one sendto() per request: two syscalls and
 * two trips through the socket module (argument parsing, address objects, exceptions). This
 * module reads every datagram waiting on the socket with one recvmmsg() and sends all the
 * replies of that batch with one sendmmsg(), so both costs are paid once per batch.
 *
 *     io = BatchSocket(fd, family, slots, bufsize)
 *     io.recv(block) -> [(data: bytes, peer, truncated: bool), ...]   ([] when none came)
 *     io.send(replies, start) -> index of the first reply not sent
 *
 * Peers are the objects the socket module gives and takes (a path str, an abstract name as
 * bytes, None for an unbound UNIX client, (host, port) or (host, port, flow, scope)), so the
 * rest of midgram (ReplySender, allow_from, tracing) works on them unchanged.
 *
 * send() never raises for a send error and never blocks (MSG_DONTWAIT): it stops at the first
 * reply that failed or whose peer it cannot convert, and the caller hands that one (and the
 * rest) to ReplySender, which owns retries, drops and their logs.
 *
 * Built on first use by midgram.batchio with the system compiler and Python's headers; when
 * that is not possible midgram serves with the socket module instead.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#define MAX_SLOTS 1024

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
    int busy;       /* a call is using the buffers (they are shared): one at a time */
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
    Py_XDECREF(self->last.obj);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int BatchSocket_init(BatchSocket *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"fd", "family", "slots", "bufsize", NULL};
    int fd, family;
    Py_ssize_t slots, bufsize;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iinn", keywords, &fd, &family, &slots,
                                     &bufsize))
        return -1;
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
    if (self->buffers) {
        PyErr_SetString(PyExc_RuntimeError, "BatchSocket is already initialised");
        return -1;
    }
    self->fd = fd;
    self->family = family;
    self->slots = (unsigned int)slots;
    self->bufsize = (size_t)bufsize;
    self->buffers = PyMem_Malloc((size_t)slots * (size_t)bufsize);
    self->rmsgs = PyMem_Calloc((size_t)slots, sizeof *self->rmsgs);
    self->riov = PyMem_Calloc((size_t)slots, sizeof *self->riov);
    self->raddrs = PyMem_Calloc((size_t)slots, sizeof *self->raddrs);
    self->smsgs = PyMem_Calloc((size_t)slots, sizeof *self->smsgs);
    self->siov = PyMem_Calloc((size_t)slots, sizeof *self->siov);
    self->saddrs = PyMem_Calloc((size_t)slots, sizeof *self->saddrs);
    if (!self->buffers || !self->rmsgs || !self->riov || !self->raddrs || !self->smsgs ||
        !self->siov || !self->saddrs) {
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
        PyObject *item = NULL;
        if (peer) {
            item = PyTuple_New(3);
            if (item) {
                PyTuple_SET_ITEM(item, 0, data);
                PyTuple_SET_ITEM(item, 1, peer);
                PyTuple_SET_ITEM(item, 2, Py_NewRef((hdr->msg_flags & MSG_TRUNC) ? Py_True
                                                                                 : Py_False));
            }
        }
        if (!item) {
            Py_XDECREF(data);
            Py_XDECREF(peer);
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
                !PyBytes_CheckExact(PyTuple_GET_ITEM(item, 0)))
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

/* Send what the outbox holds; what the kernel refused (and, once one was refused, every
 * later reply: ReplySender keeps a client's replies in order) becomes a leftover. */
static int flush_outbox(BatchSocket *self, Outbox *box, int *failed, Py_ssize_t *replied,
                        PyObject **leftovers) {
    int sent = 0;
    if (box->count && !*failed) {
        for (unsigned int j = 0; j < box->count; j++) {
            struct msghdr *src = &self->rmsgs[box->source[j]].msg_hdr;
            struct msghdr *hdr = &self->smsgs[j].msg_hdr;
            hdr->msg_name = src->msg_name;
            hdr->msg_namelen = src->msg_namelen;
            self->siov[j].iov_base = PyBytes_AS_STRING(box->reply[j]);
            self->siov[j].iov_len = (size_t)PyBytes_GET_SIZE(box->reply[j]);
        }
        sent = sendmmsg(self->fd, self->smsgs, box->count, MSG_DONTWAIT);
        if (sent < 0)
            sent = 0;
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

/* settle(data, handled) for a datagram whose answer is not bytes (handled None: truncated):
 * its reply, a new reference to bytes or None; NULL with an exception set. */
static PyObject *settled(PyObject *settle, PyObject *data, PyObject *handled) {
    PyObject *reply = PyObject_CallFunctionObjArgs(settle, data, handled, NULL);
    if (reply && reply != Py_None && !PyBytes_CheckExact(reply)) {
        PyErr_Format(PyExc_TypeError, "settle() must return bytes or None, not %.100s",
                     Py_TYPE(reply)->tp_name);
        Py_CLEAR(reply);
    }
    return reply;
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
        PyObject *handled = truncated ? Py_NewRef(Py_None) : PyObject_CallOneArg(answer, data);
        if (handled && settle && !PyBytes_CheckExact(handled)) {
            /* settled now, so that its reply goes out in order with the others */
            Py_SETREF(handled, settled(settle, data, handled));
            if (handled == Py_None) { /* nothing to send */
                Py_DECREF(handled);
                Py_DECREF(data);
                continue;
            }
        }
        if (!handled) {
            Py_DECREF(data);
            goto error;
        }
        if (PyBytes_CheckExact(handled) && !failed && !unbound(self, (unsigned int)i)) {
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
        if (!PyBytes_CheckExact(handled))
            failed = 1; /* the caller answers it: every later reply is the caller's too */
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
    return Py_BuildValue("(inN)", count, replied, leftovers ? leftovers : Py_NewRef(Py_None));
error:
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

static PyMethodDef BatchSocket_methods[] = {
    {"recv", (PyCFunction)BatchSocket_recv, METH_O,
     "recv(block) -> list of (data, peer, truncated): every datagram waiting, up to `slots`; "
     "with block, wait (up to SO_RCVTIMEO) for the first one."},
    {"serve", (PyCFunction)(void (*)(void))BatchSocket_serve, METH_FASTCALL,
     "serve(answer, block, flush[, settle]) -> (received, replied, leftovers): receive a "
     "batch, call answer(data) on each datagram and send the bytes it returns back to the "
     "datagram's sender, flush at a time. An answer that is not bytes, or a truncated "
     "datagram (answer not called, handled None), goes to settle(data, handled), whose "
     "bytes are sent in turn (None: no reply). leftovers (None if none) lists, in order, "
     "(data, peer, truncated, handled) for what the caller must finish: a reply the kernel "
     "refused or to an unbound client (handled: its bytes) and, without settle, what settle "
     "would have had; after a refused reply or one the caller finishes, every later reply "
     "of the batch is a leftover too, so that each client's replies keep their order."},
    {"send", (PyCFunction)(void (*)(void))BatchSocket_send, METH_FASTCALL,
     "send(replies, start) -> int: send replies[start:] as (data, peer) pairs without "
     "blocking; the index of the first one not sent (len(replies) when all went)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef BatchSocket_getset[] = {
    {"slots", (getter)BatchSocket_get_slots, NULL, "datagrams per recvmmsg()/sendmmsg()", NULL},
    {"bufsize", (getter)BatchSocket_get_bufsize, NULL, "bytes read per datagram", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BatchSocketType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "midgram._batchio.BatchSocket",
    .tp_basicsize = sizeof(BatchSocket),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "recvmmsg()/sendmmsg() over a datagram socket's file descriptor (not owned).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)BatchSocket_init,
    .tp_dealloc = (destructor)BatchSocket_dealloc,
    .tp_methods = BatchSocket_methods,
    .tp_getset = BatchSocket_getset,
};

static struct PyModuleDef batchio_module = {
    PyModuleDef_HEAD_INIT, "_batchio", "Batched datagram I/O (recvmmsg/sendmmsg).", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__batchio(void) {
    if (PyType_Ready(&BatchSocketType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&batchio_module);
    if (!module)
        return NULL;
    if (PyModule_AddObjectRef(module, "BatchSocket", (PyObject *)&BatchSocketType) < 0 ||
        PyModule_AddIntConstant(module, "MAX_SLOTS", MAX_SLOTS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
