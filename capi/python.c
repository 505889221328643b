/* The embedded interpreter: started once per process (or borrowed when the host is Python), then every call
   takes the GIL and calls trt_distri.capi._bridge. The interpreter is never finalized: extension modules
   (numpy, onnxruntime) do not support a restart, and a host may create generators again later. */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#if !defined(TRT_DISTRI_BUILD_PYTHON) || !defined(TRT_DISTRI_LIBPYTHON)
#error "TRT_DISTRI_BUILD_PYTHON and TRT_DISTRI_LIBPYTHON must be defined by the build (setup.py)"
#endif

static pthread_once_t once = PTHREAD_ONCE_INIT;
static trt_distri_status start_status = TRT_DISTRI_OK;
static char start_error[3072];
static char python_used[1024];
static PyObject *bridge; /* trt_distri.capi._bridge */

/* The prefix of the installation this library belongs to, from where it lies: <prefix>/lib/pythonX.Y/
   site-packages/trt_distri/capi/ (a wheel's install) or <prefix>/lib/trt-distri/ (an editable install; setup.py).
   0 when it lies elsewhere. */
static int install_prefix(char *buf, size_t n) {
    Dl_info info;
    if (!dladdr((void *)&install_prefix, &info) || info.dli_fname == NULL) return 0;
    const char *path = info.dli_fname, *end = strstr(path, "/site-packages/trt_distri/capi/");
    if (end != NULL) {
        const char *lib = NULL;
        for (const char *p = path; (p = strstr(p, "/lib")) != NULL && p < end; p++) lib = p;
        end = lib;
    } else {
        end = strstr(path, "/lib/trt-distri/libtrt_distri.so");
    }
    if (end == NULL) return 0;
    snprintf(buf, n, "%.*s", (int)(end - path), path);
    return 1;
}

/* TRT_DISTRI_PYTHON, else the python of the installation this library belongs to (<prefix>/bin/pythonX.Y, the
   version it was built for), else the python that built it. The interpreter finds its environment (venv, its
   site-packages) from that path. */
static void python_path(char *buf, size_t n) {
    const char *env = getenv("TRT_DISTRI_PYTHON");
    if (env != NULL && *env != '\0') {
        snprintf(buf, n, "%s", env);
        return;
    }
    char prefix[768];
    if (install_prefix(prefix, sizeof(prefix))) {
        snprintf(buf, n, "%s/bin/python%d.%d", prefix, PY_MAJOR_VERSION, PY_MINOR_VERSION);
        if (access(buf, X_OK) == 0) return;
        snprintf(buf, n, "%s/bin/python3", prefix);
        if (access(buf, X_OK) == 0) return;
    }
    snprintf(buf, n, "%s", TRT_DISTRI_BUILD_PYTHON);
}

/* str(exception) of the pending exception (cleared), into buf. GIL held. */
static void pending_message(char *buf, size_t n) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *text = value ? PyObject_Str(value) : NULL;
    const char *utf8 = text ? PyUnicode_AsUTF8(text) : NULL;
    snprintf(buf, n, "%s: %s", type ? ((PyTypeObject *)type)->tp_name : "error", utf8 ? utf8 : "?");
    PyErr_Clear();
    Py_XDECREF(text), Py_XDECREF(type), Py_XDECREF(value), Py_XDECREF(tb);
}

static void import_bridge(void) {
    bridge = PyImport_ImportModule("trt_distri.capi._bridge");
    if (bridge != NULL) return;
    char why[1024];
    pending_message(why, sizeof(why));
    PyObject *prefix = PySys_GetObject("prefix"); /* borrowed */
    const char *where = prefix && PyUnicode_Check(prefix) ? PyUnicode_AsUTF8(prefix) : "?";
    start_status = TRT_DISTRI_ERROR_PYTHON;
    snprintf(start_error, sizeof(start_error),
             "cannot import trt_distri in the embedded Python (%s, sys.prefix %s): %s. Note: expected trt-distri "
             "installed in that environment. Fix: set TRT_DISTRI_PYTHON to the python of the environment where "
             "trt-distri is installed", python_used, where ? where : "?", why);
}

static void start(void) {
    int owned = !Py_IsInitialized();
    if (owned) {
        /* Extension modules resolve Python symbols globally: make libpython global even if we were dlopen'ed. */
        dlopen(TRT_DISTRI_LIBPYTHON, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
        python_path(python_used, sizeof(python_used));
        PyConfig config;
        PyConfig_InitPythonConfig(&config);
        config.install_signal_handlers = 0; /* the host program keeps its signals */
        config.parse_argv = 0;
        PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, python_used);
        if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
        PyConfig_Clear(&config);
        if (PyStatus_Exception(status)) {
            start_status = TRT_DISTRI_ERROR_PYTHON;
            snprintf(start_error, sizeof(start_error),
                     "the embedded Python (%s) did not start: %s. Fix: set TRT_DISTRI_PYTHON to the python of the "
                     "environment where trt-distri is installed", python_used,
                     status.err_msg ? status.err_msg : "unknown error");
            return;
        }
    } else {
        snprintf(python_used, sizeof(python_used), "the host program's interpreter");
    }
    PyGILState_STATE gil = PyGILState_Ensure();
    import_bridge();
    PyGILState_Release(gil);
    if (owned) PyEval_SaveThread(); /* release the GIL that initialization left with this thread */
}

static trt_distri_status ensure_started(void) {
    pthread_once(&once, start);
    return start_status == TRT_DISTRI_OK ? TRT_DISTRI_OK : td_fail(start_status, "%s", start_error);
}

/* The pending Python exception as a status and the thread's last error (via _bridge.describe). GIL held. */
static trt_distri_status from_exception(void) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL) PyException_SetTraceback(value, tb);
    PyObject *described = value ? PyObject_CallMethod(bridge, "describe", "O", value) : NULL;
    int code = TRT_DISTRI_ERROR_INTERNAL;
    const char *message = NULL;
    trt_distri_status s;
    if (described != NULL && PyArg_ParseTuple(described, "is", &code, &message))
        s = td_fail((trt_distri_status)code, "%s", message);
    else
        s = td_fail(TRT_DISTRI_ERROR_INTERNAL, "internal error: an exception that could not be described");
    PyErr_Clear();
    Py_XDECREF(described), Py_XDECREF(type), Py_XDECREF(value), Py_XDECREF(tb);
    return s;
}

static PyObject *path_or_none(const char *path) {
    if (path != NULL) return PyUnicode_DecodeFSDefault(path);
    Py_RETURN_NONE;
}

trt_distri_status td_py_create(const char *workdir, const trt_distri_generator_options *o, void **generator) {
    trt_distri_status s = ensure_started();
    if (s != TRT_DISTRI_OK) return s;
    typedef trt_distri_generator_options opts;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *args = Py_BuildValue(
        "(NziiizN)", path_or_none(workdir), TD_FIELD(o, opts, device, NULL), TD_FIELD(o, opts, rank, -1),
        TD_FIELD(o, opts, world, -1), TD_FIELD(o, opts, gpu, -1), TD_FIELD(o, opts, backend, NULL),
        path_or_none(TD_FIELD(o, opts, rendezvous, NULL)));
    PyObject *function = PyObject_GetAttrString(bridge, "create");
    PyObject *gen = args && function ? PyObject_CallObject(function, args) : NULL;
    s = gen ? TRT_DISTRI_OK : from_exception();
    Py_XDECREF(args), Py_XDECREF(function);
    *generator = gen;
    PyGILState_Release(gil);
    return s;
}

trt_distri_status td_py_close(void *generator) {
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *done = PyObject_CallMethod(bridge, "close", "O", (PyObject *)generator);
    trt_distri_status s = done ? TRT_DISTRI_OK : from_exception();
    Py_XDECREF(done);
    Py_DECREF((PyObject *)generator);
    PyGILState_Release(gil);
    return s;
}

trt_distri_status td_py_info(void *generator, int v[10]) {
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *t = PyObject_CallMethod(bridge, "info", "O", (PyObject *)generator);
    trt_distri_status s = TRT_DISTRI_OK;
    if (t == NULL || !PyArg_ParseTuple(t, "iiiiiiiiii", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7],
                                       &v[8], &v[9]))
        s = from_exception();
    Py_XDECREF(t);
    PyGILState_Release(gil);
    return s;
}

trt_distri_status td_py_set_loras(void *generator, const char *const *paths, const float *scales, size_t count) {
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *loras = PyList_New((Py_ssize_t)count);
    for (size_t i = 0; loras != NULL && i < count; i++) {
        PyObject *pair = Py_BuildValue("(Nd)", path_or_none(paths[i]), (double)scales[i]);
        if (pair == NULL) Py_CLEAR(loras);
        else PyList_SET_ITEM(loras, (Py_ssize_t)i, pair);
    }
    PyObject *done = loras ? PyObject_CallMethod(bridge, "set_loras", "OO", (PyObject *)generator, loras) : NULL;
    trt_distri_status s = done ? TRT_DISTRI_OK : from_exception();
    Py_XDECREF(done), Py_XDECREF(loras);
    PyGILState_Release(gil);
    return s;
}

static PyObject *floats(const float *data, Py_ssize_t n);

/* A read-only view of the caller's initial latents (the generator's latent size), or None. GIL held. */
static PyObject *latents_view(PyObject *generator, const float *latents) {
    if (latents == NULL) Py_RETURN_NONE;
    PyObject *n = PyObject_CallMethod(bridge, "latent_count", "O", generator);
    Py_ssize_t count = n ? PyLong_AsSsize_t(n) : -1;
    Py_XDECREF(n);
    return count < 0 ? NULL : floats(latents, count);
}

static PyObject *params_tuple(PyObject *generator, const trt_distri_generate_params *p) {
    typedef trt_distri_generate_params params;
    return Py_BuildValue("(idKziiiN)", TD_FIELD(p, params, steps, 30), (double)TD_FIELD(p, params, guidance, 5.0f),
                         (unsigned long long)TD_FIELD(p, params, seed, 0), TD_FIELD(p, params, scheduler, NULL),
                         TD_FIELD(p, params, warmup_steps, 4), TD_FIELD(p, params, width, 0),
                         TD_FIELD(p, params, height, 0),
                         latents_view(generator, TD_FIELD(p, params, latents, (const float *)NULL)));
}

static char *copy_string(PyObject *text) {
    const char *utf8 = text && PyUnicode_Check(text) ? PyUnicode_AsUTF8(text) : NULL;
    return strdup(utf8 ? utf8 : "not available");
}

static void *copy_bytes(PyObject *bytes) {
    char *data;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(bytes, &data, &size) != 0) return NULL;
    void *copy = malloc(size ? (size_t)size : 1);
    if (copy != NULL) memcpy(copy, data, (size_t)size);
    return copy;
}

/* _bridge's result tuple -> td_result (C memory). GIL held. */
static trt_distri_status to_result(PyObject *t, td_result **out) {
    PyObject *latents, *shape, *image, *image_missing, *latents_missing;
    td_result *r = calloc(1, sizeof(td_result));
    if (r == NULL) return td_fail(TRT_DISTRI_ERROR_OUT_OF_MEMORY, "out of memory for the result");
    if (!PyArg_ParseTuple(t, "OOOiiOOd", &latents, &shape, &image, &r->width, &r->height, &image_missing,
                          &latents_missing, &r->seconds) ||
        (shape != Py_None && !PyArg_ParseTuple(shape, "LLLL", &r->shape[0], &r->shape[1], &r->shape[2],
                                               &r->shape[3]))) {
        td_result_free(r);
        return from_exception();
    }
    r->latents = latents != Py_None ? copy_bytes(latents) : NULL;
    r->latents_missing = latents == Py_None ? copy_string(latents_missing) : NULL;
    r->image = image != Py_None ? copy_bytes(image) : NULL;
    r->image_missing = image == Py_None ? copy_string(image_missing) : NULL;
    if ((latents != Py_None) != (r->latents != NULL) || (image != Py_None) != (r->image != NULL) ||
        (latents == Py_None && !r->latents_missing) || (image == Py_None && !r->image_missing)) {
        td_result_free(r);
        PyErr_Clear();
        return td_fail(TRT_DISTRI_ERROR_OUT_OF_MEMORY, "out of memory for the result");
    }
    *out = r;
    return TRT_DISTRI_OK;
}

/* A C string as str, undecodable bytes kept as lone surrogates (trt_distri.params refuses them with a message);
   None for NULL. */
static PyObject *text_or_none(const char *text) {
    if (text == NULL) Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(text, (Py_ssize_t)strlen(text), "surrogateescape");
}

/* bridge.<method>(*args) -> td_result; steals `args`. */
static trt_distri_status call_generate(const char *method, PyObject *args, td_result **out) {
    PyObject *function = args ? PyObject_GetAttrString(bridge, method) : NULL;
    PyObject *t = args && function ? PyObject_CallObject(function, args) : NULL;
    trt_distri_status s = t ? to_result(t, out) : from_exception();
    Py_XDECREF(t), Py_XDECREF(function), Py_XDECREF(args);
    return s;
}

trt_distri_status td_py_generate(void *generator, const char *prompt, const char *negative_prompt,
                                 const trt_distri_generate_params *params, td_result **out) {
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *args = Py_BuildValue("(ONNN)", (PyObject *)generator, text_or_none(prompt),
                                   text_or_none(negative_prompt), params_tuple((PyObject *)generator, params));
    trt_distri_status s = call_generate("generate", args, out);
    PyGILState_Release(gil);
    return s;
}

/* A read-only view of n floats of the caller's memory, or None for NULL. */
static PyObject *floats(const float *data, Py_ssize_t n) {
    if (data == NULL) Py_RETURN_NONE;
    return PyMemoryView_FromMemory((char *)data, n * (Py_ssize_t)sizeof(float), PyBUF_READ);
}

trt_distri_status td_py_generate_from_embeddings(void *generator, const trt_distri_embeddings *e,
                                                 const trt_distri_generate_params *params, td_result **out) {
    PyGILState_STATE gil = PyGILState_Ensure();
    Py_ssize_t tokens = (Py_ssize_t)e->seq_len * e->dim;
    PyObject *args = Py_BuildValue("(ONNiiNNiNN)", (PyObject *)generator, floats(e->cond, tokens),
                                   floats(e->uncond, tokens), e->seq_len, e->dim, floats(e->pooled, e->pooled_dim),
                                   floats(e->negative_pooled, e->pooled_dim), e->pooled_dim, floats(e->time_ids, 6),
                                   params_tuple((PyObject *)generator, params));
    trt_distri_status s = call_generate("generate_from_embeddings", args, out);
    PyGILState_Release(gil);
    return s;
}
