/* loadgen.c's one entry point: see the top of loadgen.c. */
#ifndef MIDGRAM_LOADGEN_H
#define MIDGRAM_LOADGEN_H

#include <stddef.h>

/*
 * One run, with a program's command line (argv[0] is its name; see usage() in loadgen.c).
 * 0: *json is the result line (malloc'd, NUL-terminated: the caller frees it). -1: the run
 * failed, and error holds why (at most error_len bytes). Not reentrant: one run at a time
 * per process.
 */
int loadgen_run(int argc, char **argv, char **json, char *error, size_t error_len);

#endif
