/* mcp2p._speedups: the CN's per-datagram checks in one call per batch.
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
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int md_len = 0;
        int ok = EVP_DigestInit_ex2(ctx, sha256, NULL) && EVP_DigestUpdate(ctx, b, (size_t)len)
                 && EVP_DigestFinal_ex(ctx, md, &md_len) && md_len >= DIGEST_LEN;
        uint32_t timestamp = be32(b + 4), piece = be32(b + 14), symbol = be32(b + 18);
        PyBuffer_Release(&view);
        if (!ok) {
            PyErr_SetString(PyExc_RuntimeError, "SHA-256 failed in libcrypto");
            goto fail;
        }
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

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
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
