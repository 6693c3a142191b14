/* mcp2p._speedups: the CN's per-datagram checks in one call per batch.
 *
 * make_packets(...) is the SN's side: a plan's data packets and their digests
 * (mcp2p.wire.rtp.make_packets is its twin).
 *
 * recv_batch(...) is BatchReader's recvmmsg(2) (mcp2p.transfer.receiver),
 * where its ctypes twin would cost Python work per datagram.
 *
 * copy_run(...) is a RaptorQ decoder's usual case (mcp2p.core.blockcode):
 * the source symbols of a piece in progress, copied into its buffer.
 *
 * accept(...) then takes the usual case of Receiver.datagrams for the
 * candidates scan found: a packet whose notice is waiting with its digest
 * (see its docstring). Everything else it leaves to the Python code.
 *
 * scan(batch, ssrc) does for a batch of datagrams what mcp2p.transfer.scan's
 * pure-Python scan does, with the same result (tests/transfer/test_scan.py
 * compares the two on hostile input): the RTP header checks and the
 * packet digest (the first 8 bytes of SHA-256 of the whole datagram, by
 * OpenSSL's libcrypto, the library Python's hashlib uses). What it saves is
 * Python's cost per call, not hashing: a struct unpack, a hashlib object, a
 * digest and a slice for every datagram.
 *
 * Every datagram is hostile: lengths are checked before any byte is read,
 * and nothing is written but into Python objects this function creates.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#ifdef __linux__
#include <errno.h>
#include <sys/socket.h>
#endif

#define HEADER_LEN 22
#define MAX_DATAGRAM 65507 /* HEADER_LEN + wire.rtp.MAX_PAYLOAD */
#define FIRST_TWO 0x8060   /* V=2, no padding, extension or CSRC; M=0, PT=96 */
#define LIST_FIRST_TWO 0x8061 /* a digest list (PT=97) */
#define DIGEST_LEN 8

static EVP_MD *sha256; /* fetched once: an implicit fetch per datagram costs */

static uint32_t be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* A packet's digest (wire.rtp.packet_digest): the first DIGEST_LEN bytes of
 * its SHA-256 into ``out``; 0 with RuntimeError set if libcrypto failed. */
static int
packet_digest(EVP_MD_CTX *ctx, const unsigned char *data, size_t len, unsigned char *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (EVP_DigestInit_ex2(ctx, sha256, NULL) && EVP_DigestUpdate(ctx, data, len)
        && EVP_DigestFinal_ex(ctx, md, &md_len) && md_len >= DIGEST_LEN) {
        memcpy(out, md, DIGEST_LEN);
        return 1;
    }
    PyErr_SetString(PyExc_RuntimeError, "SHA-256 failed in libcrypto");
    return 0;
}

PyDoc_STRVAR(scan_doc,
"scan(batch, ssrc) -> (malformed, foreign, lists, candidates)\n\n"
"For each datagram of ``batch`` (a sequence of bytes-like objects), by\n"
"index: too short or too long, or not a data or list packet, counts\n"
"``malformed``; a digest list's index goes into ``lists``; a data packet\n"
"of another SSRC counts ``foreign``; any other is a candidate\n"
"``(index, seq, digest, piece, symbol)``: seq from the RTP timestamp,\n"
"digest the first 8 bytes of SHA-256 of the datagram.");

static PyObject *
scan(PyObject *self, PyObject *args)
{
    PyObject *batch, *ssrc_obj;
    if (!PyArg_ParseTuple(args, "OO!:scan", &batch, &PyLong_Type, &ssrc_obj))
        return NULL;
    unsigned long long ssrc_arg = PyLong_AsUnsignedLongLong(ssrc_obj); /* negative: an error */
    if (ssrc_arg == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (ssrc_arg > 0xFFFFFFFFULL) {
        PyErr_SetString(PyExc_ValueError, "ssrc is a 32-bit number");
        return NULL;
    }
    uint32_t ssrc = (uint32_t)ssrc_arg;
    PyObject *seq = PySequence_Fast(batch, "batch must be a sequence of buffers");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *lists = PyList_New(0);
    PyObject *candidates = PyList_New(0);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    Py_ssize_t malformed = 0, foreign = 0;
    if (lists == NULL || candidates == NULL || ctx == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer view;
        if (PyObject_GetBuffer(items[i], &view, PyBUF_SIMPLE) < 0)
            goto fail;
        const unsigned char *b = view.buf;
        Py_ssize_t len = view.len;
        if (len < HEADER_LEN || len > MAX_DATAGRAM) {
            malformed++;
            PyBuffer_Release(&view);
            continue;
        }
        unsigned int first_two = ((unsigned int)b[0] << 8) | b[1];
        if (first_two != FIRST_TWO || b[13] != 0) {
            PyBuffer_Release(&view);
            if (first_two == LIST_FIRST_TWO) {
                PyObject *index = PyLong_FromSsize_t(i);
                if (index == NULL || PyList_Append(lists, index) < 0) {
                    Py_XDECREF(index);
                    goto fail;
                }
                Py_DECREF(index);
            } else {
                malformed++;
            }
            continue;
        }
        if (be32(b + 8) != ssrc) {
            foreign++;
            PyBuffer_Release(&view);
            continue;
        }
        unsigned char md[DIGEST_LEN];
        int ok = packet_digest(ctx, b, (size_t)len, md);
        uint32_t timestamp = be32(b + 4), piece = be32(b + 14), symbol = be32(b + 18);
        PyBuffer_Release(&view);
        if (!ok)
            goto fail;
        PyObject *candidate = Py_BuildValue(
            "(nky#kk)", i, (unsigned long)timestamp, (const char *)md, (Py_ssize_t)DIGEST_LEN,
            (unsigned long)piece, (unsigned long)symbol);
        if (candidate == NULL)
            goto fail;
        int appended = PyList_Append(candidates, candidate);
        Py_DECREF(candidate);
        if (appended < 0)
            goto fail;
    }
    EVP_MD_CTX_free(ctx);
    Py_DECREF(seq);
    return Py_BuildValue("(nnNN)", malformed, foreign, lists, candidates);

fail:
    EVP_MD_CTX_free(ctx);
    Py_XDECREF(lists);
    Py_XDECREF(candidates);
    Py_DECREF(seq);
    return NULL;
}

#ifdef __linux__
#define MAX_SLOTS 64
#define SOL_UDP_ 17
#define UDP_GRO_ 104 /* Linux: a GSO burst kept whole, its segment size in a cmsg */

PyDoc_STRVAR(recv_batch_doc,
"recv_batch(fd, view, slot, count) -> (datagrams, truncated, received, nbytes)\n\n"
"One recvmmsg(2) call (MSG_DONTWAIT) on the UDP socket ``fd`` into ``count``\n"
"slots of ``slot`` bytes of the writable ``view`` (a memoryview of bytes):\n"
"``datagrams`` are views of it, a burst the kernel kept whole (UDP_GRO)\n"
"split by its segment size; ``truncated`` counts datagrams longer than a\n"
"slot (dropped); ``received`` is the messages the call took (fewer than\n"
"``count``: the socket is drained) and ``nbytes`` their bytes. Nothing\n"
"waiting (EAGAIN, EINTR, ECONNREFUSED) is (\\[], 0, 0, 0); any other error\n"
"raises OSError.");

static PyObject *
recv_batch(PyObject *self, PyObject *args)
{
    int fd;
    PyObject *view_obj;
    Py_ssize_t slot, count;
    if (!PyArg_ParseTuple(args, "iO!nn:recv_batch", &fd, &PyMemoryView_Type, &view_obj, &slot,
                          &count))
        return NULL;
    if (count < 1 || count > MAX_SLOTS || slot < 1) {
        PyErr_SetString(PyExc_ValueError, "1 <= count <= 64 slots of at least a byte");
        return NULL;
    }
    Py_buffer buf;
    if (PyObject_GetBuffer(view_obj, &buf, PyBUF_WRITABLE) < 0)
        return NULL;
    if (buf.len / slot < count) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "the view is smaller than its slots");
        return NULL;
    }
    struct mmsghdr msgs[MAX_SLOTS];
    struct iovec iov[MAX_SLOTS];
    union {
        char bytes[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control[MAX_SLOTS];
    memset(msgs, 0, sizeof(struct mmsghdr) * (size_t)count);
    for (Py_ssize_t i = 0; i < count; i++) {
        iov[i].iov_base = (char *)buf.buf + i * slot;
        iov[i].iov_len = (size_t)slot;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = control[i].bytes;
        msgs[i].msg_hdr.msg_controllen = sizeof(control[i].bytes);
    }
    int n = recvmmsg(fd, msgs, (unsigned int)count, MSG_DONTWAIT, NULL);
    if (n < 0) {
        int err = errno;
        PyBuffer_Release(&buf);
        if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == ECONNREFUSED)
            return Py_BuildValue("([]nnn)", (Py_ssize_t)0, (Py_ssize_t)0, (Py_ssize_t)0);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *views = PyList_New(0);
    Py_ssize_t truncated = 0, nbytes = 0;
    if (views == NULL)
        goto fail;
    for (int i = 0; i < n; i++) {
        Py_ssize_t length = (Py_ssize_t)msgs[i].msg_len;
        if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC || length > slot) {
            truncated++;
            continue;
        }
        nbytes += length;
        int segment = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c != NULL;
             c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
            if (c->cmsg_level == SOL_UDP_ && c->cmsg_type == UDP_GRO_
                && c->cmsg_len >= CMSG_LEN(sizeof(int)))
                memcpy(&segment, CMSG_DATA(c), sizeof(int));
        }
        Py_ssize_t start = i * slot, end = start + length;
        Py_ssize_t step = (segment > 0 && segment < length) ? segment : length;
        Py_ssize_t at = start;
        do { /* one view, or a GRO burst's segments (the last may be short) */
            Py_ssize_t stop = end - at > step ? at + step : end;
            PyObject *v = PySequence_GetSlice(view_obj, at, stop);
            if (v == NULL)
                goto fail;
            int appended = PyList_Append(views, v);
            Py_DECREF(v);
            if (appended < 0)
                goto fail;
            at = stop;
        } while (at < end);
    }
    PyBuffer_Release(&buf);
    return Py_BuildValue("(Nnnn)", views, truncated, (Py_ssize_t)n, nbytes);

fail:
    Py_XDECREF(views);
    PyBuffer_Release(&buf);
    return NULL;
}
#endif

PyDoc_STRVAR(make_packets_doc,
"make_packets(seq0, ssrc, symbols) -> (packets, digests)\n\n"
"The SN's data packets for ``symbols`` (a list of (piece, symbol, payload),\n"
"payload any bytes-like object), numbered from ``seq0``: each the 22-byte\n"
"RTP header (seq = its number's low 16 bits, timestamp its low 32 bits,\n"
"``ssrc``, flags 0) and the payload; ``digests`` the first 8 bytes of each\n"
"packet's SHA-256, joined. As mcp2p.wire.rtp.make_packets; a value that does\n"
"not fit its field is a ValueError.");

static int
put32(unsigned char *p, PyObject *obj, const char *what)
{
    unsigned long v = PyLong_AsUnsignedLong(obj);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (v > 0xFFFFFFFFUL) {
        PyErr_Format(PyExc_ValueError, "%s does not fit 32 bits", what);
        return -1;
    }
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
    return 0;
}

static PyObject *
make_packets(PyObject *self, PyObject *args)
{
    long long seq0;
    unsigned long long ssrc;
    PyObject *symbols;
    if (!PyArg_ParseTuple(args, "LKO!:make_packets", &seq0, &ssrc, &PyList_Type, &symbols))
        return NULL;
    if (seq0 < 0 || ssrc > 0xFFFFFFFFULL) {
        PyErr_SetString(PyExc_ValueError, "seq0 >= 0 and a 32-bit ssrc");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(symbols);
    PyObject *packets = PyList_New(n);
    PyObject *digests = PyBytes_FromStringAndSize(NULL, n * DIGEST_LEN);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (packets == NULL || digests == NULL || ctx == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto fail;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(digests);
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item = PyList_GET_ITEM(symbols, k);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "symbols are (piece, symbol, payload) tuples");
            goto fail;
        }
        Py_buffer payload;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 2), &payload, PyBUF_SIMPLE) < 0)
            goto fail;
        if (payload.len > MAX_DATAGRAM - HEADER_LEN) {
            PyBuffer_Release(&payload);
            PyErr_SetString(PyExc_ValueError, "a payload larger than a datagram");
            goto fail;
        }
        PyObject *packet = PyBytes_FromStringAndSize(NULL, HEADER_LEN + payload.len);
        if (packet == NULL) {
            PyBuffer_Release(&payload);
            goto fail;
        }
        PyList_SET_ITEM(packets, k, packet); /* owned by the list from here */
        unsigned char *b = (unsigned char *)PyBytes_AS_STRING(packet);
        unsigned long long seq = (unsigned long long)seq0 + (unsigned long long)k;
        b[0] = FIRST_TWO >> 8;
        b[1] = FIRST_TWO & 0xFF;
        b[2] = (unsigned char)(seq >> 8);
        b[3] = (unsigned char)seq;
        b[4] = (unsigned char)(seq >> 24);
        b[5] = (unsigned char)(seq >> 16);
        b[6] = (unsigned char)(seq >> 8);
        b[7] = (unsigned char)seq;
        b[8] = (unsigned char)(ssrc >> 24);
        b[9] = (unsigned char)(ssrc >> 16);
        b[10] = (unsigned char)(ssrc >> 8);
        b[11] = (unsigned char)ssrc;
        b[12] = 0; /* flags */
        b[13] = 0; /* reserved */
        if (put32(b + 14, PyTuple_GET_ITEM(item, 0), "piece") < 0
            || put32(b + 18, PyTuple_GET_ITEM(item, 1), "symbol") < 0) {
            PyBuffer_Release(&payload);
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "piece and symbol are 32-bit numbers");
            }
            goto fail;
        }
        Py_ssize_t length = HEADER_LEN + payload.len;
        memcpy(b + HEADER_LEN, payload.buf, (size_t)payload.len);
        PyBuffer_Release(&payload);
        if (!packet_digest(ctx, b, (size_t)length, out + k * DIGEST_LEN))
            goto fail;
    }
    EVP_MD_CTX_free(ctx);
    return Py_BuildValue("(NN)", packets, digests);

fail:
    EVP_MD_CTX_free(ctx);
    Py_XDECREF(packets);
    Py_XDECREF(digests);
    return NULL;
}

PyDoc_STRVAR(copy_run_doc,
"copy_run(items, start, piece, last, room, have, buffer, size) -> (end, taken, redundant)\n\n"
"A RaptorQ decoder's run (mcp2p.core.blockcode.RaptorQDecoder.add_many): from\n"
"``items[start]`` on, each ``(piece, symbol, payload)`` of the same ``piece``\n"
"(an int) with an int ``symbol`` in [0, last) and a payload of exactly\n"
"``size`` bytes (bytes, bytearray, or a 1-D memoryview of bytes) is taken:\n"
"a symbol already marked in ``have`` counts as redundant; any other, while\n"
"fewer than ``room`` were taken, is marked in ``have`` and copied into\n"
"``buffer`` at symbol * size. The run ends at the first item that does not\n"
"qualify or would be one more than ``room``: ``end`` is its index, left to\n"
"the caller.");

/* The bytes of a payload of exactly ``size`` bytes, as add_many's Python
 * takes it, into ``got`` (to release); 0 (no error set) for anything else:
 * the caller's Python code then decides, and raises what it raises. */
static int
payload_of(PyObject *obj, Py_ssize_t size, Py_buffer *got)
{
    if (!PyBytes_CheckExact(obj) && !PyByteArray_CheckExact(obj)) {
        if (!PyMemoryView_Check(obj))
            return 0;
        Py_buffer *b = PyMemoryView_GET_BUFFER(obj);
        if (b->ndim != 1 || b->itemsize != 1 || (b->format != NULL && strcmp(b->format, "B") != 0))
            return 0; /* len() of such a view counts items, not bytes */
    }
    if (PyObject_GetBuffer(obj, got, PyBUF_SIMPLE) < 0) { /* released, or not contiguous */
        PyErr_Clear();
        return 0;
    }
    if (got->len != size) {
        PyBuffer_Release(got);
        return 0;
    }
    return 1;
}

static PyObject *
copy_run(PyObject *self, PyObject *args)
{
    PyObject *items;
    Py_ssize_t start, size;
    long long piece, last, room;
    Py_buffer have, buffer;
    if (!PyArg_ParseTuple(args, "O!nLLLw*w*n:copy_run", &PyList_Type, &items, &start, &piece,
                          &last, &room, &have, &buffer, &size))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(items), k = start;
    long long taken = 0, redundant = 0;
    unsigned char *marks = have.buf;
    char *into = buffer.buf;
    if (start < 0 || start > n) {
        PyBuffer_Release(&have);
        PyBuffer_Release(&buffer);
        PyErr_SetString(PyExc_ValueError, "start is not an index of items");
        return NULL;
    }
    for (; size > 0 && k < n; k++) {
        PyObject *item = PyList_GET_ITEM(items, k);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 3)
            break;
        PyObject *p = PyTuple_GET_ITEM(item, 0), *s = PyTuple_GET_ITEM(item, 1);
        if (!PyLong_CheckExact(p) || !PyLong_CheckExact(s))
            break;
        int overflow = 0;
        long long pv = PyLong_AsLongLongAndOverflow(p, &overflow);
        if (overflow || pv != piece)
            break;
        long long symbol = PyLong_AsLongLongAndOverflow(s, &overflow);
        if (overflow || symbol < 0 || symbol >= last || symbol >= have.len
            || (symbol + 1) > buffer.len / size)
            break;
        Py_buffer payload;
        if (!payload_of(PyTuple_GET_ITEM(item, 2), size, &payload))
            break;
        if (marks[symbol]) {
            PyBuffer_Release(&payload);
            redundant++;
            continue;
        }
        if (taken >= room) {
            PyBuffer_Release(&payload);
            break;
        }
        marks[symbol] = 1;
        memmove(into + symbol * size, payload.buf, (size_t)size);
        PyBuffer_Release(&payload);
        taken++;
    }
    PyBuffer_Release(&have);
    PyBuffer_Release(&buffer);
    if (PyErr_Occurred())
        return NULL;
    return Py_BuildValue("(nLL)", k, taken, redundant);
}

PyDoc_STRVAR(accept_doc,
"accept(batch, candidates, notice_seqs, notice_digests, seqs, digests, highest)\n"
"    -> (items, rest, highest)\n\n"
"The usual case of Receiver.datagrams, for scan's ``candidates`` of\n"
"``batch`` in order. The notices waiting (transfer.notices.Notices) are\n"
"``notice_seqs`` (an int64 array, a power of two long: seq + 1 of the\n"
"notice in each slot, 0 for none) and ``notice_digests`` (8 bytes a slot);\n"
"the packets accepted are ``seqs`` (an int64 array, a power of two long)\n"
"and ``digests``. A candidate ``(index, seq, digest, piece, symbol)`` whose\n"
"notice waits with the same digest is accepted: its notice slot is\n"
"emptied, ``seqs[slot]`` gets its seq and ``digests`` its digest, and\n"
"``(piece, symbol, batch[index][HEADER_LEN:])`` goes into ``items`` (one\n"
"item per notice taken). Any other candidate goes into ``rest``\n"
"unchanged, for the caller. ``highest`` comes back as the highest seq\n"
"accepted, or as given.");

/* An int64 array of a power of two slots (``seqs``) and its 8-byte digests:
   both writable. 0 and the slot count, or -1 with an exception set. */
static Py_ssize_t
ring_views(PyObject *seqs_obj, PyObject *digests_obj, Py_buffer *seqs, Py_buffer *digests)
{
    /* PyBUF_ND too: a memoryview (an anonymous mapping cast to "q") gives its
       format only with its shape. */
    if (PyObject_GetBuffer(seqs_obj, seqs, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_ND) < 0)
        return -1;
    if (PyObject_GetBuffer(digests_obj, digests, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(seqs);
        return -1;
    }
    Py_ssize_t slots = seqs->len / 8;
    if (seqs->itemsize != 8 || seqs->format == NULL
        || (strcmp(seqs->format, "q") != 0 && strcmp(seqs->format, "l") != 0)
        || slots < 1 || (slots & (slots - 1)) != 0 || digests->len != DIGEST_LEN * slots) {
        PyErr_SetString(PyExc_ValueError,
                        "seqs: an int64 array of a power of two; digests: 8 bytes a slot");
        PyBuffer_Release(digests);
        PyBuffer_Release(seqs);
        return -1;
    }
    return slots;
}

static PyObject *
accept_usual(PyObject *self, PyObject *args)
{
    PyObject *batch, *candidates, *nseqs_obj, *ndigests_obj, *seqs_obj, *digests_obj;
    long long highest;
    if (!PyArg_ParseTuple(args, "OO!OOOOL:accept", &batch, &PyList_Type, &candidates,
                          &nseqs_obj, &ndigests_obj, &seqs_obj, &digests_obj, &highest))
        return NULL;
    Py_buffer nseqs_view, ndigests_view, seqs_view, digests_view;
    Py_ssize_t notice_slots = ring_views(nseqs_obj, ndigests_obj, &nseqs_view, &ndigests_view);
    if (notice_slots < 0)
        return NULL;
    Py_ssize_t slots = ring_views(seqs_obj, digests_obj, &seqs_view, &digests_view);
    if (slots < 0) {
        PyBuffer_Release(&ndigests_view);
        PyBuffer_Release(&nseqs_view);
        return NULL;
    }
    PyObject *seq = NULL, *items = NULL, *rest = NULL, *result = NULL;
    seq = PySequence_Fast(batch, "batch must be a sequence of buffers");
    if (seq == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **datagrams = PySequence_Fast_ITEMS(seq);
    long long *nseqs = nseqs_view.buf, *seqs = seqs_view.buf;
    unsigned char *ndigests = ndigests_view.buf, *digests = digests_view.buf;
    long long notice_mask = (long long)notice_slots - 1, mask = (long long)slots - 1;
    items = PyList_New(0);
    rest = PyList_New(0);
    if (items == NULL || rest == NULL)
        goto done;
    Py_ssize_t count = PyList_GET_SIZE(candidates);
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *candidate = PyList_GET_ITEM(candidates, k);
        int usual = 0;
        long long number = -1;
        Py_ssize_t index = -1;
        PyObject *digest = NULL;
        if (PyTuple_CheckExact(candidate) && PyTuple_GET_SIZE(candidate) == 5) {
            PyObject *index_obj = PyTuple_GET_ITEM(candidate, 0);
            PyObject *key = PyTuple_GET_ITEM(candidate, 1);
            digest = PyTuple_GET_ITEM(candidate, 2);
            if (PyLong_CheckExact(index_obj) && PyLong_CheckExact(key)
                && PyBytes_CheckExact(digest) && PyBytes_GET_SIZE(digest) == DIGEST_LEN) {
                index = PyLong_AsSsize_t(index_obj);
                number = PyLong_AsLongLong(key);
                if (PyErr_Occurred())
                    PyErr_Clear(); /* out of range: not the usual case */
                else if (0 <= index && index < n && 0 <= number && number <= 0xFFFFFFFFLL) {
                    long long slot = number & notice_mask;
                    usual = nseqs[slot] == number + 1
                            && memcmp(ndigests + DIGEST_LEN * slot, PyBytes_AS_STRING(digest),
                                      DIGEST_LEN) == 0;
                }
            }
        }
        if (!usual) {
            if (PyList_Append(rest, candidate) < 0)
                goto done;
            continue;
        }
        PyObject *payload = PySequence_GetSlice(datagrams[index], HEADER_LEN, PY_SSIZE_T_MAX);
        if (payload == NULL)
            goto done;
        PyObject *item = PyTuple_Pack(3, PyTuple_GET_ITEM(candidate, 3),
                                      PyTuple_GET_ITEM(candidate, 4), payload);
        Py_DECREF(payload);
        if (item == NULL)
            goto done;
        int appended = PyList_Append(items, item);
        Py_DECREF(item);
        if (appended < 0)
            goto done;
        nseqs[number & notice_mask] = 0;
        long long slot = number & mask;
        seqs[slot] = number;
        memcpy(digests + DIGEST_LEN * slot, PyBytes_AS_STRING(digest), DIGEST_LEN);
        if (number > highest)
            highest = number;
    }
    result = Py_BuildValue("(OOL)", items, rest, highest);

done:
    Py_XDECREF(items);
    Py_XDECREF(rest);
    Py_XDECREF(seq);
    PyBuffer_Release(&digests_view);
    PyBuffer_Release(&seqs_view);
    PyBuffer_Release(&ndigests_view);
    PyBuffer_Release(&nseqs_view);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {"accept", accept_usual, METH_VARARGS, accept_doc},
    {"copy_run", copy_run, METH_VARARGS, copy_run_doc},
    {"make_packets", make_packets, METH_VARARGS, make_packets_doc},
#ifdef __linux__
    {"recv_batch", recv_batch, METH_VARARGS, recv_batch_doc},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "mcp2p._speedups",
    "The CN's per-datagram checks, compiled (see mcp2p.transfer.scan).", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (sha256 == NULL)
        sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (sha256 == NULL) {
        PyErr_SetString(PyExc_ImportError, "libcrypto has no SHA-256");
        return NULL;
    }
    return PyModule_Create(&module);
}
