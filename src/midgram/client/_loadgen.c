/*
 * _loadgen: midgram bench's load generator (loadgen.c) as an extension module, built at
 * install time like _batchio, so that `midgram bench` needs no compiler where it runs.
 *
 *     run(["-t", "/run/mi.sock", "-r", template, ...]) -> the result's JSON line (str)
 *
 * The arguments are loadgen's command line without the program's name (see usage() in
 * loadgen.c). The run holds no Python lock: it is plain C from start to end. midgram.client.loadtest
 * runs it in a process of its own (python -m midgram.cli.loadgen), one run per process.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdlib.h>

#include "loadgen.h"

/* loadgen.c keeps its state in static variables: one run at a time (checked under the GIL). */
static int running;

/* argv for loadgen_run: "loadgen", then each argument encoded as a file name would be. The
 * bytes objects that hold the strings are kept in *keep, which the caller releases. */
static char **make_argv(PyObject *args, PyObject **keep, int *argc)
{
    PyObject *seq = PySequence_Fast(args, "run() takes a list of str");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > 1000) {
        PyErr_SetString(PyExc_ValueError, "run(): too many arguments");
        Py_DECREF(seq);
        return NULL;
    }
    char **argv = PyMem_Calloc((size_t)n + 2, sizeof(char *));
    *keep = PyList_New(0);
    if (!argv || !*keep) {
        PyMem_Free(argv);
        Py_XDECREF(*keep);
        *keep = NULL;
        Py_DECREF(seq);
        PyErr_NoMemory();
        return NULL;
    }
    argv[0] = "loadgen";
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyUnicode_Check(item)) {
            PyErr_Format(PyExc_TypeError, "run(): argument %zd is %.100s, not str", i,
                         Py_TYPE(item)->tp_name);
            goto fail;
        }
        PyObject *bytes = PyUnicode_EncodeFSDefault(item);
        if (!bytes)
            goto fail;
        int added = PyList_Append(*keep, bytes);
        Py_DECREF(bytes);
        if (added < 0)
            goto fail;
        if (strlen(PyBytes_AS_STRING(bytes)) != (size_t)PyBytes_GET_SIZE(bytes)) {
            PyErr_Format(PyExc_ValueError, "run(): argument %zd holds a NUL character", i);
            goto fail;
        }
        argv[i + 1] = PyBytes_AS_STRING(bytes); /* kept alive by *keep */
    }
    Py_DECREF(seq);
    *argc = (int)n + 1;
    return argv;
fail:
    PyMem_Free(argv);
    Py_CLEAR(*keep);
    Py_DECREF(seq);
    return NULL;
}

static PyObject *loadgen_py_run(PyObject *module, PyObject *args)
{
    (void)module;
    if (running) {
        PyErr_SetString(PyExc_RuntimeError, "run(): a run is already going on in this process");
        return NULL;
    }
    PyObject *keep = NULL;
    int argc = 0;
    char **argv = make_argv(args, &keep, &argc);
    if (!argv)
        return NULL;
    char *json = NULL;
    char error[512] = "";
    int status;
    running = 1;
    Py_BEGIN_ALLOW_THREADS
    status = loadgen_run(argc, argv, &json, error, sizeof error);
    Py_END_ALLOW_THREADS
    running = 0;
    PyMem_Free(argv);
    Py_DECREF(keep);
    if (status != 0) {
        PyErr_SetString(PyExc_RuntimeError, error);
        return NULL;
    }
    PyObject *line = PyUnicode_DecodeUTF8(json, (Py_ssize_t)strlen(json), "replace");
    free(json);
    return line;
}

static PyMethodDef loadgen_methods[] = {
    {"run", loadgen_py_run, METH_O,
     "run(args) -> str: one run of the load generator with loadgen's command line (without "
     "the program's name); its result as one JSON line. RuntimeError says why a run failed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef loadgen_module = {
    PyModuleDef_HEAD_INIT, "_loadgen", "midgram bench's load generator (loadgen.c).", -1,
    loadgen_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__loadgen(void)
{
    return PyModule_Create(&loadgen_module);
}
